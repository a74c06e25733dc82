"""analysis.letters: the letter part of CAA differences, on constructed activations with known parts."""

import pytest
import torch
from helpers.analysis_toy import activations_from, planted_examples, toy_dataset

from analysis.letters import (
    balanced_indices,
    balanced_mean_difference,
    letter_balanced_vector,
    letter_counts,
    letter_decomposition,
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
