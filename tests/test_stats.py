"""Tests of caa_lens.stats: bootstrap intervals (stability, coverage, pairing), null bands, random
controls, the letter helpers on planted signals, and effects tables on synthetic sweeps."""

import time

import numpy as np
import pandas as pd
import pytest
import torch

from caa_lens.provenance import Provenance
from caa_lens.stats import (
    Effect,
    NullBand,
    effects_table,
    letter_axis,
    letter_balanced_mean,
    letter_share,
    null_band,
    paired_effect,
    random_like,
    with_null,
)
from caa_lens.vectors import SteeringVector


def correlated_scores(
    rng: np.random.Generator, n: int, effect: float, item_sd: float = 0.2, noise: float = 0.05
):
    """Baseline and steered scores sharing a large per-item level (as p_matching does across items)."""
    level = rng.normal(0.5, item_sd, n)
    return level + effect + rng.normal(0, noise, n), level + rng.normal(0, noise, n)


# --- paired_effect ----------------------------------------------------------------------------------


def test_paired_effect_is_the_mean_difference_and_reports_its_settings():
    effect = paired_effect([0.6, 0.7, 0.9, 0.8], [0.5, 0.5, 0.5, 0.6], n_resamples=500, confidence=0.9)
    assert effect.mean == pytest.approx(0.225)
    assert (effect.n, effect.n_resamples, effect.confidence) == (4, 500, 0.9)
    assert effect.low <= effect.mean <= effect.high and effect.excludes_zero


def test_identical_runs_give_an_exactly_zero_effect():
    scores = np.random.default_rng(0).uniform(size=30)
    effect = paired_effect(scores, scores.copy())
    assert (effect.mean, effect.low, effect.high) == (0.0, 0.0, 0.0) and not effect.excludes_zero


def test_tensor_and_list_inputs_agree_with_arrays():
    steered, baseline = correlated_scores(np.random.default_rng(1), 40, 0.05)
    reference = paired_effect(steered, baseline)
    assert paired_effect(torch.tensor(steered), torch.tensor(baseline)) == reference
    assert paired_effect(list(steered), list(baseline)) == reference


def test_interval_is_stable_between_seeds_at_the_default_resamples():
    # Realistic: 500 items, per-item differences with spread ~0.15 (p_matching shifts).
    steered, baseline = correlated_scores(np.random.default_rng(2), 500, 0.03, noise=0.1)
    effects = [paired_effect(steered, baseline, seed=seed) for seed in range(5)]
    assert max(e.low for e in effects) - min(e.low for e in effects) < 0.005
    assert max(e.high for e in effects) - min(e.high for e in effects) < 0.005


def test_same_seed_same_interval_and_global_rngs_untouched():
    steered, baseline = correlated_scores(np.random.default_rng(3), 50, 0.02)
    np_state, torch_state = np.random.get_state()[1].copy(), torch.get_rng_state().clone()
    first, second = paired_effect(steered, baseline, seed=7), paired_effect(steered, baseline, seed=7)
    assert first == second
    assert paired_effect(steered, baseline, seed=8) != first
    assert (np.random.get_state()[1] == np_state).all() and torch.equal(torch.get_rng_state(), torch_state)


@pytest.mark.parametrize("true_effect", [0.1, 0.0])
def test_95_percent_interval_covers_the_planted_effect_about_95_percent_of_the_time(true_effect):
    # Catches wrong quantiles (e.g. 5%/95% -> ~90%, or 25/75 -> ~50%) and standard deviations used
    # in place of standard errors (~100%). The percentile bootstrap runs slightly under 95% at n=50.
    rng = np.random.default_rng(4)
    covered = 0
    for seed in range(200):
        differences = true_effect + rng.normal(0, 0.2, 50)
        effect = paired_effect(differences, np.zeros(50), seed=seed)
        covered += effect.low <= true_effect <= effect.high
    assert 0.90 <= covered / 200 <= 0.99


def test_paired_interval_is_much_narrower_than_unpaired_resampling_on_correlated_data():
    # Resampling the two arrays independently (or unpaired items) keeps the item-to-item spread that
    # pairing removes: its interval is several times wider. paired_effect must match the paired width.
    rng = np.random.default_rng(5)
    steered, baseline = correlated_scores(rng, 200, 0.02, item_sd=0.2, noise=0.03)
    paired = paired_effect(steered, baseline)
    i, j = rng.integers(0, 200, (2, 4000, 200))
    unpaired = steered[i].mean(1) - baseline[j].mean(1)
    unpaired_width = np.diff(np.quantile(unpaired, [0.025, 0.975]))[0]
    paired_width = paired.high - paired.low
    expected = 2 * 1.96 * np.std(steered - baseline, ddof=1) / np.sqrt(200)
    assert paired_width == pytest.approx(expected, rel=0.15)
    assert unpaired_width > 4 * paired_width
    assert paired.excludes_zero


