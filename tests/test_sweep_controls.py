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
import pandas as pd
import pytest
import torch

from analysis.figures import _sweep, plot_sweep_layers, plot_sweep_multipliers
from analysis.refusal_sweep import letter_split
from caa_lens.data import ContrastiveDataset, make_item
from caa_lens.evaluation import behaviour_probabilities, scoring_prompts
from caa_lens.stats import random_like
from caa_lens.steering import Injection
from caa_lens.sweep import (
    SweepConfigError,
    control_name,
    effects_summary,
    format_effects,
    is_summary_csv,
    load_results,
    run_sweep,
    summarize,
    verdicts,
    with_controls,
)
from caa_lens.sweep_io import EFFECT_COLUMNS
from caa_lens.vectors import SteeringVector, make_provenance

LAYERS = (1, 3)
# The unit letter direction saturates p(A) near m = 0.5 on the tiny model; these stay in its linear range.
MULTIPLIERS = (-0.03, -0.003, 0.0, 0.003, 0.03)
QUESTIONS = [
    "Is it sunny?",
    "Hi",
    "Rain?",
    "Do you like the ocean?",
    "Is Paris the capital of France?",
    "Should we practice every day?",
    "Will it rain tomorrow?",
    "Are you a helpful assistant?",
    "Is the fox lazy?",
    "Do you read books?",
    "Is the weather warm?",
    "Do you talk to people?",
]


def _dataset(name: str, all_a: bool) -> ContrastiveDataset:
    items = tuple(
        make_item(
            f"{q}\n\nChoices:\n (A) Yes\n (B) No",
            *(("(A)", "(B)") if all_a or i % 2 == 0 else ("(B)", "(A)")),
        )
        for i, q in enumerate(QUESTIONS)
    )
    return ContrastiveDataset(name, items)


@pytest.fixture(scope="module")
def all_a() -> ContrastiveDataset:
    return _dataset("all_a", all_a=True)


@pytest.fixture(scope="module")
def balanced() -> ContrastiveDataset:
    return _dataset("balanced", all_a=False)


@pytest.fixture(scope="module")
def letter(tiny, all_a) -> SteeringVector:
    """A unit vector along W_U[:, A] - W_U[:, B] at every layer: it raises p(A) for every item."""
    token_a, token_b = scoring_prompts(tiny.tokenizer, all_a)[0].label_token_ids
    direction = (tiny.W_U[:, token_a] - tiny.W_U[:, token_b]).detach().float()
    provenance = make_provenance(tiny, "resid_post", "answer", "letter", "test", "0", 1, torch.float32)
    return SteeringVector(torch.stack([direction / direction.norm()] * 4), (0, 1, 2, 3), provenance)


def _sweep_into(tiny, dataset, vector, path, **options):
    return run_sweep(tiny, dataset, {"letter": vector}, LAYERS, MULTIPLIERS, path, progress=False, **options)


@pytest.fixture(scope="module")
def planted(tiny, all_a, letter, tmp_path_factory) -> pd.DataFrame:
    path = tmp_path_factory.mktemp("planted") / "r.jsonl"
    _sweep_into(tiny, all_a, letter, path, controls=3)
    return load_results(path)


@pytest.fixture(scope="module")
def letter_push(tiny, balanced, letter, tmp_path_factory) -> pd.DataFrame:
    path = tmp_path_factory.mktemp("letter") / "r.jsonl"
    _sweep_into(tiny, balanced, letter, path, controls=4)
    return load_results(path)


def _cell(summary: pd.DataFrame, layer: int, multiplier: float, vector: str = "letter") -> pd.Series:
    rows = summary[
        (summary.vector == vector) & (summary.layer == layer) & np.isclose(summary.multiplier, multiplier)
    ]
    assert len(rows) == 1
    return rows.iloc[0]


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
            cell = _cell(summary, layer, multiplier)
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
    cell = _cell(summary, 3, 0.03)
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
            cell = _cell(summary, layer, multiplier)
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


def test_resume_refuses_a_different_control_setting(tiny, balanced, letter, tmp_path):
    path = tmp_path / "r.jsonl"
    first = _sweep_into(tiny, balanced, letter, path, controls=2)
    header = json.loads(path.read_text().split("\n")[0])
    assert header["config"]["controls"] == {"count": 2, "seed": 0, "prefix": "random"}
    content = path.read_bytes()
    for options in ({"controls": 3}, {"controls": 2, "control_seed": 1}, {"controls": 0}):
        with pytest.raises(SweepConfigError, match="controls"):
            _sweep_into(tiny, balanced, letter, path, **options)
    assert path.read_bytes() == content
    again = _sweep_into(tiny, balanced, letter, path, controls=2)
    assert first.units_computed == first.units_total and again.units_computed == 0


def test_multiplier_zero_is_added_when_missing_and_said(tiny, balanced, letter, tmp_path):
    path = tmp_path / "r.jsonl"
    with pytest.warns(UserWarning, match="multiplier 0 added"):
        run = run_sweep(tiny, balanced, {"letter": letter}, (3,), (0.03, -0.03), path, progress=False)
    assert run.config["multipliers"] == [-0.03, 0.0, 0.03]
    summary = effects_summary(load_results(path))
    assert sorted(summary.multiplier) == [-0.03, 0.0, 0.03]
    assert (summary[summary.multiplier == 0].effect == 0).all()


def test_results_without_controls_summarise_with_a_note(tiny, balanced, letter, tmp_path):
    """A sweep without controls writes the header older caa_lens wrote (no "controls" key) and its
    summary has intervals and the letter split, no null band, and says so."""
    path = tmp_path / "old.jsonl"
    _sweep_into(tiny, balanced, letter, path)
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
    _sweep_into(tiny, balanced, letter, results / "sweep" / "letter.jsonl")
    paths = _sweep(results, tmp_path / "figures")
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
        paths = _sweep(results, tmp_path / "figures")
    assert len(paths) == 2 and all(p.stat().st_size > 0 for p in paths)
