"""Multi-behaviour interference: steer several behaviours at once and measure every behaviour.

Each combination of behaviour vectors is applied together (one ``Injection`` per vector, at its own
layer and multiplier) and every behaviour's A/B probability is scored under it. The matrix of changes
against the unsteered scores answers the Patterns paper's open question: does steering one behaviour
move the others, and do combined vectors add up (``additive_prediction``) or interfere?

Every number is a paired difference against the unsteered run on the same items, with a bootstrap
interval over items and, beside it, the same combination made of random same-norm directions
(issue #12): the interaction (joint change minus the sum of single changes) is computed per item,
so "interference" has an interval too.
"""

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from analysis._scoring import Condition, condition_scores, prefix_batches
from caa_lens.data import ContrastiveDataset
from caa_lens.stats import Effect, NullBand, paired_effect, random_like
from caa_lens.vectors import SteeringVector

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

__all__ = ["Interference", "default_combinations", "interference_matrix"]


@dataclass(frozen=True, eq=False)
class Interference:
    """Rows are combinations of steered behaviours, columns the behaviours scored.

    ``effect[c, b]`` is the change of behaviour b's mean p(matching) under combination c: the mean
    over b's items of (steered - unsteered) on the same item, with its paired bootstrap interval
    ``effect_low``/``effect_high`` over ``n_items[b]`` items. ``additive_prediction[c, b]`` is the
    sum of the single-vector effects of c's members (NaN when a member has no single-vector row),
    with an interval from the per-item sums; ``interaction = effect - additive_prediction`` is the
    interference, per item (joint change minus the sum of single changes) so it has an interval too.

    ``null_low``/``null_high`` is the range of the effects of the same combination with every
    member replaced by a random direction of its norm (``random_like``, one per seed), and
    ``null_interaction_low``/``null_interaction_high`` the range of those random combinations'
    interactions: p(matching) saturates, so even random pushes do not add up exactly.
    """

    steered: tuple[str, ...]
    scored: tuple[str, ...]
    combinations: tuple[tuple[str, ...], ...]
    layers: dict[str, int]
    multipliers: dict[str, float]
    baseline: Float[Tensor, " scored"]
    scores: Float[Tensor, "combination scored"]
    effect: Float[Tensor, "combination scored"]
    additive_prediction: Float[Tensor, "combination scored"]
    # Defaults keep results saved before the intervals existed loadable (plots then draw means only).
    effect_low: Float[Tensor, "combination scored"] | None = None
    effect_high: Float[Tensor, "combination scored"] | None = None
    additive_low: Float[Tensor, "combination scored"] | None = None
    additive_high: Float[Tensor, "combination scored"] | None = None
    interaction: Float[Tensor, "combination scored"] | None = None
    interaction_low: Float[Tensor, "combination scored"] | None = None
    interaction_high: Float[Tensor, "combination scored"] | None = None
    null_low: Float[Tensor, "combination scored"] | None = None
    null_high: Float[Tensor, "combination scored"] | None = None
    null_interaction_low: Float[Tensor, "combination scored"] | None = None
    null_interaction_high: Float[Tensor, "combination scored"] | None = None
    n_items: dict[str, int] | None = None

    def to_frame(self) -> pd.DataFrame:
        """Long table: combination, behaviour, score, effect, additive prediction, and (when computed)
        n, each one's interval, the interaction with its interval, the null bands and ``vs_null``."""
        extra = [
            "effect_low",
            "effect_high",
            "additive_low",
            "additive_high",
            "interaction",
            "interaction_low",
            "interaction_high",
            "null_low",
            "null_high",
            "null_interaction_low",
            "null_interaction_high",
        ]
        rows = []
        for c, combo in enumerate(self.combinations):
            for b, name in enumerate(self.scored):
                row = {
                    "combination": "+".join(combo),
                    "behaviour": name,
                    "score": float(self.scores[c, b]),
                    "effect": float(self.effect[c, b]),
                    "additive_prediction": float(self.additive_prediction[c, b]),
                }
                if self.n_items is not None:
                    row["n"] = self.n_items[name]
                for column in extra:
                    values = getattr(self, column)
                    if values is not None:
                        row[column] = float(values[c, b])
                if self.null_low is not None and self.null_high is not None and self.effect_low is not None:
                    row["vs_null"] = _against(self, c, b)
                rows.append(row)
        return pd.DataFrame(rows)


