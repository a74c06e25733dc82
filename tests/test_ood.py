"""OOD prompts, scorers (a deterministic one and the model judge), and steered open-ended generation."""

import json
import math

import pytest
import torch

from caa_lens.data import DatasetError
from caa_lens.generation import generate
from caa_lens.ood import (
    SCORES,
    KeywordScorer,
    ModelJudgeScorer,
    OODPrompt,
    Scorer,
    ScoreResult,
    load_ood_prompts,
    run_ood,
)
from caa_lens.prompts import format_prompt
from caa_lens.provenance import make_provenance
from caa_lens.vectors import SteeringVector


def write(tmp_path, records, name="prompts.json"):
    path = tmp_path / name
    path.write_text(json.dumps(records))
    return path


def test_load_ood_prompts(tmp_path):
    path = write(tmp_path, [{"id": 1, "prompt": "Hello?"}, {"id": "b", "prompt": "Is it sunny?"}])
    prompts = load_ood_prompts(path)
    assert prompts == (OODPrompt("1", "Hello?", str(path)), OODPrompt("b", "Is it sunny?", str(path)))


@pytest.mark.parametrize(
    "records, message",
    [
        ([{"id": 1}], r"item 0: missing field 'prompt'"),
        ([{"id": 1, "prompt": "a"}, {"id": 1, "prompt": "b"}], r"item 1: field 'id' repeats 1"),
        ([{"id": 1, "prompt": "  "}], r"item 0: field 'prompt' must be a non-empty string"),
        ([{"id": [1], "prompt": "a"}], r"item 0: field 'id' must be a string or an integer"),
        ({"id": 1}, "expected a non-empty JSON array"),
        (["text"], "item 0: expected an object"),
    ],
)
def test_bad_prompt_files_name_the_item_and_field(tmp_path, records, message):
    path = write(tmp_path, records)
    with pytest.raises(DatasetError, match=message) as error:
        load_ood_prompts(path)
    assert str(path) in str(error.value)


def test_score_result_and_keyword_scorer():
    with pytest.raises(ValueError, match="behaviour score"):
        ScoreResult(11.0, 5.0)
    with pytest.raises(ValueError, match="coherence score"):
        ScoreResult(1.0, math.nan)
    scorer = KeywordScorer(("cannot", "sorry"))
    assert isinstance(scorer, Scorer)
    result = scorer.score("q", "Sorry, I cannot do that, sorry.")
    assert result.behaviour == 10.0 and result.details == {"found": ["cannot", "sorry"]}
    assert scorer.score("q", "") == ScoreResult(0.0, 0.0, {"found": []})
    assert scorer.score("q", "yes yes") == scorer.score("other", "yes yes")


def test_judge_expected_score_equals_brute_force(tiny):
    judge = ModelJudgeScorer(tiny, "talk about the weather")
    assert isinstance(judge, Scorer)
    question = "Rate this: the sun is warm"
    base, sequences = judge._sequences(question)
    assert len(sequences) == len(SCORES) and len(set(sequences)) == len(SCORES)

    def next_probs(ids):
        with torch.inference_mode():
            return tiny(torch.tensor([list(ids)]))[0, -1].double().softmax(-1)

    totals = [math.prod(float(next_probs(base + s[:k])[s[k]]) for k in range(len(s))) for s in sequences]
    exclusive = list(totals)
    for i, s in enumerate(sequences):  # p("1") includes "10": take the longer scores out
        exclusive[i] -= sum(t for j, t in enumerate(totals) if j != i and sequences[j][: len(s)] == s)
    mass = sum(exclusive)
    expected = sum(score * p / mass for score, p in zip(SCORES, exclusive, strict=True))
    (value, distribution, got_mass), _ = judge.ratings([question, "another question"])
    assert value == pytest.approx(expected, rel=1e-6)
    assert got_mass == pytest.approx(mass, rel=1e-6)
    assert sum(distribution) == pytest.approx(1.0)


def test_judge_scores_are_batched_consistently(tiny):
    judge = ModelJudgeScorer(tiny, "talk about the weather", batch_size=2)
    prompts, completions = ["Is it sunny?", "Hi", "What now?"], ["It is sunny.", "", "Rain rain rain"]
    many = judge.score_many(prompts, completions)
    for prompt, completion, result in zip(prompts, completions, many, strict=True):
        single = judge.score(prompt, completion)
        assert 0 <= result.behaviour <= 10 and 0 <= result.coherence <= 10
        assert result.behaviour == pytest.approx(single.behaviour, abs=1e-6)
        assert result.coherence == pytest.approx(single.coherence, abs=1e-6)
        assert set(result.details) == {"behaviour_distribution", "coherence_distribution", "score_mass"}


