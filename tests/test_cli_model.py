"""``--model`` on every command of ``caa-lens``: one option (same default, same help), ``tiny`` accepted
by every stage command end to end (small sizes, a test each), and a bad model refused before any work."""

import json
from pathlib import Path

import pandas as pd
import pytest
import typer

from analysis.cli import app, main
from analysis.cli.checks import MODEL_HELP
from caa_lens.models import DEFAULT_MODEL
from caa_lens.sweep_io import load_results

MODEL_COMMANDS = {
    "vectors", "sweep run", "evaluate", "generate", "demo", "analyse", "refusal",
    "actadd weddings", "actadd perplexity", "actadd sentiment",
}  # fmt: skip


def commands(group, prefix: str = "") -> dict:
    """Every leaf command of the app by its full name (``sweep run``)."""
    found: dict = {}
    for name, command in group.commands.items():
        if hasattr(command, "commands"):
            found |= commands(command, f"{prefix}{name} ")
        else:
            found[f"{prefix}{name}"] = command
    return found


def ok(capsys, *args) -> str:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured.out


@pytest.fixture(scope="module")
def vector_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("vector") / "optimism.safetensors"
    assert main(["vectors", "optimism", "--out", str(path), "--model", "tiny", "--limit", "4"]) == 0
    return path


@pytest.fixture()
def prompts(tmp_path) -> Path:
    path = tmp_path / "prompts.json"
    path.write_text(json.dumps([{"id": 1, "prompt": "Is it sunny?"}, {"id": 2, "prompt": "Hi"}]))
    return path


def test_every_model_command_has_the_same_model_option():
    found = commands(typer.main.get_command(app))  # type: ignore[arg-type]
    with_model = {}
    for name, command in found.items():
        for param in command.params:
            if "--model" in getattr(param, "opts", ()):
                with_model[name] = param
    assert set(with_model) == MODEL_COMMANDS
    for name, param in with_model.items():
        assert param.default == DEFAULT_MODEL, name
        assert param.help == MODEL_HELP, name  # type: ignore[attr-defined]
    assert "'tiny'" in MODEL_HELP and DEFAULT_MODEL in MODEL_HELP


def test_a_bad_model_is_refused_by_every_model_command_before_any_work(
    tmp_path, capsys, vector_file, prompts
):
    bad = tmp_path / "weights.bin"
    bad.write_text("not a model")
    out = tmp_path / "out"
    arguments = {
        "vectors": ["vectors", "optimism", "--out", out / "v.safetensors"],
        "sweep run": [
            "sweep",
            "run",
            "optimism:test",
            "--vector",
            vector_file,
            "--layers",
            "1",
            "--out",
            out,
        ],
        "evaluate": ["evaluate", "optimism:test"],
        "generate": ["generate", prompts, "--out", out],
        "demo": ["demo", "--out", out],
        "analyse": ["analyse", "--dataset", "x=optimism,optimism:test", "--out", out],
        "refusal": ["refusal", "--train", "refusal", "--test", "refusal:test", "--out", out],
        "actadd weddings": ["actadd", "weddings", "--out", out],
        "actadd perplexity": ["actadd", "perplexity", "--out", out],
        "actadd sentiment": ["actadd", "sentiment", "--out", out],
    }
    assert set(arguments) == MODEL_COMMANDS
    for name, args in arguments.items():
        assert main([str(a) for a in [*args, "--model", bad]]) == 2, name
        err = capsys.readouterr().err
        assert err.startswith("caa-lens: error: --model") and len(err.strip().splitlines()) == 1, (name, err)
        assert not out.exists(), name


def test_vectors_on_the_tiny_model(tmp_path, capsys):
    out = ok(
        capsys, "vectors", "optimism", "--out", tmp_path / "v.safetensors", "--model", "tiny", "--limit", "4"
    )
    assert "4 layers, 4 pairs" in out and (tmp_path / "v.safetensors.json").is_file()


def test_sweep_run_merge_and_summary_on_the_tiny_model(tmp_path, capsys, vector_file):
    common = ["optimism:test", "--vector", vector_file, "--layers", "0,3", "--multipliers=0,2"]
    for shard in ("0/2", "1/2"):
        path = tmp_path / f"s{shard[0]}.jsonl"
        ok(
            capsys,
            "sweep",
            "run",
            *common,
            "--out",
            path,
            "--shard",
            shard,
            "--model",
            "tiny",
            "--limit",
            "2",
        )
    merged = tmp_path / "merged.jsonl"
    ok(capsys, "sweep", "merge", tmp_path / "s0.jsonl", tmp_path / "s1.jsonl", "--out", merged)
    assert set(load_results(merged).layer) == {0, 3}  # the tiny model's first and last layer
    ok(capsys, "sweep", "summary", merged, "--csv", tmp_path / "summary.csv")
    assert set(pd.read_csv(tmp_path / "summary.csv").layer) == {0, 3}


def test_evaluate_on_the_tiny_model(tmp_path, capsys, vector_file):
    steer = ["--vector", vector_file, "--layer", "3", "--multiplier", "2"]
    assert "mean p(matching)" in ok(capsys, "evaluate", "optimism:test", "--model", "tiny", *steer)
    text = tmp_path / "text.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 3)
    assert "perplexity" in ok(capsys, "evaluate", "--text", text, "--model", "tiny", *steer)


def test_generate_on_the_tiny_model(tmp_path, capsys, vector_file, prompts):
    args = [
        "--model",
        "tiny",
        "--vector",
        vector_file,
        "--layer",
        "3",
        "--multipliers=0,4",
        "--max-new-tokens",
        "3",
    ]
    ok(capsys, "generate", prompts, "--out", tmp_path / "g.jsonl", *args)
    assert len((tmp_path / "g.jsonl").read_text().splitlines()) == 4
    out = ok(capsys, "generate", prompts, "--out", tmp_path / "s.jsonl", *args, "--score", "degeneracy")
    assert "repeated_ngrams" in out and "4 completions" in out


def test_layers_beyond_the_tiny_model_are_refused_before_loading(tmp_path, capsys, vector_file):
    code = main(
        ["vectors", "optimism", "--out", str(tmp_path / "v.safetensors"), "--model", "tiny", "--layers", "4"]
    )
    assert code == 2 and "layers [4] do not exist; the model has layers 0..3" in capsys.readouterr().err
    assert main(["demo", "--model", "tiny", "--focus-layer", "4", "--out", str(tmp_path / "d")]) == 2
    assert "--focus-layer 4 does not exist" in capsys.readouterr().err
