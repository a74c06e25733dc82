"""The refusal study (``analysis.jobs.refusal``, ``caa-lens refusal``) end to end on the tiny model with the
bundled refusal set: every stage, its tables, summary and manifest, a rerun that skips them, and the
argument checks that run before the model loads."""

import json

import pandas as pd
import pytest

from analysis.cli import main
from analysis.jobs.refusal import REFUSAL_STAGES
from caa_lens.hooks import layer_at_depth

TINY = ["--model", "tiny", "--train", "refusal", "--test", "refusal:test"]


@pytest.fixture(scope="module")
def refusal_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("refusal") / "run"
    assert main(["refusal", *TINY, "--out", str(out), "--reversal-budget", "5"]) == 0
    return out


def test_layers_are_the_default_models_at_its_depth():
    assert [layer_at_depth(layer, 30) for layer in (4, 6, 12, 20, 24)] == [4, 6, 12, 20, 24]
    assert [layer_at_depth(layer, 4) for layer in (4, 6, 12, 20, 24)] == [1, 1, 2, 3, 3]
    assert layer_at_depth(29, 1) == 0


@pytest.mark.slow
def test_refusal_job_on_the_tiny_model_writes_every_stage(refusal_dir, capsys):
    assert sorted(p.stem for p in (refusal_dir / "stages").glob("*.done")) == sorted(REFUSAL_STAGES)
    assert not list((refusal_dir / "stages").glob("*.partial"))  # extraction checkpoints removed when done
    # The A/B sweep: both vectors, the controls as their null band, the letter split.
    effects = pd.read_csv(refusal_dir / "ab_sweep" / "effects.csv")
    assert set(effects.vector) == {"refusal", "refusal_balanced"} and set(effects.layer) == {1, 2, 3}
    assert {"null_low", "null_high", "vs_null"} <= set(effects)
    letters = pd.read_csv(refusal_dir / "ab_sweep" / "letters.csv")
    assert {"behaviour", "letter", "behaviour_vs_null", "letter_vs_null"} <= set(letters)
    assert (refusal_dir / "ab_sweep" / "vector_balanced.safetensors").is_file()
    # The analyses, with layers of the tiny model only.
    summary = json.loads((refusal_dir / "summary.json").read_text())
    assert summary["sweep"]["chosen_layer"] == 2  # the only candidate (0, 2) within layers 1..3
    for key in ("letters_decomposition", "similarity", "norms", "separability", "scaling", "ratio"):
        assert key in summary
    assert summary["reversal"]["layer"] == 2
    decomposition = pd.read_csv(refusal_dir / "letter_decomposition.csv")
    assert {"cos_behaviour_if_generate_all", "cos_behaviour_if_first_12"} <= set(decomposition)
    sweep = pd.read_csv(refusal_dir / "layer_multiplier_sweep.csv")
    assert set(sweep.layer) == {0, 2}
    interference = pd.read_csv(refusal_dir / "interference.csv")
    assert len(interference)
    for figure in ("layer_similarity", "norm_profile", "pca_grid", "layer_transfer", "interference"):
        assert (refusal_dir / "figures" / f"{figure}.png").is_file()
    manifest = json.loads((refusal_dir / "manifest.json").read_text())
    assert manifest["model"] == "caa-lens-tiny-llama" and manifest["layer"] == 2
    assert set(manifest["datasets"]) == {"refusal", "optimism", "formality", "sycophancy"}
    assert manifest["config"]["train"] == "refusal" and "caa-lens" in manifest["versions"]


@pytest.mark.slow
def test_rerun_skips_every_stage(refusal_dir, capsys):
    assert main(["refusal", *TINY, "--out", str(refusal_dir)]) == 0
    out = capsys.readouterr().out
    assert out.count("already done, skipping") == len(REFUSAL_STAGES)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "tiny"], "give --train and --test"),
        (["--model", "tiny", "--train", "refusal"], "give both --train and --test"),
        ([*TINY, "--stages", "sweep,nonsense"], "unknown stages ['nonsense']"),
        ([*TINY, "--layer", "4"], "--layer: layers [4] do not exist"),
        ([*TINY, "--sweep-layers", "1,9"], "--sweep-layers: layers [9] do not exist"),
        ([*TINY, "--other", "x=nope.json,nope.json"], "--other x"),
        (["--model", "tiny", "--train", "nope.json", "--test", "refusal:test"], "--train"),
        ([*TINY, "--n-pairs", "0"], "--n-pairs must be a positive integer"),
        (
            ["--model", "tiny", "--shared-data", "/no/such/dir"],
            "--shared-data /no/such/dir is not a directory",
        ),
    ],
)
def test_bad_arguments_fail_before_the_model_loads(tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.delenv("CAA_LENS_SHARED_DATA", raising=False)
    assert main(["refusal", *args, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_a_users_directory_is_refused(tmp_path, capsys):
    (tmp_path / "mine.txt").write_text("mine")
    assert main(["refusal", *TINY, "--out", str(tmp_path)]) == 2
    assert "did not write" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["mine.txt"]
