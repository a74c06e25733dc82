"""Per-label mean differences of contrastive activations, and how much of a vector is the answer letter.

At the answer-letter token each pair's difference is ``b + s * L``: the behaviour ``b`` plus the letter
axis ``L`` (half the difference between the mean differences of A-matching and B-matching pairs), with
``s = +1`` or ``-1`` by which label is matching. ``label_means`` gives each matching label's mean
difference (``LabelMeans``: the letter-balanced mean, ``L`` and each layer's letter share), and
``letter_record`` writes the label counts and shares into a vector's provenance, warning above
``LETTER_SHARE_LIMIT``.
"""

import warnings
from dataclasses import dataclass, replace

import torch
from jaxtyping import Float
from torch import Tensor

from caa_lens import stats
from caa_lens.extraction import ContrastiveActivations
from caa_lens.provenance import Provenance

__all__ = [
    "LETTER_SHARE_LIMIT",
    "LabelMeans",
    "label_means",
    "labels_or_none",
    "letter_record",
    "one_label_note",
]

# A vector with more than this share of its squared norm along the letter axis is mostly "A minus B".
LETTER_SHARE_LIMIT = 0.25


@dataclass(frozen=True, eq=False)
class LabelMeans:
    """Per matching answer label (sorted): its pair count and mean difference, float64.

    ``balanced`` is the letter-balanced mean (each label weighs the same) and ``axis`` the letter axis
    ``L`` (two labels only), both by ``caa_lens.stats`` (each label's mean stands in for its pairs).
    """

    labels: tuple[str, ...]
    counts: tuple[int, ...]
    means: Float[Tensor, "label layer d_model"]

    @property
    def balanced(self) -> Float[Tensor, "layer d_model"]:
        return stats.letter_balanced_mean(self.means, self.labels)

    @property
    def axis(self) -> Float[Tensor, "layer d_model"] | None:
        return stats.letter_axis(self.means, self.labels) if len(self.labels) == 2 else None

    def shares(self, directions: Float[Tensor, "layer d_model"]) -> Float[Tensor, " layer"] | None:
        """Each layer's letter share of ``directions`` (None without exactly two labels)."""
        axis = self.axis
        return None if axis is None else stats.letter_share(directions.double(), axis)


def label_means(activations: ContrastiveActivations) -> LabelMeans:
    """The per-matching-label mean differences: from the extraction's per-label sums, else its examples.

    Raises:
        ValueError: the activations carry neither (assembled by hand without ``label_sums``).
    """
    if activations.label_sums is not None:
        sums = activations.label_sums.double()
        counts = torch.tensor(activations.label_counts, dtype=torch.float64)
        means = (sums[:, 0] - sums[:, 1]) / counts[:, None, None]
        return LabelMeans(activations.labels, activations.label_counts, means)
    if activations.examples is not None:
        examples = activations.examples
        differences = examples.positive.double() - examples.negative.double()
        labels = tuple(sorted(set(examples.positive_labels)))
        masks = [torch.tensor([x == label for x in examples.positive_labels]) for label in labels]
        means = torch.stack([differences[mask].mean(0) for mask in masks])
        return LabelMeans(labels, tuple(int(mask.sum()) for mask in masks), means)
    raise ValueError(
        f"activations of {activations.dataset!r} have no per-label sums and no examples, so the matching "
        "labels cannot be balanced: extract them with extract_contrastive (which records per-label sums), "
        "or ask for method='mean_difference' (the plain mean, which keeps any letter imbalance)"
    )


def labels_or_none(activations: ContrastiveActivations) -> LabelMeans | None:
    """``label_means`` where the activations carry per-label sums or examples, else None."""
    has_labels = activations.label_sums is not None or activations.examples is not None
    return label_means(activations) if has_labels else None


def one_label_note(groups: LabelMeans, dataset: str) -> str:
    """Warn that ``groups`` has one matching label (no letter balancing); the note for the method name."""
    note = (
        f"letter balancing impossible: every pair's matching answer is {groups.labels[0]!r}, so no other "
        "label's pairs can cancel the letter"
    )
    warnings.warn(
        f"{dataset}: {note}; using the plain mean, which holds the direction of that answer label as well "
        "as the behaviour. Add pairs whose matching answer is another label to separate them.",
        UserWarning,
        stacklevel=3,
    )
    return note


def letter_record(
    provenance: Provenance,
    directions: Tensor,
    layers: tuple[int, ...],
    groups: LabelMeans | None,
    advice: str,
) -> Provenance:
    """``provenance`` with the label counts and letter shares; warns when a layer is mostly letter.

    The share is recorded at every layer. The warning needs the letter axis to be longer than the
    letter-balanced mean as well: where it is shorter, there is little letter to tilt the vector, and
    the "axis" (a difference of two label means) is largely sampling noise, which lies along whatever
    varies most between pairs, often the behaviour itself, so its cosine says little.
    """
    shares = None if groups is None else groups.shares(directions)
    if groups is None or shares is None:
        return provenance if groups is None else replace(provenance, label_counts=_counts(groups))
    record = {str(layer): float(share) for layer, share in zip(layers, shares, strict=True)}
    axis = groups.axis
    assert axis is not None  # shares exist
    letter_norm, behaviour_norm = axis.norm(dim=-1), groups.balanced.norm(dim=-1)
    high = [
        k
        for k, share in enumerate(shares)
        if share > LETTER_SHARE_LIMIT and letter_norm[k] > behaviour_norm[k]
    ]
    if high:
        listed = ", ".join(
            f"layer {layers[k]}: {float(shares[k]):.2f} (|L| {float(letter_norm[k]):.3g}, |b| "
            f"{float(behaviour_norm[k]):.3g})"
            for k in high
        )
        counts = ", ".join(f"{n} {label}" for label, n in _counts(groups).items())
        warnings.warn(
            f"{provenance.dataset}: the {provenance.method} vector is mostly the answer letter at layers "
            f"{[layers[k] for k in high]} (letter share, its squared cosine with the letter axis L: {listed}; "
            f"matching labels {counts}). {advice}",
            UserWarning,
            stacklevel=3,
        )
    return replace(provenance, label_counts=_counts(groups), letter_share=record)


def _counts(groups: LabelMeans) -> dict[str, int]:
    return dict(zip(groups.labels, groups.counts, strict=True))
