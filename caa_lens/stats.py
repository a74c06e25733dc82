"""Statistics every reported steering effect carries: paired bootstrap intervals, null bands from random
vectors of the same norm, and the answer-letter controls.

A cell's *effect* is the mean over items of ``p_steered - p_unsteered`` on the same items, with a
percentile bootstrap interval over items. A *null band* is the spread of the effects of random
directions with the same norm (``random_like``) at the same layer and multiplier: an effect whose
interval overlaps it is indistinguishable from a random push of that size. The *letter controls*
separate a behaviour push (A- and B-matching items move the same way) from a letter push (they move
in opposite directions), and cancel the letter in mean differences (``letter_balanced_mean``).

>>> import numpy as np
>>> steered, baseline = np.array([0.7, 0.8, 0.6, 0.9]), np.array([0.5, 0.6, 0.5, 0.6])
>>> effect = paired_effect(steered, baseline, n_resamples=1000)
>>> round(effect.mean, 3), effect.excludes_zero
(0.2, True)
>>> effect.against(null_band([-0.02, 0.01, 0.03]))
'above null'
"""

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from caa_lens.vectors import SteeringVector

__all__ = [
    "EFFECT_NULL_COLUMNS",
    "Effect",
    "NullBand",
    "effects_table",
    "letter_axis",
    "letter_balanced_mean",
    "letter_share",
    "null_band",
    "paired_effect",
    "random_like",
    "with_null",
]

NullVerdict = Literal["above null", "below null", "inside null"]
LetterPattern = Literal["same direction", "opposite directions", "unclear"]
Scores = Float[np.ndarray, " item"] | Float[Tensor, " item"] | Sequence[float]
# An effect with its interval (``paired_effect``) and its null band (``with_null``): the columns every
# effects table ends with (the sweep's and the open-ended one).
EFFECT_NULL_COLUMNS = ("effect", "effect_low", "effect_high", "null_low", "null_high", "n_null", "vs_null")


@dataclass(frozen=True)
class NullBand:
    """The central ``coverage`` range of the effects of ``n_vectors`` random same-norm vectors."""

    low: float
    high: float
    n_vectors: int


@dataclass(frozen=True)
class Effect:
    """A mean paired difference over ``n`` items and its percentile bootstrap interval [low, high]."""

    mean: float
    low: float
    high: float
    n: int
    n_resamples: int
    confidence: float

    @property
    def excludes_zero(self) -> bool:
        """Whether the interval lies wholly above or wholly below zero."""
        return self.low > 0 or self.high < 0

    def against(self, band: NullBand) -> NullVerdict:
        """Where the interval lies relative to a null band; any overlap is ``"inside null"``."""
        return _verdict(self.low, self.high, band)


def _verdict(low: float, high: float, band: NullBand) -> NullVerdict:
    if low > band.high:
        return "above null"
    if high < band.low:
        return "below null"
    return "inside null"


def _as_array(values: Scores, name: str) -> np.ndarray:
    array = (
        values.detach().cpu().double().numpy() if isinstance(values, Tensor) else np.asarray(values, float)
    )
    if array.ndim != 1:
        raise ValueError(f"{name} must be one score per item (1-D), got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(
            f"{name} has NaN or infinite scores at items {np.flatnonzero(~np.isfinite(array))[:10]}"
        )
    return array


