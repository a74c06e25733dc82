"""The letter-free likelihood metric (issue 13, item 2): the prefix-cached steered scores against plain
full forward passes, its invariants, a planted effect that a wrong sign or a swapped option assignment
would reverse, the sweep (resumable, metric in the header) and the command line. (The option texts it
scores are parsed by ``caa_lens.answer_texts``, tested in ``test_answer_texts.py``.)"""

import json
import math
import time
import warnings

import pytest
import torch

import caa_lens.likelihood as likelihood
from analysis.cli import main
from caa_lens.answer_texts import option_texts
from caa_lens.data import ContrastiveDataset, load_behaviour_dataset, make_item
from caa_lens.evaluation import encode_prefixes, scoring_prompts, suffix_scores
from caa_lens.likelihood import (
    encode_likelihood_prefixes,
    likelihood_prompt,
    likelihood_prompts,
    likelihood_scores,
    likelihood_suffix_scores,
)
from caa_lens.prompts import format_prompt
from caa_lens.provenance import make_provenance
from caa_lens.steering import Injection, steering
from caa_lens.sweep import check_metric, run_sweep
from caa_lens.sweep_effects import effects_summary, summarize
from caa_lens.sweep_io import SweepConfigError, load_results, merge_results
from caa_lens.vectors import SteeringVector

MULTIPLIERS = (-3.0, 0.0, 2.5)
BLOCK = "Is it sunny today?\n\nChoices:\n (A) The weather is sunny and warm.\n (B) It will probably rain."


def items() -> tuple:
    return (
        make_item(BLOCK, "(A)", "(B)"),
        make_item(BLOCK, "(B)", "(A)"),
        make_item("Do you prefer (A) the ocean or (B) the rain?", "(B)", "(A)"),
        make_item("Do you like the rain?", "No", "Yes"),
        make_item("What is the best way to learn?\n (A) Practice every day.\n (B) Read books.", "(A)", "(B)"),
    )


@pytest.fixture(scope="module")
def dataset() -> ContrastiveDataset:
    return ContrastiveDataset("mixed", items(), source="mixed.json")


@pytest.fixture(scope="module")
def vectors(tiny) -> dict[str, SteeringVector]:
    generator = torch.Generator().manual_seed(5)
    provenance = make_provenance(tiny, "resid_post", "answer", "random", "t", "0", 1, torch.float32)
    return {
        name: SteeringVector(torch.randn(4, 64, generator=generator), (0, 1, 2, 3), provenance)
        for name in ("first", "second")
    }


def reference(model, item, injection=None, start_shift=0) -> tuple[float, float]:
    """Mean per-token log-probability of each answer text, from one plain full forward pass per text
    of the whole formatted prompt + reply (steered from steer_start + start_shift), log-softmax, gather."""
    texts = option_texts(item)
    prompt = format_prompt(model.tokenizer, texts.stem, "")
    means = []
    for text in (texts.matching, texts.not_matching):
        full = format_prompt(model.tokenizer, texts.stem, text)
        ids = torch.tensor(full.token_ids)
        with torch.inference_mode():
            if injection is None:
                logits = model(ids[None])
            else:
                with steering(model, injection, start=prompt.steer_start + start_shift):
                    logits = model(ids[None])
        logprobs = logits[0].double().log_softmax(dim=-1)
        n = len(prompt)
        means.append(float(logprobs[n - 1 : -1].gather(-1, ids[n:, None]).mean()))
    return means[0], means[1]


def test_prompt_has_no_letter_and_replies_are_the_texts_in_context(tiny):
    item = make_item(BLOCK, "(B)", "(A)")
    prompt = likelihood_prompt(tiny.tokenizer, item)
    assert "(A)" not in prompt.prompt.text and "(B)" not in prompt.prompt.text
    assert "Choices" not in prompt.prompt.text and prompt.prompt.text.endswith("[/INST]")
    assert prompt.matching_label == "B"
    decoded = [tiny.tokenizer.decode(list(reply)).strip() for reply in prompt.replies]
    assert decoded == ["It will probably rain.", "The weather is sunny and warm."]
    full = format_prompt(tiny.tokenizer, "Is it sunny today?", "It will probably rain.")
    assert full.token_ids == prompt.prompt.token_ids + prompt.replies[0]