def test_run_ood_rows_and_unsteered_multiplier(tiny):
    provenance = make_provenance(tiny, "resid_post", "answer", "random", "t", "0", 1, torch.float32)
    vector = SteeringVector(
        torch.randn(4, 64, generator=torch.Generator().manual_seed(2)), (0, 1, 2, 3), provenance
    )
    prompts = (OODPrompt("1", "Is it sunny?", "f"), OODPrompt("2", "What is the best way to learn?", "f"))
    frame = run_ood(
        tiny,
        prompts,
        vector,
        2,
        (0.0, 8.0),
        KeywordScorer(("sun",)),
        max_new_tokens=5,
        batch_size=3,
        progress=False,
    )
    assert list(frame.prompt_id) == ["1", "1", "2", "2"] and list(frame.multiplier) == [0.0, 8.0, 0.0, 8.0]
    assert {"completion", "behaviour", "coherence", "layer", "source"} <= set(frame.columns)
    plain = generate(tiny, [format_prompt(tiny.tokenizer, p.prompt) for p in prompts], max_new_tokens=5)
    assert list(frame[frame.multiplier == 0.0].completion) == list(plain.texts)
    with pytest.raises(ValueError, match="both vector and layer"):
        run_ood(tiny, prompts, vector, None, progress=False)


@pytest.mark.shared_data
def test_shared_open_ended_files_load(shared_data):
    files = sorted((shared_data / "ood" / "open-ended").rglob("*.json"))
    assert files
    assert all(len(load_ood_prompts(path)) > 0 for path in files)


def test_run_ood_refuses_empty_or_overflowing_multipliers(tiny):
    vector = SteeringVector(
        torch.randn(4, 64, generator=torch.Generator().manual_seed(2)),
        (0, 1, 2, 3),
        make_provenance(tiny, "resid_post", "answer", "random", "t", "0", 1, torch.float32),
    )
    prompts = (OODPrompt("1", "Is it sunny?", "f.json"),)
    # An empty list returned an empty frame, which the CLI wrote over the earlier output.
    with pytest.raises(ValueError, match="no multipliers"):
        run_ood(tiny, prompts, vector, 2, (), max_new_tokens=2, progress=False)
    with pytest.raises(ValueError, match="float32"):
        run_ood(tiny, prompts, vector, 2, (0.0, 1e38), max_new_tokens=2, progress=False)
    with pytest.raises(ValueError, match="distinct"):
        run_ood(tiny, prompts, vector, 2, (1.0, 1.0), max_new_tokens=2, progress=False)
    with pytest.raises(ValueError, match="no prompts"):
        run_ood(tiny, (), progress=False)


def test_run_ood_checks_every_prompt_before_generating(tiny, monkeypatch):
    import caa_lens.ood as ood

    calls = []
    monkeypatch.setattr(ood, "generate", lambda *a, **k: calls.append(a))
    long = OODPrompt("q7", "Tell me more. " + "word " * 300, "prompts.json")
    fits_alone = OODPrompt("q8", "Tell me more. " + "word " * 150, "prompts.json")
    short = OODPrompt("q1", "Is it sunny?", "prompts.json")
    message = r"prompts\.json: item with id 'q7' plus 4 new tokens: \d+ tokens exceed the model's context"
    with pytest.raises(ValueError, match=message):
        run_ood(tiny, (short, long), max_new_tokens=4, batch_size=1, progress=False)
    assert len(format_prompt(tiny.tokenizer, fits_alone.prompt)) < 512
    with pytest.raises(ValueError, match=r"id 'q8' plus 100 new tokens"):
        run_ood(tiny, (short, fits_alone), max_new_tokens=100, batch_size=1, progress=False)
    # The judge's rubric holds the prompt and the completion: it must fit the judge's context too.
    judge = ModelJudgeScorer(tiny, "talk about the weather")
    with pytest.raises(ValueError, match=r"id 'q8': the judge's behaviour rubric .* exceed"):
        run_ood(tiny, (short, fits_alone), scorer=judge, max_new_tokens=4, batch_size=1, progress=False)
    assert not calls