def test_paired_effect_refuses_unusable_input():
    with pytest.raises((ValueError, TypeError)):  # jaxtyping may catch the length mismatch first
        paired_effect(np.ones(3), np.ones(4))
    with pytest.raises(ValueError, match="same non-empty"):
        paired_effect(np.array([]), np.array([]))
    with pytest.raises(ValueError, match="NaN"):
        paired_effect(np.array([0.5, np.nan]), np.array([0.5, 0.5]))
    with pytest.raises(ValueError, match="confidence"):
        paired_effect([0.5], [0.4], confidence=1.5)
    with pytest.raises(ValueError, match="n_resamples"):
        paired_effect([0.5], [0.4], n_resamples=0)


# --- null bands ------------------------------------------------------------------------------------


def test_null_band_is_the_central_quantile_range():
    effects = list(np.linspace(-1, 1, 201))
    band = null_band(effects)
    assert (band.low, band.high, band.n_vectors) == (pytest.approx(-0.95), pytest.approx(0.95), 201)
    assert null_band([0.3, -0.1, 0.2], coverage=1.0) == NullBand(-0.1, 0.3, 3)
    with pytest.raises(ValueError, match="one finite effect"):
        null_band([])
    with pytest.raises(ValueError, match="coverage"):
        null_band([0.1], coverage=0.0)


def test_an_effect_overlapping_the_band_is_inside_null():
    band = NullBand(-0.02, 0.03, 5)

    def effect(low, high):
        return Effect((low + high) / 2, low, high, 50, 4000, 0.95)

    assert effect(0.04, 0.1).against(band) == "above null"
    assert effect(-0.1, -0.03).against(band) == "below null"
    assert effect(0.03, 0.1).against(band) == "inside null"  # touching counts as overlap
    assert effect(-0.5, 0.5).against(band) == "inside null"
    assert effect(0.01, 0.02).against(band) == "inside null"


# --- random_like -----------------------------------------------------------------------------------


def provenance(d_model: int) -> Provenance:
    return Provenance(
        "toy", "hash", d_model, 8, "resid_post", "answer letter", "mean_difference", "toy", "h", 10, "float32"
    )


def test_random_like_keeps_every_layer_norm_with_new_directions():
    d_model = 4096
    directions = torch.randn(3, d_model) * torch.tensor([[1.0], [5.0], [50.0]])
    vector = SteeringVector(directions, (2, 4, 6), provenance(d_model))
    first, second = random_like(vector, seed=0), random_like(vector, seed=1)
    for control in (first, second):
        assert control.layers == vector.layers and control.directions.dtype == directions.dtype
        torch.testing.assert_close(control.norms(), vector.norms(), rtol=1e-5, atol=0)
    assert first.provenance.method == "random (same norm as mean_difference; seed 0)"
    assert torch.equal(random_like(vector, seed=0).directions, first.directions)
    cosine = torch.nn.functional.cosine_similarity(first.directions, second.directions, dim=-1)
    assert cosine.abs().max() < 0.1  # random directions in 4096 dimensions: |cos| ~ 1/64
    assert torch.nn.functional.cosine_similarity(first.directions, directions, dim=-1).abs().max() < 0.1
    assert torch.equal(vector.directions, directions)  # the original is untouched


def test_random_like_keeps_each_actadd_position_norm():
    directions = torch.randn(2, 5, 64) * torch.arange(1.0, 6.0)[None, :, None]
    directions[1, 4] = 0  # a zero position stays zero rather than becoming NaN
    vector = SteeringVector(directions, (1, 3), provenance(64))
    control = random_like(vector, seed=3)
    torch.testing.assert_close(control.directions.norm(dim=-1), directions.norm(dim=-1), rtol=1e-5, atol=0)
    assert not torch.allclose(control.directions, directions)


# --- letter helpers --------------------------------------------------------------------------------


