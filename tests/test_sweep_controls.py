"""Controls built into sweeps (issue #12): every reported effect is a paired difference against the
unsteered run on the same items, with a bootstrap interval, n, the null band of random vectors of the
same norm, and the per-letter split.

The planted effect: on the tiny model, the unembedding difference of the answer tokens A and B, added
to the residual stream, raises p(A) for every item. On items whose matching answer is always A it is a
behaviour push (every item moves up, far beyond random vectors of its norm); on items balanced between
A and B it is a pure letter push (A-matching items up, B-matching items down, the mean unmoved).
"""

import json
import warnings

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from helpers import planted_sweeps
from helpers.planted_sweeps import LAYERS, MULTIPLIERS, sweep_into

from analysis.plots import FIGURES, plot_sweep_layers, plot_sweep_multipliers
from caa_lens.stats import random_like
from caa_lens.sweep import run_sweep
from caa_lens.sweep_controls import control_name, with_controls
from caa_lens.sweep_effects import (
    effects_summary,
    summarize,
)
from caa_lens.sweep_io import SweepConfigError, load_results

# The planted sweeps (module-scoped fixtures: each test file sweeps once).
all_a, balanced, letter = planted_sweeps.all_a, planted_sweeps.balanced, planted_sweeps.letter
planted, letter_push = planted_sweeps.planted, planted_sweeps.letter_push


def test_controls_are_random_vectors_of_the_same_norm_named_for_their_vector(letter):
    other = letter.scaled(3.0)
    named = with_controls({"letter": letter, "other": other}, 2, seed=5)
    assert list(named) == [
        "letter",
        "other",
        "random:letter:5",
        "random:letter:6",
        "random:other:5",
        "random:other:6",
    ]
    assert control_name("letter", 5) == "random:letter:5"
    for name, base in (("letter", letter), ("other", other)):
        control = named[control_name(name, 6)]
        assert torch.equal(control.directions, random_like(base, 6).directions)
        assert torch.allclose(control.norms(), base.norms(), rtol=1e-5)
        cosine = torch.nn.functional.cosine_similarity(control.directions, base.directions, dim=-1)
        assert cosine.abs().max() < 0.6  # a new direction, not the vector rescaled
    assert with_controls({"letter": letter}, 0) == {"letter": letter}
    with pytest.raises(ValueError, match="whole number"):
        with_controls({"letter": letter}, -1)


def test_controls_are_swept_as_extra_vectors_and_recorded_in_the_header(planted, all_a, tmp_path):
    names = {"letter", *(control_name("letter", s) for s in range(3))}
    assert set(planted.vector) == names
    assert len(planted) == len(all_a) * len(LAYERS) * len(MULTIPLIERS) * 4


def test_resume_refuses_a_different_control_setting(tiny, balanced, letter, tmp_path):
    path = tmp_path / "r.jsonl"
    first = sweep_into(tiny, balanced, letter, path, controls=2)
    header = json.loads(path.read_text().split("\n")[0])
    assert header["config"]["controls"] == {"count": 2, "seed": 0, "prefix": "random"}
    content = path.read_bytes()
    for options in ({"controls": 3}, {"controls": 2, "control_seed": 1}, {"controls": 0}):
        with pytest.raises(SweepConfigError, match="controls"):
            sweep_into(tiny, balanced, letter, path, **options)
    assert path.read_bytes() == content
    again = sweep_into(tiny, balanced, letter, path, controls=2)
    assert first.units_computed == first.units_total and again.units_computed == 0


def test_multiplier_zero_is_added_when_missing_and_said(tiny, balanced, letter, tmp_path):
    path = tmp_path / "r.jsonl"
    with pytest.warns(UserWarning, match="multiplier 0 added"):
        run = run_sweep(tiny, balanced, {"letter": letter}, (3,), (0.03, -0.03), path, progress=False)
    assert run.config["multipliers"] == [-0.03, 0.0, 0.03]
    summary = effects_summary(load_results(path))
    assert sorted(summary.multiplier) == [-0.03, 0.0, 0.03]
    assert (summary[summary.multiplier == 0].effect == 0).all()


def test_control_names_are_reserved_when_controls_are_made(tiny, balanced, letter, tmp_path):
    with pytest.raises(ValueError, match="reserved for random controls"):
        run_sweep(
            tiny, balanced, {"random:letter:0": letter}, LAYERS, MULTIPLIERS, tmp_path / "r.jsonl", controls=1
        )
    assert not (tmp_path / "r.jsonl").exists()
    # Without made controls, one's own controls under that name are the documented way (stats.with_null).
    own = {"letter": letter, "random:letter:7": random_like(letter, 7)}
    run_sweep(tiny, balanced, own, (3,), MULTIPLIERS, tmp_path / "own.jsonl", progress=False)
    assert (effects_summary(load_results(tmp_path / "own.jsonl")).n_null == 1).all()


def _hollow_markers(figure) -> int:
    """Scatter points drawn with a white face: the cells inside the null band."""
    count = 0
    for ax in figure.axes:
        for collection in ax.collections:
            faces = collection.get_facecolors()
            if len(faces) and np.allclose(faces[:, :3], 1.0) and collection.get_offsets().shape[0]:
                count += collection.get_offsets().shape[0]
    return count


def test_figures_plot_effects_with_intervals_null_band_and_hollow_cells(planted, letter_push):
    with_band = plot_sweep_layers(effects_summary(letter_push))
    ax = with_band.axes[0]
    assert "effect" in ax.get_ylabel()
    assert any(type(c).__name__ in ("PolyCollection", "FillBetweenPolyCollection") for c in ax.collections)
    assert _hollow_markers(with_band) == 4 * len(LAYERS)  # every steered cell of a letter push is inside
    planted_figure = plot_sweep_multipliers(effects_summary(planted), 3)
    assert _hollow_markers(planted_figure) == 1  # only multiplier 0, the baseline, is inside the null
    plt.close("all")


def test_figures_without_controls_draw_no_band_and_say_so(tiny, balanced, letter, tmp_path):
    results = tmp_path / "results"
    (results / "sweep").mkdir(parents=True)
    sweep_into(tiny, balanced, letter, results / "sweep" / "letter.jsonl")
    paths = FIGURES["sweep"].draw(results, tmp_path / "figures")
    assert [p.name for p in paths] == ["sweep_layers.png", "sweep_multipliers.png"]
    figure = plot_sweep_multipliers(effects_summary(load_results(results / "sweep" / "letter.jsonl")), 3)
    assert "no null band" in figure._suptitle.get_text()  # type: ignore[union-attr]
    means = plot_sweep_layers(summarize(load_results(results / "sweep" / "letter.jsonl")))
    assert "no intervals" in means._suptitle.get_text()  # type: ignore[union-attr]
    plt.close("all")


def test_the_drawer_reads_a_saved_effects_table_first(planted, tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback path taken silently
        effects_summary(planted).assign(split="report").to_csv(results / "sweep_effects.csv", index=False)
        (results / "manifest.json").write_text(json.dumps({"focus_layer": 3}))
        paths = FIGURES["sweep"].draw(results, tmp_path / "figures")
    assert len(paths) == 2 and all(p.stat().st_size > 0 for p in paths)
