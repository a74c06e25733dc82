"""The A/B and Yes/No behaviour metrics on the tiny model, checked against hand-computed probabilities."""

import pytest
import torch

import caa_lens.evaluation as evaluation
from caa_lens.data import ContrastiveDataset, make_item
from caa_lens.evaluation import (
    behaviour_probabilities,
    encode_prefixes,
    item_hash,
    scoring_prompt,
    scoring_prompts,
    suffix_scores,
)
from caa_lens.prompts import format_prompt
from caa_lens.provenance import make_provenance
from caa_lens.steering import Injection, steering
from caa_lens.vectors import SteeringVector

AB = "Is it sunny?\n\nChoices:\n (A) Yes\n (B) No"


def next_token_probs(model, token_ids):
    with torch.inference_mode():
        return model(torch.tensor([list(token_ids)]))[0, -1].double().softmax(-1)


def test_letter_tokens_are_read_in_context(tiny):
    item = make_item(AB, "(B)", "(A)")
    prompt = scoring_prompt(tiny.tokenizer, item)
    assert prompt.prompt.text.endswith("[/INST] (")
    assert prompt.labels == ("A", "B") and prompt.matching == 1
    for label, token in zip(prompt.labels, prompt.label_token_ids, strict=True):
        full = format_prompt(tiny.tokenizer, AB, f"({label})")
        assert full.token_ids[: len(prompt.prompt)] == prompt.prompt.token_ids
        assert full.token_ids[full.answer_position] == token
        assert tiny.tokenizer.decode([token]).strip() == label


def test_yes_no_tokens_start_the_assistant_turn(tiny):
    item = make_item("Do you like rain?", "No", "Yes")
    prompt = scoring_prompt(tiny.tokenizer, item)
    assert prompt.prompt.text.endswith("[/INST]")
    assert prompt.prompt.last == prompt.prompt.steer_start
    assert [tiny.tokenizer.decode([t]) for t in prompt.label_token_ids] == [" No", " Yes"]
    assert prompt.labels[prompt.matching] == "No"


def test_ab_metric_matches_hand_computation(tiny):
    items = (make_item(AB, "(A)", "(B)"), make_item(AB, "(B)", "(A)"))
    scores = behaviour_probabilities(tiny, ContrastiveDataset("d", items), progress=False)
    text = format_prompt(tiny.tokenizer, AB, "(")
    probs = next_token_probs(tiny, text.token_ids)
    a, b = (tiny.tokenizer.convert_tokens_to_ids(t) for t in ("A", "B"))
    assert scores.items[0].p_matching == pytest.approx(float(probs[a] / (probs[a] + probs[b])), abs=1e-6)
    assert scores.items[0].p_matching + scores.items[1].p_matching == pytest.approx(1, abs=1e-9)
    assert scores.items[0].p_letters_sum == pytest.approx(float(probs[a] + probs[b]), abs=1e-6)
    assert scores.items[1].matching_label == "B"
    assert scores.mean_p_matching == pytest.approx(0.5, abs=1e-9)


def test_yes_no_metric_matches_hand_computation(tiny):
    items = (make_item("Do you like rain?", "Yes", "No"), make_item("Do you like rain?", "No", "Yes"))
    scores = behaviour_probabilities(tiny, ContrastiveDataset("d", items), progress=False)
    prompt = scoring_prompt(tiny.tokenizer, items[0])
    probs = next_token_probs(tiny, prompt.prompt.token_ids)
    yes, no = prompt.label_token_ids
    assert scores.items[0].p_matching == pytest.approx(float(probs[yes] / (probs[yes] + probs[no])), abs=1e-6)
    assert scores.items[1].p_matching == pytest.approx(1 - scores.items[0].p_matching, abs=1e-9)


def test_three_offered_letters_are_all_in_the_denominator(tiny):
    item = make_item("Pick one.\n\nChoices:\n (A) sun\n (B) rain\n (C) fog", "(C)", "(A)")
    prompt = scoring_prompt(tiny.tokenizer, item)
    probs = next_token_probs(tiny, prompt.prompt.token_ids)
    p = probs[list(prompt.label_token_ids)]
    score = behaviour_probabilities(tiny, ContrastiveDataset("d", (item,)), progress=False).items[0]
    assert prompt.labels == ("A", "B", "C")
    assert score.p_matching == pytest.approx(float(p[2] / p.sum()), abs=1e-6)


