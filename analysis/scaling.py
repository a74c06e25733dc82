"""Sample-size scaling: how a CAA vector and its steering effect change with the number of pairs.

One extraction with ``keep_examples=True`` holds every pair's activations, so the vector of any
subset is the mean of that subset's per-pair differences: no re-extraction per size. Each size-n
vector is the sum of n differences divided by n (the Patterns paper's code divided by the wrong
count, inflating small-n vectors).

Stability is read against noise. ``sample_size_scaling`` compares each size-n vector with a
reference vector from *other* pairs (the cosine to the all-pairs vector rises with n even for pure
noise, because that vector contains the subset), over several permutations, beside a sign-shuffled
null: the same statistic for a vector with no consistent direction. The steering effect of the size-n
vectors is ``analysis.size_effect``'s.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pandas as pd
import torch
from jaxtyping import Bool, Float, Shaped
from torch import Tensor

from analysis.letters import first_letter_flags, letter_mean, letter_mean_weights, without_letter
from caa_lens.data import FIBONACCI_SIZES, ContrastiveDataset, nested_subsets, shuffled_indices
from caa_lens.extraction import ContrastiveActivations

__all__ = [
    "SampleSizeScaling",
    "bootstrap_interval",
    "heldout_split",
    "pair_differences",
    "sample_size_scaling",
    "split_half_cosine",
    "subset_indices",
    "subset_mean_differences",
]


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
    missing = torch.full((differences.shape[1],), float("nan"))
    if n < 2:
        return missing
    generator = torch.Generator().manual_seed(seed)
    groups = [torch.arange(n)] if first is None else [first.nonzero()[:, 0], (~first).nonzero()[:, 0]]
    if first is not None and min(len(g) for g in groups) < 2:
        # A half without one of the letters would be a letter vector again: no balanced split exists.
        return missing
    # Each half's vector is a weighted sum of the differences (``_mean_weights``): one matrix product
    # for all splits instead of gathering and averaging the halves one by one.
    weights = torch.zeros(2 * n_splits, n, dtype=torch.float64)
    for split in range(n_splits):
        halves: list[list[int]] = [[], []]
        for group in groups:
            order = group[torch.randperm(len(group), generator=generator)].tolist()
            half = len(order) // 2
            halves[0] += order[:half]
            halves[1] += order[half : 2 * half]
        for side, rows in enumerate(halves):
            chosen = torch.tensor(rows)
            weights[2 * split + side, chosen] = letter_mean_weights(
                len(rows), None if first is None else first[chosen]
            )
    means = (weights @ differences.double().reshape(n, -1)).reshape(2 * n_splits, *differences.shape[1:])
    cosines = torch.nn.functional.cosine_similarity(means[0::2], means[1::2], dim=-1)  # [split, layer]
    return cosines.mean(0).float()


@dataclass(frozen=True, eq=False)
class SampleSizeScaling:
    """Per size and layer: agreement of size-n vectors with a held-out reference, against noise.

    ``table`` columns, one row per (n, layer):

    - ``cosine_to_heldout``: mean over ``n_seeds`` permutations of the cosine between the vector of
      n training pairs and the vector of ``reference_pairs`` *other* pairs (never overlapping), so a
      vector with no consistent direction scores about 0 at every n. Its ceiling is below 1: the
      reference has its own noise (more reference pairs, higher ceiling).
    - ``ci_low``, ``ci_high``: the central ``level`` range of the per-seed cosines (with 5 seeds,
      about their range): what one n-pair vector gives, not an interval for the mean.
    - ``null_mean``, ``null_low``, ``null_high``: the same statistic when every training pair's
      difference gets a random sign (``n_null`` draws per seed, pooled; central ``level`` range):
      what a vector with no consistent direction gives at this n and this reference (with
      ``balance_letters`` each difference first loses its letter part, as the balanced vectors do).
    - ``vs_null``: "above null" when ``ci_low > null_high``, "below null" when ``ci_high <
      null_low``, else "inside null" (any overlap).
    - ``split_half``: cosine between the vectors of two disjoint halves of the n pairs (NaN below 2),
      averaged over seeds; ``norm``: mean ||v_n||; ``share_first_letter``: mean share of the n pairs
      whose matching letter is the first (a letter-unbalanced subset's vector carries the letter).
    """

    sizes: tuple[int, ...]
    layers: tuple[int, ...]
    n_total: int
    level: float
    table: pd.DataFrame
    n_seeds: int = 5
    reference_pairs: int = 0
    n_null: int = 20
    balance_letters: bool = False


def _sign_shuffled_means(
    differences: Float[Tensor, "pair layer d_model"],
    first: Bool[Tensor, " pair"] | None,
    n_draws: int,
    generator: torch.Generator,
) -> Float[Tensor, "draw layer d_model"]:
    """``n_draws`` means of the differences, each pair's difference multiplied by a random sign.

    With ``first`` (letter balancing, both letters present) each difference first loses its letter
    part, ``+-(mean_first - mean_other) / 2``: the balanced vector cancels the letter exactly, so a
    null that kept a randomly signed letter in every pair would measure the letter, not noise. The
    balanced vector is unchanged by this (it is the plain mean of the corrected differences).
    """
    n = differences.shape[0]
    weights = letter_mean_weights(n, first)
    flat = differences.double().reshape(n, -1)
    if first is not None and bool(first.any()) and not bool(first.all()):
        flat = without_letter(flat, first)
    signs = torch.randint(2, (n_draws, n), generator=generator).double() * 2 - 1
    return ((signs * weights) @ flat).reshape(n_draws, *differences.shape[1:]).float()


def heldout_split(n_total: int, reference_pairs: int, seed: int) -> tuple[list[int], list[int]]:
    """(training pool, held-out reference) pair indices of one seeded permutation; they never overlap.

    >>> pool, reference = heldout_split(10, 4, seed=0)
    >>> len(pool), len(reference), set(pool) & set(reference)
    (6, 4, set())
    """
    if not 0 < reference_pairs < n_total:
        raise ValueError(f"reference_pairs must be in 1..{n_total - 1}, got {reference_pairs}")
    order = shuffled_indices(n_total, seed)
    return order[: n_total - reference_pairs], order[n_total - reference_pairs :]


def _reference_size(n_total: int, sizes: Sequence[int], reference_pairs: int | None) -> int:
    largest = max(sizes)
    reference = n_total - largest if reference_pairs is None else reference_pairs
    if reference < 2 or largest + reference > n_total:
        raise ValueError(
            f"sizes up to {largest} and a held-out reference of {reference} pairs do not fit in "
            f"{n_total} pairs (the reference must be disjoint from every training subset and hold at "
            f"least 2 pairs): drop the sizes above {n_total - max(reference, 2)}, or pass a smaller "
            f"reference_pairs (e.g. {max(2, n_total // 3)}) with sizes up to {n_total - max(2, n_total // 3)}"
        )
    return reference


def _quantiles(values: Tensor, level: float) -> tuple[Tensor, Tensor]:
    tail = (1 - level) / 2
    return values.double().quantile(tail, dim=0), values.double().quantile(1 - tail, dim=0)


def sample_size_scaling(
    activations: ContrastiveActivations,
    dataset: ContrastiveDataset,
    sizes: Sequence[int] = FIBONACCI_SIZES,
    seed: int = 0,
    n_seeds: int = 5,
    reference_pairs: int | None = None,
    n_null: int = 20,
    n_splits: int = 20,
    level: float = 0.95,
    balance_letters: bool = False,
) -> SampleSizeScaling:
    """How well a vector from n pairs agrees with one from other pairs, against a sign-shuffled null.

    The cosine of a size-n subset's vector to the vector of *all* pairs rises with n even for pure
    noise (the full vector contains the subset: E cos is about sqrt(n/N)). Here, for each of
    ``n_seeds`` seeded permutations, the last ``reference_pairs`` pairs make a held-out reference
    vector and the size-n vectors are the nested first n pairs of the rest, so the two never share a
    pair; noise then gives a cosine near 0 at every n, which the sign-shuffled null measures
    (``SampleSizeScaling`` describes the columns).

    Args:
        activations: an extraction of ``dataset`` with ``keep_examples=True``.
        sizes: subset sizes; each plus ``reference_pairs`` must fit in the dataset.
        seed: the permutations use seeds ``seed .. seed + n_seeds - 1``; the null draws derive from them.
        n_seeds: permutations (reference and subsets drawn afresh); 5 gives a rough spread.
        reference_pairs: size of the held-out reference; default ``len(dataset) - max(sizes)``.
        n_null: sign-shuffled draws per seed and size.
        n_splits: random half/half splits of the n pairs averaged for split-half stability.
        balance_letters: every vector (subset, reference, null draw, half) is the mean of its two
            matching letters' means (``analysis.letters.letter_mean``), so the curves measure the
            behaviour part rather than the letter imbalance of each subset.

    >>> import torch
    >>> from caa_lens.data import make_item, ContrastiveDataset
    >>> from caa_lens.extraction import ContrastiveActivations, PairActivations
    >>> pos, neg = torch.randn(40, 1, 8) + 3.0, torch.randn(40, 1, 8)
    >>> data = ContrastiveDataset("d", tuple(make_item(f"q{i}?", "(A)", "(B)") for i in range(40)))
    >>> acts = ContrastiveActivations(
    ...     (0,), "resid_post", "answer", "d", "0", 40, pos.sum(0), neg.sum(0),
    ...     PairActivations(pos, neg, ("A",) * 40, ("B",) * 40))
    >>> table = sample_size_scaling(acts, data, sizes=(1, 5, 20)).table
    >>> table.vs_null.tolist()[-1], bool(table.cosine_to_heldout.iloc[-1] > 0.9)
    ('above null', True)
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if n_seeds < 1 or n_null < 1:
        raise ValueError(f"n_seeds and n_null must be at least 1 (e.g. 5 and 20), got {n_seeds}, {n_null}")
    differences = pair_differences(activations)
    n_total = differences.shape[0]
    if n_total != len(dataset):
        raise ValueError(f"activations hold {n_total} pairs, the dataset {len(dataset)}")
    sizes = tuple(sorted(set(sizes)))
    if not sizes or sizes[0] < 1:
        raise ValueError(f"sizes must be positive pair counts, got {sizes}")
    reference_size = _reference_size(n_total, sizes, reference_pairs)
    labels = activations.examples.positive_labels if activations.examples is not None else ()
    is_first = first_letter_flags(labels)
    flags = is_first if balance_letters else None
    n_layers = differences.shape[1]
    # [seed, size, layer] for the curve and its companions; [seed, size, draw, layer] for the null.
    cosines = torch.zeros(n_seeds, len(sizes), n_layers, dtype=torch.float64)
    nulls = torch.zeros(n_seeds, len(sizes), n_null, n_layers, dtype=torch.float64)
    halves = torch.zeros_like(cosines)
    norms = torch.zeros_like(cosines)
    shares = torch.zeros(n_seeds, len(sizes), dtype=torch.float64)
    for s in range(n_seeds):
        pool, held_out = heldout_split(n_total, reference_size, seed + s)
        reference = letter_mean(differences[held_out], None if flags is None else flags[held_out])
        generator = torch.Generator().manual_seed(seed + s)
        for k, n in enumerate(sizes):
            rows = torch.tensor(pool[:n])
            subset, subset_flags = differences[rows], None if flags is None else flags[rows]
            vector = letter_mean(subset, subset_flags)
            cosines[s, k] = _cosine_rows(vector[None], reference)[0]
            shuffled = _sign_shuffled_means(subset, subset_flags, n_null, generator)
            nulls[s, k] = _cosine_rows(shuffled, reference)
            halves[s, k] = split_half_cosine(subset, n_splits, seed + s + n, subset_flags)
            norms[s, k] = vector.double().norm(dim=-1)
            shares[s, k] = is_first[rows].double().mean()
    low, high = _quantiles(cosines, level)  # [size, layer]
    pooled = nulls.permute(2, 0, 1, 3).reshape(n_seeds * n_null, len(sizes), n_layers)
    null_low, null_high = _quantiles(pooled, level)
    mean = cosines.mean(0)
    records = []
    for k, n in enumerate(sizes):
        for i, layer in enumerate(activations.layers):
            verdict = (
                "above null"
                if low[k, i] > null_high[k, i]
                else "below null"
                if high[k, i] < null_low[k, i]
                else "inside null"
            )
            records.append(
                {
                    "n": n,
                    "layer": layer,
                    "cosine_to_heldout": float(mean[k, i]),
                    "ci_low": float(low[k, i]),
                    "ci_high": float(high[k, i]),
                    "null_mean": float(pooled[:, k, i].mean()),
                    "null_low": float(null_low[k, i]),
                    "null_high": float(null_high[k, i]),
                    "vs_null": verdict,
                    # Seeds without a valid split (n = 1, or one letter under balancing) are skipped.
                    "split_half": float(halves[:, k, i].nanmean()),
                    "norm": float(norms[:, k, i].mean()),
                    "share_first_letter": float(shares[:, k].mean()),
                }
            )
    return SampleSizeScaling(
        sizes,
        tuple(activations.layers),
        n_total,
        level,
        pd.DataFrame(records),
        n_seeds,
        reference_size,
        n_null,
        balance_letters,
    )
