"""The ``caa-lens`` command line: every stage end to end on the tiny model, argument parsing, one-line
errors with exit codes (2 before any work, 1 for a failed run), and checks that run before the model loads."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from analysis.cli import main
from caa_lens.sweep_io import load_results


def run_cli(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def ok(capsys, *args) -> str:
    code, out, err = run_cli(capsys, *args)
    assert code == 0, err
    return out


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """The tiny model saved as an ordinary checkpoint directory (the path form of --model)."""
    from caa_lens.tiny import tiny_hf_model

    hf_model, tokenizer = tiny_hf_model()
    directory = tmp_path_factory.mktemp("model")
    hf_model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def vector_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("vector") / "optimism.safetensors"
    assert main(["vectors", "optimism", "--out", str(path), "--model", "tiny", "--limit", "4"]) == 0
    return path


def test_sweep_shards_merge_summary_evaluate_generate(tmp_path, capsys, model_dir):
    vector = tmp_path / "optimism.safetensors"
    ok(capsys, "vectors", "optimism", "--out", vector, "--model", model_dir, "--limit", "4")
    common = ["--vector", vector, "--layers", "1,3", "--multipliers=-2,0,2", "--model", model_dir]
    for shard in ("0/2", "1/2"):
        out = tmp_path / f"s{shard[0]}.jsonl"
        ok(capsys, "sweep", "run", "optimism:test", "--out", out, "--shard", shard, *common, "--limit", "3")
    merged = tmp_path / "merged.jsonl"
    # 3 items x 2 layers x 3 multipliers x (the vector + 3 random controls, on by default)
    assert "72 rows from 2 files" in ok(
        capsys, "sweep", "merge", tmp_path / "s0.jsonl", tmp_path / "s1.jsonl", "--out", merged
    )
    output = ok(capsys, "sweep", "summary", merged, "--csv", tmp_path / "summary.csv")
    summary = pd.read_csv(tmp_path / "summary.csv")
    assert len(summary) == 6 and set(summary.vector) == {"optimism"}  # the controls are its null band
    assert (summary.n_null == 3).all() and set(summary.vs_null) <= {"above null", "below null", "inside null"}
    assert "optimism" in output and "null band" in output and "no random controls" not in output
    # Rerunning the summary replaces its own CSV.
    ok(capsys, "sweep", "summary", merged, "--csv", tmp_path / "summary.csv")
    steer = ["--vector", vector, "--layer", "1", "--multiplier", "2"]
    assert "mean p(matching)" in ok(capsys, "evaluate", "optimism:test", "--model", model_dir, *steer)
    text = tmp_path / "text.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 3)
    assert "perplexity" in ok(capsys, "evaluate", "--text", text, "--model", model_dir)
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps([{"id": 1, "prompt": "Is it sunny?"}, {"id": 2, "prompt": "Hi"}]))
    out = tmp_path / "generations.jsonl"
    args = ["--out", out, "--model", model_dir, "--vector", vector, "--layer", "2", "--multipliers=0,4"]
    ok(capsys, "generate", prompts, *args, "--max-new-tokens", "3", "--judge", "be optimistic")
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 4 and {"completion", "behaviour", "coherence"} <= set(rows[0])
    ok(capsys, "generate", prompts, *args, "--max-new-tokens", "3")  # replaces its own table


def test_every_stage_command_takes_the_tiny_model_by_name(tmp_path, capsys, vector_file):
    out = tmp_path / "sweep.jsonl"
    ok(
        capsys,
        "sweep",
        "run",
        "optimism:test",
        "--vector",
        vector_file,
        "--out",
        out,
        "--layers",
        "1",
        "--multipliers=0,2",
        "--model",
        "tiny",
        "--limit",
        "2",
    )
    assert len(load_results(out)) == 4 * 4  # the vector and its 3 random controls
    ok(capsys, "evaluate", "optimism:test", "--model", "tiny", "--batch-size", "4")


def test_sweep_run_has_controls_on_by_default_and_prints_the_effects(tmp_path, capsys, vector_file):
    common = ["optimism:test", "--vector", vector_file, "--layers", "1", "--model", "tiny", "--limit", "4"]
    out = ok(capsys, "sweep", "run", *common, "--out", tmp_path / "c.jsonl", "--multipliers=-2,2")
    assert set(load_results(tmp_path / "c.jsonl").vector) == {
        "optimism",
        *(f"random:optimism:{seed}" for seed in range(3)),
    }
    assert "3 random controls per vector" in out and "effect [95% CI]" in out and "null band" in out
    assert "optimism: " in out.splitlines()[-1]  # the verdict line
    assert "no random controls" not in out
    code, _, err = run_cli(capsys, "sweep", "run", *common, "--out", tmp_path / "z.jsonl", "--multipliers=2")
    assert code == 0 and "multiplier 0 added" in err  # effects are paired against it: said, not silent
    out = ok(capsys, "sweep", "run", *common, "--out", tmp_path / "n.jsonl", "--controls", "0")
    assert set(load_results(tmp_path / "n.jsonl").vector) == {"optimism"}
    assert "no random controls" in out and "no controls" in out
    # Resuming with another control setting is refused before anything is computed.
    code, _, err = run_cli(capsys, "sweep", "run", *common, "--out", tmp_path / "n.jsonl")
    assert code == 1 and "controls" in err
    summary = ok(capsys, "sweep", "summary", tmp_path / "n.jsonl", "--csv", tmp_path / "n.csv")
    assert "no random controls" in summary and set(pd.read_csv(tmp_path / "n.csv").vs_null) == {"no controls"}


def test_sweep_run_refuses_bad_controls_before_loading(tmp_path, capsys, vector_file):
    common = ["optimism:test", "--layers", "1", "--model", "tiny", "--out", tmp_path / "s.jsonl"]
    code, _, err = run_cli(capsys, "sweep", "run", *common, "--vector", vector_file, "--controls", "-1")
    assert code == 2 and "--controls" in err
    reserved = tmp_path / "random.safetensors"
    reserved.write_bytes(vector_file.read_bytes())
    code, _, err = run_cli(capsys, "sweep", "run", *common, "--vector", reserved)
    assert code == 2 and "random controls" in err
    assert not (tmp_path / "s.jsonl").exists()


@pytest.fixture
def no_model_load(monkeypatch):
    """Make any model load fail loudly: a check that runs first must not reach it."""

    def forbidden(*args, **kwargs):
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr("caa_lens.models.load_model", forbidden)
    monkeypatch.setattr("caa_lens.tiny.tiny_model", forbidden)


def _bad_invocations(tmp_path: Path, vector: Path) -> list[tuple[list, str]]:
    """(arguments, a phrase the one-line error must contain): each is wrong before any model work."""
    readonly = tmp_path / "readonly"
    readonly.mkdir(exist_ok=True)
    readonly.chmod(0o555)
    a_file = tmp_path / "a_file.txt"
    a_file.write_text("notes\n")
    sweep = ["sweep", "run", "optimism:test", "--vector", vector, "--model", "tiny"]
    return [
        (["vectors", "optimism", "--out", tmp_path / "v.safetensors", "--layers", "12,,14"], "empty entry"),
        (
            ["vectors", "optimism", "--out", tmp_path / "v.safetensors", "--layers", "99", "--model", "tiny"],
            "do not exist",
        ),
        (["vectors", "optimism", "--out", tmp_path / "v.safetensors", "--batch-size=-3"], "--batch-size"),
        (["vectors", "optimism", "--out", tmp_path / "v.safetensors", "--batch-size", "0"], "--batch-size"),
        (["vectors", "optimism", "--out", tmp_path], "directory"),
        (["vectors", "optimism", "--out", a_file / "v.safetensors"], "not a directory"),
        (["vectors", tmp_path / "missing.json", "--out", tmp_path / "v.safetensors"], "does not exist"),
        (["vectors", "optimism", "--out", tmp_path / "v.safetensors", "--site", "resid_side"], "--site"),
        ([*sweep, "--out", tmp_path / "s.jsonl", "--layers", "1", "--multipliers", ""], "is empty"),
        ([*sweep, "--out", tmp_path / "s.jsonl", "--layers", "1", "--multipliers=1e300"], "multipl"),
        ([*sweep, "--out", tmp_path / "s.jsonl", "--layers", "1,1"], "repeats"),
        ([*sweep, "--out", tmp_path / "s.jsonl", "--layers", "7"], "layer"),
        ([*sweep, "--out", tmp_path / "s.jsonl", "--layers", "1", "--shard", "3/2"], "shard"),
        ([*sweep, "--out", a_file, "--layers", "1"], "not a"),
        (
            ["generate", tmp_path / "nope.json", "--out", tmp_path / "g.jsonl", "--model", "tiny"],
            "does not exist",
        ),
        (["evaluate", "optimism:test", "--text", a_file, "--model", "tiny"], "not both"),
        (["evaluate", "optimism:test", "--layer=-1", "--model", "tiny"], "--layer"),
        (["sweep", "summary", tmp_path / "missing.jsonl"], "does not exist"),
        (["figures", tmp_path], "not a results directory"),
        (["demo", "--out", tmp_path, "--model", "tiny", "--quick"], "did not write"),
        (["demo", "--model", "tiny", "--focus-layer=-1", "--out", tmp_path / "d"], "--focus-layer"),
        (["analyse", "--dataset", "x=optimism", "--model", "tiny"], "NAME=TRAIN,TEST"),
        (["vectors", "optimism", "--out", tmp_path / "v.safetensors", "--bogus"], "bogus"),
    ] + (
        # root may write anywhere, so a read-only directory is only an error for other users
        [(["vectors", "optimism", "--out", readonly / "v.safetensors"], "not writable")]
        if os.geteuid() != 0
        else []
    )


def test_bad_arguments_fail_in_one_line_with_code_2_before_the_model_loads(
    tmp_path, capsys, no_model_load, vector_file
):
    """Findings 13 and 14: every check runs before the model loads; the user sees one line, exit 2."""
    for args, phrase in _bad_invocations(tmp_path, vector_file):
        code, _, err = run_cli(capsys, *args)
        lines = err.strip().splitlines()
        assert code == 2, (args, err)
        assert len(lines) == 1 and lines[0].startswith("caa-lens: error: "), (args, err)
        assert phrase in lines[0], (args, phrase, lines[0])
        assert "Traceback" not in err


def test_debug_shows_the_traceback(tmp_path, capsys):
    code, _, err = run_cli(capsys, "--debug", "vectors", tmp_path / "missing.json", "--out", tmp_path / "v")
    assert code == 2 and "Traceback" in err


def test_a_failed_run_exits_1_in_one_line(tmp_path, capsys, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("the bridge did not fill the KV cache\nsecond line")

    monkeypatch.setattr("caa_lens.methods.caa_vector", broken)
    code, _, err = run_cli(capsys, "vectors", "optimism", "--out", tmp_path / "v", "--model", "tiny")
    assert code == 1
    assert err.strip().splitlines() == [
        "caa-lens: error: the bridge did not fill the KV cache second line (RuntimeError; --debug shows "
        "the traceback)"
    ]
    assert not list(tmp_path.iterdir())  # nothing written, not even a partial vector


def test_unknown_model_offline_fails_in_seconds_with_what_to_do(tmp_path):
    """Finding 14: an unknown name offline waited ~31 s and printed a 227-line OSError."""
    env = os.environ | {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "OMP_NUM_THREADS": "1"}
    started = time.perf_counter()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "analysis.cli",
            "vectors",
            "optimism",
            "--out",
            str(tmp_path / "v"),
            "--model",
            "someone/no-such-model-xyz",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    seconds = time.perf_counter() - started
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1 and "someone/no-such-model-xyz" in lines[0], done.stderr
    assert "checkpoint" in lines[0] or "cache" in lines[0]  # says how to make the weights available
    assert seconds < 30  # the import of torch and transformers dominates; the hub is never waited on
    assert not (tmp_path / "v.safetensors").exists()


def test_help_and_no_arguments(capsys):
    code, out, _ = run_cli(capsys)
    assert code == 0 and "vectors" in out and "--debug" in out
    code, out, _ = run_cli(capsys, "sweep", "run", "--help")
    assert code == 0 and "--multipliers" in out


@pytest.mark.shared_data
def test_stage_commands_run_on_shared_caa_and_mwe_files(tmp_path, capsys, shared_data):
    """The stage commands take the shared files as they are: a CAA A/B JSON and an MWE Yes/No JSONL."""
    caa = shared_data / "caa"
    vector = tmp_path / "refusal.safetensors"
    generate = caa / "generate/refusal/generate_dataset.json"
    ok(capsys, "vectors", generate, "--out", vector, "--model", "tiny", "--limit", "4")
    mwe = sorted((shared_data / "mwe" / "persona").glob("*.jsonl"))[0]
    for name, dataset in (("caa", caa / "test/refusal/test_dataset_ab.json"), ("mwe", mwe)):
        out = tmp_path / f"{name}.jsonl"
        options = ["--vector", vector, "--layers", "1,2", "--multipliers=-2,0,2", "--model", "tiny"]
        ok(capsys, "sweep", "run", dataset, "--out", out, *options, "--limit", "3")
        table = load_results(out)
        assert len(table) == 3 * 2 * 3 * 4  # the vector and its 3 random controls
        assert table.p_matching.between(0, 1).all()
        labels = set(table.matching_label) if "matching_label" in table else set()
        assert labels <= ({"A", "B"} if name == "caa" else {"Yes", "No"})
