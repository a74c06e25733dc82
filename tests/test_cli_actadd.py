"""The ``caa-lens actadd`` commands on the tiny model: each experiment runs in quick form and prints its
figure; bad arguments are one-line errors before any model loads; a foreign output directory and
incomplete shared data are refused."""

import pytest
from helpers.actadd import no_shared_env  # noqa: F401  (autouse: the bundled fallbacks, no shared data)

from analysis.cli import main


def run_cli(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("experiment", ["weddings", "perplexity", "sentiment"])
def test_cli_quick_runs(experiment, tmp_path, capsys):
    code, out, err = run_cli(
        capsys, "actadd", experiment, "--out", tmp_path / "o", "--model", "tiny", "--quick"
    )
    assert code == 0, err
    assert str(tmp_path / "o" / f"{experiment}.png") in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["weddings", "--layers", "7"], "--layers: layers [7] do not exist"),
        (["weddings", "--layers", "1,x"], "not a layer index"),
        (["weddings", "--coefficients", "0"], "at least one non-zero coefficient"),
        (["weddings", "--coefficients", "1,nan"], "not a finite number"),
        (["sentiment", "--controls-at", "nowhere"], "--controls-at must be one of"),
        (["sentiment", "--controls", "-1"], "--controls must be >= 0"),
        (["sentiment", "--max-new-tokens", "0"], "--max-new-tokens must be >= 1"),
        (["perplexity", "--layer", "9"], "--layer: layers [9] do not exist"),
        (["perplexity", "--shared-data", "/no/such/dir"], "is not a directory"),
        (["perplexity", "--max-sentences", "-2"], "--max-sentences must be >= 0"),
        (["weddings", "--model", "./no/such/model"], "--model:"),
        (["nothing"], "No such command"),
    ],
)
def test_cli_bad_arguments_are_one_line_errors(args, message, tmp_path, capsys, monkeypatch):
    import caa_lens.models

    def refuse(*a, **k):
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr(caa_lens.models, "load_model", refuse)
    monkeypatch.setattr("caa_lens.tiny.tiny_model", refuse)
    extra = [] if "--model" in args else ["--model", "tiny"]
    code, _, err = run_cli(capsys, "actadd", *args, "--out", tmp_path / "o", *extra)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("caa-lens: error:") and message in err, err


def test_cli_refuses_foreign_out_and_incomplete_shared_data(tmp_path, capsys):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    code, _, err = run_cli(capsys, "actadd", "sentiment", "--out", foreign, "--model", "tiny")
    assert code == 2 and "refusing to write" in err and err.count("\n") == 1
    empty = tmp_path / "shared"
    empty.mkdir()
    for experiment, what in (("perplexity", "four ActAdd texts"), ("sentiment", "sst2")):
        args = ("actadd", experiment, "--out", tmp_path / "o", "--model", "tiny", "--shared-data", empty)
        code, _, err = run_cli(capsys, *args)
        assert code == 2 and what in err, err
