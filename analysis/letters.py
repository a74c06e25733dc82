"""The answer letter inside CAA differences: how much of a vector is "A minus B" rather than behaviour.

CAA reads at the answer-letter token, so each pair's difference holds the behaviour signal plus the
difference between the two letters' representations, with the sign of which letter is matching:
``d_i = b + s_i * L`` (``s_i = +1`` when the matching answer is A). A mean over pairs cancels ``L``
only when matching letters are exactly balanced; an imbalance ``f_A - f_B`` leaves
``(f_A - f_B) * L`` in the vector. On a model where ``||L||`` is tens of times ``||b||`` (the default
model), a 46/54 split already makes the "behaviour" vector mostly a letter vector. This module
measures that and builds vectors and subsets with the letter cancelled. The arithmetic itself (the
balanced mean, the letter axis, the letter share) is ``caa_lens.stats``'s, applied to the per-label
means of ``caa_lens.methods.label_means``; ``caa_lens.methods.contrastive_vector`` (and ``caa_vector``)
build letter-balanced vectors by default.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from caa_lens import stats
from caa_lens.data import ContrastiveDataset, shuffled_indices
from caa_lens.extraction import ContrastiveActivations
from caa_lens.methods import LabelMeans, contrastive_vector, label_means
from caa_lens.vectors import SteeringVector

__all__ = [
    "LetterDecomposition",
    "balanced_indices",
    "balanced_mean_difference",
    "letter_balanced_vector",
    "letter_counts",
    "letter_decomposition",
]


def balanced_indices(dataset: ContrastiveDataset, n: int, seed: int = 0) -> tuple[int, ...]:
    """``n`` item indices with the matching letters as equal as possible (seeded, in dataset order).

    Within each letter the items are taken in one seeded permutation, so the selection is stable.
    """
    letters = sorted({item.matching_letter for item in dataset})
    order = shuffled_indices(len(dataset), seed)
    by_letter = {letter: [i for i in order if dataset[i].matching_letter == letter] for letter in letters}
    share, extra = divmod(n, len(letters))
    chosen: list[int] = []
    for k, letter in enumerate(letters):
        want = share + (1 if k < extra else 0)
        if want > len(by_letter[letter]):
            raise ValueError(
                f"{dataset.name}: {want} items with matching {letter!r} asked for, {len(by_letter[letter])} exist"
            )
        chosen += by_letter[letter][:want]
    return tuple(sorted(chosen))


def _label_means(activations: ContrastiveActivations) -> LabelMeans:
    groups = label_means(activations)
    if len(groups.labels) != 2:
        raise ValueError(
            f"letter analyses need pairs with both of two matching letters, found {list(groups.labels)}"
        )
    return groups


def balanced_mean_difference(activations: ContrastiveActivations) -> Float[Tensor, "layer d_model"]:
    """The mean difference with both matching letters weighted equally: ``b``, the letter cancelled.

    ``caa_lens.stats.letter_balanced_mean`` of the per-letter means (``caa_lens.methods.label_means``:
    the extraction's per-label sums, or its examples).
    """
    return _label_means(activations).balanced.float()


def letter_balanced_vector(model, activations: ContrastiveActivations) -> SteeringVector:
    """A CAA vector from the letter-balanced mean: ``contrastive_vector(model, activations)``.

    Its provenance method is ``"letter_balanced"`` and it records the label counts and letter shares.
    """
    _label_means(activations)
    return contrastive_vector(model, activations, "letter_balanced")


@dataclass(frozen=True, eq=False)
class LetterDecomposition:
    """Per layer: ``letter_norm`` ||L||, ``behaviour_norm`` ||b||, their ratio, the cosine of the
    plain mean difference with each (``cos_mean_letter``, ``cos_mean_behaviour``), and the letter
    share (squared cosine with ``L``) of the plain mean and of the balanced mean
    (``letter_share_mean``, ``letter_share_balanced``).

    ``share_first`` is the fraction of pairs whose matching answer is the first letter (A).
    """

    share_first: float
    table: pd.DataFrame


def letter_decomposition(activations: ContrastiveActivations) -> LetterDecomposition:
    """Split each layer's pair differences into the behaviour part ``b`` and the letter part ``L``.

    ``b`` and ``L`` come from ``caa_lens.stats`` (``letter_balanced_mean``, ``letter_axis``); works on
    the per-label sums of an extraction, examples are not needed.
    """
    groups = _label_means(activations)
    letter, behaviour = groups.axis, groups.balanced
    assert letter is not None  # two labels
    counts = torch.tensor(groups.counts, dtype=torch.float64)
    plain = (groups.means * counts[:, None, None]).sum(0) / counts.sum()
    cosine = torch.nn.functional.cosine_similarity
    table = pd.DataFrame(
        {
            "layer": list(activations.layers),
            "letter_norm": letter.norm(dim=-1).tolist(),
            "behaviour_norm": behaviour.norm(dim=-1).tolist(),
            "letter_to_behaviour": (letter.norm(dim=-1) / behaviour.norm(dim=-1)).tolist(),
            "cos_mean_letter": cosine(plain, letter, dim=-1).tolist(),
            "cos_mean_behaviour": cosine(plain, behaviour, dim=-1).tolist(),
            "letter_share_mean": stats.letter_share(plain, letter).tolist(),
            "letter_share_balanced": stats.letter_share(behaviour, letter).tolist(),
        }
    )
    return LetterDecomposition(float(counts[0] / counts.sum()), table)


def letter_counts(dataset: ContrastiveDataset, indices: Sequence[int] | None = None) -> dict[str, int]:
    """How many items have each matching letter (optionally among ``indices``)."""
    chosen = range(len(dataset)) if indices is None else indices
    counts: dict[str, int] = {}
    for i in chosen:
        letter = dataset[i].matching_letter
        counts[letter] = counts.get(letter, 0) + 1
    return dict(sorted(counts.items()))
