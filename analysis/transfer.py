"""Layer transfer: does the vector read at one layer still steer when applied at another?

The CAA paper found that a vector read at one layer still steers when applied at nearby ones.
``layer_transfer`` applies the vector read at layer i at layer j and reports each cell as paired
effects against the unsteered run on the same items, with bootstrap intervals and a null of random
directions of the same norm (issue #12).
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from analysis._scoring import layer_scores, prefix_batches
from caa_lens.data import ContrastiveDataset
from caa_lens.stats import null_band, paired_effect, random_like
from caa_lens.vectors import SteeringVector

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

__all__ = ["LayerTransfer", "layer_transfer", "rehomed"]


def rehomed(vector: SteeringVector, read_layer: int, apply_layer: int) -> SteeringVector:
    """A one-layer vector holding the direction read at ``read_layer``, filed under ``apply_layer``."""
    provenance = replace(vector.provenance, method=f"{vector.provenance.method}; read at layer {read_layer}")
    return SteeringVector(vector.at(read_layer)[None].clone(), (apply_layer,), provenance)


@dataclass(frozen=True, eq=False)
class LayerTransfer:
    """Behaviour probability when the vector read at layer i is applied at layer j.

    ``plus``/``minus`` are the mean p(matching) at multipliers +m and -m and ``baseline`` the
    unsteered mean, all on the same items; ``effect = plus - minus`` is the swing the vector causes
    (0 when it does nothing), comparable across cells, with its paired bootstrap interval
    ``effect_low``/``effect_high`` over the ``n_items`` items and ``null_low``/``null_high``, the range
    of the swings of random directions with the cell's norm (``random_like``), scored the same way.

    ``table`` has one row per (read, apply, side): side ``"plus"`` (+m minus unsteered, per item),
    ``"minus"`` (-m minus unsteered) and ``"swing"`` (+m minus -m); columns ``effect``,
    ``effect_low``, ``effect_high``, ``n``, ``null_low``, ``null_high``, ``n_null`` and ``vs_null``
    (``Effect.against``: ``"above null"``, ``"below null"`` or ``"inside null"``, an effect no larger
    than a random push of the same size).
    """

    read_layers: tuple[int, ...]
    apply_layers: tuple[int, ...]
    multiplier: float
    match_norm: bool
    plus: Float[Tensor, "read apply"]
    minus: Float[Tensor, "read apply"]
    baseline: float
    effect: Float[Tensor, "read apply"]
    # Defaults keep results saved before the intervals existed loadable (plots then draw means only).
    effect_low: Float[Tensor, "read apply"] | None = None
    effect_high: Float[Tensor, "read apply"] | None = None
    null_low: Float[Tensor, "read apply"] | None = None
    null_high: Float[Tensor, "read apply"] | None = None
    n_items: int = 0
    table: pd.DataFrame | None = None


_SIDES = ("plus", "minus", "swing")


def _side_scores(scores: Tensor, base: Tensor) -> dict[str, tuple[Tensor, Tensor]]:
    """(steered, baseline) per-item pairs of each side, from [item, 2] scores at +m, -m."""
    return {
        "plus": (scores[:, 0], base),
        "minus": (scores[:, 1], base),
        "swing": (scores[:, 0], scores[:, 1]),
    }


def layer_transfer(
    model: "TransformerBridge",
    vector: SteeringVector,
    dataset: ContrastiveDataset,
    read_layers: Sequence[int] | None = None,
    apply_layers: Sequence[int] | None = None,
    multiplier: float = 1.0,
    match_norm: bool = False,
    max_rows: int = 96,
    *,
    null_seeds: Sequence[int] = (0, 1),
    n_resamples: int = 4000,
    seed: int = 0,
) -> LayerTransfer:
    """Apply each read layer's direction at each apply layer and score the behaviour on ``dataset``.

    Every item is scored unsteered, at +m and at -m, so each cell's effects are paired differences
    on the same items (``paired_effect``, bootstrap seeded with ``seed``).

    Args:
        vector: a CAA vector covering every read layer.
        read_layers / apply_layers: default to all of ``vector.layers``; apply layers need not be
            among them.
        multiplier: applied as +m and -m.
        match_norm: rescale the direction to the norm of ``vector`` at the apply layer (when the
            apply layer is one of its layers), separating direction from scale; the CAA paper used
            the same multiplier everywhere (``False``).
        null_seeds: one random direction per seed (``random_like(vector, seed)``, read at the same
            layer, so with the cell's norm) scored in every cell beside the vector; each adds the cost
            of the vector itself. ``()`` skips the null (NaN bands).
        n_resamples: bootstrap resamples per interval.
    """
    reads = tuple(vector.layers) if read_layers is None else tuple(read_layers)
    applies = tuple(vector.layers) if apply_layers is None else tuple(apply_layers)
    missing = [layer for layer in reads if layer not in vector.layers]
    if missing:
        raise ValueError(f"read layers {missing} are not among the vector's layers {vector.layers}")
    batches = prefix_batches(model, dataset)
    randoms = [random_like(vector, s) for s in null_seeds]
    base = layer_scores(model, batches, [rehomed(vector, reads[0], applies[0])], applies[0], [0.0])[:, 0, 0]
    shape = (len(reads), len(applies))
    plus, minus, low, high = (torch.empty(shape) for _ in range(4))
    null_low, null_high = torch.full(shape, math.nan), torch.full(shape, math.nan)
    rows = []
    for j, apply_layer in enumerate(applies):
        moved = [rehomed(source, read, apply_layer) for source in [vector, *randoms] for read in reads]
        if match_norm and apply_layer in vector.layers:
            target = float(vector.at(apply_layer).norm())
            moved = [v.normalized(target) for v in moved]
        scores = layer_scores(model, batches, moved, apply_layer, [multiplier, -multiplier], max_rows)
        scores = scores.reshape(scores.shape[0], 1 + len(randoms), len(reads), 2)  # item, source, read, m
        for i, read in enumerate(reads):
            plus[i, j], minus[i, j] = scores[:, 0, i].mean(0).unbind(-1)
            nulls: dict[str, list[float]] = {side: [] for side in _SIDES}
            for r in range(len(randoms)):
                for side, (after, before) in _side_scores(scores[:, 1 + r, i], base).items():
                    nulls[side].append(float((after - before).mean()))
            for side, (after, before) in _side_scores(scores[:, 0, i], base).items():
                effect = paired_effect(after, before, n_resamples=n_resamples, seed=seed)
                band = null_band(nulls[side], coverage=1.0) if randoms else None
                rows.append(
                    {
                        "read": read,
                        "apply": apply_layer,
                        "side": side,
                        "effect": effect.mean,
                        "effect_low": effect.low,
                        "effect_high": effect.high,
                        "n": effect.n,
                        "null_low": band.low if band else math.nan,
                        "null_high": band.high if band else math.nan,
                        "n_null": band.n_vectors if band else 0,
                        "vs_null": effect.against(band) if band else "no null",
                    }
                )
                if side == "swing":
                    low[i, j], high[i, j] = effect.low, effect.high
                    if band:
                        null_low[i, j], null_high[i, j] = band.low, band.high
    return LayerTransfer(
        reads,
        applies,
        float(multiplier),
        match_norm,
        plus,
        minus,
        float(base.mean()),
        plus - minus,
        low,
        high,
        null_low,
        null_high,
        int(base.shape[0]),
        pd.DataFrame(rows),
    )
