"""analysis.interference: matrix shape, zero vectors, and agreement with direct steered scoring."""

import pytest
import torch
from helpers.analysis_toy import toy_dataset

from analysis.interference import default_combinations, interference_matrix
from caa_lens.evaluation import behaviour_probabilities
from caa_lens.methods import caa_vector
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
    result = interference_matrix(tiny, vectors, datasets, layer={"a": 2, "b": 1, "zero": 3}, multiplier=2.0)
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


def test_interference_matches_direct_steering(tiny, setup):
    vectors, datasets = setup
    result = interference_matrix(
        tiny,
        vectors,
        datasets,
        layer={"a": 2, "b": 1, "zero": 3},
        multiplier={"a": 1.5, "b": -3.0, "zero": 1.0},
        combinations=[("a", "b")],
    )
    both = [Injection(vectors["a"], 2, 1.5), Injection(vectors["b"], 1, -3.0)]
    for k, name in enumerate(["first", "second"]):
        steered = behaviour_probabilities(tiny, datasets[name], both, progress=False).mean_p_matching
        plain = behaviour_probabilities(tiny, datasets[name], progress=False).mean_p_matching
        assert result.scores[0, k].item() == pytest.approx(steered, abs=1e-5)
        assert result.effect[0, k].item() == pytest.approx(steered - plain, abs=1e-5)
    assert torch.isnan(result.additive_prediction).all()  # no single-vector rows to add up


def test_interference_rejects_unknown_names(tiny, setup):
    vectors, datasets = setup
    with pytest.raises(ValueError, match="unknown vectors"):
        interference_matrix(tiny, vectors, datasets, layer=1, combinations=[("a", "c")])
    with pytest.raises(ValueError, match="no layer"):
        interference_matrix(tiny, vectors, datasets, layer={"a": 1})