def test_a_reply_that_does_not_continue_the_prompt_is_refused(tiny, monkeypatch):
    real = likelihood.format_prompt

    def merged(tokenizer, user, assistant_prefix="", *args, **kwargs):
        prompt = real(tokenizer, user, assistant_prefix, *args, **kwargs)
        if assistant_prefix == "It will probably rain.":
            ids = list(prompt.token_ids)
            ids[2] += 1
            return type(prompt)(tuple(ids), prompt.text, prompt.steer_start, prompt.answer_position)
        return prompt

    monkeypatch.setattr(likelihood, "format_prompt", merged)
    dataset = ContrastiveDataset("d", (make_item(BLOCK, "(A)", "(B)"),), source="file.json")
    with pytest.raises(
        ValueError, match=r"file\.json: item 0: the answer text 'It will probably rain\.' does not"
    ):
        likelihood_prompts(tiny.tokenizer, dataset)


# --- the metric -------------------------------------------------------------------------------------


@pytest.mark.parametrize("multiplier", [0.0, -3.0, 2.5, 8.0])
def test_prefix_cached_scores_equal_full_forward_passes(tiny, dataset, vectors, multiplier):
    injection = Injection(vectors["first"], 1, multiplier)
    scores = likelihood_scores(tiny, dataset, injection, batch_size=2, progress=False)
    for item, score in zip(dataset, scores.items, strict=True):
        matching, not_matching = reference(tiny, item, injection)
        assert score.logprob_matching == pytest.approx(matching, abs=1e-5)
        assert score.logprob_not_matching == pytest.approx(not_matching, abs=1e-5)
        assert score.logprob_diff == pytest.approx(matching - not_matching, abs=1e-5)
        assert score.p_matching == pytest.approx(1 / (1 + math.exp(-(matching - not_matching))), abs=1e-6)
        assert score.p_token_mean == pytest.approx(
            (math.exp(matching) + math.exp(not_matching)) / 2, abs=1e-6
        )


def test_steering_starts_at_steer_start_and_covers_the_reply(tiny, dataset, vectors):
    """The CAA off-by-one: steering one token earlier or later gives another number."""
    injection = Injection(vectors["second"], 2, 4.0)
    item = dataset[0]
    score = likelihood_scores(tiny, ContrastiveDataset("one", (item,)), injection, progress=False).items[0]
    for shift in (-1, 1):
        shifted = reference(tiny, item, injection, start_shift=shift)
        assert abs(score.logprob_matching - shifted[0]) > 1e-6  # parity holds to 1e-12 on the tiny model
    unsteered = likelihood_scores(tiny, ContrastiveDataset("one", (item,)), progress=False).items[0]
    assert abs(score.logprob_diff - unsteered.logprob_diff) > 1e-4


def test_grid_scores_equal_full_forward_passes_and_chunking_changes_nothing(tiny, dataset, vectors):
    prompts = likelihood_prompts(tiny.tokenizer, dataset)
    batch = encode_likelihood_prefixes(tiny, prompts)
    named = list(vectors.values())
    scores = likelihood_suffix_scores(tiny, batch, named, 3, MULTIPLIERS)
    assert scores.shape == (len(dataset), 2, len(MULTIPLIERS), 3)
    chunked = likelihood_suffix_scores(tiny, batch, named, 3, MULTIPLIERS, max_logits=1)  # one row a pass
    assert torch.equal(scores, chunked)
    for i, item in enumerate(dataset):
        for j, vector in enumerate(named):
            for k, m in enumerate(MULTIPLIERS):
                matching, not_matching = reference(tiny, item, Injection(vector, 3, m))
                assert float(scores[i, j, k, 2]) == pytest.approx(matching - not_matching, abs=1e-5)
                assert float(scores[i, j, k, 0]) == pytest.approx(
                    1 / (1 + math.exp(not_matching - matching)), abs=1e-6
                )


def test_the_letter_engine_is_unchanged_by_several_suffixes(tiny, dataset, vectors):
    """The one prefix engine: the letter metric's batch keeps one suffix row per item."""
    prompts = scoring_prompts(tiny.tokenizer, dataset)
    batch = encode_prefixes(tiny, prompts)
    assert batch.owners == () and batch.suffix_owners == tuple(range(len(dataset)))
    assert suffix_scores(tiny, batch, list(vectors.values()), 1, MULTIPLIERS).shape == (len(dataset), 2, 3, 2)
    twice = encode_likelihood_prefixes(tiny, likelihood_prompts(tiny.tokenizer, dataset))
    assert twice.suffix_owners == tuple(i for i in range(len(dataset)) for _ in range(2))