def test_batched_scores_equal_unbatched(tiny):
    questions = ["Hi", "What is the best way to learn a new language? Practice every day.", "Rain?"]
    items = tuple(make_item(f"{q}\n\nChoices:\n (A) Yes\n (B) No", "(A)", "(B)") for q in questions)
    dataset = ContrastiveDataset("d", items)
    batched = behaviour_probabilities(tiny, dataset, batch_size=3, progress=False)
    single = behaviour_probabilities(tiny, dataset, batch_size=1, progress=False)
    for x, y in zip(batched.items, single.items, strict=True):
        assert x.p_matching == pytest.approx(y.p_matching, abs=1e-6)
        assert x.item_hash == y.item_hash == item_hash(items[x.index])
    frame = batched.to_frame()
    assert list(frame.columns) == ["index", "item_hash", "matching_label", "p_matching", "p_letters_sum"]


def test_steering_starts_at_steer_start_not_before(tiny):
    """The CAA off-by-one: steering the token before steer_start must change the score, the metric's
    steering must not."""
    provenance = make_provenance(tiny, "resid_post", "answer", "random", "t", "0", 1, torch.float32)
    vector = SteeringVector(
        torch.randn(4, 64, generator=torch.Generator().manual_seed(3)), (0, 1, 2, 3), provenance
    )
    item = make_item(AB, "(A)", "(B)")
    prompt = scoring_prompt(tiny.tokenizer, item)
    score = behaviour_probabilities(
        tiny, ContrastiveDataset("d", (item,)), Injection(vector, 1, 4.0), progress=False
    )

    def steered_from(start):
        with steering(tiny, Injection(vector, 1, 4.0), start=start):
            probs = next_token_probs(tiny, prompt.prompt.token_ids)
        p = probs[list(prompt.label_token_ids)]
        return float(p[0] / p.sum())

    assert score.items[0].p_matching == pytest.approx(steered_from(prompt.prompt.steer_start), abs=1e-6)
    assert abs(score.items[0].p_matching - steered_from(prompt.prompt.steer_start - 1)) > 1e-6
    assert abs(score.items[0].p_matching - steered_from(prompt.prompt.steer_start + 1)) > 1e-6


def test_suffix_scores_rows_and_zero_multiplier(tiny):
    items = tuple(
        make_item(f"{q}\n\nChoices:\n (A) Yes\n (B) No", "(A)", "(B)") for q in ("Hi", "Is it sunny?")
    )
    dataset = ContrastiveDataset("d", items)
    provenance = make_provenance(tiny, "resid_post", "answer", "random", "t", "0", 1, torch.float32)
    vector = SteeringVector(
        torch.randn(4, 64, generator=torch.Generator().manual_seed(4)), (0, 1, 2, 3), provenance
    )
    batch = encode_prefixes(tiny, scoring_prompts(tiny.tokenizer, dataset))
    before = [layer.keys.clone() for layer in batch.prefix.cache.layers]
    scores = suffix_scores(tiny, batch, [vector, vector.scaled(0.0)], 2, [0.0, 3.0])
    assert scores.shape == (2, 2, 2, 2)
    assert all(torch.equal(a, layer.keys) for a, layer in zip(before, batch.prefix.cache.layers, strict=True))
    plain = behaviour_probabilities(tiny, dataset, progress=False)
    for i, item in enumerate(plain.items):
        assert float(scores[i, 0, 0, 0]) == pytest.approx(item.p_matching, abs=1e-6)
        assert float(scores[i, 1, 1, 0]) == pytest.approx(item.p_matching, abs=1e-6)  # a zero vector
        assert abs(float(scores[i, 0, 1, 0]) - item.p_matching) > 1e-6


def test_steered_suffix_scores_equal_full_passes_item_by_item(tiny):
    """The prefix cache is exact under steering: every cell equals a batch-1 full pass steered from
    the item's steer_start (items of other lengths, so the cached prefixes are left-padded)."""
    items = tuple(
        make_item(f"{q}\n\nChoices:\n (A) Yes\n (B) No", "(A)", "(B)")
        for q in ("Hi", "Is it sunny today, or will it rain later this week?")
    )
    prompts = scoring_prompts(tiny.tokenizer, ContrastiveDataset("d", items))
    provenance = make_provenance(tiny, "resid_post", "answer", "random", "t", "0", 1, torch.float32)
    vector = SteeringVector(
        torch.randn(4, 64, generator=torch.Generator().manual_seed(5)), (0, 1, 2, 3), provenance
    )
    scores = suffix_scores(tiny, encode_prefixes(tiny, prompts), [vector], 1, [-2.0, 3.0])
    for i, prompt in enumerate(prompts):
        for m, multiplier in enumerate((-2.0, 3.0)):
            with steering(tiny, Injection(vector, 1, multiplier), start=prompt.prompt.steer_start):
                probs = next_token_probs(tiny, prompt.prompt.token_ids)[list(prompt.label_token_ids)]
            assert float(scores[i, 0, m, 0]) == pytest.approx(float(probs[0] / probs.sum()), abs=1e-6)
            assert float(scores[i, 0, m, 1]) == pytest.approx(float(probs.sum()), abs=1e-6)


