"""analysis._scoring: per-item scores on the prefix cache equal full forward passes (behaviour_probabilities),
for one vector at a time (layer_scores) and for several injections per row at other layers (condition_scores)."""

import pytest
import torch
from helpers.analysis_toy import toy_dataset

from analysis._scoring import condition_scores, layer_scores, prefix_batches
from caa_lens.evaluation import behaviour_probabilities
from caa_lens.methods import caa_vector
from caa_lens.steering import Injection


def full_pass(model, data, injections=()):
    scores = behaviour_probabilities(model, data, injections, batch_size=2, progress=False)
    return torch.tensor([s.p_matching for s in scores.items])


@pytest.fixture(scope="module")
def setup(tiny):
    data = toy_dataset(5)
    vector = caa_vector(tiny, data, progress=False).scaled(40.0)
    return data, vector, vector.scaled(-0.5)


def test_condition_scores_equal_full_passes_item_by_item(tiny, setup):
    data, v, w = setup
    batches = prefix_batches(tiny, data, items_per_batch=3)
    conditions = [(), ((v, 2, 1.0),), ((v, 2, 1.0), (w, 1, 2.0))]
    scores = condition_scores(tiny, batches, conditions, max_rows=4)  # chunks of 1 condition
    assert scores.shape == (3, len(data))
    for k, condition in enumerate(conditions):
        injections = [Injection(vector, layer, m) for vector, layer, m in condition]
        torch.testing.assert_close(scores[k], full_pass(tiny, data, injections), atol=1e-5, rtol=1e-5)


def test_layer_scores_equal_full_passes_item_by_item(tiny, setup):
    data, v, w = setup
    scores = layer_scores(tiny, prefix_batches(tiny, data, 2), [v, w], 2, [0.0, 1.5], max_rows=3)
    for j, vector in enumerate((v, w)):
        for m, multiplier in enumerate((0.0, 1.5)):
            expected = full_pass(tiny, data, Injection(vector, 2, multiplier))
            torch.testing.assert_close(scores[:, j, m], expected, atol=1e-5, rtol=1e-5)
