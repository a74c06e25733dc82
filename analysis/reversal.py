"""Adversarial reversal search: short token insertions that undo (or reverse) a steering vector.

An evolutionary search in the style of EPO (Thompson et al., arXiv 2402.01702), as the Patterns
paper used it. One population member per fluency weight lambda; each iteration every member's
gradient with respect to its one-hot tokens (through the steered model, ``embeds = onehot @ W_E``)
proposes, per position, the top-k token swaps; children swap one random position for one of them;
each lambda keeps the fittest of parents and children by

    fitness = reversal - lambda * cross_entropy(inserted tokens, unsteered model)

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
import time
from dataclasses import dataclass
from typing import Literal

import pandas as pd
import torch
from torch import Tensor
from tqdm.auto import tqdm

from analysis._insertion import Placement, allowed_tokens, insertion_batch, score_onehots, score_tokens
from caa_lens.data import ContrastiveDataset
from caa_lens.evaluation import behaviour_probabilities
from caa_lens.stats import Effect, paired_effect
from caa_lens.steering import Injection
from caa_lens.vectors import SteeringVector

__all__ = [
    "ReversalConfig",
    "ReversalResult",
    "allowed_tokens",
    "fitness",
    "judge_reversal",
    "pareto_front",
    "reversal_effects",
    "reversal_search",
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


def fitness(reversal: Tensor, cross_entropy: Tensor, lam: float | Tensor) -> Tensor:
    """EPO's objective: reversal minus lambda times the inserted tokens' cross-entropy."""
    return reversal - lam * cross_entropy


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


class _Search:
    """The state of one search: baselines, the split items, and every candidate scored so far."""

    def __init__(self, model, vector, layer, multiplier, items, cfg: ReversalConfig) -> None:
        self.model, self.vector, self.layer, self.multiplier, self.cfg = model, vector, layer, multiplier, cfg
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.unsteered_items, self.steered_items = _baselines(model, vector, layer, multiplier, items)
        self.unsteered, self.steered = float(self.unsteered_items.mean()), float(self.steered_items.mean())
        gap = self.steered - self.unsteered
        self.direction = math.copysign(1.0, gap if gap != 0 else multiplier)
        self.batch = insertion_batch(model, items, cfg.placement)
        self.vocab = model.original_model.get_input_embeddings().weight.shape[0]
        self.allowed = allowed_tokens(model.tokenizer, self.vocab, cfg.ascii_only)
        self.archive: dict[Key, tuple[float, float, float]] = {}  # ids -> (p_steered, reversal, ce)

    def random_candidate(self) -> Key:
        pool = self.allowed.nonzero()[:, 0]
        return tuple(pool[torch.randint(len(pool), (self.cfg.n_tokens,), generator=self.generator)].tolist())

    def evaluate(self, candidates: list[Key]) -> None:
        fresh = list(dict.fromkeys(c for c in candidates if c not in self.archive))
        if not fresh:
            return
        scores = score_tokens(
            self.model,
            self.batch,
            torch.tensor(fresh),
            self.vector,
            self.layer,
            self.multiplier,
            self.cfg.max_rows,
        )
        p, ce = scores.p_matching.mean(1), scores.cross_entropy.mean(1)
        for k, key in enumerate(fresh):
            self.archive[key] = (float(p[k]), self.direction * (self.steered - float(p[k])), float(ce[k]))

    def fitness(self, key: Key, lam: float) -> float:
        return self.archive[key][1] - lam * self.archive[key][2]

    def fittest(self, candidates: list[Key], lam: float) -> Key:
        return max(candidates, key=lambda key: self.fitness(key, lam))

    def top_swaps(self, members: list[Key]) -> Tensor:
        """Per member and position, the top-k tokens by gradient of that member's fitness."""
        onehots = torch.nn.functional.one_hot(torch.tensor(members), self.vocab).float().requires_grad_(True)
        with torch.enable_grad():
            scores = score_onehots(self.model, self.batch, onehots, self.vector, self.layer, self.multiplier)
            reversal = self.direction * (self.steered - scores.p_matching.mean(1))
            lams = torch.tensor(self.cfg.lambdas, device=reversal.device)
            # Members are independent rows, so the gradient of the sum is each member's own gradient.
            fitness(reversal, scores.cross_entropy.mean(1), lams).sum().backward()
        assert onehots.grad is not None
        gradient = onehots.grad.masked_fill(~self.allowed, -math.inf)
        return gradient.topk(self.cfg.top_k, dim=-1).indices  # [member, position, k]

    def children(self, members: list[Key], top: Tensor) -> list[Key]:
        out = []
        for m, member in enumerate(members):
            for _ in range(self.cfg.children_per_member):
                position = int(torch.randint(self.cfg.n_tokens, (1,), generator=self.generator))
                choice = int(torch.randint(self.cfg.top_k, (1,), generator=self.generator))
                child = list(member)
                child[position] = int(top[m, position, choice])
                out.append(tuple(child))
        return out


