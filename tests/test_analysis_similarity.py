"""analysis.similarity: cosine matrices on constructed vectors beside their baselines."""

import math
from dataclasses import replace

import pandas as pd
import pytest
import torch
from helpers.analysis_toy import activations_from, planted_examples

from analysis.similarity import (
    LayerSimilarity,
    behaviour_similarity,
    cosine_matrix,
    expected_abs_cosine,
    layer_similarity,
    mean_vs_pca,
    method_similarity,
)
from analysis.store import load_result, save_result
from caa_lens.extraction import PairActivations
from caa_lens.methods import mean_difference_vector
from caa_lens.provenance import make_provenance
from caa_lens.vectors import SteeringVector


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
    # Only the vector given: random directions in d_model = 64 dimensions are the baseline.
    assert result.baseline == "random_direction" and result.n_baseline == 200
    assert result.random_abs_cosine == pytest.approx(expected_abs_cosine(tiny.cfg.d_model))
    table = result.by_distance
    assert (table.baseline_low < 0).all() and (table.baseline_high > 0).all()
    assert (table.baseline_mean.abs() < 0.05).all()
    assert (table.vs_baseline == "above baseline").all()


def test_expected_abs_cosine_matches_simulation():
    draws = torch.randn(20000, 2, 100, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    cosine = torch.nn.functional.cosine_similarity(draws[:, 0], draws[:, 1], dim=-1)
    assert expected_abs_cosine(100) == pytest.approx(float(cosine.abs().mean()), rel=0.02)
    assert expected_abs_cosine(100) == pytest.approx(math.sqrt(2 / (math.pi * 100)), rel=0.01)


def layered_examples(shared: torch.Tensor, own_scale: float, private_scale: float) -> PairActivations:
    """Differences over 5 layers = each pair's own component (the same at every layer, ``own_scale``)
    + layer-private noise + a direction ``shared`` by every pair at every layer: what carries over
    from layer to layer is either shared by the pairs or carried by each pair alone."""
    generator = torch.Generator().manual_seed(3)
    n, layers, d = 40, 5, shared.shape[-1]
    own = torch.randn(n, 1, d, generator=generator).expand(n, layers, d) * own_scale
    private = torch.randn(n, layers, d, generator=generator) * private_scale
    negative = torch.randn(n, layers, d, generator=generator)
    letters = tuple("AB"[i % 2] for i in range(n))
    return PairActivations(negative + own + private + shared, negative, letters, letters[::-1])


def test_sign_shuffled_baseline_separates_shared_direction_from_carried_noise(tiny):
    d = tiny.cfg.d_model
    direction = torch.zeros(d)
    direction[0] = 3.0
    # Every pair carries its own component from layer to layer and no direction is shared: the mean
    # differences of neighbouring layers are alike all the same, and so are the shuffled ones.
    carried = activations_from(layered_examples(torch.zeros(d), 1.0, 0.3), tuple(range(5)))
    result = layer_similarity(mean_difference_vector(tiny, carried), carried, n_baseline=100)
    assert result.baseline == "sign_shuffled" and result.n_baseline == 100
    assert result.mean_at([1]) > 0.8  # "neighbours are similar" ...
    assert result.baseline_at([1]) > 0.8  # ... and so are sign-shuffled means: nothing beyond noise
    assert (result.by_distance.vs_baseline == "inside baseline").all()
    # A direction shared by the pairs over layer-private noise: alike beyond the baseline.
    planted = activations_from(layered_examples(direction, 0.0, 1.0), tuple(range(5)))
    result = layer_similarity(mean_difference_vector(tiny, planted), planted, n_baseline=100)
    assert result.mean_at([1]) > 0.8 and abs(result.baseline_at([1])) < 0.2
    assert (result.by_distance.vs_baseline == "above baseline").all()
    # The baseline only needs the vector's layers, wherever the activations hold them.
    picked = layer_similarity(mean_difference_vector(tiny, planted).select([1, 3]), planted, n_baseline=20)
    assert picked.layers == (1, 3) and picked.by_distance.distance.tolist() == [2]


def test_sign_shuffled_baseline_needs_the_vectors_own_examples(tiny):
    examples, _, _ = planted_examples(10, d=tiny.cfg.d_model, n_layers=2)
    acts = activations_from(examples, (1, 2))
    vector = mean_difference_vector(tiny, acts)
    with pytest.raises(ValueError, match="keep_examples=True"):
        layer_similarity(vector, replace(acts, examples=None))
    with pytest.raises(ValueError, match="not the data the vector was built from"):
        layer_similarity(vector, replace(acts, dataset_hash="other"))
    with pytest.raises(ValueError, match=r"lack the vector's layers \[3\]"):
        layer_similarity(SteeringVector(vector.directions, (1, 3), vector.provenance), acts)
    with pytest.raises(ValueError, match="n_baseline must be at least 1"):
        layer_similarity(vector, n_baseline=0)


def test_layer_similarity_round_trips_through_the_store(tiny, tmp_path):
    examples, _, _ = planted_examples(12, d=tiny.cfg.d_model, n_layers=3)
    acts = activations_from(examples, (0, 1, 2))
    original = layer_similarity(mean_difference_vector(tiny, acts), acts, n_baseline=10)
    save_result(original, tmp_path, "similarity")
    loaded = load_result(tmp_path, "similarity")
    assert type(loaded) is LayerSimilarity and loaded.baseline == "sign_shuffled" and loaded.n_baseline == 10
    assert loaded.random_abs_cosine == original.random_abs_cosine
    pd.testing.assert_frame_equal(loaded.by_distance, original.by_distance)
    torch.testing.assert_close(loaded.matrix, original.matrix)


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
    assert set(result.table.columns) == {"layer", "cosine", "norm_letter_balanced", "norm_pca_within_label"}


def test_method_similarity_needs_same_layers(tiny):
    a = vector_of(tiny, torch.randn(2, tiny.cfg.d_model))
    with pytest.raises(ValueError, match="different layers"):
        method_similarity(a, a.select([0]))
