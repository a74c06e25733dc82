"""Effects of a sweep against multiplier 0 (issue #12): bootstrap intervals that contain the planted effect,
the null band of random controls, the per-letter split, a note where there are no controls, and the
summary CSV recogniser. The planted effect is described in test_sweep_controls's docstring."""

import json

import numpy as np
import pandas as pd
import pytest
from helpers import planted_sweeps
from helpers.planted_sweeps import LAYERS, one_cell, sweep_into

from analysis.letters import letter_split
from caa_lens.evaluation import behaviour_probabilities
from caa_lens.steering import Injection
from caa_lens.sweep_controls import control_name
from caa_lens.sweep_effects import (
    EFFECT_COLUMNS,
    effects_summary,
    format_effects,
    is_summary_csv,
    summarize,
    verdicts,
)
from caa_lens.sweep_io import load_results

# The planted sweeps (module-scoped fixtures: each test file sweeps once).
all_a, balanced, letter = planted_sweeps.all_a, planted_sweeps.balanced, planted_sweeps.letter
planted, letter_push = planted_sweeps.planted, planted_sweeps.letter_push


def test_planted_effect_interval_contains_the_effect_computed_from_the_table(planted, all_a):
    summary = effects_summary(planted)
    assert set(summary.vector) == {"letter"}  # the controls are the band, not rows of their own
    assert list(summary.columns[: len(EFFECT_COLUMNS)]) == list(EFFECT_COLUMNS)
    rows = planted[planted.vector == "letter"]
    for layer in LAYERS:
        base = rows[(rows.layer == layer) & (rows.multiplier == 0)].set_index("item_index").p_matching
        for multiplier in (-0.03, 0.03):
            after = rows[(rows.layer == layer) & (rows.multiplier == multiplier)].set_index("item_index")
            independent = float((after.p_matching - base.loc[after.index]).mean())
            cell = one_cell(summary, layer, multiplier)
            assert cell.n_items == len(all_a) and cell.n_null == 3
            assert cell.effect == pytest.approx(independent, abs=1e-12)
            assert cell.effect_low <= independent <= cell.effect_high
            assert abs(independent) > 0.03  # a real push, many times the interval's width
            assert cell.vs_null == ("above null" if multiplier > 0 else "below null")
            assert cell.effect_A == pytest.approx(cell.effect)  # every item matches A
    line = verdicts(summary)[0]
    assert line.startswith("letter: 8 of 8 steered cells are distinguishable from the null")
    assert "layer 3 m=+0.03" in line


def test_planted_effect_matches_an_unswept_recompute(tiny, planted, all_a, letter):
    """The effect of the summary equals one computed without the sweep (full forward passes)."""
    summary = effects_summary(planted)
    plain = behaviour_probabilities(tiny, all_a, progress=False).to_frame().set_index("index").p_matching
    steered = behaviour_probabilities(tiny, all_a, Injection(letter, 3, 0.03), progress=False).to_frame()
    independent = float((steered.set_index("index").p_matching - plain).mean())
    cell = one_cell(summary, 3, 0.03)
    assert cell.effect == pytest.approx(independent, abs=1e-4)
    assert cell.effect_low - 1e-4 <= independent <= cell.effect_high + 1e-4


def test_random_controls_land_inside_the_null_around_zero_at_small_multipliers(letter_push):
    """One control judged against the others, as if it were the tested vector: indistinguishable."""
    controls = letter_push[letter_push.vector.str.startswith("random:")].copy()
    probe = control_name("letter", 0)
    controls["vector"] = controls.vector.map(
        lambda name: "probe" if name == probe else name.replace("random:letter:", "random:probe:")
    )
    summary = effects_summary(controls)
    small = summary[summary.multiplier.abs() == 0.003]
    assert len(small) == 2 * len(LAYERS) and (small.n_null == 3).all()
    assert (small.vs_null == "inside null").all()
    # Around zero: a random push of this size moves p(matching) by a small fraction of the letter push's
    # 0.005 (its interval may still exclude zero: a random direction is not orthogonal to everything).
    assert (small.effect.abs() < 0.002).all()