def _baselines(model, vector, layer, multiplier, items) -> tuple[Tensor, Tensor]:
    """Per-item unsteered and steered p(matching) of the items without any insertion."""

    def scores(injections) -> Tensor:
        found = behaviour_probabilities(model, items, injections, progress=False)
        return torch.tensor([score.p_matching for score in found.items])

    return scores(()), scores(Injection(vector, layer, float(multiplier), "from_start"))


def _check_items(items: ContrastiveDataset, heldout: ContrastiveDataset | None, cfg: ReversalConfig) -> None:
    """Enough search and held-out items, and no held-out item the search sees."""
    if cfg.min_items < 1:
        raise ValueError(f"ReversalConfig.min_items must be at least 1, got {cfg.min_items}")
    for what, data in (("search", items), ("held-out", heldout)):
        if data is not None and len(data) < cfg.min_items:
            raise ValueError(
                f"reversal_search needs at least {cfg.min_items} {what} items, got {len(data)}: a search "
                f"fits the items it sees and an interval over a handful of items says little; pass more "
                f"items, or lower ReversalConfig.min_items for a quick run (it is saved with the result)"
            )
    if heldout is not None:
        seen = set(items)
        shared = [i for i, item in enumerate(heldout) if item in seen]
        if shared:
            raise ValueError(
                f"held-out items {shared[:10]} are also search items: the held-out set must be items the "
                f"search never saw (split the items, e.g. dataset.select(range(k)) and the rest)"
            )


def reversal_search(
    model,
    vector: SteeringVector,
    layer: int,
    multiplier: float,
    items: ContrastiveDataset,
    heldout: ContrastiveDataset | None = None,
    config: ReversalConfig = ReversalConfig(),
) -> ReversalResult:
    """Search for a short insertion into the user prompt that reverses ``multiplier * vector``.

    Args:
        vector / layer / multiplier: the steering to attack (CAA, ``from_start``).
        items: the items the search optimises on, batched together (at least ``config.min_items``).
        heldout: items the search never sees (at least ``config.min_items``), on which the top
            candidate's effects are measured: without them ``reversed`` is False and the verdict
            says nothing is established.
        config: search settings (see ``ReversalConfig``).
    """
    started = time.perf_counter()
    cfg = config
    _check_items(items, heldout, cfg)
    search = _Search(model, vector, layer, multiplier, items, cfg)
    members = [search.random_candidate() for _ in cfg.lambdas]
    search.evaluate(members)
    history: list[dict] = []
    stopped_by, done, last_duration = "iterations", 0, 0.0
    bar = tqdm(total=cfg.iterations, desc="reversal search", unit="it", disable=not cfg.progress)
    for iteration in range(1, cfg.iterations + 1):
        # Stop before an iteration that would likely overrun the budget, not after it.
        if time.perf_counter() - started + last_duration > cfg.time_budget_s:
            stopped_by = "time"
            break
        tick = time.perf_counter()
        children = search.children(members, search.top_swaps(members))
        search.evaluate(children)
        pool = list(dict.fromkeys(members + children))
        members = [search.fittest(pool, lam) for lam in cfg.lambdas]
        last_duration, done = time.perf_counter() - tick, iteration
        best = max(v[1] for v in search.archive.values())
        history += [
            {
                "iteration": iteration,
                "lambda": lam,
                "reversal": search.archive[member][1],
                "cross_entropy": search.archive[member][2],
                "fitness": search.fitness(member, lam),
                "best_reversal": best,
                "n_evaluated": len(search.archive),
                "elapsed_s": time.perf_counter() - started,
            }
            for lam, member in zip(cfg.lambdas, members, strict=True)
        ]
        bar.update(1)
        bar.set_postfix(best_reversal=f"{best:.3f}")
    bar.close()
    best_table, held, effects = _best_table(search, heldout, members)
    front = pareto_front({k: (v[1], v[2]) for k, v in search.archive.items()})
    pareto = pd.DataFrame(
        [
            {
                "text": model.tokenizer.decode(list(k)),
                "token_ids": k,
                "reversal": search.archive[k][1],
                "cross_entropy": search.archive[k][2],
            }
            for k in front
        ]
    )
    return ReversalResult(
        layer,
        float(multiplier),
        cfg,
        search.direction,
        search.unsteered,
        search.steered,
        *held,
        best_table,
        pareto,
        pd.DataFrame(history),
        done,
        time.perf_counter() - started,
        stopped_by,
        len(search.archive),
        len(items),
        0 if heldout is None else len(heldout),
        str(best_table.text.iloc[-1]),
        tuple(best_table.token_ids.iloc[-1]),
        effects,
    )