def _against(result: Interference, c: int, b: int) -> str:
    """``Effect.against`` for one cell, from the stored interval and band."""
    assert result.null_low is not None and result.null_high is not None
    assert result.effect_low is not None and result.effect_high is not None
    band = NullBand(float(result.null_low[c, b]), float(result.null_high[c, b]), 0)
    if math.isnan(band.low):
        return "no null"
    interval = (float(result.effect[c, b]), float(result.effect_low[c, b]), float(result.effect_high[c, b]))
    return Effect(*interval, n=0, n_resamples=0, confidence=0.95).against(band)


def default_combinations(names: Sequence[str]) -> tuple[tuple[str, ...], ...]:
    """Every single behaviour, every pair, and (for three or more) all of them together."""
    singles = [(n,) for n in names]
    pairs = list(itertools.combinations(names, 2))
    everything = [tuple(names)] if len(names) > 2 else []
    return tuple(singles + pairs + everything)


def _per_name(
    value: float | int | Mapping[str, float] | Mapping[str, int], names: Sequence[str], what: str
) -> dict:
    if isinstance(value, Mapping):
        missing = [n for n in names if n not in value]
        if missing:
            raise ValueError(f"no {what} given for {missing}")
        return {n: value[n] for n in names}
    return dict.fromkeys(names, value)


def _null_vectors(
    vectors: Mapping[str, SteeringVector], seeds: Sequence[int]
) -> list[dict[str, SteeringVector]]:
    """Per seed, one random same-norm stand-in per vector name.

    Each (seed, name) gets its own generator seed: ``random_like`` with one seed gives parallel
    directions to vectors of the same shape, which would make two random members one push.
    """
    return [
        {name: random_like(vectors[name], 1000 * seed + k) for k, name in enumerate(vectors)}
        for seed in seeds
    ]


def _changes(
    scores: Float[Tensor, "condition item"], combos: Sequence[tuple[str, ...]]
) -> tuple[Tensor, Tensor, Tensor]:
    """Per combination and item: the change, the sum of its members' single changes, their difference.

    ``scores[0]`` is unsteered and ``scores[1 + c]`` combination c; a member without a single row
    makes its combination's sum NaN.
    """
    change = scores[1:] - scores[0]
    singles = {combo[0]: change[c] for c, combo in enumerate(combos) if len(combo) == 1}
    nan_row = torch.full_like(scores[0], math.nan)
    additive = torch.stack([torch.stack([singles.get(n, nan_row) for n in combo]).sum(0) for combo in combos])
    return change, additive, change - additive


def _interval(per_item: Tensor, n_resamples: int, seed: int) -> tuple[float, float, float]:
    """Mean and paired bootstrap interval of per-item changes (all NaN when the changes are NaN)."""
    if torch.isnan(per_item).any():
        return math.nan, math.nan, math.nan
    effect = paired_effect(per_item, torch.zeros_like(per_item), n_resamples=n_resamples, seed=seed)
    return effect.mean, effect.low, effect.high


