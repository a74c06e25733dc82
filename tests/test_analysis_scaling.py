"""analysis.scaling: subset means, bootstrap coverage, split-half stability, effect vs n."""

import math

import pytest
import torch
from helpers.analysis_toy import activations_from, planted_examples, toy_dataset

from analysis.scaling import (
    bootstrap_interval,
    pair_differences,
    sample_size_scaling,
    split_half_cosine,
    steering_effect_by_size,
    subset_indices,
    subset_mean_differences,
    subset_vectors,
)
from caa_lens.data import nested_subsets
from caa_lens.evaluation import behaviour_probabilities
from caa_lens.extraction import extract_contrastive
from caa_lens.steering import Injection


@pytest.fixture(scope="module")
def toy_extraction(tiny):
    data = toy_dataset(12)
    return data, extract_contrastive(tiny, data, keep_examples=True, progress=False)


def test_subset_indices_follow_nested_subsets():
    data = toy_dataset(12)
    indices = subset_indices(data, (1, 3, 8), seed=4)
    subsets = nested_subsets(data, (1, 3, 8), seed=4)
    for n, rows in indices.items():
        assert [data[i] for i in rows] == list(subsets[n].items)
    assert indices[8][:3] == indices[3]  # nested


def test_subset_means_equal_direct_extraction(tiny, toy_extraction):
    data, acts = toy_extraction
    sizes = (1, 2, 5, 8)
    means = subset_mean_differences(pair_differences(acts), subset_indices(data, sizes, seed=0))
    for k, (n, subset) in enumerate(nested_subsets(data, sizes, seed=0).items()):
        direct = extract_contrastive(tiny, subset, progress=False).mean_difference
        assert torch.allclose(means[k], direct, atol=1e-6, rtol=1e-5), n


def test_subset_vectors_are_divided_by_their_own_size(tiny):
    # Identical differences: every subset's mean equals each difference, whatever n is.
    examples, _, _ = planted_examples(13, d=tiny.cfg.d_model, n_layers=1, noise=0.0)
    acts = activations_from(examples, (1,))
    data = toy_dataset(13)
    vectors = subset_vectors(tiny, acts, data, (1, 2, 5, 13))
    for n, vector in vectors.items():
        assert torch.allclose(vector.directions, examples.positive[0] - examples.negative[0], atol=1e-5)
        assert vector.provenance.n_pairs == n


def test_bootstrap_interval_contains_the_truth():
    truth = torch.tensor([2.0, -1.0])
    covered = 0
    for seed in range(40):
        samples = truth + torch.randn(60, 2, generator=torch.Generator().manual_seed(100 + seed))
        low, high = bootstrap_interval(samples, lambda s: s.mean(0), n_boot=300, level=0.9, seed=seed)
        assert low.shape == (2,) and (low <= high).all()
        covered += int(((low <= truth) & (truth <= high)).all())
    assert covered >= 28  # two 90% intervals jointly: about 81% expected, sampling slack below


def test_bootstrap_interval_is_seeded():
    samples = torch.randn(20, 3)
    a = bootstrap_interval(samples, lambda s: s.mean(0), n_boot=50, seed=7)
    b = bootstrap_interval(samples, lambda s: s.mean(0), n_boot=50, seed=7)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    with pytest.raises(ValueError, match="level"):
        bootstrap_interval(samples, lambda s: s.mean(0), level=1.5)


def test_split_half_cosine():
    same = torch.ones(10, 2, 4)
    assert torch.allclose(split_half_cosine(same), torch.ones(2))
    assert split_half_cosine(same[:1]).isnan().all()
    noise = torch.randn(400, 1, 64, generator=torch.Generator().manual_seed(0))
    assert split_half_cosine(noise).abs().item() < 0.3  # pure noise: halves are unrelated


def test_sample_size_scaling_on_planted_data():
    examples, _, _ = planted_examples(89, d=16, n_layers=2, behaviour_scale=1.0, noise=1.0)
    acts = activations_from(examples, (3, 4))
    result = sample_size_scaling(acts, toy_dataset(89), sizes=(1, 5, 21, 89), n_boot=50, n_splits=5)
    table = result.table
    assert len(table) == 4 * 2 and result.sizes == (1, 5, 21, 89)
    full = table[table.n == 89]
    assert full.cosine_to_full.tolist() == pytest.approx([1.0, 1.0], abs=1e-6)
    by_n = table.groupby("n").cosine_to_full.mean()
    assert by_n[21] > by_n[1]  # more pairs, closer to the full-data vector
    assert math.isnan(table[table.n == 1].split_half.iloc[0])
    assert (table.ci_low <= table.ci_high).all()


def test_sample_size_scaling_needs_examples(tiny):
    data = toy_dataset(4)
    acts = extract_contrastive(tiny, data, progress=False)
    with pytest.raises(ValueError, match="keep_examples"):
        sample_size_scaling(acts, data, sizes=(1, 2))


def test_steering_effect_by_size_matches_direct_scoring(tiny, toy_extraction):
    data, acts = toy_extraction
    vectors = {n: v.scaled(40.0) for n, v in subset_vectors(tiny, acts, data, (2, 8)).items()}
    result = steering_effect_by_size(tiny, vectors, data, layer=2, multiplier=1.5)
    assert result.table.n.tolist() == [2, 8]
    direct = behaviour_probabilities(
        tiny, data, Injection(vectors[8], 2, 1.5), progress=False
    ).mean_p_matching
    assert result.table.plus.iloc[1] == pytest.approx(direct, abs=1e-5)
    unsteered = behaviour_probabilities(tiny, data, progress=False).mean_p_matching
    assert result.baseline == pytest.approx(unsteered, abs=1e-5)


def test_letter_balanced_scaling_ignores_the_letter():
    # A big letter part, unbalanced in every small subset: plain vectors wander with the letter
    # share; letter-balanced ones point along the behaviour as soon as both letters are present.
    examples, _, _ = planted_examples(89, d=16, n_layers=1, behaviour_scale=1.0, letter_scale=20.0, noise=0.1)
    acts = activations_from(examples, (0,))
    data = toy_dataset(89)
    plain = sample_size_scaling(acts, data, sizes=(5, 8, 13, 21), n_boot=20, n_splits=4).table
    balanced = sample_size_scaling(
        acts, data, sizes=(5, 8, 13, 21), n_boot=20, n_splits=4, balance_letters=True
    ).table
    mixed = balanced.share_first_letter.between(0.01, 0.99)
    assert (balanced.cosine_to_full[mixed] > 0.97).all()
    assert (balanced.split_half[mixed].dropna() > 0.95).all()
    assert plain.split_half.min() < 0.7  # halves with different letter shares disagree
    assert plain.share_first_letter.tolist() == balanced.share_first_letter.tolist()


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


def test_balanced_split_half_needs_two_pairs_per_letter():
    differences = torch.randn(3, 1, 4)
    assert split_half_cosine(differences, first=torch.tensor([True, True, False])).isnan().all()
    assert (
        not split_half_cosine(torch.randn(4, 1, 4), first=torch.tensor([True, True, False, False]))
        .isnan()
        .any()
    )
