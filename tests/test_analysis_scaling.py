"""analysis.scaling: subset means, held-out agreement against a sign-shuffled null, split-half
stability (plain and letter-balanced)."""

import matplotlib

matplotlib.use("Agg")

import pandas as pd
import pytest
import torch
from helpers.analysis_toy import activations_from, planted_examples, toy_dataset

from analysis import plots
from analysis.scaling import (
    bootstrap_interval,
    heldout_split,
    pair_differences,
    sample_size_scaling,
    split_half_cosine,
    subset_indices,
    subset_mean_differences,
)
from analysis.store import load_result, save_result
from caa_lens.data import nested_subsets, shuffled_indices
from caa_lens.extraction import extract_contrastive


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


SIZES = (1, 2, 3, 5, 8, 13, 21, 34, 55, 89)


def planted_differences(behaviour: float, n_pairs: int = 200, d: int = 64, seed: int = 0):
    """Pair differences b + noise (|b| = ``behaviour``, noise norm about 4 per pair) in one layer."""
    examples, _, _ = planted_examples(
        n_pairs, d=d, n_layers=1, behaviour_scale=behaviour / 2, noise=0.5 / 2**0.5, seed=seed
    )
    return examples, activations_from(examples, (0,))


def test_scaling_of_a_planted_direction_rises_above_the_sign_shuffled_null():
    _, acts = planted_differences(1.0)
    result = sample_size_scaling(acts, toy_dataset(200), sizes=SIZES)
    table = result.table.set_index("n")
    assert result.sizes == SIZES and result.reference_pairs == 200 - 89 and result.n_seeds == 5
    curve = table.cosine_to_heldout
    assert curve[89] > curve[13] > curve[3] > curve[1]  # more pairs, closer to the held-out direction
    assert curve[89] > 0.8  # towards 1 (the reference's own noise caps it a little below)
    assert (curve > table.null_mean).all()
    assert (table.loc[[13, 21, 34, 55, 89], "vs_null"] == "above null").all()
    # The null of a random-sign sum is centred on 0 at every n.
    assert table.null_mean.abs().max() < 0.1
    assert (table.ci_low <= curve).all() and (curve <= table.ci_high).all()


def test_scaling_of_pure_noise_stays_inside_the_null_band_where_cosine_to_full_does_not():
    examples, acts = planted_differences(0.0)
    table = sample_size_scaling(acts, toy_dataset(200), sizes=SIZES).table.set_index("n")
    assert (table.cosine_to_heldout.between(table.null_low, table.null_high)).all()
    assert (table.vs_null == "inside null").all()
    # The old statistic (cosine of the nested size-n mean to the mean of all pairs) on the same noise
    # rises like sqrt(n / N), because the full vector contains the subset: it leaves the null band.
    differences = examples.positive[:, 0] - examples.negative[:, 0]
    order = shuffled_indices(200, 0)
    old = torch.nn.functional.cosine_similarity(differences[order[:89]].mean(0), differences.mean(0), dim=0)
    assert float(old) > table.null_high[89] + 0.2
    assert float(old) == pytest.approx((89 / 200) ** 0.5, abs=0.1)


def test_reference_pairs_never_overlap_the_subsets():
    for seed in range(5):
        pool, reference = heldout_split(30, 8, seed)
        assert sorted(pool + reference) == list(range(30)) and not set(pool) & set(reference)
    # Each seed's size-n vector uses pool[:n]; sizes that leave no room for a reference are refused.
    _, acts = planted_differences(1.0, n_pairs=20)
    with pytest.raises(ValueError, match="drop the sizes above"):
        sample_size_scaling(acts, toy_dataset(20), sizes=(1, 5, 19))
    result = sample_size_scaling(acts, toy_dataset(20), sizes=(1, 5, 10), reference_pairs=6, n_seeds=2)
    assert result.reference_pairs == 6


