"""analysis.similarity: cosine matrices on constructed vectors, and layer transfer on the tiny model."""

import math

import pytest
import torch
from helpers.analysis_toy import activations_from, planted_examples, toy_dataset

from analysis.similarity import (
    behaviour_similarity,
    cosine_matrix,
    layer_similarity,
    layer_transfer,
    mean_vs_pca,
    method_similarity,
    rehomed,
)
from caa_lens.evaluation import behaviour_probabilities
from caa_lens.methods import caa_vector
from caa_lens.steering import Injection
from caa_lens.vectors import SteeringVector, make_provenance


def vector_of(model, directions: torch.Tensor, layers=None) -> SteeringVector:
    provenance = make_provenance(model, "resid_post", "answer", "test", "test", "0", 1, torch.float32)
    return SteeringVector(directions, tuple(layers or range(directions.shape[0])), provenance)


def test_cosine_matrix_known_values():
    eye = torch.eye(3)
    assert torch.equal(cosine_matrix(eye, eye), eye)  # orthogonal rows give exactly 0
    a = torch.tensor([[3.0, 4.0, 0.0]])
    assert cosine_matrix(a, -2 * a).item() == pytest.approx(-1.0)
    zero = cosine_matrix(a, torch.zeros(1, 3))
    assert math.isnan(zero.item())


def test_layer_similarity_rotating_vector(tiny):
    # Layer L's direction is rotated by L * 20 degrees in one plane: cosine falls with distance.
    angles = torch.deg2rad(torch.arange(4) * 20.0)
    directions = torch.zeros(4, tiny.cfg.d_model)
    directions[:, 0], directions[:, 1] = torch.cos(angles), torch.sin(angles)
    result = layer_similarity(vector_of(tiny, directions * 5))
    assert torch.allclose(result.matrix, result.matrix.T)
    assert torch.allclose(result.matrix.diagonal(), torch.ones(4))
    assert result.matrix[0, 3].item() == pytest.approx(math.cos(math.radians(60)), abs=1e-6)
    means = result.by_distance["mean"].tolist()
    assert means == sorted(means, reverse=True)
    assert result.by_distance.n.tolist() == [3, 2, 1]
    assert result.mean_at([1]) == pytest.approx(math.cos(math.radians(20)), abs=1e-6)


def test_behaviour_similarity_orthogonal_behaviours(tiny):
    d = tiny.cfg.d_model
    a = vector_of(tiny, torch.eye(d)[:4] * 3)
    b = vector_of(tiny, torch.eye(d)[4:8])
    result = behaviour_similarity({"a": a, "b": b, "a2": a.scaled(-0.5)})
    assert result.matrix.shape == (4, 3, 3)
    assert result.matrix[:, 0, 1].abs().max() == 0
    assert torch.allclose(result.matrix[:, 0, 2], -torch.ones(4))
    with pytest.raises(ValueError, match="not shared"):
        behaviour_similarity({"a": a, "b": b}, layers=[7])


def test_mean_vs_pca_recovers_planted_direction(tiny):
    # Differences vary mostly along the planted axis, so both methods point along it.
    examples, u, _ = planted_examples(200, d=tiny.cfg.d_model, n_layers=2, behaviour_scale=3.0, noise=0.3)
    spread = torch.randn(200, 1, 1, generator=torch.Generator().manual_seed(1)) * 2
    examples = type(examples)(
        examples.positive + spread * u, examples.negative, examples.positive_labels, examples.negative_labels
    )
    result = mean_vs_pca(tiny, activations_from(examples, (1, 2)))
    assert (result.table.cosine > 0.98).all()
    assert set(result.table.columns) == {"layer", "cosine", "norm_mean_difference", "norm_pca"}


def test_method_similarity_needs_same_layers(tiny):
    a = vector_of(tiny, torch.randn(2, tiny.cfg.d_model))
    with pytest.raises(ValueError, match="different layers"):
        method_similarity(a, a.select([0]))


def test_rehomed_moves_direction_between_layers(tiny):
    v = vector_of(tiny, torch.randn(4, tiny.cfg.d_model))
    moved = rehomed(v, 1, 3)
    assert moved.layers == (3,)
    assert torch.equal(moved.at(3), v.at(1))


def test_layer_transfer_matches_direct_scoring(tiny):
    data = toy_dataset(6)
    vector = caa_vector(tiny, data, progress=False).scaled(50.0)
    result = layer_transfer(tiny, vector, data, read_layers=[1, 2], apply_layers=[0, 2, 3], multiplier=2.0)
    assert result.effect.shape == (2, 3)
    assert torch.allclose(result.effect, result.plus - result.minus)
    # The diagonal-like cell "read at 2, applied at 2" is ordinary steering: check it against the
    # full-forward scorer, which shares no code with the prefix-cache path.
    direct = behaviour_probabilities(tiny, data, Injection(vector, 2, 2.0), progress=False).mean_p_matching
    assert result.plus[1, 1].item() == pytest.approx(direct, abs=1e-5)
    moved = rehomed(vector, 1, 3)
    direct = behaviour_probabilities(tiny, data, Injection(moved, 3, -2.0), progress=False).mean_p_matching
    assert result.minus[0, 2].item() == pytest.approx(direct, abs=1e-5)
    unsteered = behaviour_probabilities(tiny, data, progress=False).mean_p_matching
    assert result.baseline == pytest.approx(unsteered, abs=1e-5)


def test_layer_transfer_zero_multiplier_has_no_effect(tiny):
    data = toy_dataset(4)
    vector = caa_vector(tiny, data, progress=False)
    result = layer_transfer(tiny, vector, data, multiplier=0.0)
    assert result.effect.abs().max() == 0