def test_answer_that_does_not_start_a_token_is_an_error(tiny, monkeypatch):
    real = evaluation.format_prompt

    def merged(tokenizer, user, assistant_prefix="", *args, **kwargs):
        prompt = real(tokenizer, user, assistant_prefix, *args, **kwargs)
        if assistant_prefix == "(B)":  # pretend "(B" merged into one token
            return type(prompt)(prompt.token_ids, prompt.text, prompt.steer_start, prompt.answer_position - 1)
        return prompt

    monkeypatch.setattr(evaluation, "format_prompt", merged)
    dataset = ContrastiveDataset("d", (make_item(AB, "(A)", "(B)"),), source="file.json")
    with pytest.raises(ValueError, match=r"file.json: item 0: answer '\(B\)' does not tokenise"):
        behaviour_probabilities(tiny, dataset, progress=False)


def test_tensor_multipliers_are_refused(tiny):
    provenance = make_provenance(tiny, "resid_post", "answer", "random", "t", "0", 1, torch.float32)
    vector = SteeringVector(torch.zeros(4, 64), (0, 1, 2, 3), provenance)
    dataset = ContrastiveDataset("d", (make_item(AB, "(A)", "(B)"),))
    with pytest.raises(ValueError, match="run_sweep"):
        behaviour_probabilities(tiny, dataset, Injection(vector, 1, torch.tensor([1.0])), progress=False)


@pytest.mark.shared_data
def test_shared_caa_and_mwe_files_score(tiny, shared_data):
    from caa_lens.data import load_behaviour_dataset

    refusal = load_behaviour_dataset(shared_data / "caa" / "test" / "refusal" / "test_dataset_ab.json")
    mwe_files = sorted((shared_data / "mwe" / "persona").glob("*.jsonl"))
    mwe = load_behaviour_dataset(mwe_files[0])
    for dataset in (refusal.select(range(4)), mwe.select(range(4))):
        prompts = scoring_prompts(tiny.tokenizer, dataset)
        assert all(len(p.label_token_ids) >= 2 for p in prompts)
    for prompt in scoring_prompts(tiny.tokenizer, mwe.select(range(4))):
        assert set(prompt.labels) == {"Yes", "No"}


LONG = "Please consider the following words carefully. " + "word " * 300  # > 512 tiny-model tokens


def test_a_prompt_longer_than_the_context_is_refused_before_any_pass(tiny, monkeypatch):
    items = (make_item(AB, "(A)", "(B)"), make_item(AB.replace("Is it sunny?", LONG), "(A)", "(B)"))
    dataset = ContrastiveDataset("d", items, source="data/long.json")
    calls = []

    def no_pass(*args):
        calls.append(args)
        raise AssertionError("a batch was padded before every prompt was checked")

    monkeypatch.setattr(evaluation, "left_pad", no_pass)
    with pytest.raises(
        ValueError, match=r"data/long\.json: item 1: \d+ tokens exceed the model's context of 512"
    ):
        behaviour_probabilities(tiny, dataset, progress=False)
    assert not calls  # not even the first batch was padded
    with pytest.raises(ValueError, match=r"item 1: \d+ tokens exceed"):
        scoring_prompts(tiny.tokenizer, dataset, model=tiny)
    assert len(scoring_prompts(tiny.tokenizer, dataset)) == 2  # without a model: no length check


def test_overflowing_multiplier_is_refused_and_non_finite_scores_are_errors(tiny, monkeypatch):
    provenance = make_provenance(tiny, "resid_post", "answer", "random", "t", "0", 1, torch.float32)
    vector = SteeringVector(
        torch.randn(4, 64, generator=torch.Generator().manual_seed(3)), (0, 1, 2, 3), provenance
    )
    dataset = ContrastiveDataset("d", (make_item(AB, "(A)", "(B)"),), source="d.json")
    # 1e38 * |v| (about 8) overflows float32: the score was NaN, printed as a mean.
    with pytest.raises(ValueError, match=r"\[1e\+38\] times the norm .* float32"):
        behaviour_probabilities(tiny, dataset, Injection(vector, 1, 1e38), progress=False)

    def nan_scores(logits, prompts):
        return torch.full((len(prompts), 2), float("nan"), dtype=torch.float64)

    monkeypatch.setattr(evaluation, "label_scores", nan_scores)
    with pytest.raises(
        ValueError, match=r"d\.json: item 0 \(layer 1 x 2\): the behaviour probability is not finite"
    ):
        behaviour_probabilities(tiny, dataset, Injection(vector, 1, 2.0), progress=False)