def test_swapping_the_answers_flips_the_sign(tiny, dataset, vectors):
    swapped = ContrastiveDataset(
        "swapped", tuple(make_item(i.question, i.not_matching, i.matching) for i in dataset)
    )
    injection = Injection(vectors["first"], 2, 2.5)
    plain = likelihood_scores(tiny, dataset, injection, progress=False)
    flipped = likelihood_scores(tiny, swapped, injection, progress=False)
    for a, b in zip(plain.items, flipped.items, strict=True):
        assert a.logprob_diff == pytest.approx(-b.logprob_diff, abs=1e-9)
        assert a.p_matching + b.p_matching == pytest.approx(1, abs=1e-9)
        assert a.p_token_mean == pytest.approx(b.p_token_mean, abs=1e-9)
    assert plain.mean_p_matching + flipped.mean_p_matching == pytest.approx(1, abs=1e-9)
    frame = plain.to_frame()
    assert {"p_matching", "logprob_diff", "matching_label", "item_hash"} <= set(frame.columns)


SUN, RAIN = "sunny sunny sunny", "rain rain rain"


def planted_dataset(sun_matching: bool) -> ContrastiveDataset:
    """Items whose two answers are the SUN and RAIN texts, in both letter positions."""
    questions = ["Is it sunny?", "Hi", "What will the weather be?", "Tell me about tomorrow."]
    built = []
    for i, q in enumerate(questions):
        first, second = (SUN, RAIN) if i % 2 == 0 else (RAIN, SUN)
        sun_letter = "(A)" if i % 2 == 0 else "(B)"
        rain_letter = "(B)" if i % 2 == 0 else "(A)"
        question = f"{q}\n\nChoices:\n (A) {first}\n (B) {second}"
        built.append(
            make_item(question, *((sun_letter, rain_letter) if sun_matching else (rain_letter, sun_letter)))
        )
    return ContrastiveDataset("sun" if sun_matching else "rain", tuple(built))


@pytest.fixture(scope="module")
def sun_vector(tiny) -> SteeringVector:
    """A unit direction at the last layer that raises the SUN text's tokens against the RAIN text's."""
    prompt = likelihood_prompt(tiny.tokenizer, planted_dataset(True)[0])
    sun, rain = (torch.tensor(sorted(set(reply))) for reply in prompt.replies)
    assert not set(sun.tolist()) & set(rain.tolist())
    direction = (tiny.W_U[:, sun].mean(dim=1) - tiny.W_U[:, rain].mean(dim=1)).detach().float()
    provenance = make_provenance(tiny, "resid_post", "answer", "planted", "t", "0", 1, torch.float32)
    return SteeringVector(torch.stack([direction / direction.norm()] * 4), (0, 1, 2, 3), provenance)


def test_a_planted_direction_moves_the_matching_text_the_right_way(tiny, sun_vector):
    """Fails if the sign of the difference, or which text is matching (letter -> text), were wrong:
    the SUN-matching items have SUN as (A) in half of them and as (B) in the other half."""
    for sun_matching, sign in ((True, 1), (False, -1)):
        data = planted_dataset(sun_matching)
        by_m = {
            m: likelihood_scores(tiny, data, Injection(sun_vector, 3, m), progress=False)
            for m in (-2.0, 0.0, 2.0)
        }
        for i in range(len(data)):
            low, mid, high = (by_m[m].items[i].logprob_diff for m in (-2.0, 0.0, 2.0))
            assert sign * (high - mid) > 0.05 and sign * (mid - low) > 0.05, (sun_matching, i, low, mid, high)
        assert sign * (by_m[2.0].mean_p_matching - by_m[0.0].mean_p_matching) > 0.01


# --- sweeps -------------------------------------------------------------------------------------------


def test_sweep_rows_equal_the_direct_scores(tiny, dataset, vectors, tmp_path):
    path = tmp_path / "r.jsonl"
    run = run_sweep(
        tiny, dataset, vectors, (1, 3), MULTIPLIERS, path, batch_size=2, progress=False, metric="likelihood"
    )
    header = json.loads(path.read_text().split("\n")[0])
    assert header["config"]["metric"] == "likelihood" and run.config["metric"] == "likelihood"
    table = load_results(path)
    assert len(table) == len(dataset) * 2 * len(MULTIPLIERS) * len(vectors)
    assert ((1 / (1 + (-table.logprob_diff).map(math.exp)) - table.p_matching).abs() < 1e-12).all()
    assert list(table.matching_label[: len(dataset)]) == ["A", "B", "B", "No", "A"]
    for m in MULTIPLIERS:
        direct = likelihood_scores(tiny, dataset, Injection(vectors["second"], 3, m), progress=False)
        cell = table[(table.vector == "second") & (table.layer == 3) & (table.multiplier == m)]
        assert abs(cell.logprob_diff.to_numpy() - direct.to_frame().logprob_diff.to_numpy()).max() < 1e-5
    summary = effects_summary(table, n_resamples=200)
    assert len(summary) == 2 * 2 * len(MULTIPLIERS)
    assert len(summarize(table)) == len(summary)


