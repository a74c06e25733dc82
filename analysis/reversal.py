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
"""

import math
import time
from dataclasses import dataclass

import pandas as pd
import torch
from torch import Tensor
from tqdm.auto import tqdm

from analysis._insertion import Placement, allowed_tokens, insertion_batch, score_onehots, score_tokens
from caa_lens.data import ContrastiveDataset
from caa_lens.evaluation import behaviour_probabilities
from caa_lens.steering import Injection
from caa_lens.vectors import SteeringVector


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


@dataclass(frozen=True, eq=False)
class ReversalResult:
    """Outcome of a reversal search.

    ``best`` has one row per lambda (its final member) and one for the highest-reversal candidate
    seen (``lambda`` NaN): text, token ids, steered p(matching) with the insertion, reversal and
    its fraction, cross-entropy, fitness, the unsteered p(matching) with the insertion (does the
    insertion defeat the steering, or just move the behaviour?), and the same on held-out items.
    ``pareto`` is the non-dominated set of all evaluated candidates over (reversal up, cross-entropy
    down); ``history`` has one row per iteration and lambda.
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

    @property
    def reversed(self) -> bool:
        """Whether any candidate pushed the steered behaviour past its unsteered value."""
        return bool((self.best.reversal_fraction > 1).any())


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
        self.unsteered, self.steered = _baselines(model, vector, layer, multiplier, items)
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


def _baselines(model, vector, layer, multiplier, items) -> tuple[float, float]:
    """Unsteered and steered mean p(matching) of the items without any insertion."""
    injection = Injection(vector, layer, float(multiplier), "from_start")
    return (
        behaviour_probabilities(model, items, progress=False).mean_p_matching,
        behaviour_probabilities(model, items, injection, progress=False).mean_p_matching,
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
        items: the items the search optimises on (batched together; 4-16 is practical on a CPU).
        heldout: items the final insertions are also measured on (transfer); optional.
        config: search settings (see ``ReversalConfig``).
    """
    started = time.perf_counter()
    cfg = config
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
    best_table, held = _best_table(search, items, heldout, members)
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
    )


def _best_table(
    search: _Search, items: ContrastiveDataset, heldout: ContrastiveDataset | None, members: list[Key]
) -> tuple[pd.DataFrame, tuple[float, float]]:
    """One row per lambda's final member and one for the top-reversal candidate, with transfer."""
    s, cfg = search, search.cfg
    top = max(s.archive, key=lambda key: s.archive[key][1])
    chosen: list[tuple[float, Key]] = [*zip(cfg.lambdas, members, strict=True), (math.nan, top)]
    ids = torch.tensor([key for _, key in chosen])
    # The same insertions without steering: an insertion that moves the unsteered model as much is
    # not attacking the steering, it is changing the question.
    plain = score_tokens(s.model, s.batch, ids, s.vector, s.layer, 0.0, cfg.max_rows).p_matching.mean(1)
    held_unsteered = held_steered = math.nan
    held_p = torch.full((len(chosen),), math.nan)
    if heldout is not None:
        held_unsteered, held_steered = _baselines(s.model, s.vector, s.layer, s.multiplier, heldout)
        held_batch = insertion_batch(s.model, heldout, cfg.placement)
        held_p = score_tokens(
            s.model, held_batch, ids, s.vector, s.layer, s.multiplier, cfg.max_rows
        ).p_matching.mean(1)
    rows = []
    for k, (lam, key) in enumerate(chosen):
        p, reversal, ce = s.archive[key]
        held_reversal = s.direction * (held_steered - float(held_p[k]))
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
                "p_unsteered": float(plain[k]),
                "heldout_p_steered": float(held_p[k]),
                "heldout_reversal": held_reversal,
                "heldout_reversal_fraction": _fraction(held_reversal, abs(held_steered - held_unsteered)),
            }
        )
    return pd.DataFrame(rows), (held_unsteered, held_steered)


def _fraction(reversal: float, effect: float) -> float:
    return reversal / effect if effect > 0 else math.nan
