"""The steering effect of sample-size subsets' vectors: does a vector from n pairs steer, and how much?

One extraction with ``keep_examples=True`` holds every pair's activations, so the vector of any nested
subset is the mean of that subset's per-pair differences (``subset_vectors``: no re-extraction per
size, each divided by its own pair count). ``steering_effect_by_size`` reports their paired effects
against unsteered on held-out items, beside random vectors of the same norm.
"""

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import pandas as pd
import torch
from torch import Tensor

from analysis._scoring import layer_scores, prefix_batches
from analysis.letters import first_letter_flags, letter_mean
from analysis.scaling import pair_differences, subset_indices, subset_mean_differences
from caa_lens.data import ContrastiveDataset
from caa_lens.extraction import ContrastiveActivations
from caa_lens.methods import contrastive_vector
from caa_lens.stats import Effect, null_band, paired_effect, random_like
from caa_lens.vectors import SteeringVector

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

__all__ = ["SizeEffect", "steering_effect_by_size", "subset_vectors"]


def subset_vectors(
    model: "TransformerBridge",
    activations: ContrastiveActivations,
    dataset: ContrastiveDataset,
    sizes: Sequence[int],
    seed: int = 0,
    balance_letters: bool = False,
) -> dict[int, SteeringVector]:
    """Mean-difference steering vectors of the nested subsets, each recording its own pair count.

    ``balance_letters`` makes each the mean of its two matching letters' means
    (``analysis.letters.letter_mean``).
    """
    # The full set's vector, built the same way as the subsets', lends them its provenance.
    base = contrastive_vector(model, activations, "letter_balanced" if balance_letters else "mean_difference")
    indices = subset_indices(dataset, sizes, seed)
    differences = pair_differences(activations)
    if balance_letters:
        assert activations.examples is not None
        is_first = first_letter_flags(activations.examples.positive_labels)
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
    model: "TransformerBridge",
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