def test_scaling_statistic_uses_disjoint_pairs():
    # Every pair's difference is unique: the reference and subset vectors are rebuilt from the split.
    _, acts = planted_differences(1.0, n_pairs=30)
    result = sample_size_scaling(acts, toy_dataset(30), sizes=(5,), n_seeds=1, seed=3, n_null=4)
    differences = pair_differences(acts)
    pool, reference = heldout_split(30, 25, 3)
    expected = torch.nn.functional.cosine_similarity(
        differences[pool[:5]].mean(0), differences[reference].mean(0), dim=-1
    )
    assert result.table.cosine_to_heldout.tolist() == pytest.approx(expected.tolist(), abs=1e-5)


def test_scaling_round_trips_through_the_store(tmp_path):
    _, acts = planted_differences(1.0, n_pairs=40)
    result = sample_size_scaling(acts, toy_dataset(40), sizes=(1, 3, 8), n_seeds=2, n_null=5)
    save_result(result, tmp_path, "sample_size")
    loaded = load_result(tmp_path, "sample_size")
    assert (loaded.sizes, loaded.reference_pairs, loaded.n_seeds) == (result.sizes, 32, 2)
    pd.testing.assert_frame_equal(loaded.table, result.table)
    plots.plot_sample_size(loaded, [0], save=tmp_path / "scaling.png")
    assert (tmp_path / "scaling.png").stat().st_size > 1000


def test_sample_size_scaling_needs_examples(tiny):
    data = toy_dataset(4)
    acts = extract_contrastive(tiny, data, progress=False)
    with pytest.raises(ValueError, match="keep_examples"):
        sample_size_scaling(acts, data, sizes=(1, 2))


def test_letter_balanced_scaling_ignores_the_letter():
    # A big letter part, unbalanced in every small subset: plain vectors wander with the letter
    # share; letter-balanced ones point along the behaviour as soon as both letters are present.
    examples, _, _ = planted_examples(89, d=16, n_layers=1, behaviour_scale=1.0, letter_scale=20.0, noise=0.1)
    acts = activations_from(examples, (0,))
    data = toy_dataset(89)
    plain = sample_size_scaling(acts, data, sizes=(5, 8, 13, 21), n_splits=4).table
    balanced = sample_size_scaling(acts, data, sizes=(5, 8, 13, 21), n_splits=4, balance_letters=True).table
    assert (balanced.cosine_to_heldout > 0.97).all()
    # With almost noise-free pairs a random-sign sum of a few is still +-b (an odd count never
    # cancels), so the sign-shuffled band only excludes the curve from 13 pairs on.
    assert (balanced[balanced.n >= 13].vs_null == "above null").all()
    assert (plain.cosine_to_heldout < 0.9).any()  # the letter imbalance of each subset wanders
    assert (balanced.split_half.dropna() > 0.95).all()
    assert plain.split_half.min() < 0.7  # halves with different letter shares disagree
    assert plain.share_first_letter.tolist() == balanced.share_first_letter.tolist()


def test_letter_balanced_null_measures_noise_not_the_letter():
    # Pure noise plus a letter part 40x the behaviour scale: the balanced vectors cancel the letter,
    # so their null must too. A null that kept a randomly signed letter in each pair would be a long
    # vector orthogonal to the (letter-free) reference, and its band would shrink by about a third:
    # noise could then read as "above null".
    def null_width(letter_scale: float):
        examples, _, _ = planted_examples(
            200, d=64, n_layers=1, behaviour_scale=0.0, letter_scale=letter_scale, noise=0.5 / 2**0.5
        )
        table = sample_size_scaling(
            activations_from(examples, (0,)), toy_dataset(200), sizes=SIZES[1:], balance_letters=True
        ).table
        assert (table.vs_null == "inside null").all()
        return float((table.null_high - table.null_low).mean())

    assert null_width(20.0) == pytest.approx(null_width(0.0), rel=0.1)


def test_balanced_split_half_needs_two_pairs_per_letter():
    differences = torch.randn(3, 1, 4)
    assert split_half_cosine(differences, first=torch.tensor([True, True, False])).isnan().all()
    assert (
        not split_half_cosine(torch.randn(4, 1, 4), first=torch.tensor([True, True, False, False]))
        .isnan()
        .any()
    )
