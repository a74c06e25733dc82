"""Sample-size scaling: how a CAA vector and its steering effect change with the number of pairs.

One extraction with ``keep_examples=True`` holds every pair's activations, so the vector of any
subset is the mean of that subset's per-pair differences: no re-extraction per size. Each size-n
vector is the sum of n differences divided by n (the Patterns paper's code divided by the wrong
count, inflating small-n vectors).

Stability is read against noise. ``sample_size_scaling`` compares each size-n vector with a
reference vector from *other* pairs (the cosine to the all-pairs vector rises with n even for pure
noise, because that vector contains the subset), over several permutations, beside a sign-shuffled
null: the same statistic for a vector with no consistent direction. ``steering_effect_by_size``
reports paired effects against unsteered on held-out items, beside random vectors of the same norm.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import pandas as pd
import torch
from jaxtyping import Bool, Float, Shaped
from torch import Tensor

from analysis._scoring import layer_scores, prefix_batches
from caa_lens.data import FIBONACCI_SIZES, ContrastiveDataset, nested_subsets, shuffled_indices
from caa_lens.extraction import ContrastiveActivations
from caa_lens.methods import contrastive_vector
from caa_lens.stats import Effect, null_band, paired_effect, random_like
from caa_lens.vectors import SteeringVector

__all__ = [
    "SampleSizeScaling",
    "SizeEffect",
    "bootstrap_interval",
    "heldout_split",
    "letter_mean",
    "pair_differences",
    "sample_size_scaling",
    "split_half_cosine",
    "steering_effect_by_size",
    "subset_indices",
    "subset_mean_differences",
    "subset_vectors",
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


def letter_mean(
    differences: Float[Tensor, "pair layer d_model"], first: Bool[Tensor, " pair"] | None = None
) -> Float[Tensor, "layer d_model"]:
    """Mean difference; with ``first`` (pairs whose matching letter is the first one), the mean of the
    two letters' means, so the letter cancels (``analysis.letters``). A one-letter set falls back to
    the plain mean."""
    if first is None or bool(first.all()) or not bool(first.any()):
        return differences.double().mean(0).float()
    return ((differences[first].double().mean(0) + differences[~first].double().mean(0)) / 2).float()


def _mean_weights(n: int, first: Bool[Tensor, " pair"] | None) -> Float[Tensor, " pair"]:
    """Weights w with sum_i w_i d_i == ``letter_mean(d, first)`` (the plain mean without ``first``)."""
    if first is None or bool(first.all()) or not bool(first.any()):
        return torch.full((n,), 1.0 / n, dtype=torch.float64)
    count_first = first.sum().double()
    return torch.where(first, 0.5 / count_first, 0.5 / (n - count_first)).double()


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
            weights[2 * split + side, chosen] = _mean_weights(
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
    weights = _mean_weights(n, first)
    flat = differences.double().reshape(n, -1)
    if first is not None and bool(first.any()) and not bool(first.all()):
        letter = (flat[first].mean(0) - flat[~first].mean(0)) / 2
        flat = flat - torch.where(first, 1.0, -1.0).double()[:, None] * letter
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
            matching letters' means (``letter_mean``), so the curves measure the behaviour part
            rather than the letter imbalance of each subset.

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
    is_first = torch.tensor([label == min(labels) for label in labels])
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
    # The full set's vector, built the same way as the subsets', lends them its provenance.
    base = contrastive_vector(model, activations, "letter_balanced" if balance_letters else "mean_difference")
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
                label_counts={},  # the full set's counts and letter shares do not describe a subset
                letter_share={},
            ),
        )
        for k, n in enumerate(indices)
    }


@dataclass(frozen=True, eq=False)
class SizeEffect:
    """Steering effect of the size-n vectors at one layer, paired against unsteered, with a random null.

    ``table`` columns, one row per n (all p = p(matching) on the same held-out items):

    - ``plus``, ``minus``: mean p at +m and -m; ``effect``: ``plus - minus`` (the swing), with
      ``effect_low``, ``effect_high`` its paired bootstrap interval over items.
    - ``plus_effect`` (``plus_low``, ``plus_high``): mean of per-item p(+m) - p(unsteered) and its
      interval (``caa_lens.stats.paired_effect``); ``minus_effect`` (``minus_low``, ``minus_high``)
      the same at -m; ``n_items``.
    - ``norm``: ||v_n|| at the layer (small-n vectors are longer: their noise adds norm).
    - ``null_plus_low/high``, ``null_minus_low/high``, ``null_effect_low/high``: the range of the same
      effects for ``n_random`` random directions with the size-n vector's norm (``random_like``);
      ``plus_vs_null``, ``minus_vs_null``: where each interval lies relative to its band.
    """

    layer: int
    multiplier: float
    baseline: float
    table: pd.DataFrame
    n_random: int = 0
    level: float = 0.95


def _effect_columns(prefix: str, effect: Effect) -> dict[str, float]:
    return {f"{prefix}_effect": effect.mean, f"{prefix}_low": effect.low, f"{prefix}_high": effect.high}


def steering_effect_by_size(
    model,
    vectors: dict[int, SteeringVector],
    eval_dataset: ContrastiveDataset,
    layer: int,
    multiplier: float,
    n_random: int = 3,
    seed: int = 0,
    n_resamples: int = 2000,
    level: float = 0.95,
) -> SizeEffect:
    """Paired steering effects of each size's vector at +m and -m on held-out items, with a random null.

    Every item is scored unsteered, at +m and at -m with each size's vector, and at +-m with
    ``n_random`` random directions of that vector's norm (``caa_lens.stats.random_like``; seeds
    ``seed .. seed + n_random - 1``, the same directions at every n, so the null changes with n only
    through the norm). ``eval_dataset`` must not share items with the pairs the vectors came from.
    The columns are described in ``SizeEffect``.
    """
    if n_random < 1:
        raise ValueError(
            f"n_random must be at least 1 (random same-norm vectors for the null), got {n_random}"
        )
    sizes = sorted(vectors)
    batches = prefix_batches(model, eval_dataset)
    chosen = [vectors[n] for n in sizes]
    scores = layer_scores(model, batches, chosen, layer, [multiplier, -multiplier, 0.0])  # [item, n, 3]
    controls = [random_like(vectors[n], seed + k) for n in sizes for k in range(n_random)]
    random_scores = layer_scores(model, batches, controls, layer, [multiplier, -multiplier])
    random_scores = random_scores.reshape(scores.shape[0], len(sizes), n_random, 2)
    baseline = scores[:, 0, 2]  # unsteered: the same for every vector

    def paired(steered: Tensor, unsteered: Tensor) -> Effect:
        return paired_effect(steered, unsteered, n_resamples=n_resamples, confidence=level, seed=seed)

    records = []
    for k, n in enumerate(sizes):
        plus, minus = scores[:, k, 0], scores[:, k, 1]
        up, down, swing = paired(plus, baseline), paired(minus, baseline), paired(plus, minus)
        nulls = random_scores[:, k]  # [item, random, sign]
        null_up = null_band((nulls[..., 0] - baseline[:, None]).mean(0).tolist(), coverage=1.0)
        null_down = null_band((nulls[..., 1] - baseline[:, None]).mean(0).tolist(), coverage=1.0)
        null_swing = null_band((nulls[..., 0] - nulls[..., 1]).mean(0).tolist(), coverage=1.0)
        records.append(
            {
                "n": n,
                "norm": float(vectors[n].at(layer).double().norm()),
                "plus": float(plus.mean()),
                "minus": float(minus.mean()),
                "effect": swing.mean,
                "effect_low": swing.low,
                "effect_high": swing.high,
                **_effect_columns("plus", up),
                **_effect_columns("minus", down),
                "n_items": up.n,
                "null_plus_low": null_up.low,
                "null_plus_high": null_up.high,
                "null_minus_low": null_down.low,
                "null_minus_high": null_down.high,
                "null_effect_low": null_swing.low,
                "null_effect_high": null_swing.high,
                "plus_vs_null": up.against(null_up),
                "minus_vs_null": down.against(null_down),
            }
        )
    return SizeEffect(
        layer, float(multiplier), float(baseline.mean()), pd.DataFrame(records), n_random, level
    )
