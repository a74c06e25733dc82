"""Selection apart from report: settings are picked on one split of the items and reported on another.

Picking the best layer (or multiplier, or ratio) on the same items whose effect is then reported makes
the reported effect optimistic: the winner of several noisy cells is, on average, a cell whose noise
happened to be favourable. The main job therefore splits each evaluation set once, with a recorded
seed, into a *selection* part that every choice is made on and a *report* part that every headline
number is computed on. ``SelectionSplit.record()`` is what the manifest stores.
"""

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from caa_lens.data import ContrastiveDataset, shuffled_indices
from caa_lens.stats import effects_table, with_null

__all__ = ["LayerPick", "SelectionSplit", "pick_layer", "report_effects", "split_for_selection"]


@dataclass(frozen=True)
class SelectionSplit:
    """A seeded partition of a dataset's item indices into a selection part and a report part."""

    dataset: str
    seed: int
    selection: tuple[int, ...]
    report: tuple[int, ...]

    def __post_init__(self) -> None:
        if set(self.selection) & set(self.report):
            raise ValueError(f"{self.dataset}: the selection and report items overlap")
        if not self.selection or not self.report:
            raise ValueError(f"{self.dataset}: both the selection and the report split need items")

    @property
    def digest(self) -> str:
        """SHA-256 (16 hex digits) of the two index lists: identifies the split in a manifest."""
        payload = json.dumps([list(self.selection), list(self.report)]).encode()
        return hashlib.sha256(payload).hexdigest()[:16]

    def record(self) -> dict:
        return {
            "dataset": self.dataset,
            "seed": self.seed,
            "n_selection": len(self.selection),
            "n_report": len(self.report),
            "indices_sha256": self.digest,
        }


def split_for_selection(dataset: ContrastiveDataset, fraction: float = 0.5, seed: int = 0) -> SelectionSplit:
    """Split ``dataset``'s items at random (seeded) into ``fraction`` for selection and the rest to report.

    >>> from caa_lens.data import load_bundled
    >>> split = split_for_selection(load_bundled("optimism", "test"), seed=0)
    >>> len(split.selection), len(split.report)
    (25, 25)
    """
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    if len(dataset) < 2:
        raise ValueError(f"{dataset.name}: {len(dataset)} item(s) cannot be split into selection and report")
    order = shuffled_indices(len(dataset), seed)
    cut = min(len(dataset) - 1, max(1, round(len(dataset) * fraction)))
    return SelectionSplit(dataset.name, seed, tuple(sorted(order[:cut])), tuple(sorted(order[cut:])))


def _items(results: pd.DataFrame, indices: Sequence[int]) -> pd.DataFrame:
    return results[results["item_index"].isin(set(indices))]


@dataclass(frozen=True)
class LayerPick:
    """The layer chosen on the selection split, and why."""

    vector: str
    layer: int
    multiplier: float
    selection_effect: float
    criterion: str

    def record(self) -> dict:
        return {
            "vector": self.vector,
            "layer": self.layer,
            "multiplier": self.multiplier,
            "selection_effect": self.selection_effect,
            "criterion": self.criterion,
        }


def pick_layer(results: pd.DataFrame, split: SelectionSplit, vector: str, seed: int = 0) -> LayerPick:
    """The layer whose steering moves the behaviour most, judged on the selection items only.

    The criterion: the largest paired effect in the intended direction, i.e. the effect at the largest
    positive multiplier minus the effect at the most negative one (each against multiplier 0), so that
    both steering directions count and a layer that only shifts everything one way does not win.
    """
    rows = _items(results[results["vector"] == vector], split.selection)
    if rows.empty:
        raise ValueError(f"no sweep rows of vector {vector!r} on the selection items")
    effects = effects_table(rows, seed=seed)
    top, bottom = effects["multiplier"].max(), effects["multiplier"].min()
    if not top > 0 > bottom:
        raise ValueError(
            f"picking a layer needs a positive and a negative multiplier, got {top} and {bottom}"
        )
    plus = effects[effects["multiplier"] == top].set_index("layer")["effect"]
    minus = effects[effects["multiplier"] == bottom].set_index("layer")["effect"]
    spread = (plus - minus).dropna()
    best = int(spread.idxmax())
    return LayerPick(
        vector,
        best,
        float(top),
        float(spread[best]),
        f"largest effect(m={top:+g}) - effect(m={bottom:+g}) on {len(split.selection)} selection items",
    )


def report_effects(results: pd.DataFrame, split: SelectionSplit, seed: int = 0) -> pd.DataFrame:
    """The effects table (paired effect, interval, per-letter split, null band) on the report items only."""
    rows = _items(results, split.report)
    effects = effects_table(rows, seed=seed)
    has_null = effects["vector"].astype(str).str.startswith("random").any()
    table = with_null(effects) if has_null else effects
    table.insert(0, "split", "report")
    return table
