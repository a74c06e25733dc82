"""Open-ended scorers: each phrase, word, sentiment and degeneracy rule, and fluency against an
independent log-likelihood computation."""

import numpy as np
import pandas as pd
import pytest
import torch

from caa_lens.generation import generate
from caa_lens.lexicons import REFUSAL_PHRASES, WEDDING_WORDS
from caa_lens.prompts import format_prompt
from caa_lens.scorers import (
    DegeneracyScorer,
    FluencyScorer,
    PhraseScorer,
    SentimentScorer,
    WordRateScorer,
    repeated_ngram_rate,
    score_generations,
    words,
)


def table(*completions: str) -> pd.DataFrame:
    return pd.DataFrame(
        {"prompt": ["Tell me something."] * len(completions), "completion": list(completions)}
    )


def test_refusal_phrases_match_case_and_curly_apostrophes():
    scorer = PhraseScorer("refusal", REFUSAL_PHRASES)
    scores = scorer.score(
        table("I\u2019m sorry, but no.", "AS AN AI language model I won't.", "Sure, here it is.", "")
    )
    assert scores["refusal"].tolist() == [1.0, 1.0, 0.0, 0.0]


def test_phrase_scorer_refuses_empty_phrases():
    with pytest.raises(ValueError, match="non-empty"):
        PhraseScorer("x", ("ok", " "))


def test_word_rate_counts_whole_words_only():
    scorer = WordRateScorer("wedding", WEDDING_WORDS)
    scores = scorer.score(table("The bride and groom wed on Wednesday.", "Wednesday is wet.", ""))
    assert scores["wedding_rate"].tolist() == pytest.approx([3 / 7, 0.0, 0.0])
    assert scores["wedding_any"].tolist() == [1.0, 0.0, 0.0]


def test_word_rate_refuses_phrases_in_the_vocabulary():
    with pytest.raises(ValueError, match="single lower-case words"):
        WordRateScorer("topic", ("wedding dress",))


def test_sentiment_orders_texts_and_thresholds_positive():
    scores = SentimentScorer().score(
        table("I love this wonderful day.", "This is awful and sad.", "It is a chair.")
    )
    compound = scores["sentiment"]
    assert compound[0] > 0.5 > 0 > -0.5 > compound[1]
    assert compound[2] == 0.0
    assert scores["positive"].tolist() == [1.0, 0.0, 0.0]


def test_degeneracy_flags_loops_and_empty_text():
    scores = DegeneracyScorer().score(
        table("the cat sat on the mat", "go home go home go home go home", "  ...")
    )
    assert scores["degenerate"].tolist() == [0.0, 1.0, 1.0]
    assert scores["repeated_ngrams"][1] == pytest.approx(
        repeated_ngram_rate("go home go home go home go home")
    )


def test_words_keep_inner_apostrophes():
    assert words("Don\u2019t STOP, it's 2 am") == ["don't", "stop", "it's", "2", "am"]


def _independent_nll(model, prompt: str, completion_ids: list[int]) -> float:
    prefix = list(format_prompt(model.tokenizer, prompt).token_ids)
    ids = torch.tensor([prefix + completion_ids])
    with torch.inference_mode():
        logprobs = model(ids).double().log_softmax(dim=-1)[0]
    return -float(np.mean([logprobs[len(prefix) + k - 1, t] for k, t in enumerate(completion_ids)]))


def test_fluency_equals_an_independent_forward_pass_whatever_the_batching(tiny):
    prompts = ["Is it sunny?", "Tell me a long story about the sea and the ships on it.", "Hi"]
    result = generate(tiny, prompts, max_new_tokens=6, stop_at_eos=False)
    frame = pd.DataFrame(
        {"prompt": prompts, "completion": result.texts, "completion_ids": [list(t) for t in result.token_ids]}
    )
    expected = [_independent_nll(tiny, p, list(t)) for p, t in zip(prompts, result.token_ids, strict=True)]
    for batch_size in (1, 3):
        got = FluencyScorer(tiny, batch_size=batch_size).score(frame)["completion_nll"]
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


def test_fluency_prefers_what_the_model_wrote_to_random_tokens(tiny):
    """A planted difference: greedy tokens are the model's most likely; random ones are not."""
    prompts = ["Is it sunny?"] * 2
    greedy = list(generate(tiny, prompts[:1], max_new_tokens=8, stop_at_eos=False).token_ids[0])
    random_ids = torch.randint(10, 400, (8,), generator=torch.Generator().manual_seed(0)).tolist()
    frame = pd.DataFrame({"prompt": prompts, "completion": ["", ""], "completion_ids": [greedy, random_ids]})
    nll = FluencyScorer(tiny).score(frame)["completion_nll"]
    assert nll[0] < nll[1]


def test_fluency_refuses_rows_without_tokens(tiny):
    frame = pd.DataFrame({"prompt": ["Hi"], "completion": [""], "completion_ids": [[]]})
    with pytest.raises(ValueError, match="row 0 has no generated token"):
        FluencyScorer(tiny).score(frame)


def test_score_generations_refuses_overwriting_a_column():
    frame = table("hello").assign(refusal=0.0)
    with pytest.raises(ValueError, match="overwrite the columns \\['refusal'\\]"):
        score_generations(frame, [PhraseScorer("refusal", REFUSAL_PHRASES)])


def test_score_generations_adds_every_column_without_touching_the_input():
    frame = table("I'm sorry.", "Weddings!")
    scored = score_generations(
        frame, [PhraseScorer("refusal", REFUSAL_PHRASES), WordRateScorer("w", WEDDING_WORDS)]
    )
    assert list(frame.columns) == ["prompt", "completion"]
    assert scored[["refusal", "w_any"]].values.tolist() == [[1.0, 0.0], [0.0, 1.0]]