def test_sweep_resumes_only_with_the_same_metric(tiny, dataset, vectors, tmp_path):
    path = tmp_path / "r.jsonl"

    def sweep(metric, **options):
        return run_sweep(
            tiny, dataset, vectors, (2,), (0.0, 1.5), path, progress=False, metric=metric, **options
        )

    sweep("likelihood", shard=(0, 2))
    content = path.read_bytes()
    again = sweep("likelihood", shard=(0, 2))
    assert again.units_computed == 0 and path.read_bytes() == content
    # A killed write: the truncated last line is cut and its unit recomputed, same values.
    path.write_bytes(content[:-20])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sweep("likelihood", shard=(0, 2))
    assert path.read_bytes() == content
    with pytest.raises(SweepConfigError, match=r"metric: file has 'likelihood', this sweep has 'letter'"):
        sweep("letter", shard=(0, 2))
    assert path.read_bytes() == content
    other = tmp_path / "s1.jsonl"
    run_sweep(
        tiny, dataset, vectors, (2,), (0.0, 1.5), other, progress=False, metric="likelihood", shard=(1, 2)
    )
    merged = merge_results([path, other], tmp_path / "merged.jsonl")
    assert len(merged) == len(dataset) * 2 * 2 and "logprob_diff" in merged.columns
    with pytest.raises(ValueError, match="metric must be one of 'letter', 'likelihood', got 'letters'"):
        check_metric("letters")
    with pytest.raises((ValueError, TypeError)):  # the type checker of the test run may answer first
        sweep("letters", shard=(0, 2))
    assert path.read_bytes() == content


def test_a_header_without_a_metric_is_a_letter_sweep(tiny, dataset, vectors, tmp_path):
    """Files written before the metric was recorded resume as letter sweeps, and merge with new ones."""
    path = tmp_path / "old.jsonl"

    def sweep(target, metric="letter", shard=(0, 1)):
        return run_sweep(
            tiny, dataset, vectors, (1,), (0.0, 2.0), target, progress=False, metric=metric, shard=shard
        )

    sweep(path, shard=(0, 2))
    lines = path.read_text().split("\n")
    header = json.loads(lines[0])
    del header["config"]["metric"]
    path.write_text("\n".join([json.dumps(header), *lines[1:]]))
    content = path.read_bytes()
    assert sweep(path, shard=(0, 2)).units_computed == 0 and path.read_bytes() == content
    with pytest.raises(SweepConfigError, match="metric: file has 'letter', this sweep has 'likelihood'"):
        sweep(path, "likelihood", shard=(0, 2))
    newer = tmp_path / "new.jsonl"
    sweep(newer, shard=(1, 2))
    merged = merge_results([path, newer], tmp_path / "merged.jsonl")
    assert "logprob_diff" not in merged.columns and len(merged) == len(dataset) * 2 * 2