def _best_table(
    search: _Search, heldout: ContrastiveDataset | None, members: list[Key]
) -> tuple[pd.DataFrame, tuple[float, float], pd.DataFrame]:
    """One row per lambda's final member and one for the top-reversal candidate, with transfer; and
    the top candidate's paired effects on the search and held-out items (``reversal_effects``)."""
    s, cfg = search, search.cfg
    top = max(s.archive, key=lambda key: s.archive[key][1])
    chosen: list[tuple[float, Key]] = [*zip(cfg.lambdas, members, strict=True), (math.nan, top)]
    ids = torch.tensor([key for _, key in chosen])

    def scored(batch, multiplier: float) -> Tensor:  # [candidate, item]
        return score_tokens(s.model, batch, ids, s.vector, s.layer, multiplier, cfg.max_rows).p_matching

    # The same insertions without steering: an insertion that moves the unsteered model as much is
    # not attacking the steering, it is changing the question.
    plain, inserted = scored(s.batch, 0.0), scored(s.batch, s.multiplier)
    d, stats = s.direction, {"n_resamples": cfg.n_resamples, "seed": cfg.seed}
    effects = [
        reversal_effects(d, s.unsteered_items, s.steered_items, inserted[-1], plain[-1], **stats).assign(
            split="search"
        )
    ]
    nan_row = torch.full((len(chosen), 1), math.nan)
    held_plain = held_inserted = nan_row
    held_unsteered_items = held_steered_items = torch.full((1,), math.nan)
    if heldout is not None:
        held_unsteered_items, held_steered_items = _baselines(
            s.model, s.vector, s.layer, s.multiplier, heldout
        )
        held_batch = insertion_batch(s.model, heldout, cfg.placement)
        held_plain, held_inserted = scored(held_batch, 0.0), scored(held_batch, s.multiplier)
        effects.append(
            reversal_effects(
                d, held_unsteered_items, held_steered_items, held_inserted[-1], held_plain[-1], **stats
            ).assign(split="heldout")
        )
    held_unsteered, held_steered = float(held_unsteered_items.mean()), float(held_steered_items.mean())
    rows = []
    for k, (lam, key) in enumerate(chosen):
        p, reversal, ce = s.archive[key]
        held_reversal = d * (held_steered - float(held_inserted[k].mean()))
        low = high = math.nan
        if heldout is not None:
            interval = paired_effect(d * held_steered_items, d * held_inserted[k], **stats)
            low, high = interval.low, interval.high
        rows.append(
            {
                "lambda": lam,
                "text": s.model.tokenizer.decode(list(key)),
                "token_ids": key,
                "p_steered": p,
                "reversal": reversal,
                "reversal_fraction": _fraction(reversal, abs(s.steered - s.unsteered)),
                "cross_entropy": ce,
                "fitness": reversal - (0.0 if math.isnan(lam) else lam) * ce,
                "p_unsteered": float(plain[k].mean()),
                "insertion_alone": d * (s.unsteered - float(plain[k].mean())),
                "heldout_p_steered": float(held_inserted[k].mean()),
                "heldout_reversal": held_reversal,
                "heldout_reversal_low": low,
                "heldout_reversal_high": high,
                "heldout_reversal_fraction": _fraction(held_reversal, abs(held_steered - held_unsteered)),
                "heldout_p_unsteered": float(held_plain[k].mean()),
                "heldout_insertion_alone": d * (held_unsteered - float(held_plain[k].mean())),
            }
        )
    table = pd.concat(effects, ignore_index=True)[["split", "quantity", "mean", "low", "high", "n"]]
    return pd.DataFrame(rows), (held_unsteered, held_steered), table


def _fraction(reversal: float, effect: float) -> float:
    return reversal / effect if effect > 0 else math.nan