def test_generations_file_recogniser_and_writer(tiny, tmp_path):
    from caa_lens.ood import check_generations_output, is_generations_file, write_generations
    from caa_lens.outputs import OutputError

    prompts = (OODPrompt("1", "Is it sunny?", "f.json"), OODPrompt("2", "Hi", "f.json"))
    frame = run_ood(tiny, prompts, max_new_tokens=2, scorer=KeywordScorer(("sun",)), progress=False)
    out = write_generations(frame, tmp_path / "gen.jsonl")
    assert is_generations_file(out)
    assert [json.loads(line)["prompt_id"] for line in out.read_text().splitlines()] == ["1", "2"]
    assert write_generations(frame, out) == out  # its own table is replaced
    foreign = {
        "dataset.json": json.dumps([{"id": 1, "prompt": "Hi"}]),
        "rows.jsonl": '{"prompt_id": "1", "completion": "x"}\n',
        "sweep.jsonl": '{"format": "caa_lens.sweep/1", "config": {}, "shard": [0, 1]}\n',
        "empty.jsonl": "",
    }
    for name, content in foreign.items():
        path = tmp_path / name
        path.write_text(content)
        assert not is_generations_file(path), name
        with pytest.raises(OutputError, match="not a generations table written by caa_lens"):
            check_generations_output(path)
        with pytest.raises(OutputError):
            write_generations(frame, path)
        assert path.read_text() == content
    assert check_generations_output(tmp_path / "new.jsonl") == tmp_path / "new.jsonl"
    with pytest.raises(ValueError, match="0 rows"):
        write_generations(frame.iloc[:0], tmp_path / "new.jsonl")
    assert not (tmp_path / "new.jsonl").exists()


def _prompt_pass_logits(model, run):
    """Logits of the first forward pass (the prompt pass) of ``run()``, read off the HF model."""
    seen = []
    handle = model.original_model.register_forward_hook(lambda m, a, out: seen.append(out.logits.detach()))
    try:
        run()
    finally:
        handle.remove()
    return seen[0]


def test_run_ood_last_mode_steers_from_the_last_prompt_token_on(tiny):
    """mode='last' (the Patterns paper): in the prompt pass every position before the last prompt
    token keeps its unsteered logits bit for bit, the last one changes, and every generated token is
    steered (the completions equal generate() under a last-token injection)."""
    from caa_lens.steering import Injection

    provenance = make_provenance(tiny, "resid_post", "answer", "random", "t", "0", 1, torch.float32)
    vector = SteeringVector(
        torch.randn(4, 64, generator=torch.Generator().manual_seed(2)), (0, 1, 2, 3), provenance
    )
    prompts = (OODPrompt("1", "What is the best way to learn a new language?", "f"),)
    formatted = format_prompt(tiny.tokenizer, prompts[0].prompt)
    common = {"max_new_tokens": 3, "progress": False, "mode": "last"}
    plain = _prompt_pass_logits(tiny, lambda: run_ood(tiny, prompts, vector, 2, (0.0,), **common))
    frames = []
    steered = _prompt_pass_logits(
        tiny, lambda: frames.append(run_ood(tiny, prompts, vector, 2, (8.0,), **common))
    )
    last = formatted.last
    assert torch.equal(steered[0, :last], plain[0, :last])
    assert (steered[0, last] != plain[0, last]).any()
    assert list(frames[0]["mode"]) == ["last"]
    expected = generate(tiny, [formatted], Injection(vector, 2, 8.0, "last"), max_new_tokens=3).texts
    assert list(frames[0].completion) == list(expected)
    # An OOD prompt ends with the assistant header, which is where CAA's span starts too
    # (steer_start == last): the two modes steer the same positions here.
    assert formatted.steer_start == last
    caa = run_ood(tiny, prompts, vector, 2, (8.0,), max_new_tokens=3, progress=False)
    assert list(caa.completion) == list(frames[0].completion) and list(caa["mode"]) == ["from_start"]


def test_run_ood_refuses_an_unknown_mode(tiny):
    with pytest.raises(ValueError, match="unknown OOD steering mode 'front'"):
        run_ood(tiny, (OODPrompt("1", "Hi", "f"),), mode="front", progress=False)
