"""The main job (``analysis.jobs.main``) end to end on the tiny model (4 layers, where the default model has
30): ``caa-lens demo --model tiny`` without ``--quick`` (the layers derived from the model's depth), a rerun
that skips every stage, then figures redrawn from its files alone."""

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from analysis.cli import app, main
from analysis.jobs.main import DemoConfig


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    # No --quick and no --focus-layer: the tiny model's sizes and its picked layer, nothing assumed.
    result = CliRunner().invoke(app, ["demo", "--model", "tiny", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


def test_layer_defaults_are_the_default_models_at_30_layers_and_fit_any_depth():
    config = DemoConfig().for_model(30)
    assert config.sweep_layers == (4, 8, 12, 16, 20, 24)
    assert config.transfer_layers == (3, 6, 9, 12, 15, 18, 21, 24)
    assert config.behaviour_layers == (8, 12, 16)
    for n_layers in (1, 2, 4, 12, 48):
        derived = DemoConfig().for_model(n_layers)
        for layers in (derived.sweep_layers, derived.transfer_layers, derived.behaviour_layers):
            assert layers and all(0 <= layer < n_layers for layer in layers)
    assert DemoConfig(sweep_layers=(1,)).for_model(30).sweep_layers == (1,)  # given layers are kept


@pytest.mark.slow
def test_demo_writes_report_manifest_and_every_figure(demo_dir):
    report = (demo_dir / "report.md").read_text()
    manifest = json.loads((demo_dir / "manifest.json").read_text())
    assert manifest["model"] == "caa-lens-tiny-llama"
    assert set(manifest["datasets"]) == {"optimism", "formality", "sycophancy", "refusal"}
    assert all(len(d["train_hash"]) == 16 for d in manifest["datasets"].values())
    figures = sorted(p.name for p in (demo_dir / "figures").glob("*.png"))
    for expected in (
        "sweep_layers.png",
        "sweep_multipliers.png",
        "interference.png",
        "reversal.png",
        "sample_size.png",
        "ratio_tradeoff.png",
        "layer_transfer.png",
        "token_view.png",
    ):
        assert expected in figures
        assert f"figures/{expected}" in report
    assert (demo_dir / "token_view.html").read_text().count("<script") >= 1
    for behaviour in ("optimism", "formality", "sycophancy", "refusal"):
        assert (demo_dir / "vectors" / f"{behaviour}.safetensors").exists()
    # Findings the report once dropped or stated without an interval and a null.
    assert report.count("behaviour separability peaks at layer") == 4
    assert "95% bootstrap interval" in report and "random vectors of the same norm give" in report
    # Selection apart from report: the split and the pick are recorded, and the splits are disjoint.
    selection = manifest["selection"]
    assert set(selection["splits"]) == {"optimism", "formality", "sycophancy", "refusal"}
    assert selection["focus_layer"] == manifest["focus_layer"]
    effects = pd.read_csv(demo_dir / "sweep_effects.csv")
    assert (effects["split"] == "report").all() and effects["n_items"].max() == 3  # half of the 6 items
    assert {"effect_low", "effect_high", "null_low", "null_high", "vs_null", "letter_pattern"} <= set(effects)
    # The headline: every bundled behaviour (and the weddings topic) read off open-ended completions,
    # with its interval, null band, fluency cost and verdict, and the figure of it.
    headline = pd.read_csv(demo_dir / "behaviour_headline.csv")
    assert set(headline.behaviour) == {"optimism", "formality", "sycophancy", "refusal", "weddings"}
    assert {"effect_low", "effect_high", "null_low", "null_high", "fluency_cost", "verdict"} <= set(headline)
    assert report.index("## Headline") < report.index("## The CAA paper's A/B metric")
    assert "figures/behaviours.png" in report
    # ActAdd's three experiments in short form, with their tables and figures.
    assert "## ActAdd's quantitative experiments (short form)" in report
    for table in ("weddings_effects.csv", "perplexity_ratios.csv", "sentiment_effects.csv"):
        assert (demo_dir / "actadd" / table).is_file()
    assert "Perplexity of each text steered / unsteered" in report


@pytest.mark.slow
def test_rerun_skips_finished_stages(demo_dir):
    # --quick is what --model tiny implies: the same run, so every stage is already done.
    result = CliRunner().invoke(app, ["demo", "--model", "tiny", "--quick", "--out", str(demo_dir)])
    assert result.exit_code == 0, result.output
    assert result.output.count("already done, skipping") >= 8
    assert "[sweep] ..." not in result.output


@pytest.mark.slow
def test_figures_redrawn_from_saved_results(demo_dir, tmp_path, capsys):
    result = CliRunner().invoke(
        app, ["figures", str(demo_dir), "--out", str(tmp_path), "--kind", "sweep", "--kind", "pca"]
    )
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.glob("*.png")) == sorted(
        [
            "sweep_layers.png",
            "sweep_multipliers.png",
            "pca-formality.png",
            "pca-optimism.png",
            "pca-refusal.png",
            "pca-sycophancy.png",
        ]
    )
    assert main(["figures", str(demo_dir), "--kind", "nonsense"]) == 2
    assert "caa-lens: error: --kind nonsense: unknown figure type" in capsys.readouterr().err