def test_bad_arguments(tiny, dataset, vectors):
    provenance = make_provenance(tiny, "resid_post", "answer", "random", "t", "0", 1, torch.float32)
    front = Injection(vectors["first"], 1, 1.0, "front")
    with pytest.raises(ValueError, match="mode 'front'"):
        likelihood_scores(tiny, dataset, front, progress=False)
    with pytest.raises(ValueError, match="one mode"):
        likelihood_scores(
            tiny, dataset, [Injection(vectors["first"], 1, 1.0), Injection(vectors["first"], 2, 1.0, "last")]
        )
    with pytest.raises(ValueError, match="run_sweep"):
        likelihood_scores(tiny, dataset, Injection(vectors["first"], 1, torch.tensor([1.0])), progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        likelihood_scores(tiny, dataset, batch_size=0, progress=False)
    huge = SteeringVector(torch.ones(4, 64), (0, 1, 2, 3), provenance)
    with pytest.raises(ValueError, match="largest float32"):
        likelihood_scores(tiny, dataset, Injection(huge, 1, 1e38), progress=False)


def test_last_mode_steers_from_the_last_prompt_token(tiny, dataset, vectors):
    injection = Injection(vectors["first"], 2, 3.0, "last")
    item = dataset[2]
    score = likelihood_scores(tiny, ContrastiveDataset("one", (item,)), injection, progress=False).items[0]
    prompt = likelihood_prompt(tiny.tokenizer, item).prompt
    shift = prompt.last - prompt.steer_start
    matching, _ = reference(tiny, item, injection, start_shift=shift)
    assert score.logprob_matching == pytest.approx(matching, abs=1e-5)


# --- command line -------------------------------------------------------------------------------------


def run_cli(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def vector_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("vector") / "optimism.safetensors"
    assert main(["vectors", "optimism", "--out", str(path), "--model", "tiny", "--limit", "4"]) == 0
    return path


def test_cli_evaluate_and_sweep_with_the_likelihood_metric(tmp_path, capsys, vector_file):
    code, out, err = run_cli(capsys, "evaluate", "optimism:test", "--model", "tiny", "--metric", "likelihood")
    assert code == 0, err
    assert "mean p(matching)" in out and "likelihood" in out and "nats/token" in out
    steer = ["--vector", vector_file, "--layer", "1", "--multiplier", "2"]
    code, steered, err = run_cli(
        capsys, "evaluate", "optimism:test", "--model", "tiny", "--metric", "likelihood", *steer
    )
    assert code == 0 and steered != out, err
    results = tmp_path / "s.jsonl"
    common = ["sweep", "run", "optimism:test", "--vector", vector_file, "--layers", "1", "--model", "tiny"]
    options = ["--multipliers=-2,0,2", "--limit", "3", "--controls", "1", "--out", results]
    code, out, err = run_cli(capsys, *common, *options, "--metric", "likelihood")
    assert code == 0, err
    assert "Metric: likelihood" in out and "effect [95% CI]" in out
    table = load_results(results)
    assert len(table) == 3 * 3 * 2 and "logprob_diff" in table.columns
    code, _, err = run_cli(capsys, *common, *options)  # resuming it with the letter metric
    assert code == 1 and "metric" in err and len(err.strip().splitlines()) == 1
    code, out, err = run_cli(capsys, "sweep", "summary", results)
    assert code == 0 and "Metric: likelihood" in out, err


def test_cli_bad_metric_is_one_line_before_the_model_loads(tmp_path, capsys, monkeypatch, vector_file):
    def forbidden(*args, **kwargs):
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr("caa_lens.models.load_model", forbidden)
    monkeypatch.setattr("caa_lens.tiny.tiny_model", forbidden)
    text = tmp_path / "t.txt"
    text.write_text("Some text.")
    unlisted = tmp_path / "unlisted.json"
    unlisted.write_text(
        json.dumps(
            [
                {"question": BLOCK, "answer_matching_behavior": "(A)", "answer_not_matching_behavior": "(B)"},
                {
                    "question": "Tea?",
                    "answer_matching_behavior": "(A)",
                    "answer_not_matching_behavior": "(B)",
                },
            ]
        )
    )
    sweep = ["sweep", "run", "optimism:test", "--vector", vector_file, "--layers", "1", "--model", "tiny"]
    for args, phrase in [
        (["evaluate", "optimism:test", "--model", "tiny", "--metric", "letters"], "--metric"),
        ([*sweep, "--out", tmp_path / "s.jsonl", "--metric", "bogus"], "'letter', 'likelihood'"),
        (["evaluate", "--text", text, "--model", "tiny", "--metric", "likelihood"], "--metric"),
        (["evaluate", unlisted, "--model", "tiny", "--metric", "likelihood"], "unlisted.json: item 1"),
    ]:
        code, _, err = run_cli(capsys, *args)
        lines = err.strip().splitlines()
        assert code == 2, (args, err)
        assert len(lines) == 1 and lines[0].startswith("caa-lens: error: ") and phrase in lines[0], (
            args,
            err,
        )
    assert not (tmp_path / "s.jsonl").exists()


# --- the default model ------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.shared_data
def test_default_model_scores_shared_refusal_items(default_model, shared_data):
    data = load_behaviour_dataset(shared_data / "caa" / "test" / "refusal" / "test_dataset_ab.json")
    data = data.select(range(20), ":first20")
    started = time.perf_counter()
    scores = likelihood_scores(default_model, data, progress=False)
    elapsed = time.perf_counter() - started
    frame = scores.to_frame()
    assert (
        len(frame) == 20
        and frame[["p_matching", "logprob_diff", "p_token_mean"]].map(math.isfinite).all().all()
    )
    assert ((frame.p_matching > 0) & (frame.p_matching < 1)).all()
    assert (frame.logprob_matching < 0).all() and (frame.logprob_not_matching < 0).all()
    print(f"refusal, 20 items: mean p(matching) {scores.mean_p_matching:.4f}, {elapsed:.1f} s")
