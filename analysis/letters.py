"""The answer letter inside CAA differences: how much of a vector is "A minus B" rather than behaviour.

CAA reads at the answer-letter token, so each pair's difference holds the behaviour signal plus the
difference between the two letters' representations, with the sign of which letter is matching:
``d_i = b + s_i * L`` (``s_i = +1`` when the matching answer is A). A mean over pairs cancels ``L``
only when matching letters are exactly balanced; an imbalance ``f_A - f_B`` leaves
``(f_A - f_B) * L`` in the vector. On a model where ``||L||`` is tens of times ``||b||`` (the default
model), a 46/54 split already makes the "behaviour" vector mostly a letter vector. This module
measures that and builds vectors and subsets with the letter cancelled.
"""

from collections.abc import Sequence
from dataclasses import dataclass, replace

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from caa_lens.data import ContrastiveDataset, shuffled_indices
from caa_lens.extraction import ContrastiveActivations
from caa_lens.methods import mean_difference_vector
from caa_lens.vectors import SteeringVector


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


def _split(activations: ContrastiveActivations) -> tuple[Tensor, Tensor]:
    if activations.examples is None:
        raise ValueError("letter analyses need per-example activations: extract with keep_examples=True")
    examples = activations.examples
    letters = sorted(set(examples.positive_labels))
    if len(letters) != 2:
        raise ValueError(f"letter analyses need pairs with both of two matching letters, found {letters}")
    first = torch.tensor([label == letters[0] for label in examples.positive_labels])
    differences = examples.positive.double() - examples.negative.double()
    return differences, first


def balanced_mean_difference(activations: ContrastiveActivations) -> Float[Tensor, "layer d_model"]:
    """The mean difference with both matching letters weighted equally: ``b``, the letter cancelled."""
    differences, first = _split(activations)
    return ((differences[first].mean(0) + differences[~first].mean(0)) / 2).float()


def letter_balanced_vector(model, activations: ContrastiveActivations) -> SteeringVector:
    """A CAA vector from ``balanced_mean_difference`` (provenance method notes the balancing)."""
    base = mean_difference_vector(model, activations)
    provenance = replace(base.provenance, method="mean_difference; letter-balanced")
    return SteeringVector(balanced_mean_difference(activations), base.layers, provenance)


@dataclass(frozen=True, eq=False)
class LetterDecomposition:
    """Per layer: ``letter_norm`` ||L||, ``behaviour_norm`` ||b||, their ratio, and the cosine of the
    plain mean difference with each (``cos_mean_letter``, ``cos_mean_behaviour``).

    ``share_first`` is the fraction of pairs whose matching answer is the first letter (A).
    """

    share_first: float
    table: pd.DataFrame


def letter_decomposition(activations: ContrastiveActivations) -> LetterDecomposition:
    """Split each layer's pair differences into the behaviour part ``b`` and the letter part ``L``."""
    differences, first = _split(activations)
    mean_first, mean_second = differences[first].mean(0), differences[~first].mean(0)
    letter, behaviour = (mean_first - mean_second) / 2, (mean_first + mean_second) / 2
    plain = differences.mean(0)
    cosine = torch.nn.functional.cosine_similarity
    table = pd.DataFrame(
        {
            "layer": list(activations.layers),
            "letter_norm": letter.norm(dim=-1).tolist(),
            "behaviour_norm": behaviour.norm(dim=-1).tolist(),
            "letter_to_behaviour": (letter.norm(dim=-1) / behaviour.norm(dim=-1)).tolist(),
            "cos_mean_letter": cosine(plain, letter, dim=-1).tolist(),
            "cos_mean_behaviour": cosine(plain, behaviour, dim=-1).tolist(),
        }
    )
    return LetterDecomposition(float(first.double().mean()), table)


def letter_counts(dataset: ContrastiveDataset, indices: Sequence[int] | None = None) -> dict[str, int]:
    """How many items have each matching letter (optionally among ``indices``)."""
    chosen = range(len(dataset)) if indices is None else indices
    counts: dict[str, int] = {}
    for i in chosen:
        letter = dataset[i].matching_letter
        counts[letter] = counts.get(letter, 0) + 1
    return dict(sorted(counts.items()))