def planted_diffs(n_a: int, n_b: int, behaviour_norm: float, letter_norm: float = 100.0, seed: int = 0):
    """diff_i = b + s_i * L + noise, s_i = +1 for A-matching pairs, with |L| >> |b| by default."""
    generator = torch.Generator().manual_seed(seed)
    n_layers, d_model = 3, 256
    b = torch.randn(n_layers, d_model, generator=generator)
    b = b / b.norm(dim=-1, keepdim=True) * behaviour_norm
    letter = torch.randn(n_layers, d_model, generator=generator)
    letter = letter / letter.norm(dim=-1, keepdim=True) * letter_norm
    labels = ["A"] * n_a + ["B"] * n_b
    signs = torch.tensor([1.0 if label == "A" else -1.0 for label in labels])[:, None, None]
    noise = torch.randn(n_a + n_b, n_layers, d_model, generator=generator) * 0.05
    return b + signs * letter + noise, labels, b, letter


def cosine(x, y):
    return torch.nn.functional.cosine_similarity(x.double(), y.double(), dim=-1)


def test_balanced_mean_recovers_behaviour_the_plain_mean_is_mostly_letter():
    diffs, labels, b, letter = planted_diffs(58, 62, behaviour_norm=1.0)
    axis = letter_axis(diffs, labels)
    assert cosine(axis, letter).min() > 0.999
    torch.testing.assert_close(axis.norm(dim=-1), letter.norm(dim=-1), rtol=0.01, atol=0)  # L, not 2L
    balanced, plain = letter_balanced_mean(diffs, labels), diffs.mean(0)
    assert cosine(balanced, b).min() > 0.99
    assert letter_share(balanced, axis).max() < 0.01
    assert letter_share(plain, axis).min() > 0.8  # (4/120) * 100 = 3.3 times the norm of b


def test_letter_only_signal_gives_the_plain_mean_a_letter_share_near_one():
    diffs, labels, _, _ = planted_diffs(58, 62, behaviour_norm=0.0)
    assert letter_share(diffs.mean(0), letter_axis(diffs, labels)).min() > 0.99


def test_balanced_mean_keeps_its_direction_when_the_label_balance_changes():
    diffs, labels, _, _ = planted_diffs(100, 100, behaviour_norm=1.0)
    mostly_a = list(range(70)) + list(range(100, 130))
    mostly_b = list(range(30)) + list(range(100, 170))

    def subset(indices):
        return diffs[indices], [labels[i] for i in indices]

    balanced = [letter_balanced_mean(*subset(ix)) for ix in (mostly_a, mostly_b)]
    plain = [diffs[ix].mean(0) for ix in (mostly_a, mostly_b)]
    assert cosine(*balanced).min() > 0.98
    assert cosine(*plain).max() < 0  # 0.4 * L flips to -0.4 * L, which dwarfs b


def test_letter_helpers_refuse_a_single_letter_or_mismatched_labels():
    diffs, labels, _, _ = planted_diffs(5, 5, behaviour_norm=1.0)
    with pytest.raises(ValueError, match="plain mean"):
        letter_balanced_mean(diffs[:5], labels[:5])
    with pytest.raises(ValueError, match="one matching label per pair"):
        letter_balanced_mean(diffs, labels[:-1])
    with pytest.raises(ValueError, match="two matching labels"):
        letter_axis(diffs, ["A"] * 4 + ["B"] * 3 + ["C"] * 3)


# --- effects tables --------------------------------------------------------------------------------


def sweep_frame(
    per_vector: dict[str, tuple[float, float]],
    layers=(2, 4),
    multipliers=(-1.0, 0.0, 1.0),
    n_items: int = 50,
    noise: float = 0.02,
    seed: int = 0,
) -> pd.DataFrame:
    """Synthetic results: p = level_i + m * (push + letter_push * s_i) + noise, s_i = +1 for A-matching."""
    rng = np.random.default_rng(seed)
    level = rng.uniform(0.3, 0.7, n_items)
    labels = ["A" if i % 2 else "B" for i in range(n_items)]
    signs = np.where(np.array(labels) == "A", 1.0, -1.0)
    rows = []
    for name, (push, letter_push) in per_vector.items():
        for layer in layers:
            for m in multipliers:
                scores = (
                    level + m * (push + letter_push * signs) + (rng.normal(0, noise, n_items) if m else 0)
                )
                rows += [
                    {"vector": name, "layer": layer, "multiplier": m, "item_index": i, "item_hash": f"h{i}",
                     "matching_label": labels[i], "p_matching": scores[i], "p_letters_sum": 0.9}
                    for i in range(n_items)
                ]  # fmt: skip
    return pd.DataFrame(rows)


