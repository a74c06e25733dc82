"""analysis.jobs.report: the main job's report sentences and tables, formatted from small synthetic frames
(intervals, null bands, n, the "inside the null" verdict), and report.md written from a saved results
directory."""

import json
from dataclasses import replace

import pandas as pd
import pytest

from analysis.jobs.report import _intervals, _null_bands, _table, behaviour_headline, effects_headline


def effect_row(vector, layer, multiplier, effect, low, high, null, vs_null, letters, n=3, p=0.5):
    return {
        "vector": vector,
        "layer": layer,
        "multiplier": multiplier,
        "n_items": n,
        "p_matching": p,
        "effect": effect,
        "effect_low": low,
        "effect_high": high,
        "null_low": -null,
        "null_high": null,
        "vs_null": vs_null,
        "letter_pattern": letters,
    }


@pytest.fixture
def effects() -> pd.DataFrame:
    return pd.DataFrame(
        [
            effect_row("optimism", 2, -4.0, -0.1, -0.2, -0.05, 0.05, "below null", "same direction"),
            effect_row("optimism", 2, 0.0, 0.0, 0.0, 0.0, 0.05, "inside null", "no movement"),
            effect_row(
                "optimism", 2, 4.0, 0.123, 0.010, 0.200, 0.05, "above null", "same direction", p=0.625
            ),
            effect_row("refusal", 2, 4.0, 0.02, -0.03, 0.07, 0.04, "inside null", "opposite directions", n=7),
            effect_row("refusal", 2, 2.0, 0.01, -0.01, 0.03, 0.04, "inside null", "mixed", n=7),
            effect_row("optimism", 1, 4.0, 0.9, 0.8, 0.95, 0.05, "above null", "same direction"),
        ]
    )


def test_intervals_and_null_bands_are_signed_to_three_decimals():
    table = pd.DataFrame(
        {
            "effect": [0.123, -0.5],
            "effect_low": [0.010, -0.75],
            "effect_high": [0.200, -0.0004],
            "null_low": [-0.05, -0.1],
            "null_high": [0.05, 0.1234],
        }
    )
    assert _intervals(table, "effect") == ["+0.123 [+0.010, +0.200]", "-0.500 [-0.750, -0.000]"]
    assert _null_bands(table) == ["[-0.050, +0.050]", "[-0.100, +0.123]"]
    ratios = pd.DataFrame(
        {"ratio": [1.2345], "ratio_low": [1.1], "ratio_high": [1.4], "null_low": [0.9], "null_high": [1.05]}
    )
    assert _intervals(ratios, "ratio", sign="") == ["1.234 [1.100, 1.400]"]  # ratios: no sign
    assert _null_bands(ratios, sign="") == ["[0.900, 1.050]"]


def test_table_is_markdown_with_escaped_cells():
    frame = pd.DataFrame({"name": ["a|b", "two\nlines"], "value": [0.12345, 3.0], "n": [1, 20]})
    assert (
        _table(frame)
        == "| name | value | n |\n|---|---|---|\n| a\\|b | 0.123 | 1 |\n| two lines | 3.000 | 20 |"
    )
    assert _table(frame, digits=1).splitlines()[2] == "| a\\|b | 0.1 | 1 |"


def test_effects_headline_sentences(effects):
    _, sentences = effects_headline(effects, layer=2)
    assert sentences == [
        "- optimism, m=+4 at layer 2: effect on p(matching) +0.123 [+0.010, +0.200] over 3 held-out items; "
        "random vectors of the same norm give [-0.050, +0.050]: the effect is above null; A- and B-matching "
        "items move the same way (a behaviour push).",
        "- refusal, m=+4 at layer 2: effect on p(matching) +0.020 [-0.030, +0.070] over 7 held-out items; "
        "random vectors of the same norm give [-0.040, +0.040]: the effect is **inside the null**, "
        "indistinguishable from a random push of that size; A- and B-matching items move in opposite "
        "directions: a letter push, not a behaviour.",
    ]


def test_effects_headline_table_has_every_nonzero_cell_at_the_layer(effects):
    table, _ = effects_headline(effects, layer=2)
    assert list(table.columns) == [
        "behaviour", "m", "n", "p(matching)", "effect [95% CI]", "null band", "vs null", "letters",
    ]  # fmt: skip
    assert table["behaviour"].tolist() == ["optimism", "optimism", "refusal", "refusal"]
    assert table["m"].tolist() == ["-4", "+4", "+4", "+2"]
    assert table["n"].tolist() == [3, 3, 7, 7]
    assert table["effect [95% CI]"].tolist()[1] == "+0.123 [+0.010, +0.200]"
    assert table["null band"].tolist()[2] == "[-0.040, +0.040]"
    assert table["vs null"].tolist() == ["below null", "above null", "inside null", "inside null"]
    assert table["p(matching)"].tolist()[1] == 0.625


