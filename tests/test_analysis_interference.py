"""analysis.interference: matrix shape, zero vectors, agreement with direct steered scoring, and the
per-item intervals of effects, additive predictions and interactions."""

import math

import pandas as pd
import pytest
import torch
from helpers.analysis_toy import toy_dataset

from analysis.interference import Interference, default_combinations, interference_matrix
from analysis.store import load_result, save_result
from caa_lens.evaluation import behaviour_probabilities
from caa_lens.methods import caa_vector
from caa_lens.stats import paired_effect
from caa_lens.steering import Injection
from caa_lens.vectors import SteeringVector


@pytest.fixture(scope="module")
def setup(tiny):
    first, second = toy_dataset(6, "first"), toy_dataset(5, "second")
    a = caa_vector(tiny, first, progress=False).scaled(60.0)
    b = SteeringVector(
        torch.randn(4, tiny.cfg.d_model, generator=torch.Generator().manual_seed(0)), a.layers, a.provenance
    )
    zero = SteeringVector(torch.zeros_like(a.directions), a.layers, a.provenance)
    return {"a": a, "b": b, "zero": zero}, {"first": first, "second": second}


def test_default_combinations():
    assert default_combinations(["x", "y"]) == (("x",), ("y",), ("x", "y"))
    assert default_combinations(["x", "y", "z"])[-1] == ("x", "y", "z")
    assert len(default_combinations(["x", "y", "z"])) == 3 + 3 + 1


def test_interference_shape_and_zero_vector(tiny, setup):
    vectors, datasets = setup
    result = interference_matrix(
        tiny, vectors, datasets, layer={"a": 2, "b": 1, "zero": 3}, multiplier=2.0, n_resamples=200
    )
    assert result.combinations == default_combinations(["a", "b", "zero"])
    assert result.effect.shape == (7, 2) and result.scores.shape == (7, 2) and result.baseline.shape == (2,)
    rows = {combo: i for i, combo in enumerate(result.combinations)}
    assert result.effect[rows[("zero",)]].abs().max() < 1e-6
    # Adding a zero vector to a combination changes nothing.
    assert torch.allclose(result.effect[rows[("a", "zero")]], result.effect[rows[("a",)]], atol=1e-6)
    assert torch.allclose(
        result.additive_prediction[rows[("a", "b")]],
        result.effect[rows[("a",)]] + result.effect[rows[("b",)]],
    )
    frame = result.to_frame()
    assert len(frame) == 14 and set(frame.behaviour) == {"first", "second"}
    assert {"effect_low", "interaction_high", "null_low", "vs_null", "n"} <= set(frame.columns)
    assert result.n_items == {"first": 6, "second": 5}
    # The zero vector changes no item, so its effect, and its interaction with a, are 0 with no spread.
    zero = rows[("zero",)]
    assert result.effect_low[zero].abs().max() < 1e-6 and result.effect_high[zero].abs().max() < 1e-6
    assert result.interaction[rows[("a", "zero")]].abs().max() < 1e-6
    # The random stand-in of the zero vector is zero too; a's random stand-ins give a real band.
    assert result.null_low[zero].abs().max() < 1e-6 and result.null_high[zero].abs().max() < 1e-6
    assert (result.null_high[rows[("a",)]] > result.null_low[rows[("a",)]]).all()
    for low, mean, high in (
        (result.effect_low, result.effect, result.effect_high),
        (result.additive_low, result.additive_prediction, result.additive_high),
        (result.interaction_low, result.interaction, result.interaction_high),
    ):
        assert ((low <= mean + 1e-6) & (mean <= high + 1e-6)).all()
    assert torch.allclose(result.interaction, result.effect - result.additive_prediction, atol=1e-6)


