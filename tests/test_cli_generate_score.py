"""``caa-lens generate --score``: scored open-ended completions with paired effects, intervals and a
null; every bad argument is one line with exit code 2 before the model loads; files never clobbered."""

import json
from pathlib import Path

import pandas as pd
import pytest

from analysis.cli import main
from caa_lens.open_ended import EFFECT_COLUMNS, is_effects_csv


@pytest.fixture(scope="module")
def vector_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("vector") / "optimism.safetensors"
    assert main(["vectors", "optimism", "--out", str(path), "--model", "tiny", "--limit", "4"]) == 0
    return path


@pytest.fixture
def prompts(tmp_path) -> Path:
    path = tmp_path / "prompts.json"
    items = [{"id": f"q{i}", "prompt": f"Tell me about day {i} of the trip."} for i in range(5)]
    path.write_text(json.dumps(items))
    return path


def run(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_scored_generations_write_the_table_and_the_effects(tmp_path, capsys, vector_file, prompts):
    out, effects = tmp_path / "g.jsonl", tmp_path / "effects.csv"
    args = ["generate", prompts, "--out", out, "--vector", vector_file, "--layer", "1", "--multipliers", "4"]
    args += ["--score", "refusal,sentiment,degeneracy,fluency", "--controls", "2", "--effects", effects]
    code, printed, err = run(capsys, *args, "--model", "tiny", "--max-new-tokens", "4")
    assert code == 0, err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 5 * 2 * 3  # prompts x multipliers (0 and 4) x (vector + 2 controls)
    assert {"refusal", "sentiment", "positive", "degenerate", "completion_nll"} <= set(rows[0])
    table = pd.read_csv(effects)
    assert tuple(table.columns) == EFFECT_COLUMNS and is_effects_csv(effects)
    assert set(table.metric) == {
        "refusal",
        "sentiment",
        "positive",
        "repeated_ngrams",
        "degenerate",
        "completion_nll",
    }
    assert (table.n_prompts == 5).all() and (table.n_null == 2).all()
    assert "vs_null" in printed
    # A rerun replaces the package's own files.
    code, _, err = run(capsys, *args, "--model", "tiny", "--max-new-tokens", "4")
    assert code == 0, err


def test_without_controls_the_output_says_there_is_no_null(tmp_path, capsys, vector_file, prompts):
    args = ["generate", prompts, "--out", tmp_path / "g.jsonl", "--vector", vector_file, "--layer", "1"]
    code, printed, err = run(capsys, *args, "--multipliers", "2", "--score", "refusal", "--model", "tiny",
                             "--max-new-tokens", "3")  # fmt: skip
    assert code == 0, err
    assert "no null band" in printed


@pytest.fixture
def no_model_load(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr("caa_lens.models.load_model", forbidden)
    monkeypatch.setattr("caa_lens.tiny.tiny_model", forbidden)


def test_bad_arguments_are_one_line_before_the_model_loads(
    tmp_path, capsys, vector_file, prompts, no_model_load
):
    users_csv = tmp_path / "mine.csv"
    users_csv.write_text("my,own,numbers\n1,2,3\n")
    base = ["generate", prompts, "--out", tmp_path / "g.jsonl", "--model", "tiny"]
    steer = ["--vector", vector_file, "--layer", "1", "--multipliers", "4"]
    cases = [
        ([*base, *steer, "--score", "refusal,loudness"], "unknown scorer"),
        ([*base, "--score", "refusal", "--multipliers", "4"], "give a --vector"),
        ([*base, *steer[:4], "--multipliers", "0", "--score", "refusal"], "other than 0"),
        ([*base, *steer, "--score", "refusal", "--judge", "be kind"], "one at a time"),
        ([*base, *steer, "--score", "refusal", "--controls=-1"], "--controls"),
        ([*base, *steer, "--score", "refusal", "--mode", "sideways"], "--mode"),
        ([*base, *steer, "--controls", "2"], "need --score"),
        ([*base, *steer, "--score", "refusal", "--effects", users_csv], "mine.csv"),
    ]
    for args, phrase in cases:
        code, _, err = run(capsys, *args)
        lines = err.strip().splitlines()
        assert code == 2, (args, err)
        assert len(lines) == 1 and phrase in lines[0], (args, lines)
    assert users_csv.read_text() == "my,own,numbers\n1,2,3\n"