def test_effects_headline_without_controls_or_a_positive_multiplier(effects):
    negative_only = effects[effects["multiplier"] <= 0].drop(columns=["vs_null", "null_low", "null_high"])
    table, sentences = effects_headline(negative_only, layer=2)
    assert sentences == [
        "- optimism, m=-4 at layer 2: effect on p(matching) -0.100 [-0.200, -0.050] over 3 held-out items; "
        "A- and B-matching items move the same way (a behaviour push)."
    ]
    assert table["null band"].tolist() == ["not measured"] and table["vs null"].tolist() == ["not measured"]
    assert effects_headline(effects, layer=5)[1] == []  # no cell at that layer


def headline_row(behaviour, verdict, vs_null, effect, within_budget=True):
    return {
        "behaviour": behaviour,
        "metric": "refusal_rate",
        "layer": 12,
        "multiplier": 6.0,
        "n_report": 48,
        "unsteered": 0.25,
        "steered": 0.25 + effect,
        "effect": effect,
        "effect_low": effect - 0.1,
        "effect_high": effect + 0.1,
        "null_low": -0.05,
        "null_high": 0.05,
        "vs_null": vs_null,
        "fluency_cost": 0.3,
        "fluency_cost_low": 0.2,
        "fluency_cost_high": 0.4,
        "verdict": verdict,
        "within_budget": within_budget,
    }


def test_behaviour_headline_sentences_and_table():
    headline = pd.DataFrame(
        [
            headline_row("refusal", "passes", "above null", 0.5),
            headline_row("optimism", "fails", "inside null", 0.01, within_budget=False),
            headline_row("formality", "fails", "below null", -0.3),
        ]
    )
    table, sentences = behaviour_headline(headline)
    null_and_cost = (
        "(random same-norm vectors: [-0.050, +0.050]); fluency cost +0.300 [+0.200, +0.400] nats/token"
    )
    assert sentences == [
        f"- refusal: refusal_rate +0.500 [+0.400, +0.600] at layer 12, m=+6 over 48 held-out prompts {null_and_cost}"
        "; it **passes**: the interval excludes zero and lies outside the null.",
        f"- optimism: refusal_rate +0.010 [-0.090, +0.110] at layer 12, m=+6 over 48 held-out prompts {null_and_cost}"
        " (no cell of the grid was within the fluency budget); it **fails**: the effect is inside the null.",
        f"- formality: refusal_rate -0.300 [-0.400, -0.200] at layer 12, m=+6 over 48 held-out prompts {null_and_cost}"
        "; it **fails**: the effect is not in the expected direction.",
    ]
    assert table["n"].tolist() == [48, 48, 48]
    assert table["m"].tolist() == ["+6", "+6", "+6"]
    assert table["vector"].tolist() == ["refusal", "optimism", "formality"]  # no vector column: the behaviour
    assert table["ratio"].tolist() == ["", "", ""]
    assert table["unsteered -> steered"].tolist()[0] == "0.250 -> 0.750"
    assert table["effect [95% CI]"].tolist()[2] == "-0.300 [-0.400, -0.200]"
    assert table["null band"].tolist()[0] == "[-0.050, +0.050]"
    assert table["fluency cost (nats/token)"].tolist()[0] == "+0.300 [+0.200, +0.400]"
    with_ratio = headline.assign(vector=["refusal:pca"] * 3, ratio=[0.5, 1.0, 0.25])
    table, _ = behaviour_headline(with_ratio)
    assert table["vector"].tolist() == ["refusal:pca"] * 3 and table["ratio"].tolist() == [
        "+0.5",
        "+1",
        "+0.25",
    ]


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    """A saved main-job directory on the tiny model at smoke sizes (about 20 s)."""
    from analysis.jobs.main import DemoConfig, run_demo

    out = tmp_path_factory.mktemp("demo") / "out"
    run_demo(out, DemoConfig(model="tiny").quick())
    return out


def test_write_report_writes_report_md_from_the_saved_directory(demo_dir, tiny, capsys):
    from analysis.jobs.main import DemoConfig
    from analysis.jobs.report import write_report
    from caa_lens.identity import model_identity

    manifest = json.loads((demo_dir / "manifest.json").read_text())
    (demo_dir / "report.md").unlink()
    config = replace(DemoConfig(model="tiny").quick().for_model(4), focus_layer=manifest["focus_layer"])
    report = write_report(demo_dir, config, model_identity(tiny), 1.0, {"sweep": 1.0})
    assert report == demo_dir / "report.md" and report.is_file()
    text = report.read_text()
    assert text.startswith("# caa_lens report: caa-lens-tiny-llama\n")
    effects = pd.read_csv(demo_dir / "sweep_effects.csv")
    _, sentences = effects_headline(effects, manifest["focus_layer"])
    assert sentences and all(sentence in text for sentence in sentences)
    assert (
        f"## The CAA paper's A/B metric: effects at layer {manifest['focus_layer']}, on held-out items"
        in text
    )
    figures = sorted((demo_dir / "figures").glob("*.png"))
    assert len(figures) >= 5
    for figure in figures:
        assert f"![{figure.stem}](figures/{figure.name})" in text
    rewritten = json.loads((demo_dir / "manifest.json").read_text())
    assert (
        rewritten["focus_layer"] == manifest["focus_layer"]
        and rewritten["selection"] == manifest["selection"]
    )
    assert "\n".join(sentences) in capsys.readouterr().out
