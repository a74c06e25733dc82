"""Capability under steering: A/B accuracy on MMLU-shaped files and sliding-window perplexity."""

import json
import math

import pytest
import torch

from caa_lens.capability import (
    ab_capability,
    capability_summary,
    perplexity,
    read_text,
    sliding_windows,
)
from caa_lens.data import load_behaviour_dataset
from caa_lens.provenance import make_provenance
from caa_lens.steering import Injection
from caa_lens.sweep import run_sweep
from caa_lens.sweep_io import load_results
from caa_lens.vectors import SteeringVector

TEXT = "The quick brown fox jumps over the lazy dog. I love the ocean and I hate the rain. " * 4


@pytest.fixture(scope="module")
def vector(tiny):
    provenance = make_provenance(tiny, "resid_post", "answer", "random", "t", "0", 1, torch.float32)
    directions = torch.randn(4, 64, generator=torch.Generator().manual_seed(5))
    return SteeringVector(directions, (0, 1, 2, 3), provenance)


@pytest.fixture
def mmlu_file(tmp_path):
    records = [
        {
            "prompt": f"Question {i}: is the sky blue?\n\nChoices:\n(A) True\n(B) False",
            "correct": "(A)" if i % 2 else "(B)",
            "incorrect": "(B)" if i % 2 else "(A)",
            "category": "demo",
        }
        for i in range(4)
    ]
    path = tmp_path / "mmlu.json"
    path.write_text(json.dumps(records))
    return path


def test_ab_capability_scores_p_correct(tiny, mmlu_file, vector):
    dataset = load_behaviour_dataset(mmlu_file)
    assert dataset.name == "mmlu" and dataset[0].matching == "(B)"
    plain = ab_capability(tiny, dataset, progress=False)
    assert plain.n_items == 4
    assert 0 <= plain.accuracy <= 1 and 0 < plain.mean_p_correct < 1
    steered = ab_capability(tiny, dataset, Injection(vector, 2, 6.0), progress=False)
    assert steered.mean_p_correct != plain.mean_p_correct


def test_capability_summary_of_a_sweep(tiny, mmlu_file, vector, tmp_path):
    dataset = load_behaviour_dataset(mmlu_file)
    run_sweep(tiny, dataset, {"v": vector}, (1, 2), (-2.0, 0.0), tmp_path / "r.jsonl", progress=False)
    results = load_results(tmp_path / "r.jsonl")
    summary = capability_summary(results)
    assert len(summary) == 4
    zero = summary[(summary.layer == 1) & (summary.multiplier == 0.0)].iloc[0]
    plain = ab_capability(tiny, dataset, progress=False)
    assert zero.mean_p_correct == pytest.approx(plain.mean_p_correct, abs=1e-6)
    assert zero.accuracy == pytest.approx(plain.accuracy)


def manual_nll(model, ids):
    with torch.inference_mode():
        logits = model(torch.tensor([ids]))[0].double().log_softmax(-1)
    return -sum(float(logits[i - 1, ids[i]]) for i in range(1, len(ids)))


def test_single_window_perplexity_is_the_plain_nll(tiny):
    ids = tiny.tokenizer(TEXT).input_ids  # with the BOS the tiny tokenizer adds
    result = perplexity(tiny, TEXT, context=len(ids), progress=False)
    assert result.n_windows == 1 and result.n_tokens == len(ids) - 1
    assert result.mean_nll == pytest.approx(manual_nll(tiny, ids) / (len(ids) - 1), rel=1e-6)
    assert result.perplexity == pytest.approx(math.exp(result.mean_nll))


