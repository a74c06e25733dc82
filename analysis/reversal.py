"""Adversarial reversal: what a search for insertions that undo a steering vector returns, and how its
claim is judged (the search itself is ``analysis.reversal_search.reversal_search``).

``reversal`` is how far the steered behaviour probability moves against the steering direction,
in probability units: ``d * (p_steered - p_steered_with_insertion)`` with ``d`` the sign of the
steering effect. ``reversal_fraction`` divides it by the steering effect ``|p_steered - p_unsteered|``,
so a fraction above 1 means the insertion pushes the steered model past its unsteered value.

Those in-sample numbers are selected on the search items and overstate the reversal. The claim is
read on held-out items the search never saw (issue #12): the top candidate's reversal there is a
paired effect (steered with the insertion against steered without it, per item) with a bootstrap
interval, beside the steering effect it would undo and the insertion's effect on the *unsteered*
model. An insertion that moves the unsteered model as much is not undoing the steering, it is
pushing the behaviour: ``ReversalResult.verdict`` says which.
"""

import math
from dataclasses import dataclass
from typing import Literal

import pandas as pd
from torch import Tensor

from analysis._insertion import Placement
from caa_lens.stats import Effect, paired_effect

__all__ = [
    "QUANTITIES",
    "Key",
    "ReversalConfig",
    "ReversalResult",
    "judge_reversal",
    "pareto_front",
    "reversal_effects",
]


Quantity = Literal["steering", "reversal", "insertion_alone", "specific_reversal"]
Split = Literal["search", "heldout"]
QUANTITIES: tuple[Quantity, ...] = ("steering", "reversal", "insertion_alone", "specific_reversal")


@dataclass(frozen=True)
class ReversalConfig:
    """Search settings. The search stops at ``iterations`` or before exceeding ``time_budget_s``."""

    n_tokens: int = 8
    placement: Placement = "suffix"
    lambdas: tuple[float, ...] = (0.0, 0.01, 0.03, 0.1)
    children_per_member: int = 8
    top_k: int = 64
    iterations: int = 40
    time_budget_s: float = 600.0
    seed: int = 0
    ascii_only: bool = True
    max_rows: int = 64
    progress: bool = True
    # The fewest search (and held-out) items accepted: a search fits the items it sees, and a
    # bootstrap interval over a handful of items is not one. Lower it only for quick or test runs;
    # the config is saved with the result, so such a run says so.
    min_items: int = 20
    n_resamples: int = 4000  # bootstrap resamples per interval


@dataclass(frozen=True, eq=False)
class ReversalResult:
    """Outcome of a reversal search.

    ``best`` has one row per lambda (its final member) and one for the highest-reversal candidate
    seen (``lambda`` NaN): text, token ids, steered p(matching) with the insertion, reversal and
    its fraction, cross-entropy, fitness, the unsteered p(matching) with the insertion (does the
    insertion defeat the steering, or just move the behaviour?), and the same on held-out items.
    ``pareto`` is the non-dominated set of all evaluated candidates over (reversal up, cross-entropy
    down); ``history`` has one row per iteration and lambda.

    ``chosen_text``/``chosen_token_ids`` is the top in-sample candidate (the last row of ``best``),
    the one the claim is about. ``effects`` has its paired effects (``reversal_effects``) on the
    ``n_search`` search items (``split == "search"``: in-sample, selected there, optimistic) and the
    ``n_heldout`` held-out items (``"heldout"``: the reportable numbers). ``reversed`` and
    ``verdict`` read the held-out rows (``judge_reversal``).
    """

    layer: int
    multiplier: float
    config: ReversalConfig
    direction: float
    unsteered: float
    steered: float
    heldout_unsteered: float
    heldout_steered: float
    best: pd.DataFrame
    pareto: pd.DataFrame
    history: pd.DataFrame
    iterations: int
    elapsed_s: float
    stopped_by: str
    n_evaluated: int
    # Defaults keep results saved before the held-out effects existed loadable (they read as no claim).
    n_search: int = 0
    n_heldout: int = 0
    chosen_text: str = ""
    chosen_token_ids: tuple[int, ...] = ()
    effects: pd.DataFrame | None = None

    @property
    def reversed(self) -> bool:
        """Whether steering moves the held-out items and the insertion moves them back, both intervals
        excluding zero (see ``verdict`` for whether the insertion just pushes the behaviour)."""
        return judge_reversal(self.effects)[0]

    @property
    def verdict(self) -> str:
        """One sentence on the held-out reversal, its size against the steering, and what the
        insertion alone does to the unsteered model."""
        return judge_reversal(self.effects)[1]

    def effect(self, quantity: Quantity, split: Split = "heldout") -> Effect | None:
        """One row of ``effects`` as an ``Effect`` (None when it was not measured)."""
        return _effect(self.effects, quantity, split)