def test_interference_matches_direct_steering(tiny, setup):
    vectors, datasets = setup
    result = interference_matrix(
        tiny,
        vectors,
        datasets,
        layer={"a": 2, "b": 1, "zero": 3},
        multiplier={"a": 1.5, "b": -3.0, "zero": 1.0},
        combinations=[("a", "b")],
        n_resamples=200,
    )
    both = [Injection(vectors["a"], 2, 1.5), Injection(vectors["b"], 1, -3.0)]
    for k, name in enumerate(["first", "second"]):
        steered = behaviour_probabilities(tiny, datasets[name], both, progress=False).mean_p_matching
        plain = behaviour_probabilities(tiny, datasets[name], progress=False).mean_p_matching
        assert result.scores[0, k].item() == pytest.approx(steered, abs=1e-5)
        assert result.effect[0, k].item() == pytest.approx(steered - plain, abs=1e-5)
    assert torch.isnan(result.additive_prediction).all()  # no single-vector rows to add up
    assert torch.isnan(result.additive_low).all() and torch.isnan(result.interaction).all()
    assert torch.isfinite(result.effect_low).all()


def per_item(model, data, injections=()) -> torch.Tensor:
    scores = behaviour_probabilities(model, data, injections, progress=False)
    return torch.tensor([s.p_matching for s in scores.items], dtype=torch.float64)


def test_interaction_interval_equals_an_independent_per_item_computation(tiny, setup):
    """Joint minus the sum of single changes, item by item from full forward passes, bootstrapped alike."""
    vectors, datasets = setup
    layers, multipliers = {"a": 2, "b": 1}, {"a": 2.0, "b": -3.0}
    result = interference_matrix(
        tiny,
        {"a": vectors["a"], "b": vectors["b"]},
        datasets,
        layer=layers,
        multiplier=multipliers,
        null_seeds=(0, 1, 2),
        n_resamples=1000,
    )
    assert result.combinations == (("a",), ("b",), ("a", "b"))
    injections = {n: Injection(vectors[n], layers[n], multipliers[n]) for n in ("a", "b")}
    for k, name in enumerate(["first", "second"]):
        base = per_item(tiny, datasets[name])
        a = per_item(tiny, datasets[name], injections["a"]) - base
        b = per_item(tiny, datasets[name], injections["b"]) - base
        both = per_item(tiny, datasets[name], [injections["a"], injections["b"]]) - base
        checks = (
            ("effect", "effect_low", "effect_high", both),
            ("additive_prediction", "additive_low", "additive_high", a + b),
            ("interaction", "interaction_low", "interaction_high", both - a - b),
        )
        for mean_field, low_field, high_field, changes in checks:
            expected = paired_effect(changes, torch.zeros_like(changes), n_resamples=1000)
            assert getattr(result, mean_field)[2, k].item() == pytest.approx(expected.mean, abs=1e-5)
            assert getattr(result, low_field)[2, k].item() == pytest.approx(expected.low, abs=1e-4)
            assert getattr(result, high_field)[2, k].item() == pytest.approx(expected.high, abs=1e-4)
    assert (result.null_interaction_low <= result.null_interaction_high).all()
    assert not math.isnan(float(result.null_interaction_low[2, 0]))


def test_interference_round_trips_through_the_store(tiny, setup, tmp_path):
    vectors, datasets = setup
    original = interference_matrix(tiny, {"a": vectors["a"], "b": vectors["b"]}, datasets, 2, n_resamples=50)
    save_result(original, tmp_path, "interference")
    loaded = load_result(tmp_path, "interference")
    assert type(loaded) is Interference and loaded.n_items == original.n_items
    pd.testing.assert_frame_equal(loaded.to_frame(), original.to_frame())


def test_interference_rejects_unknown_names(tiny, setup):
    vectors, datasets = setup
    with pytest.raises(ValueError, match="unknown vectors"):
        interference_matrix(tiny, vectors, datasets, layer=1, combinations=[("a", "c")])
    with pytest.raises(ValueError, match="no layer"):
        interference_matrix(tiny, vectors, datasets, layer={"a": 1})
