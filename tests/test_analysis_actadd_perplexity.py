"""analysis.actadd_perplexity on the tiny model: the batched sentence losses equal
``caa_lens.capability.perplexity``; the quick form runs end to end and saves; a planted vector lowers
only the related text's perplexity."""

import pytest
from helpers.actadd import (
    check_saved,
    no_shared_env,  # noqa: F401  (autouse: the bundled fallbacks, no shared data)
    planted,
)

from analysis.actadd_perplexity import RelatedTextConfig, related_text_perplexity, sentence_losses
from caa_lens.capability import perplexity
from caa_lens.steering import Injection


def test_sentence_losses_equal_capability_perplexity(tiny):
    vector = planted(tiny, " answer", 3, layer=1, norm=2.0)
    sentence = "The answer is the question about the language."
    table = sentence_losses(tiny, [sentence, "Yes and the answer."], {"v": vector}, 1, [3.0], batch_size=3)
    for name, coefficient in (("", 0.0), ("v", 3.0)):
        row = table[(table.vector == name) & (table.sentence_index == 0)].iloc[0]
        expected = perplexity(tiny, sentence, Injection(vector, 1, coefficient, "front"), progress=False)
        assert row.n_tokens == expected.n_tokens
        assert row.nll / row.n_tokens == pytest.approx(expected.mean_nll, rel=1e-5)


def test_perplexity_quick_end_to_end(tiny, tmp_path):
    result = related_text_perplexity(tiny, RelatedTextConfig().quick())
    tested = result.tested()
    assert len(tested) == 4 * 2 and (tested.n_sentences == 4).all() and (tested.n_null == 2).all()
    assert "stand-in" in result.info["source"] and result.related == "wedding_day"
    assert ((tested.ratio_low <= tested.ratio) & (tested.ratio <= tested.ratio_high)).all()
    assert result.sentences.used.sum() == 16
    check_saved(result, tmp_path, "perplexity", ("ratios", "sentences", "losses"))


def test_planted_perplexity_lowers_only_the_related_text(tiny):
    texts = {
        "answers": "The answer answer answer is the question. The answer answer answer and the language. "
        "Yes answer answer answer about the question. The answer answer answer and the answer.",
        "questions": "The question about the language. Yes and the question about the language. "
        "The language and the question. The question and the language about the question.",
        "yes": "Yes the language and the question. The question is about the language and the question. "
        "Yes and the language about the question. The language about the question and the language.",
    }
    config = RelatedTextConfig(layer=3, coefficients=(4.0, 16.0), controls=3, n_resamples=1000)
    vector = planted(tiny, " answer", 3)
    result = related_text_perplexity(tiny, config, texts=texts, related="answers", vector=vector)
    tested = result.tested().set_index(["text", "coefficient"])
    assert tested.loc[("answers", 16.0), "ratio_high"] < 1
    assert tested.loc[("answers", 16.0), "vs_null"] == "below null"
    for other in ("questions", "yes"):
        assert tested.loc[(other, 16.0), "ratio"] > 1
        assert tested.loc[(other, 16.0), "vs_null"] != "below null"
