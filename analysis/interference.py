"""Multi-behaviour interference: steer several behaviours at once and measure every behaviour.

Each combination of behaviour vectors is applied together (one ``Injection`` per vector, at its own
layer and multiplier) and every behaviour's A/B probability is scored under it. The matrix of changes
against the unsteered scores answers the Patterns paper's open question: does steering one behaviour
move the others, and do combined vectors add up (``additive_prediction``) or interfere?
"""

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from analysis._scoring import Condition, condition_scores, prefix_batches
from caa_lens.data import ContrastiveDataset
from caa_lens.vectors import SteeringVector


@dataclass(frozen=True, eq=False)
class Interference:
    """Rows are combinations of steered behaviours, columns the behaviours scored.

    ``effect[c, b]`` is the change of behaviour b's mean p(matching) under combination c;
    ``additive_prediction[c, b]`` is the sum of the single-vector effects of c's members (NaN when
    a member has no single-vector row), so ``effect - additive_prediction`` is the interaction.
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

    def to_frame(self) -> pd.DataFrame:
        """Long table: combination, behaviour, score, effect, additive prediction."""
        rows = [
            {
                "combination": "+".join(combo),
                "behaviour": name,
                "score": float(self.scores[c, b]),
                "effect": float(self.effect[c, b]),
                "additive_prediction": float(self.additive_prediction[c, b]),
            }
            for c, combo in enumerate(self.combinations)
            for b, name in enumerate(self.scored)
        ]
        return pd.DataFrame(rows)


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


def interference_matrix(
    model,
    vectors: Mapping[str, SteeringVector],
    datasets: Mapping[str, ContrastiveDataset],
    layer: int | Mapping[str, int],
    multiplier: float | Mapping[str, float] = 1.0,
    combinations: Sequence[Sequence[str]] | None = None,
    max_rows: int = 96,
) -> Interference:
    """Score every behaviour in ``datasets`` under every combination of the ``vectors``.

    Args:
        vectors: behaviour name -> steering vector.
        datasets: behaviour name -> items scored for it (the names need not match ``vectors``).
        layer / multiplier: one for all vectors, or one per vector name.
        combinations: tuples of vector names applied together; default ``default_combinations``.
    """
    names = tuple(vectors)
    layers = {n: int(v) for n, v in _per_name(layer, names, "layer").items()}
    multipliers = {n: float(v) for n, v in _per_name(multiplier, names, "multiplier").items()}
    combos = default_combinations(names) if combinations is None else tuple(tuple(c) for c in combinations)
    unknown = sorted({n for c in combos for n in c} - set(names))
    if unknown:
        raise ValueError(f"combinations name unknown vectors {unknown}; known: {list(names)}")
    conditions: list[Condition] = [()]  # the unsteered baseline, scored in the same passes
    conditions += [tuple((vectors[n], layers[n], multipliers[n]) for n in combo) for combo in combos]
    scored = tuple(datasets)
    table = torch.stack(
        [
            condition_scores(model, prefix_batches(model, datasets[b]), conditions, max_rows).mean(1)
            for b in scored
        ],
        dim=1,
    )
    baseline, scores = table[0], table[1:]
    effect = scores - baseline
    singles = {combo[0]: effect[c] for c, combo in enumerate(combos) if len(combo) == 1}
    nan_row = torch.full((len(scored),), float("nan"))
    additive = torch.stack([torch.stack([singles.get(n, nan_row) for n in combo]).sum(0) for combo in combos])
    return Interference(names, scored, combos, layers, multipliers, baseline, scores, effect, additive)