def reversal_effects(
    direction: float,
    unsteered: Tensor,
    steered: Tensor,
    steered_inserted: Tensor,
    unsteered_inserted: Tensor,
    *,
    n_resamples: int = 4000,
    seed: int = 0,
) -> pd.DataFrame:
    """Paired effects of one insertion on one set of items, each signed so that positive is the claim.

    All arguments but ``direction`` (+1 or -1, the sign of the steering effect on the search items)
    are per-item p(matching), in the same item order. Rows (``quantity``, ``mean``, ``low``, ``high``,
    ``n``):

    - ``steering``: d * (steered - unsteered), how far steering moves the items its way;
    - ``reversal``: d * (steered - steered with the insertion), how far the insertion moves them back;
    - ``insertion_alone``: d * (unsteered - unsteered with the insertion), the same push on the
      unsteered model;
    - ``specific_reversal``: reversal minus insertion_alone per item, the part of the reversal that
      the insertion does not also do without steering.

    >>> import torch
    >>> table = reversal_effects(1.0, torch.full((4,), 0.5), torch.full((4,), 0.8),
    ...                          torch.full((4,), 0.6), torch.full((4,), 0.5), n_resamples=100)
    >>> table.set_index("quantity")["mean"].round(3).tolist()
    [0.3, 0.2, 0.0, 0.2]
    """
    if direction not in (1.0, -1.0):
        raise ValueError(f"direction must be +1 or -1 (the sign of the steering effect), got {direction}")
    d = float(direction)
    pairs = {
        "steering": (d * steered, d * unsteered),
        "reversal": (d * steered, d * steered_inserted),
        "insertion_alone": (d * unsteered, d * unsteered_inserted),
        "specific_reversal": (d * (steered - steered_inserted), d * (unsteered - unsteered_inserted)),
    }
    rows = []
    for quantity in QUANTITIES:
        after, before = pairs[quantity]
        e = paired_effect(after.double(), before.double(), n_resamples=n_resamples, seed=seed)
        rows.append({"quantity": quantity, "mean": e.mean, "low": e.low, "high": e.high, "n": e.n})
    return pd.DataFrame(rows)


def _effect(effects: pd.DataFrame | None, quantity: str, split: str) -> Effect | None:
    if effects is None or effects.empty:
        return None
    rows = effects[(effects.quantity == quantity) & (effects.split == split)]
    if rows.empty:
        return None
    row = rows.iloc[0]
    return Effect(float(row["mean"]), float(row["low"]), float(row["high"]), int(row["n"]), 0, 0.95)


def _fmt(effect: Effect) -> str:
    return f"{effect.mean:+.3f} [{effect.low:+.3f}, {effect.high:+.3f}], n={effect.n}"


def judge_reversal(effects: pd.DataFrame | None) -> tuple[bool, str]:
    """(reversed, verdict) from the held-out rows of a ``ReversalResult.effects`` table.

    Reversed only when the held-out steering effect and the held-out reversal both have intervals
    above zero (signed as in ``reversal_effects``). The verdict then says whether the insertion
    alone moves the unsteered model by a similar amount (``specific_reversal`` covers zero while
    ``insertion_alone`` is above zero): then it pushes the behaviour rather than undoing steering.
    """
    steering, reversal = _effect(effects, "steering", "heldout"), _effect(effects, "reversal", "heldout")
    alone = _effect(effects, "insertion_alone", "heldout")
    specific = _effect(effects, "specific_reversal", "heldout")
    if steering is None or reversal is None or alone is None or specific is None:
        return False, (
            "not established: no held-out items were scored, and the search items cannot show a reversal "
            "(the insertion was selected on them)"
        )
    if steering.low <= 0:
        return False, (
            f"not established: steering does not move the held-out items its way (effect {_fmt(steering)}), "
            "so there is nothing to reverse"
        )
    if reversal.low <= 0:
        further = " (the insertion strengthens the steering)" if reversal.high < 0 else ""
        return False, (
            f"not reversed: the held-out reversal {_fmt(reversal)} does not exclude zero{further}; "
            f"steering effect {_fmt(steering)}"
        )
    text = (
        f"reversed on held-out items: reversal {_fmt(reversal)} of a steering effect {_fmt(steering)} "
        f"({reversal.mean / steering.mean:.0%} undone)"
    )
    if specific.low > 0:
        return True, text + (
            f"; the insertion alone moves the unsteered model by {_fmt(alone)}, less than the steered one "
            f"(difference {_fmt(specific)}): it undoes steering, not only the behaviour"
        )
    if alone.low > 0:
        return True, text + (
            f"; but the insertion alone moves the unsteered model by a similar amount ({_fmt(alone)}; "
            f"reversal minus that {_fmt(specific)}): it pushes the behaviour rather than undoing the steering"
        )
    return True, text + (
        f"; the insertion alone moves the unsteered model by {_fmt(alone)} and the difference "
        f"{_fmt(specific)} covers zero: more items are needed to tell undoing the steering from "
        "pushing the behaviour"
    )


Key = tuple[int, ...]


def pareto_front(points: dict[Key, tuple[float, float]]) -> list[Key]:
    """Keys not dominated in (reversal up, cross-entropy down), by reversal descending."""
    front: list[Key] = []
    best_ce = math.inf
    for key in sorted(points, key=lambda k: (-points[k][0], points[k][1])):
        if points[key][1] < best_ce:  # lower CE than every point with a higher reversal
            front.append(key)
            best_ce = points[key][1]
    return front