def test_sliding_windows_match_an_independent_loop(tiny):
    text_ids = tiny.tokenizer(TEXT, add_special_tokens=False).input_ids
    bos = tiny.tokenizer.bos_token_id
    context, stride = 24, 10
    total, count, scored = 0.0, 0, 0
    for begin in range(0, len(text_ids), stride):
        end = min(begin + context, len(text_ids))
        ids = [bos, *text_ids[begin:end]]
        with torch.inference_mode():
            logits = tiny(torch.tensor([ids]))[0].double().log_softmax(-1)
        for t in range(scored, end):  # text token t sits at column t - begin + 1
            total -= float(logits[t - begin, ids[t - begin + 1]])
            count += 1
        scored = end
        if end == len(text_ids):
            break
    for batch_size in (1, 3):
        result = perplexity(tiny, TEXT, context=context, stride=stride, batch_size=batch_size, progress=False)
        assert result.n_tokens == count == len(text_ids)
        assert result.mean_nll == pytest.approx(total / count, rel=1e-6)


@pytest.mark.parametrize(
    "n, context, stride, first", [(10, 4, 2, 1), (50, 7, 3, 0), (5, 8, 8, 0), (9, 3, 3, 1)]
)
def test_windows_score_every_token_once(n, context, stride, first):
    windows = sliding_windows(n, context, stride, first)
    scored = [t for _, end, start in windows for t in range(start, end)]
    assert scored == list(range(first, n))
    assert all(end - begin <= context and begin <= start for begin, end, start in windows)


def test_steered_perplexity(tiny, vector):
    plain = perplexity(tiny, TEXT, context=30, progress=False)
    zero = perplexity(tiny, TEXT, Injection(vector, 1, 0.0, "all"), context=30, progress=False)
    assert zero.mean_nll == plain.mean_nll
    steered_all = perplexity(tiny, TEXT, Injection(vector, 1, 8.0, "all"), context=30, progress=False)
    from_zero = perplexity(tiny, TEXT, Injection(vector, 1, 8.0, "from_start"), context=30, progress=False)
    assert steered_all.mean_nll == pytest.approx(from_zero.mean_nll, rel=1e-9)
    assert steered_all.mean_nll != pytest.approx(plain.mean_nll, rel=1e-4)
    with pytest.raises(ValueError, match="last"):
        perplexity(tiny, TEXT, Injection(vector, 1, 1.0, "last"), progress=False)


def test_front_perplexity_steers_the_texts_first_tokens_not_the_bos(tiny):
    """An ActAdd vector starts at the first text token of a window, as it starts at the user's first
    token in a prompt (its BOS row dropped); the BOS column is left alone."""
    from caa_lens.data import PromptPair
    from caa_lens.methods import actadd_vector
    from caa_lens.steering import steering

    vector = actadd_vector(tiny, PromptPair("p", "I love the ocean", "I hate the ocean"), layers=(1,))
    injection = Injection(vector, 1, 4.0, "front")
    ids = tiny.tokenizer(TEXT).input_ids
    assert ids[0] == tiny.tokenizer.bos_token_id
    result = perplexity(tiny, TEXT, injection, context=len(ids) - 1, progress=False)
    with steering(tiny, injection, start=1):
        expected = manual_nll(tiny, ids) / (len(ids) - 1)
    assert result.n_windows == 1 and result.mean_nll == pytest.approx(expected, rel=1e-6)
    assert result.mean_nll != pytest.approx(
        perplexity(tiny, TEXT, context=len(ids) - 1, progress=False).mean_nll
    )


def test_text_errors(tmp_path, tiny):
    with pytest.raises(FileNotFoundError, match=r"missing\.txt"):
        read_text(tmp_path / "missing.txt")
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"ok \xff\xfe")
    with pytest.raises(ValueError, match=r"bad\.txt: not UTF-8"):
        read_text(bad)
    with pytest.raises(ValueError, match="nothing to score"):
        perplexity(tiny, [5], add_bos=False, progress=False)


