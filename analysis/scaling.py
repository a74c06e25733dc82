"""Sample-size scaling: how a CAA vector and its steering effect change with the number of pairs.

One extraction with ``keep_examples=True`` holds every pair's activations, so the vector of any
subset is the mean of that subset's per-pair differences: no re-extraction per size. Each size-n
vector is the sum of n differences divided by n (the Patterns paper's code divided by the wrong
count, inflating small-n vectors), over the nested subsets of ``caa_lens.data.nested_subsets``.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import pandas as pd
import torch
from jaxtyping import Bool, Float, Shaped
from torch import Tensor

from analysis._scoring import layer_scores, prefix_batches
from caa_lens.data import FIBONACCI_SIZES, ContrastiveDataset, nested_subsets
from caa_lens.extraction import ContrastiveActivations
from caa_lens.methods import mean_difference_vector
from caa_lens.vectors import SteeringVector


def subset_indices(
    dataset: ContrastiveDataset, sizes: Sequence[int], seed: int = 0
) -> dict[int, tuple[int, ...]]:
    """Item indices of the seeded nested subsets that ``nested_subsets`` returns for ``sizes``.

    ``nested_subsets`` selects items (the same objects) from the dataset, so their positions are
    recovered by identity: the analyses use exactly the subsets the rest of the package uses.
    """
    position = {id(item): index for index, item in enumerate(dataset.items)}
    return {
        n: tuple(position[id(item)] for item in subset.items)
        for n, subset in nested_subsets(dataset, sizes, seed).items()
    }


def pair_differences(activations: ContrastiveActivations) -> Float[Tensor, "pair layer d_model"]:
    """Per-pair differences (matching minus not matching), in float32."""
    if activations.examples is None:
        raise ValueError("per-pair analyses need per-example activations: extract with keep_examples=True")
    return activations.examples.positive.float() - activations.examples.negative.float()


def subset_mean_differences(
    differences: Float[Tensor, "pair layer d_model"], indices: dict[int, tuple[int, ...]]
) -> Float[Tensor, "size layer d_model"]:
    """The mean difference of each subset (divided by the subset's own size), in the order of ``indices``."""
    return torch.stack([differences[list(rows)].double().mean(0) for rows in indices.values()]).float()


def bootstrap_interval(
    samples: Shaped[Tensor, "n *rest"],
    statistic: Callable[[Tensor], Tensor],
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[Tensor, Tensor]:
    """Percentile bootstrap interval of ``statistic`` (resampling the first axis with replacement).

    For a statistic biased by noise, such as the cosine of a resampled mean to a fixed vector (noise
    only lowers it), the interval sits below the point estimate and can exclude it.

    ``statistic`` maps a resample (same shape as ``samples``) to a tensor of any shape; the result is
    the ``(low, high)`` quantiles of its bootstrap distribution, elementwise. Seeded by ``seed``.
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    generator = torch.Generator().manual_seed(seed)
    n = samples.shape[0]
    draws = torch.stack(
        [statistic(samples[torch.randint(n, (n,), generator=generator)]) for _ in range(n_boot)]
    ).double()
    tail = (1 - level) / 2
    return draws.quantile(tail, dim=0).float(), draws.quantile(1 - tail, dim=0).float()


def _cosine_rows(a: Float[Tensor, "b layer d"], b: Float[Tensor, "layer d"]) -> Float[Tensor, "b layer"]:
    return torch.nn.functional.cosine_similarity(a.double(), b.double()[None], dim=-1).float()


def letter_mean(
    differences: Float[Tensor, "pair layer d_model"], first: Bool[Tensor, " pair"] | None = None
) -> Float[Tensor, "layer d_model"]:
    """Mean difference; with ``first`` (pairs whose matching letter is the first one), the mean of the
    two letters' means, so the letter cancels (``analysis.letters``). A one-letter set falls back to
    the plain mean."""
    if first is None or bool(first.all()) or not bool(first.any()):
        return differences.double().mean(0).float()
    return ((differences[first].double().mean(0) + differences[~first].double().mean(0)) / 2).float()


def split_half_cosine(
    differences: Float[Tensor, "pair layer d_model"],
    n_splits: int = 20,
    seed: int = 0,
    first: Bool[Tensor, " pair"] | None = None,
) -> Float[Tensor, " layer"]:
    """Mean cosine between the vectors of two random disjoint halves of the pairs (NaN below 2 pairs).

    With ``first`` each letter is split in half separately and each half's vector is letter-balanced
    (NaN unless each letter has at least two pairs).
    """
    n = differences.shape[0]
    if n < 2:
        return torch.full((differences.shape[1],), float("nan"))
    generator = torch.Generator().manual_seed(seed)
    groups = [torch.arange(n)] if first is None else [first.nonzero()[:, 0], (~first).nonzero()[:, 0]]
    if first is not None and min(len(g) for g in groups) < 2:
        # A half without one of the letters would be a letter vector again: no balanced split exists.
        return torch.full((differences.shape[1],), float("nan"))
    values = []
    for _ in range(n_splits):
        halves: list[list[int]] = [[], []]
        for group in groups:
            order = group[torch.randperm(len(group), generator=generator)].tolist()
            half = len(order) // 2
            halves[0] += order[:half]
            halves[1] += order[half : 2 * half]
        if not halves[0]:
            return torch.full((differences.shape[1],), float("nan"))
        means = [letter_mean(differences[h], None if first is None else first[h]) for h in halves]
        values.append(_cosine_rows(means[0][None], means[1])[0])
    return torch.stack(values).mean(0)


@dataclass(frozen=True, eq=False)
class SampleSizeScaling:
    """Per size and layer: cosine to the full-data vector, its bootstrap interval, split-half stability."""

    sizes: tuple[int, ...]
    layers: tuple[int, ...]
    n_total: int
    level: float
    table: pd.DataFrame  # n, layer, cosine_to_full, ci_low, ci_high, split_half, norm, share_first_letter


def sample_size_scaling(
    activations: ContrastiveActivations,
    dataset: ContrastiveDataset,
    sizes: Sequence[int] = FIBONACCI_SIZES,
    seed: int = 0,
    n_boot: int = 200,
    n_splits: int = 20,
    level: float = 0.95,
    balance_letters: bool = False,
) -> SampleSizeScaling:
    """Cosine of each nested size-n vector to the vector of all pairs, with a bootstrap interval.

    Args:
        activations: an extraction of ``dataset`` with ``keep_examples=True``.
        sizes: subset sizes (each at most ``len(dataset)``).
        n_boot: bootstrap resamples of the n pairs, per size (interval at ``level``).
        n_splits: random half/half splits of the n pairs averaged for split-half stability.
        balance_letters: every vector (full, subset, resample, half) is the mean of its two
            matching letters' means (``letter_mean``), so the curves measure the behaviour part
            rather than the letter imbalance of each subset.
    """
    differences = pair_differences(activations)
    if differences.shape[0] != len(dataset):
        raise ValueError(f"activations hold {differences.shape[0]} pairs, the dataset {len(dataset)}")
    labels = activations.examples.positive_labels if activations.examples is not None else ()
    is_first = torch.tensor([label == min(labels) for label in labels])
    flags = is_first if balance_letters else None
    full = letter_mean(differences, flags)
    indices = subset_indices(dataset, sizes, seed)
    means = torch.stack(
        [
            letter_mean(differences[list(c)], None if flags is None else flags[list(c)])
            for c in indices.values()
        ]
    )
    rows = []
    for k, (n, chosen) in enumerate(indices.items()):
        rows_of = torch.tensor(chosen)
        subset = differences[rows_of]
        # The matching-letter share: at the answer token an unbalanced subset's vector carries the letter.
        share = float(is_first[rows_of].double().mean())

        def statistic(picked: Tensor) -> Tensor:
            return _cosine_rows(
                letter_mean(differences[picked], None if flags is None else flags[picked])[None], full
            )[0]

        cosine = _cosine_rows(means[k][None], full)[0]
        low, high = bootstrap_interval(rows_of, statistic, n_boot, level, seed + n)
        split = split_half_cosine(subset, n_splits, seed + n, None if flags is None else flags[rows_of])
        for i, layer in enumerate(activations.layers):
            rows.append(
                {
                    "n": n,
                    "layer": layer,
                    "cosine_to_full": float(cosine[i]),
                    "ci_low": float(low[i]),
                    "ci_high": float(high[i]),
                    "split_half": float(split[i]),
                    "norm": float(means[k][i].norm()),
                    "share_first_letter": share,
                }
            )
    return SampleSizeScaling(
        tuple(indices), tuple(activations.layers), len(dataset), level, pd.DataFrame(rows)
    )


def subset_vectors(
    model,
    activations: ContrastiveActivations,
    dataset: ContrastiveDataset,
    sizes: Sequence[int],
    seed: int = 0,
    balance_letters: bool = False,
) -> dict[int, SteeringVector]:
    """Mean-difference steering vectors of the nested subsets, each recording its own pair count.

    ``balance_letters`` makes each the mean of its two matching letters' means (``letter_mean``).
    """
    base = mean_difference_vector(model, activations)
    indices = subset_indices(dataset, sizes, seed)
    differences = pair_differences(activations)
    if balance_letters:
        assert activations.examples is not None
        labels = activations.examples.positive_labels
        is_first = torch.tensor([label == min(labels) for label in labels])
        means = torch.stack([letter_mean(differences[list(c)], is_first[list(c)]) for c in indices.values()])
    else:
        means = subset_mean_differences(differences, indices)
    suffix = "; letter-balanced" if balance_letters else ""
    return {
        n: replace(
            base,
            directions=means[k],
            provenance=replace(
                base.provenance,
                n_pairs=n,
                dataset=f"{base.provenance.dataset}:n{n}",
                method=base.provenance.method + suffix,
            ),
        )
        for k, n in enumerate(indices)
    }


@dataclass(frozen=True, eq=False)
class SizeEffect:
    """Steering effect of the size-n vectors at one layer: p(matching) at +m and -m on held-out items."""

    layer: int
    multiplier: float
    baseline: float
    table: pd.DataFrame  # n, plus, minus, effect (plus - minus)


def steering_effect_by_size(
    model,
    vectors: dict[int, SteeringVector],
    eval_dataset: ContrastiveDataset,
    layer: int,
    multiplier: float,
) -> SizeEffect:
    """Score each size's vector at +m and -m (and unsteered) on ``eval_dataset`` (held-out items)."""
    sizes = sorted(vectors)
    batches = prefix_batches(model, eval_dataset)
    chosen = [vectors[n] for n in sizes]
    scores = layer_scores(model, batches, chosen, layer, [multiplier, -multiplier, 0.0]).mean(0)
    table = pd.DataFrame(
        {
            "n": sizes,
            "plus": scores[:, 0].tolist(),
            "minus": scores[:, 1].tolist(),
            "effect": (scores[:, 0] - scores[:, 1]).tolist(),
        }
    )
    return SizeEffect(layer, float(multiplier), float(scores[:, 2].mean()), table)