def interference_matrix(
    model: "TransformerBridge",
    vectors: Mapping[str, SteeringVector],
    datasets: Mapping[str, ContrastiveDataset],
    layer: int | Mapping[str, int],
    multiplier: float | Mapping[str, float] = 1.0,
    combinations: Sequence[Sequence[str]] | None = None,
    max_rows: int = 96,
    *,
    null_seeds: Sequence[int] = (0, 1),
    n_resamples: int = 4000,
    seed: int = 0,
) -> Interference:
    """Score every behaviour in ``datasets`` under every combination of the ``vectors``.

    Every item is scored unsteered and under every combination in the same passes, so each effect
    is a paired difference on the same items (bootstrap over items, seeded with ``seed``).

    Args:
        vectors: behaviour name -> steering vector.
        datasets: behaviour name -> items scored for it (the names need not match ``vectors``).
        layer / multiplier: one for all vectors, or one per vector name.
        combinations: tuples of vector names applied together; default ``default_combinations``.
        null_seeds: per seed, every combination again with random same-norm directions in place of
            its members (one more condition per combination and seed); ``()`` skips the null.
        n_resamples: bootstrap resamples per interval.
    """
    names = tuple(vectors)
    layers = {n: int(v) for n, v in _per_name(layer, names, "layer").items()}
    multipliers = {n: float(v) for n, v in _per_name(multiplier, names, "multiplier").items()}
    combos = default_combinations(names) if combinations is None else tuple(tuple(c) for c in combinations)
    unknown = sorted({n for c in combos for n in c} - set(names))
    if unknown:
        raise ValueError(f"combinations name unknown vectors {unknown}; known: {list(names)}")
    sources = [dict(vectors), *_null_vectors(vectors, null_seeds)]
    conditions: list[Condition] = [()]  # the unsteered baseline, scored in the same passes
    conditions += [
        tuple((source[n], layers[n], multipliers[n]) for n in combo) for source in sources for combo in combos
    ]
    scored = tuple(datasets)
    shape = (len(combos), len(scored))
    stats = {key: torch.full(shape, math.nan) for key in ("effect", "additive", "interaction")}
    stats |= {f"{key}_{end}": torch.full(shape, math.nan) for key in stats for end in ("low", "high")}
    nulls = {
        key: torch.full(shape, math.nan) for key in ("low", "high", "interaction_low", "interaction_high")
    }
    baseline, means = torch.empty(len(scored)), torch.empty(shape)
    n_items = {}
    for b, name in enumerate(scored):
        table = condition_scores(model, prefix_batches(model, datasets[name]), conditions, max_rows)
        n_items[name] = table.shape[1]
        baseline[b] = table[0].mean()
        means[:, b] = table[1 : 1 + len(combos)].mean(1)
        # Row 0 is unsteered; then one block of combinations per source (the vectors, then each seed).
        blocks = [
            _changes(torch.cat([table[:1], table[1 + k * len(combos) : 1 + (k + 1) * len(combos)]]), combos)
            for k in range(len(sources))
        ]
        for key, per_item in zip(("effect", "additive", "interaction"), blocks[0], strict=True):
            for c in range(len(combos)):
                stats[key][c, b], stats[f"{key}_low"][c, b], stats[f"{key}_high"][c, b] = _interval(
                    per_item[c], n_resamples, seed
                )
        if len(sources) > 1:
            random_effects = torch.stack([block[0].mean(1) for block in blocks[1:]])  # seed, combination
            random_interactions = torch.stack([block[2].mean(1) for block in blocks[1:]])
            nulls["low"][:, b], nulls["high"][:, b] = random_effects.amin(0), random_effects.amax(0)
            nulls["interaction_low"][:, b] = random_interactions.amin(0)
            nulls["interaction_high"][:, b] = random_interactions.amax(0)
    return Interference(
        names,
        scored,
        combos,
        layers,
        multipliers,
        baseline,
        means,
        means - baseline,
        stats["additive"],
        stats["effect_low"],
        stats["effect_high"],
        stats["additive_low"],
        stats["additive_high"],
        stats["interaction"],
        stats["interaction_low"],
        stats["interaction_high"],
        nulls["low"],
        nulls["high"],
        nulls["interaction_low"],
        nulls["interaction_high"],
        n_items,
    )