@pytest.mark.shared_data
def test_shared_capability_files(tiny, shared_data):
    mmlu = load_behaviour_dataset(shared_data / "caa" / "test" / "mmlu" / "mmlu.json")
    truthful = load_behaviour_dataset(shared_data / "caa" / "test" / "truthfulqa" / "truthful_qa.json")
    assert (len(mmlu), len(truthful)) == (570, 817)
    score = ab_capability(tiny, mmlu.select(range(3)), progress=False)
    assert score.n_items == 3
    wiki = read_text(shared_data / "text" / "wiki.test.raw", max_chars=2000)
    result = perplexity(tiny, wiki, context=64, max_tokens=200, progress=False)
    assert result.n_tokens == 200


def test_ab_capability_refuses_a_question_longer_than_the_context(tiny, tmp_path):
    records = [
        {"prompt": "Is the sky blue?\n\nChoices:\n(A) True\n(B) False", "correct": "(A)", "incorrect": "(B)"},
        {
            "prompt": "Read this. " + "word " * 300 + "\n\nChoices:\n(A) True\n(B) False",
            "correct": "(B)",
            "incorrect": "(A)",
        },
    ]
    path = tmp_path / "mmlu.json"
    path.write_text(json.dumps(records))
    dataset = load_behaviour_dataset(path)
    with pytest.raises(ValueError, match=r"mmlu\.json: item 1: \d+ tokens exceed the model's context of 512"):
        ab_capability(tiny, dataset, progress=False)


def test_overflowing_multipliers_are_refused(tiny, mmlu_file, vector):
    dataset = load_behaviour_dataset(mmlu_file)
    with pytest.raises(ValueError, match="float32"):
        ab_capability(tiny, dataset, Injection(vector, 2, 1e38), progress=False)
    with pytest.raises(ValueError, match="float32"):
        perplexity(tiny, TEXT, Injection(vector, 1, 1e38, "all"), context=30, progress=False)


def test_majority_letter_baseline_comes_from_the_data(tiny, tmp_path):
    """Chance is the share of the commonest correct letter (7 A / 3 B here: 0.7), not 0.5."""
    from caa_lens.capability import correct_letter_shares, majority_baseline

    records = [
        {
            "prompt": f"Question {i}: is the sky blue?\n\nChoices:\n(A) True\n(B) False",
            "correct": "(A)" if i < 7 else "(B)",
            "incorrect": "(B)" if i < 7 else "(A)",
        }
        for i in range(10)
    ]
    path = tmp_path / "mmlu.json"
    path.write_text(json.dumps(records))
    dataset = load_behaviour_dataset(path)
    score = ab_capability(tiny, dataset, progress=False)
    assert score.correct_letter_shares == {"A": 0.7, "B": 0.3}
    assert (score.majority_label, score.majority_baseline) == ("A", 0.7)
    assert score.accuracy_over_baseline == pytest.approx(score.accuracy - 0.7)
    # A constant-letter answerer's accuracy is exactly that letter's share.
    assert (
        sum(item.matching_letter == "A" for item in dataset) / len(dataset)
        == score.correct_letter_shares["A"]
    )
    assert majority_baseline(["B", "A"]) == ("A", 0.5)  # a tie goes to the first letter
    with pytest.raises(ValueError, match="no items"):
        correct_letter_shares([])


def test_capability_summary_reports_the_majority_baseline(tiny, tmp_path, vector):
    records = [
        {
            "prompt": f"Q{i}?\n\n(A) x\n(B) y",
            "correct": "(B)" if i else "(A)",
            "incorrect": "(A)" if i else "(B)",
        }
        for i in range(4)
    ]
    path = tmp_path / "mmlu.json"
    path.write_text(json.dumps(records))
    dataset = load_behaviour_dataset(path)
    run_sweep(tiny, dataset, {"v": vector}, (1,), (0.0, 2.0), tmp_path / "r.jsonl", progress=False)
    summary = capability_summary(load_results(tmp_path / "r.jsonl"))
    assert list(summary.majority_baseline) == [0.75, 0.75]
    with pytest.raises(ValueError, match="no matching_label column"):
        capability_summary(load_results(tmp_path / "r.jsonl").drop(columns="matching_label"))
