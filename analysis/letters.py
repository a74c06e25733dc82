"""The answer letter inside CAA differences: how much of a vector is "A minus B" rather than behaviour.

CAA reads at the answer-letter token, so each pair's difference holds the behaviour signal plus the
difference between the two letters' representations, with the sign of which letter is matching:
``d_i = b + s_i * L`` (``s_i = +1`` when the matching answer is A). A mean over pairs cancels ``L``
only when matching letters are exactly balanced; an imbalance ``f_A - f_B`` leaves
``(f_A - f_B) * L`` in the vector. On a model where ``||L||`` is tens of times ``||b||`` (the default
model), a 46/54 split already makes the "behaviour" vector mostly a letter vector. This module
measures that and builds vectors and subsets with the letter cancelled: letter-balanced subsets of a
dataset, the letter-balanced mean of any subset of pair differences (for the sample-size analyses),
the letter taken out of activations (for the PCA picture), and a sweep's effects split into a
behaviour push and a letter push. The arithmetic of whole extractions (the balanced mean, the letter
axis, the letter share) is ``caa_lens.stats``'s, applied to the per-label means of
``caa_lens.letter_balance.label_means``; ``caa_lens.methods.contrastive_vector`` (and ``caa_vector``) build
letter-balanced vectors by default.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from caa_lens import stats
from caa_lens.data import ContrastiveDataset, shuffled_indices
from caa_lens.extraction import ContrastiveActivations
from caa_lens.letter_balance import LabelMeans, label_means
from caa_lens.methods import contrastive_vector
from caa_lens.stats import null_band
from caa_lens.vectors import SteeringVector

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

__all__ = [
    "LetterDecomposition",
    "balanced_indices",
    "balanced_mean_difference",
    "balanced_subset",
    "first_letter_flags",
    "letter_balanced_vector",
    "letter_codes",
    "letter_counts",
    "letter_decomposition",
    "letter_mean",
    "letter_mean_weights",
    "letter_split",
    "within_letter_centred",
    "without_letter",
]


def balanced_indices(dataset: ContrastiveDataset, n: int, seed: int | None = 0) -> tuple[int, ...]:
    """``n`` item indices with the matching letters as equal as possible (seeded, in dataset order).

    Within each letter the items are taken in one seeded permutation, so the selection is stable;
    ``seed=None`` takes each letter's first items in dataset order instead.
    """
    letters = sorted({item.matching_letter for item in dataset})
    order = list(range(len(dataset))) if seed is None else shuffled_indices(len(dataset), seed)
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


def balanced_subset(dataset: ContrastiveDataset, n: int, seed: int | None, suffix: str) -> ContrastiveDataset:
    """``dataset.select(balanced_indices(dataset, n, seed), suffix)``: ``n`` items, the matching letters
    as equal as possible. At the answer token an unbalanced set's vector is mostly the letter
    difference on the default model."""
    return dataset.select(balanced_indices(dataset, n, seed), suffix)


def _label_means(activations: ContrastiveActivations) -> LabelMeans:
    groups = label_means(activations)
    if len(groups.labels) != 2:
        raise ValueError(
            f"letter analyses need pairs with both of two matching letters, found {list(groups.labels)}"
        )
    return groups


def balanced_mean_difference(activations: ContrastiveActivations) -> Float[Tensor, "layer d_model"]:
    """The mean difference with both matching letters weighted equally: ``b``, the letter cancelled.

    ``caa_lens.stats.letter_balanced_mean`` of the per-letter means (``caa_lens.letter_balance.label_means``:
    the extraction's per-label sums, or its examples).
    """
    return _label_means(activations).balanced.float()


def letter_balanced_vector(model: "TransformerBridge", activations: ContrastiveActivations) -> SteeringVector:
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


# ------------------------------------------------------------------- per-pair differences and subsets


def first_letter_flags(labels: Sequence[str]) -> Bool[Tensor, " pair"]:
    """Which pairs' matching letter is the first (alphabetically) of ``labels``: the ``first`` argument
    of ``letter_mean``.

    >>> first_letter_flags(["B", "A", "A"]).tolist()
    [False, True, True]
    """
    return torch.tensor([label == min(labels) for label in labels])


def letter_mean(
    differences: Float[Tensor, "pair layer d_model"], first: Bool[Tensor, " pair"] | None = None
) -> Float[Tensor, "layer d_model"]:
    """Mean difference; with ``first`` (pairs whose matching letter is the first one), the mean of the
    two letters' means, so the letter cancels. A one-letter set falls back to the plain mean.

    ``caa_lens.stats.letter_balanced_mean`` does this for a whole extraction; this one serves the
    subsets of the sample-size analyses, which need the fallback and float32 results.
    """
    if first is None or bool(first.all()) or not bool(first.any()):
        return differences.double().mean(0).float()
    return ((differences[first].double().mean(0) + differences[~first].double().mean(0)) / 2).float()


def letter_mean_weights(n: int, first: Bool[Tensor, " pair"] | None) -> Float[Tensor, " pair"]:
    """Weights w with sum_i w_i d_i == ``letter_mean(d, first)`` (the plain mean without ``first``)."""
    if first is None or bool(first.all()) or not bool(first.any()):
        return torch.full((n,), 1.0 / n, dtype=torch.float64)
    count_first = first.sum().double()
    return torch.where(first, 0.5 / count_first, 0.5 / (n - count_first)).double()


def without_letter(
    flat: Float[Tensor, "pair feature"], first: Bool[Tensor, " pair"]
) -> Float[Tensor, "pair feature"]:
    """Each pair's difference less its letter part ``+-(mean_first - mean_other) / 2`` (both letters
    present): what is left has no letter, and its plain mean is ``letter_mean`` of the original."""
    letter = (flat[first].mean(0) - flat[~first].mean(0)) / 2
    return flat - torch.where(first, 1.0, -1.0).double()[:, None] * letter


# ------------------------------------------------------------------------------- activations (PCA)


def letter_codes(letters: Sequence[str]) -> Int[Tensor, " example"]:
    """Each example's answer letter as an integer code, the letters numbered in sorted order.

    >>> letter_codes(["B", "A", "B"]).tolist()
    [1, 0, 1]
    """
    codes = {letter: k for k, letter in enumerate(sorted(set(letters)))}
    return torch.tensor([codes[letter] for letter in letters])


def within_letter_centred(
    x: Float[Tensor, "example layer d"], letters: Sequence[str]
) -> Float[Tensor, "example layer d"]:
    """Every example centred on the mean of the examples with its answer letter: the letter clusters
    taken out, what varies within a letter left."""
    group = letter_codes(letters)
    means = torch.stack([x[group == g].double().mean(0) for g in range(len(set(letters)))])
    return (x.double() - means[group]).float()


# ------------------------------------------------------------------------ a sweep's effects, split


def _control_of(name: str) -> str | None:
    """``random:<vector>:<seed>`` -> ``<vector>`` (caa_lens.stats.with_null's naming rule), else None."""
    return name.split(":")[1] if name.startswith("random:") and name.count(":") >= 2 else None


def _split_cells(results: pd.DataFrame, n_resamples: int, seed: int) -> pd.DataFrame:
    labels = sorted(results["matching_label"].unique())
    if len(labels) != 2:
        raise ValueError(f"the letter split needs two matching labels, got {labels}")
    rows = []
    for (name, layer), group in results.groupby(["vector", "layer"], sort=True):
        base = group[group["multiplier"] == 0].set_index("item_index")["p_matching"]
        for multiplier, cell in group[group["multiplier"] != 0].groupby("multiplier", sort=True):
            change = cell["p_matching"].to_numpy() - base.loc[cell["item_index"]].to_numpy()
            first = (cell["matching_label"] == labels[0]).to_numpy()
            parts = change[first], change[~first]
            if not all(len(part) for part in parts):
                continue
            # Items of each letter resampled apart, with one private generator per cell (same seed).
            rng = np.random.default_rng(seed)
            means = [part[rng.integers(0, len(part), (n_resamples, len(part)))].mean(1) for part in parts]
            behaviour, letter = (means[0] + means[1]) / 2, (means[0] - means[1]) / 2
            point_b, point_l = (
                (parts[0].mean() + parts[1].mean()) / 2,
                (parts[0].mean() - parts[1].mean()) / 2,
            )
            row = {"vector": name, "layer": layer, "multiplier": multiplier}
            row |= {f"n_{labels[0]}": len(parts[0]), f"n_{labels[1]}": len(parts[1])}
            for key, point, draws in (("behaviour", point_b, behaviour), ("letter", point_l, letter)):
                low, high = np.quantile(draws, [0.025, 0.975])
                row |= {key: point, f"{key}_low": min(low, point), f"{key}_high": max(high, point)}
            # The effect is behaviour + (f_first - f_second) * letter: the letter's part of it.
            row["letter_part_of_effect"] = point_l * (len(parts[0]) - len(parts[1])) / len(change)
            rows.append(row)
    return pd.DataFrame(rows)


def letter_split(
    results: pd.DataFrame, n_resamples: int = 4000, seed: int = 0, coverage: float = 0.95
) -> pd.DataFrame:
    """How much of each cell's effect is a behaviour push and how much a letter push.

    With e_A, e_B the mean paired effects on A- and B-matching items (A the first label), a behaviour
    push moves both by ``behaviour = (e_A + e_B) / 2`` and a push toward letter A moves them by
    ``+letter`` and ``-letter``, ``letter = (e_A - e_B) / 2``; the overall effect is
    ``behaviour + (f_A - f_B) * letter`` (``letter_part_of_effect`` is the second term). Each has a
    95% bootstrap interval (items of each letter resampled apart) and a null band: the same numbers for
    the random controls ``random:<vector>:<seed>`` at the cell (``coverage`` quantile range), with
    ``behaviour_vs_null`` / ``letter_vs_null`` saying where the interval lies.
    """
    cells = _split_cells(results, n_resamples, seed)
    if cells.empty:
        return cells
    targets = cells["vector"].map(_control_of)
    tested, controls = cells[targets.isna()].copy(), cells[targets.notna()]
    for key in ("behaviour", "letter"):
        lows, highs, verdict = [], [], []
        for row in tested.itertuples():
            chosen = controls[
                (targets[controls.index] == row.vector)
                & (controls["layer"] == row.layer)
                & (controls["multiplier"] == row.multiplier)
            ]
            if chosen.empty:
                lows.append(np.nan)
                highs.append(np.nan)
                verdict.append("no controls")
                continue
            band = null_band(chosen[key].tolist(), coverage)
            low, high = getattr(row, f"{key}_low"), getattr(row, f"{key}_high")
            lows.append(band.low)
            highs.append(band.high)
            where = "above null" if low > band.high else "below null" if high < band.low else "inside null"
            verdict.append(where)
        tested[f"{key}_null_low"], tested[f"{key}_null_high"], tested[f"{key}_vs_null"] = lows, highs, verdict
    return tested.reset_index(drop=True)