def paired_effect(
    steered: Scores, baseline: Scores, *, n_resamples: int = 4000, confidence: float = 0.95, seed: int = 0
) -> Effect:
    """The mean of per-item differences ``steered - baseline`` with a percentile bootstrap interval.

    ``steered[i]`` and ``baseline[i]`` must score the same item: pairing removes the item-to-item
    spread that both runs share, which dominates the uncertainty of unpaired means. The bootstrap
    resamples item indices (one ``[n_resamples, n]`` index matrix from a private generator seeded
    with ``seed``, so the global RNGs are untouched) and takes the percentiles of the resampled means.

    >>> paired_effect([0.6, 0.7, 0.9], [0.5, 0.5, 0.5]).mean  # doctest: +ELLIPSIS
    0.2333...
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1 (e.g. 0.95), got {confidence}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be at least 1 (a few thousand for reporting), got {n_resamples}")
    after, before = _as_array(steered, "steered"), _as_array(baseline, "baseline")
    if after.shape != before.shape or not after.size:
        raise ValueError(
            f"steered and baseline must score the same non-empty list of items, in the same order; got "
            f"{after.size} and {before.size} scores (align them on item_index first)"
        )
    differences = after - before
    indices = np.random.default_rng(seed).integers(0, differences.size, (n_resamples, differences.size))
    means = differences[indices].mean(axis=1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    mean = float(differences.mean())
    # Rounding in the resampled means can put an endpoint a hair past the mean when all items agree.
    return Effect(
        mean, min(float(low), mean), max(float(high), mean), differences.size, n_resamples, confidence
    )


def null_band(effects: Sequence[float] | Float[np.ndarray, " vector"], coverage: float = 0.95) -> NullBand:
    """The central ``coverage`` quantile range of random vectors' effects (``coverage=1``: their range).

    With a handful of vectors the band is close to their range and still understates the spread of
    random pushes; use several seeds.

    >>> null_band([-0.02, 0.0, 0.01, 0.03], coverage=1.0)
    NullBand(low=-0.02, high=0.03, n_vectors=4)
    """
    values = np.asarray(effects, float)
    if values.ndim != 1 or not values.size or not np.isfinite(values).all():
        raise ValueError(f"a null band needs one finite effect per random vector, got {effects!r}")
    if not 0 < coverage <= 1:
        raise ValueError(f"coverage must be in (0, 1], got {coverage}")
    low, high = np.quantile(values, [(1 - coverage) / 2, (1 + coverage) / 2])
    return NullBand(float(low), float(high), values.size)


def random_like(vector: SteeringVector, seed: int) -> SteeringVector:
    """Gaussian random directions with ``vector``'s norm at every layer (and every ActAdd position).

    The control for "any push of this size": scored at the same layers and multipliers, its effects
    give the null band. The generator is private (seeded with ``seed``); in high dimension different
    seeds give near-orthogonal directions.
    """
    directions = vector.directions
    noise = torch.randn(directions.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    target = directions.double().cpu().norm(dim=-1, keepdim=True)  # per layer, or per layer and position
    scaled = (noise * target / noise.norm(dim=-1, keepdim=True)).to(directions.dtype).to(directions.device)
    method = f"random (same norm as {vector.provenance.method}; seed {seed})"
    # A random direction is not the original's mix of letter and behaviour: its letter share is unknown.
    provenance = replace(vector.provenance, method=method, letter_share={})
    return replace(vector, directions=scaled, provenance=provenance)


def _letter_means(
    diffs: Float[Tensor, "pair layer d_model"], labels: Sequence[str]
) -> dict[str, Float[Tensor, "layer d_model"]]:
    if len(labels) != diffs.shape[0]:
        raise ValueError(f"{len(labels)} labels for {diffs.shape[0]} pairs: give one matching label per pair")
    letters = sorted(set(labels))
    if len(letters) < 2:
        raise ValueError(
            f"every pair has matching label {letters}, so no other letter's group can cancel the letter; "
            f"use the plain mean (diffs.mean(0)), knowing it holds the letter direction, or add pairs "
            f"whose matching answer is another letter"
        )
    marks = np.asarray(labels)
    return {letter: diffs[torch.from_numpy(marks == letter)].double().mean(0) for letter in letters}


def letter_balanced_mean(
    diffs: Float[Tensor, "pair layer d_model"], labels: Sequence[str]
) -> Float[Tensor, "layer d_model"]:
    """The mean of the per-letter mean differences: each matching letter weighs the same.

    With ``diffs[i] = b + s_i * L`` (``s_i = +1`` when pair i's matching answer is A, -1 for B), the
    plain mean is ``b + (f_A - f_B) * L``, which keeps part of the (often much larger) letter
    direction ``L`` whenever the letters are unbalanced; this mean is ``b`` whatever the balance.

    >>> diffs = torch.tensor([[[3.0, 1.0]], [[3.0, 1.0]], [[-1.0, 1.0]]])
    >>> letter_balanced_mean(diffs, ["A", "A", "B"])
    tensor([[1., 1.]])
    """
    means = _letter_means(diffs, labels)
    return torch.stack(list(means.values())).mean(0).to(diffs.dtype)


def letter_axis(
    diffs: Float[Tensor, "pair layer d_model"], labels: Sequence[str]
) -> Float[Tensor, "layer d_model"]:
    """The part of the differences that flips sign with the matching letter: ``L``.

    For two labels L1 < L2 (e.g. "A", "B"): the mean over L1-matching pairs is ``b + L`` and over
    L2-matching pairs ``b - L``, so ``L = (mean_L1 - mean_L2) / 2`` (and ``b`` is half their sum).

    >>> diffs = torch.tensor([[[3.0, 1.0]], [[3.0, 1.0]], [[-1.0, 1.0]]])
    >>> letter_axis(diffs, ["A", "A", "B"])
    tensor([[2., 0.]])
    """
    means = _letter_means(diffs, labels)
    if len(means) != 2:
        raise ValueError(f"the letter axis is defined for two matching labels, got {sorted(means)}")
    first, second = means.values()
    return ((first - second) / 2).to(diffs.dtype)


def letter_share(
    vector_directions: Float[Tensor, "layer d_model"], axis: Float[Tensor, "layer d_model"]
) -> Float[Tensor, " layer"]:
    """Squared cosine of each layer's direction with the letter axis: the share of it that is letter.

    >>> letter_share(torch.tensor([[1.0, 1.0]]), torch.tensor([[2.0, 0.0]]))
    tensor([0.5000])
    """
    cosine = torch.nn.functional.cosine_similarity(vector_directions.double(), axis.double(), dim=-1)
    return (cosine**2).to(vector_directions.dtype)


def _pattern(effects: Sequence[Effect]) -> LetterPattern:
    up = any(e.low > 0 for e in effects)
    down = any(e.high < 0 for e in effects)
    if up and down:
        return "opposite directions"
    if (up or down) and all(e.excludes_zero for e in effects):
        return "same direction"
    return "unclear"


def _cell_rows(name: object, layer: object, group: pd.DataFrame, n_resamples: int, seed: int) -> list[dict]:
    if group.duplicated(["multiplier", "item_index"]).any():
        raise ValueError(
            f"vector {name!r}, layer {layer}: repeated (multiplier, item_index) rows; deduplicate"
        )
    baseline = group[group.multiplier == 0].set_index("item_index")
    if baseline.empty:
        raise ValueError(
            f"vector {name!r}, layer {layer} has no multiplier-0 rows: the paired effects need the unsteered "
            f"scores of the same items; include multiplier 0 in the sweep"
        )
    letters = sorted(group.matching_label.unique())
    rows = []
    for multiplier, cell in group.groupby("multiplier", sort=True):
        missing = sorted(set(cell.item_index) - set(baseline.index))
        if missing:
            raise ValueError(
                f"vector {name!r}, layer {layer}, multiplier {multiplier}: items {missing[:10]} have no "
                f"multiplier-0 row to pair with; finish the sweep (or drop those items)"
            )
        before = baseline.loc[cell.item_index]
        if "item_hash" in cell and (cell.item_hash.to_numpy() != before.item_hash.to_numpy()).any():
            raise ValueError(f"vector {name!r}, layer {layer}: item hashes differ between multipliers")
        after, base = cell.p_matching.to_numpy(float), before.p_matching.to_numpy(float)
        overall = paired_effect(after, base, n_resamples=n_resamples, seed=seed)
        row = {"vector": name, "layer": layer, "multiplier": multiplier, "p_matching": after.mean()}
        row |= {"n_items": overall.n} | _columns("", overall)
        per_letter = {}
        for letter in letters:
            chosen = (cell.matching_label == letter).to_numpy()
            if chosen.any():  # a letter can be absent from one cell of an unfinished sweep
                per_letter[letter] = paired_effect(
                    after[chosen], base[chosen], n_resamples=n_resamples, seed=seed
                )
            row |= _columns(f"_{letter}", per_letter.get(letter)) | {f"n_{letter}": int(chosen.sum())}
        pattern = _pattern(list(per_letter.values())) if len(per_letter) > 1 else "unclear"
        rows.append(row | {"letter_pattern": pattern})
    return rows


def _columns(suffix: str, effect: Effect | None) -> dict[str, float]:
    values = (effect.mean, effect.low, effect.high) if effect is not None else (np.nan,) * 3
    return dict(zip((f"effect{suffix}", f"effect{suffix}_low", f"effect{suffix}_high"), values, strict=True))


def effects_table(results: pd.DataFrame, n_resamples: int = 4000, seed: int = 0) -> pd.DataFrame:
    """Paired effects against multiplier 0, per (vector, layer, multiplier), overall and per letter.

    Columns: vector, layer, multiplier, p_matching (mean), n_items, effect, effect_low, effect_high,
    then for each matching label X: effect_X, effect_X_low, effect_X_high, n_X, and letter_pattern:
    "same direction" (every letter's interval excludes zero on the same side: a behaviour push),
    "opposite directions" (some letter moves up and some down, both excluding zero: a letter push),
    or "unclear". Every cell uses the same bootstrap ``seed``, so tables are reproducible.

    >>> rows = [{"vector": "v", "layer": 1, "multiplier": m, "item_index": i, "matching_label": "AB"[i % 2],
    ...          "p_matching": 0.5 + m * 0.1 + 0.01 * i} for m in (0, 1) for i in range(6)]
    >>> table = effects_table(pd.DataFrame(rows), n_resamples=200)
    >>> table[["multiplier", "effect", "letter_pattern"]].round(3).values.tolist()
    [[0, 0.0, 'unclear'], [1, 0.1, 'same direction']]
    """
    lacking = [c for c in ("vector", "layer", "multiplier", "item_index", "matching_label", "p_matching")
               if c not in results.columns]  # fmt: skip
    if results.empty or lacking:
        raise ValueError(
            f"effects_table needs a sweep results table (load_results) with rows and the columns vector, "
            f"layer, multiplier, item_index, matching_label, p_matching; got {len(results)} rows"
            + (f", lacking {lacking}" if lacking else "")
        )
    rows = []
    for (name, layer), group in results.groupby(["vector", "layer"], sort=True):
        rows += _cell_rows(name, layer, group, n_resamples, seed)
    return pd.DataFrame(rows)


def _controlled(name: str, prefix: str) -> str | None:
    """The vector a null row controls: ``<prefix>:<vector>:<seed>`` -> vector, ``<prefix>:<seed>`` -> "*"."""
    if name != prefix and not name.startswith(f"{prefix}:"):
        return None
    parts = name[len(prefix) + 1 :].rsplit(":", 1)
    return parts[0] if len(parts) == 2 else "*"


def with_null(effects: pd.DataFrame, null_prefix: str = "random", coverage: float = 0.95) -> pd.DataFrame:
    """The non-null rows of ``effects_table`` with their null band: null_low, null_high, n_null, vs_null.

    Naming: a vector called ``<null_prefix>:<vector>:<seed>`` (e.g. ``random:refusal:0``, made by
    ``random_like(refusal_vector, 0)``) is a null for ``<vector>`` only; ``<null_prefix>:<seed>`` or
    just ``<null_prefix>`` is a null for every vector (a sweep of one vector). The band of a row comes
    from the null rows at its layer and multiplier (``null_band`` of their effects, ``coverage``);
    ``vs_null`` compares the row's effect interval with it (``Effect.against``).
    """
    targets = effects.vector.map(lambda name: _controlled(str(name), null_prefix))
    nulls, tested = effects[targets.notna()], effects[targets.isna()].copy()
    unknown = set(targets.dropna()) - set(tested.vector) - {"*"}
    if unknown:
        raise ValueError(
            f"null vectors control {sorted(unknown)}, which are not in the table; check the names"
        )
    columns: dict[str, list] = {"null_low": [], "null_high": [], "n_null": [], "vs_null": []}
    for row in tested.itertuples():
        chosen = (nulls.layer == row.layer) & (nulls.multiplier == row.multiplier)
        chosen &= targets[nulls.index].isin([row.vector, "*"])
        if not chosen.any():
            raise ValueError(
                f"vector {row.vector!r}, layer {row.layer}, multiplier {row.multiplier} has no null rows; "
                f"sweep random_like vectors named '{null_prefix}:{row.vector}:<seed>' at the same cells"
            )
        band = null_band(nulls.effect[chosen].tolist(), coverage)
        columns["null_low"].append(band.low)
        columns["null_high"].append(band.high)
        columns["n_null"].append(band.n_vectors)
        columns["vs_null"].append(_verdict(row.effect_low, row.effect_high, band))
    return tested.assign(**columns).reset_index(drop=True)
