"""analysis.size_effect: subset vectors divided by their own size (letter-balanced on request), and
their paired steering effects against unsteered beside random same-norm vectors, on the tiny model."""

import pandas as pd
import pytest
import torch
from helpers.analysis_toy import activations_from, planted_examples, toy_dataset

from analysis.size_effect import steering_effect_by_size, subset_vectors
from analysis.store import load_result, save_result
from caa_lens.evaluation import behaviour_probabilities
from caa_lens.extraction import extract_contrastive
from caa_lens.stats import paired_effect, random_like
from caa_lens.steering import Injection


@pytest.fixture(scope="module")
def toy_extraction(tiny):
    data = toy_dataset(12)
    return data, extract_contrastive(tiny, data, keep_examples=True, progress=False)


def test_subset_vectors_are_divided_by_their_own_size(tiny):
    # Identical differences: every subset's mean equals each difference, whatever n is.
    examples, _, _ = planted_examples(13, d=tiny.cfg.d_model, n_layers=1, noise=0.0)
    acts = activations_from(examples, (1,))
    data = toy_dataset(13)
    vectors = subset_vectors(tiny, acts, data, (1, 2, 5, 13))
    for n, vector in vectors.items():
        assert torch.allclose(vector.directions, examples.positive[0] - examples.negative[0], atol=1e-5)
        assert vector.provenance.n_pairs == n


def test_steering_effect_by_size_is_paired_against_unsteered_with_a_random_null(
    tiny, toy_extraction, tmp_path
):
    data, acts = toy_extraction
    vectors = {n: v.scaled(40.0) for n, v in subset_vectors(tiny, acts, data, (2, 8)).items()}
    result = steering_effect_by_size(
        tiny, vectors, data, layer=2, multiplier=1.5, n_random=2, n_resamples=500
    )
    table = result.table
    assert table.n.tolist() == [2, 8] and result.n_random == 2
    plus = [
        s.p_matching
        for s in behaviour_probabilities(tiny, data, Injection(vectors[8], 2, 1.5), progress=False).items
    ]
    minus = [
        s.p_matching
        for s in behaviour_probabilities(tiny, data, Injection(vectors[8], 2, -1.5), progress=False).items
    ]
    unsteered = [s.p_matching for s in behaviour_probabilities(tiny, data, progress=False).items]
    row = table.iloc[1]
    assert row.plus == pytest.approx(sum(plus) / len(plus), abs=1e-5)
    assert result.baseline == pytest.approx(sum(unsteered) / len(unsteered), abs=1e-5)
    expected = paired_effect(plus, unsteered, n_resamples=500)
    assert (row.plus_effect, row.plus_low, row.plus_high) == pytest.approx(
        (expected.mean, expected.low, expected.high), abs=1e-4
    )
    assert row.minus_effect == pytest.approx(paired_effect(minus, unsteered, n_resamples=10).mean, abs=1e-5)
    assert row.effect == pytest.approx(row.plus - row.minus, abs=1e-6) and row.n_items == len(data)
    # The null band is the range of random same-norm directions' effects (seeds 0 and 1).
    randoms = [
        sum(s.p_matching for s in behaviour_probabilities(
            tiny, data, Injection(random_like(vectors[8], k), 2, 1.5), progress=False
        ).items) / len(data) - result.baseline
        for k in range(2)
    ]  # fmt: skip
    assert (row.null_plus_low, row.null_plus_high) == pytest.approx((min(randoms), max(randoms)), abs=1e-5)
    assert row.plus_vs_null in ("above null", "below null", "inside null")
    save_result(result, tmp_path, "effect")
    pd.testing.assert_frame_equal(load_result(tmp_path, "effect").table, table)


def test_steering_effect_by_size_of_a_zero_vector_is_zero(tiny, toy_extraction):
    data, acts = toy_extraction
    vectors = {n: v.scaled(0.0) for n, v in subset_vectors(tiny, acts, data, (3,)).items()}
    row = steering_effect_by_size(tiny, vectors, data, layer=1, multiplier=4.0, n_resamples=100).table.iloc[0]
    assert (row.plus_effect, row.plus_low, row.plus_high, row.effect) == pytest.approx((0, 0, 0, 0), abs=1e-6)
    assert (row.null_plus_low, row.null_plus_high) == pytest.approx((0, 0), abs=1e-6)  # same norm: zero


def test_letter_balanced_subset_vectors(tiny):
    examples, u, _ = planted_examples(
        21, d=tiny.cfg.d_model, n_layers=1, behaviour_scale=1.0, letter_scale=20.0, noise=0.0
    )
    vectors = subset_vectors(
        tiny, activations_from(examples, (1,)), toy_dataset(21), (8, 21), balance_letters=True
    )
    for vector in vectors.values():
        assert torch.allclose(vector.at(1), 2 * u, atol=1e-5)
        assert "letter-balanced" in vector.provenance.method
