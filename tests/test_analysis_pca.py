"""analysis.pca: planted directions and clusters with known answers."""

import pytest
import torch
from helpers.analysis_toy import planted_examples

from analysis.pca import (
    cell_weights,
    logistic_probe_accuracy,
    mean_difference_probe_accuracy,
    pair_accuracy,
    pca_projections,
    principal_components,
    separability,
)


def test_principal_components_recover_planted_direction():
    generator = torch.Generator().manual_seed(0)
    direction = torch.randn(32, generator=generator)
    direction /= direction.norm()
    x = (
        torch.randn(500, 32, generator=generator) * 0.1
        + torch.randn(500, 1, generator=generator) * 3 * direction
    )
    axes, explained = principal_components(x + 7.0, n_components=2)  # an offset must not matter
    assert abs(float(axes[0] @ direction)) > 0.999
    assert explained[0] > 0.95
    assert abs(float(axes[0] @ axes[1])) < 1e-5


def test_principal_components_sign_is_fixed():
    x = torch.randn(50, 8, generator=torch.Generator().manual_seed(3))
    axes, _ = principal_components(x)
    flipped, _ = principal_components(-x)
    assert torch.allclose(axes, flipped, atol=1e-5)  # the sign convention does not depend on the data's sign


def test_pca_projections_layout():
    examples, _, _ = planted_examples(30, d=16, n_layers=3, behaviour_scale=5.0)
    result = pca_projections(examples, (4, 5, 6))
    assert result.coordinates.shape == (3, 60, 2)
    assert result.side.tolist() == [1] * 30 + [0] * 30
    assert result.letters == examples.positive_labels + examples.negative_labels
    # The planted behaviour axis is the first component: it separates the sides by sign.
    first = result.coordinates[0, :, 0]
    assert (torch.sign(first[:30]) != torch.sign(first[30:])).all()
    with pytest.raises(ValueError, match="layer names"):
        pca_projections(examples, (4, 5))


@pytest.mark.parametrize("probe", ["logistic", "mean_difference"])
def test_separability_planted_behaviour_and_random_letter(probe):
    examples, _, _ = planted_examples(200, d=16, n_layers=2, behaviour_scale=3.0)
    table = separability(examples, (0, 1), probe=probe, seed=0).table
    assert (table.behaviour_accuracy > 0.97).all()
    assert ((table.letter_accuracy - 0.5).abs() < 0.15).all()  # random letters: chance
    assert table.n_test.iloc[0] == 120 and table.n_train.iloc[0] == 280


@pytest.mark.parametrize("probe", ["logistic", "mean_difference"])
def test_separability_letter_dominates(probe):
    examples, _, _ = planted_examples(200, d=16, n_layers=1, behaviour_scale=0.0, letter_scale=3.0)
    table = separability(examples, (0,), probe=probe).table
    assert table.letter_accuracy.iloc[0] > 0.97
    assert abs(table.behaviour_accuracy.iloc[0] - 0.5) < 0.15


def test_separability_is_seeded():
    examples, _, _ = planted_examples(60, d=16, n_layers=1, behaviour_scale=0.5)
    first = separability(examples, (0,), seed=3).table
    assert first.equals(separability(examples, (0,), seed=3).table)


def test_probes_on_a_trivial_split():
    x = torch.tensor([[0.0, 1.0], [0.1, 1.2], [5.0, 1.0], [5.2, 0.9]])
    y = torch.tensor([0, 0, 1, 1])
    assert logistic_probe_accuracy(x, y, x, y) == 1.0
    assert mean_difference_probe_accuracy(x, y, x, y) == 1.0
    assert mean_difference_probe_accuracy(x, y, x, 1 - y) == 0.0


def test_separability_rejects_bad_fraction():
    examples, _, _ = planted_examples(4, d=4, n_layers=1)
    with pytest.raises(ValueError, match="cannot split"):
        separability(examples, (0,), test_fraction=1.0)


def test_cell_weights_equalise_cells():
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 1, 1])
    groups = torch.tensor([0, 0, 1, 0, 1, 1, 1, 1])
    weights = cell_weights(labels, groups)
    assert weights.sum().item() == pytest.approx(1.0)
    for label in (0, 1):
        for group in (0, 1):
            cell = (labels == label) & (groups == group)
            assert weights[cell].sum().item() == pytest.approx(0.25)
    assert torch.allclose(
        cell_weights(labels, None)[labels == 0].sum(), torch.tensor(0.5, dtype=torch.float64)
    )


def test_pair_accuracy_ignores_an_unbalanced_letter():
    # A huge letter part and a small, consistent behaviour part: the letter-balanced direction ranks
    # every held-out pair correctly, whatever the letter shares of the split.
    examples, _, _ = planted_examples(60, d=8, n_layers=1, behaviour_scale=0.2, letter_scale=20.0, noise=0.0)
    train, test = torch.arange(0, 40), torch.arange(40, 60)
    assert pair_accuracy(examples, 0, train, test) == 1.0
    table = separability(examples, (0,)).table
    assert "pair_accuracy" in table.columns and table.pair_accuracy.iloc[0] == 1.0


def split_by_sign(values: torch.Tensor, group: torch.Tensor) -> bool:
    """True when every member of ``group`` has one sign and every other value the opposite one."""
    inside, outside = torch.sign(values[group]).unique(), torch.sign(values[~group]).unique()
    return len(inside) == len(outside) == 1 and bool(inside * outside == -1)


def test_pca_projections_within_letter_takes_the_letter_out():
    """A letter 20x the behaviour: pooled PC1 separates the answer letters; centred within each
    letter, PC1 separates the behaviour sides instead."""
    examples, _, _ = planted_examples(60, d=16, n_layers=1, behaviour_scale=1.0, letter_scale=20.0, noise=0.1)
    letters = examples.positive_labels + examples.negative_labels
    is_a = torch.tensor([x == "A" for x in letters])
    pooled = pca_projections(examples, (0,))
    first = pooled.coordinates[0, :, 0]
    assert pooled.centring == "pooled"
    assert split_by_sign(first, is_a)  # the letters apart
    within = pca_projections(examples, (0,), centring="within_letter")
    first = within.coordinates[0, :, 0]
    assert within.centring == "within_letter" and within.letters == pooled.letters
    assert split_by_sign(first, within.side == 1) and not split_by_sign(first, is_a)  # the sides apart
    with pytest.raises(ValueError, match="unknown centring 'letter'"):
        getattr(pca_projections, "__wrapped__", pca_projections)(examples, (0,), centring="letter")