def test_a_pure_letter_push_moves_the_letters_in_opposite_directions(letter_push):
    summary = effects_summary(letter_push)
    for layer in LAYERS:
        for multiplier in (-0.03, 0.03):
            cell = one_cell(summary, layer, multiplier)
            assert cell.letter_pattern == "opposite directions"
            sign = np.sign(multiplier)
            assert sign * cell.effect_A_low > 0 and sign * cell.effect_B_high < 0  # A up, B down for m > 0
            assert cell.n_A == cell.n_B == 6
            assert cell.effect_low < 0 < cell.effect_high  # the mean over both letters barely moves
            assert cell.vs_null == "inside null"
    assert verdicts(summary) == [
        "letter: no cell is distinguishable from the null (every steered cell's interval includes 0 or "
        "overlaps the band of random vectors of the same norm)"
    ]
    text = format_effects(summary)
    assert "A-matching" in text and "B-matching" in text and "opposite directions" in text


def test_letter_split_attributes_a_letter_push_to_the_letter(letter_push):
    split = letter_split(letter_push, n_resamples=500)
    assert set(split.vector) == {"letter"}
    for multiplier in (-0.03, 0.03):
        row = split[(split.layer == 3) & (split.multiplier == multiplier)].iloc[0]
        assert row.letter_vs_null == ("above null" if multiplier > 0 else "below null")
        assert abs(row.letter) > 0.04 and abs(row.behaviour) < 0.01
        assert row.letter_low <= row.letter <= row.letter_high
        assert row.letter_part_of_effect == 0  # 6 A and 6 B items: the letter cancels in the mean


def test_results_without_controls_summarise_with_a_note(tiny, balanced, letter, tmp_path):
    """A sweep without controls writes the header older caa_lens wrote (no "controls" key) and its
    summary has intervals and the letter split, no null band, and says so."""
    path = tmp_path / "old.jsonl"
    sweep_into(tiny, balanced, letter, path)
    assert "controls" not in json.loads(path.read_text().split("\n")[0])["config"]
    summary = effects_summary(load_results(path))
    assert (summary.vs_null == "no controls").all() and (summary.n_null == 0).all()
    assert summary.null_low.isna().all() and summary.effect_high.notna().all()
    assert (summary[summary.multiplier.abs() == 0.03].letter_pattern == "opposite directions").all()
    line = verdicts(summary)[0]
    assert "no random controls" in line and "--controls" in line
    assert "no controls" in format_effects(summary)
    csv = tmp_path / "summary.csv"
    summary.to_csv(csv, index=False)
    assert is_summary_csv(csv)
    reread = pd.read_csv(csv)
    assert not reread.isin([np.inf, -np.inf]).any().any() and b"NaN" not in csv.read_bytes()


def test_summary_csv_recogniser_accepts_ours_only(planted, tmp_path):
    effects = effects_summary(planted)
    header = ",".join(effects.columns)
    old = "vector,layer,multiplier,p_matching,sem,p_letters_sum,n_items"
    accepted = {
        "effects": header,
        "old_summary": old,
        "two_labels": ",".join(EFFECT_COLUMNS)
        + ",effect_Yes,effect_Yes_low,effect_Yes_high,n_Yes,effect_No,effect_No_low,effect_No_high,n_No"
        + ",letter_pattern",
    }
    refused = {
        "extra_column": header + ",note",
        "missing_column": header.replace(",n_null", ""),
        "renamed": header.replace("vs_null", "verdict"),
        "mixed_labels": ",".join(EFFECT_COLUMNS) + ",effect_A,effect_A_low,effect_B_high,n_A,letter_pattern",
        "no_letter_pattern": ",".join(EFFECT_COLUMNS),
        "old_plus_one": old + ",x",
    }
    for name, line in {**accepted, **refused}.items():
        path = tmp_path / f"{name}.csv"
        path.write_text(line + "\n1,2\n")
        assert is_summary_csv(path) == (name in accepted), name
    written = tmp_path / "written.csv"
    effects.to_csv(written, index=False)
    summarize(planted).to_csv(tmp_path / "means.csv", index=False)
    assert is_summary_csv(written) and is_summary_csv(tmp_path / "means.csv")
