"""analysis.letters: the letter part of CAA differences, on constructed activations with known parts;
letter-balanced subsets and means; a sweep's effects split into a behaviour and a letter push."""

import pandas as pd
import pytest
import torch
from helpers.analysis_toy import activations_from, planted_examples, toy_dataset

from analysis.letters import (
    balanced_indices,
    balanced_mean_difference,
    balanced_subset,
    first_letter_flags,
    letter_balanced_vector,
    letter_codes,
    letter_counts,
    letter_decomposition,
    letter_mean,
    letter_mean_weights,
    letter_split,
    within_letter_centred,
    without_letter,
)
from caa_lens.extraction import PairActivations


def unbalanced(n_pairs=40, share_a=0.25, behaviour=0.5, letter=10.0):
    """Noise-free pairs: difference = 2*behaviour*u -/+ 2*letter*w for matching A/B."""
    examples, u, w = planted_examples(
        n_pairs, d=8, n_layers=2, behaviour_scale=behaviour, letter_scale=letter, noise=0.0
    )
    n_a = int(n_pairs * share_a)
    keep = sorted(
        [i for i, x in enumerate(examples.positive_labels) if x == "A"][:n_a]
        + [i for i, x in enumerate(examples.positive_labels) if x == "B"][: n_pairs // 2]
    )
    index = torch.tensor(keep)
    chosen = PairActivations(
        examples.positive[index],
        examples.negative[index],
        tuple(examples.positive_labels[i] for i in keep),
        tuple(examples.negative_labels[i] for i in keep),
    )
    return activations_from(chosen, (0, 1)), u, w


def test_decomposition_recovers_planted_parts():
    acts, _u, _w = unbalanced()
    result = letter_decomposition(acts)
    table = result.table
    assert table.letter_norm.tolist() == pytest.approx([20.0, 20.0], rel=1e-5)
    assert table.behaviour_norm.tolist() == pytest.approx([1.0, 1.0], rel=1e-5)
    assert table.letter_to_behaviour.tolist() == pytest.approx([20.0, 20.0], rel=1e-5)
    assert 0 < result.share_first < 0.5
    # Fewer matching-A pairs: the plain mean leans towards the B-minus-A letter direction.
    assert (table.cos_mean_letter < -0.9).all() and (table.cos_mean_behaviour < 0.3).all()


def test_balanced_mean_difference_cancels_the_letter(tiny):
    acts, u, _w = unbalanced()
    balanced = balanced_mean_difference(acts)
    assert torch.allclose(balanced, u.expand(2, -1), atol=1e-5)  # exactly 2 * 0.5 * u
    vector = letter_balanced_vector(
        tiny, activations_from(planted_examples(6, d=tiny.cfg.d_model)[0], (1, 2))
    )
    assert vector.layers == (1, 2) and vector.provenance.method == "letter_balanced"


def test_decomposition_needs_both_letters():
    examples, _, _ = planted_examples(4, d=4, n_layers=1)
    same = PairActivations(examples.positive, examples.negative, ("A",) * 4, ("B",) * 4)
    with pytest.raises(ValueError, match="both of two matching letters"):
        letter_decomposition(activations_from(same, (0,)))


def test_balanced_indices():
    data = toy_dataset(12)  # 6 matching A, 6 matching B
    chosen = balanced_indices(data, 6, seed=1)
    assert letter_counts(data, chosen) == {"A": 3, "B": 3}
    assert chosen == balanced_indices(data, 6, seed=1) and chosen == tuple(sorted(chosen))
    assert letter_counts(data, balanced_indices(data, 5)) == {"A": 3, "B": 2}
    with pytest.raises(ValueError, match="matching 'A'"):
        balanced_indices(data, 14)


def test_letter_functions_use_the_stats_module_and_per_label_sums(tiny):
    """The balanced mean is caa_lens.stats' letter_balanced_mean; the decomposition's letter shares are
    stats' letter_share; both work from an extraction's per-label sums without examples."""
    from caa_lens import stats
    from caa_lens.extraction import extract_contrastive

    acts, _u, _w = unbalanced()
    assert acts.examples is not None
    diffs = acts.examples.positive.double() - acts.examples.negative.double()
    labels = acts.examples.positive_labels
    expected = stats.letter_balanced_mean(diffs, labels).float()
    torch.testing.assert_close(balanced_mean_difference(acts), expected)
    table = letter_decomposition(acts).table
    axis = stats.letter_axis(diffs, labels)
    assert table.letter_share_mean.tolist() == pytest.approx(stats.letter_share(diffs.mean(0), axis).tolist())
    assert table.letter_share_balanced.tolist() == pytest.approx([0.0, 0.0], abs=1e-9)
    flat = extract_contrastive(tiny, toy_dataset(6), layers=[1, 2], progress=False)  # no examples
    assert flat.examples is None
    assert letter_decomposition(flat).table.shape[0] == 2
    assert balanced_mean_difference(flat).shape == (2, tiny.cfg.d_model)


def test_balanced_indices_in_dataset_order_and_subsets():
    data = toy_dataset(12)
    chosen = balanced_indices(data, 4, seed=None)  # each letter's first two items
    a_items = [i for i, item in enumerate(data) if item.matching_letter == "A"][:2]
    b_items = [i for i, item in enumerate(data) if item.matching_letter == "B"][:2]
    assert chosen == tuple(sorted(a_items + b_items))
    subset = balanced_subset(data, 6, 1, ":b6")
    assert letter_counts(subset) == {"A": 3, "B": 3} and subset.name.endswith(":b6")
    assert list(subset.items) == [data[i] for i in balanced_indices(data, 6, 1)]


def test_letter_mean_cancels_the_letter_and_its_weights_agree():
    differences = torch.randn(7, 2, 5, generator=torch.Generator().manual_seed(0))
    first = first_letter_flags(["A", "B", "A", "A", "B", "B", "A"])
    assert first.tolist() == [True, False, True, True, False, False, True]
    balanced = letter_mean(differences, first)
    expected = (differences[first].double().mean(0) + differences[~first].double().mean(0)) / 2
    torch.testing.assert_close(balanced, expected.float())
    weights = letter_mean_weights(7, first)
    torch.testing.assert_close(
        (weights @ differences.double().reshape(7, -1)).reshape(2, 5).float(), balanced
    )
    # One letter only, or no flags: the plain mean.
    torch.testing.assert_close(letter_mean(differences), differences.double().mean(0).float())
    torch.testing.assert_close(
        letter_mean(differences, torch.ones(7, dtype=torch.bool)), letter_mean(differences)
    )
    assert torch.equal(letter_mean_weights(4, None), torch.full((4,), 0.25, dtype=torch.float64))
    # Without its letter part each difference's plain mean is the balanced mean, and the letter is gone.
    flat = without_letter(differences.double().reshape(7, -1), first)
    torch.testing.assert_close(flat.mean(0).reshape(2, 5).float(), balanced)
    torch.testing.assert_close(flat[first].mean(0), flat[~first].mean(0))


def test_within_letter_centring_takes_each_letter_mean_out():
    x = torch.randn(6, 2, 3, generator=torch.Generator().manual_seed(1))
    letters = ("B", "A", "B", "A", "A", "B")
    assert letter_codes(letters).tolist() == [1, 0, 1, 0, 0, 1]
    centred = within_letter_centred(x, letters)
    for code in (0, 1):
        rows = letter_codes(letters) == code
        assert centred[rows].double().mean(0).abs().max() < 1e-6
        torch.testing.assert_close(centred[rows], (x[rows].double() - x[rows].double().mean(0)).float())


def sweep_results(letter_push: float, behaviour_push: float, n_per_letter: int = 6) -> pd.DataFrame:
    """A sweep's per-item rows: a tested vector that moves A-matching items by behaviour + letter and
    B-matching ones by behaviour - letter, and two random controls that barely move anything."""
    jitter = [0.004 * ((k % 3) - 1) for k in range(2 * n_per_letter)]
    rows = []
    for vector, scale in (("v", 1.0), ("random:v:0", 0.05), ("random:v:1", -0.05)):
        for k in range(2 * n_per_letter):
            label = "A" if k < n_per_letter else "B"
            sign = 1.0 if label == "A" else -1.0
            moved = scale * (behaviour_push + sign * letter_push) + jitter[k]
            for multiplier, p in ((0.0, 0.5), (1.0, 0.5 + moved)):
                rows.append((vector, 3, multiplier, k, label, p))
    return pd.DataFrame(
        rows, columns=["vector", "layer", "multiplier", "item_index", "matching_label", "p_matching"]
    )


def test_letter_split_attributes_a_letter_push_to_the_letter():
    split = letter_split(sweep_results(letter_push=0.2, behaviour_push=0.0), n_resamples=500)
    (row,) = split.itertuples()
    assert row.vector == "v" and (row.n_A, row.n_B) == (6, 6)
    assert row.letter == pytest.approx(0.2) and abs(row.behaviour) < 0.01
    assert row.letter_low <= row.letter <= row.letter_high
    assert row.letter_vs_null == "above null" and row.behaviour_vs_null == "inside null"
    assert row.letter_part_of_effect == 0  # 6 A and 6 B items: the letter cancels in the mean
    behaviour = letter_split(sweep_results(letter_push=0.0, behaviour_push=0.2), n_resamples=500).iloc[0]
    assert behaviour.behaviour == pytest.approx(0.2) and behaviour.behaviour_vs_null == "above null"
    with pytest.raises(ValueError, match="two matching labels"):
        letter_split(sweep_results(0.2, 0.0).assign(matching_label="A"))