def test_effects_table_recovers_a_planted_behaviour_effect():
    table = effects_table(sweep_frame({"refusal": (0.05, 0.0)}))
    assert len(table) == 2 * 3 and set(table.n_items) == {50}
    assert {"effect_A", "effect_A_low", "effect_A_high", "n_A", "effect_B", "n_B"} <= set(table.columns)
    zero = table[table.multiplier == 0]
    assert (zero[["effect", "effect_low", "effect_high", "effect_A", "effect_B"]] == 0).all().all()
    for row in table[table.multiplier != 0].itertuples():
        planted = 0.05 * row.multiplier
        assert row.effect_low <= planted <= row.effect_high and abs(row.effect - planted) < 0.01
        assert row.letter_pattern == "same direction" and (row.n_A, row.n_B) == (25, 25)


def test_a_letter_only_push_is_flagged_opposite_with_no_overall_effect():
    table = effects_table(sweep_frame({"letter": (0.0, 0.1)}, noise=0.01))
    steered = table[table.multiplier == 1.0]
    assert (steered.letter_pattern == "opposite directions").all()
    assert ((steered.effect_low <= 0) & (steered.effect_high >= 0)).all()
    assert (steered.effect_A > 0.09).all() and (steered.effect_B < -0.09).all()


def test_effects_table_needs_the_unsteered_rows_of_the_same_items():
    frame = sweep_frame({"refusal": (0.05, 0.0)})
    no_zero = frame[~((frame.layer == 4) & (frame.multiplier == 0))]
    with pytest.raises(ValueError, match=r"vector 'refusal', layer 4 has no multiplier-0 rows"):
        effects_table(no_zero)
    missing_item = frame[~((frame.multiplier == 0) & (frame.item_index == 3))]
    with pytest.raises(ValueError, match=r"items \[3\] have no multiplier-0 row"):
        effects_table(missing_item)
    with pytest.raises(ValueError, match="matching_label"):
        effects_table(frame.drop(columns="matching_label"))


def test_with_null_places_real_effects_against_random_vectors_of_the_same_norm():
    vectors = {"refusal": (0.05, 0.0), "weak": (0.0, 0.0)}
    vectors |= {f"random:refusal:{k}": (0.0, 0.0) for k in range(4)}
    vectors |= {f"random:weak:{k}": (0.0, 0.0) for k in range(4)}
    effects = effects_table(sweep_frame(vectors), n_resamples=1000)
    nulls = effects[effects.vector.str.startswith("random:")]
    assert ((nulls.effect_low <= 0) & (nulls.effect_high >= 0)).mean() >= 0.9
    compared = with_null(effects)
    assert set(compared.vector) == {"refusal", "weak"}
    refusal = compared[compared.vector == "refusal"].set_index(["layer", "multiplier"]).vs_null
    assert (refusal.xs(1.0, level="multiplier") == "above null").all()
    assert (refusal.xs(-1.0, level="multiplier") == "below null").all()
    assert (refusal.xs(0.0, level="multiplier") == "inside null").all()
    assert (compared[compared.vector == "weak"].vs_null == "inside null").all()
    assert set(compared.n_null) == {4} and (compared.null_low <= compared.null_high).all()


def test_with_null_shared_controls_and_naming_errors():
    effects = effects_table(
        sweep_frame({"refusal": (0.05, 0.0), "random:0": (0.0, 0.0), "random:1": (0.0, 0.0)})
    )
    assert set(with_null(effects).n_null) == {2}  # random:<seed> controls every vector
    typo = effects_table(sweep_frame({"refusal": (0.05, 0.0), "random:refsual:0": (0.0, 0.0)}))
    with pytest.raises(ValueError, match="refsual"):
        with_null(typo)
    without = effects_table(sweep_frame({"refusal": (0.05, 0.0)}))
    with pytest.raises(ValueError, match="random:refusal:<seed>"):
        with_null(without)


def test_effects_table_is_fast_enough_for_a_full_sweep():
    # 6 layers x 7 multipliers x 4 vectors x 50 items, 4000 resamples, three bootstraps per cell.
    vectors = {f"v{k}": (0.01 * k, 0.0) for k in range(4)}
    frame = sweep_frame(vectors, layers=range(6), multipliers=(-3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0))
    started = time.perf_counter()
    table = effects_table(frame)
    assert len(table) == 168
    assert time.perf_counter() - started < 30  # generous: shared CPUs; a few seconds expected
