"""Adversarial reversal search: short token insertions that undo (or reverse) a steering vector.

An evolutionary search in the style of EPO (Thompson et al., arXiv 2402.01702), as the Patterns
paper used it. One population member per fluency weight lambda; each iteration every member's
gradient with respect to its one-hot tokens (through the steered model, ``embeds = onehot @ W_E``)
proposes, per position, the top-k token swaps; children swap one random position for one of them;
each lambda keeps the fittest of parents and children by

    fitness = reversal - lambda * cross_entropy(inserted tokens, unsteered model)

The result, its held-out effects and their verdict are ``analysis.reversal``'s.
"""

import math
import time
from typing import TYPE_CHECKING

import pandas as pd
import torch
from torch import Tensor
from tqdm.auto import tqdm

from analysis._insertion import allowed_tokens, insertion_batch, score_onehots, score_tokens
from analysis.reversal import Key, ReversalConfig, ReversalResult, pareto_front, reversal_effects
from caa_lens.data import ContrastiveDataset
from caa_lens.evaluation import behaviour_probabilities
from caa_lens.stats import paired_effect
from caa_lens.steering import Injection
from caa_lens.vectors import SteeringVector

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

__all__ = ["allowed_tokens", "fitness", "reversal_search"]

_DEFAULT_CONFIG = ReversalConfig()


def fitness(reversal: Tensor, cross_entropy: Tensor, lam: float | Tensor) -> Tensor:
    """EPO's objective: reversal minus lambda times the inserted tokens' cross-entropy."""
    return reversal - lam * cross_entropy


class _Search:
    """The state of one search: baselines, the split items, and every candidate scored so far."""

    def __init__(
        self,
        model: "TransformerBridge",
        vector: SteeringVector,
        layer: int,
        multiplier: float,
        items: ContrastiveDataset,
        cfg: ReversalConfig,
    ) -> None:
        self.model, self.vector, self.layer, self.multiplier, self.cfg = model, vector, layer, multiplier, cfg
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.unsteered_items, self.steered_items = _baselines(model, vector, layer, multiplier, items)
        self.unsteered, self.steered = float(self.unsteered_items.mean()), float(self.steered_items.mean())
        gap = self.steered - self.unsteered
        self.direction = math.copysign(1.0, gap if gap != 0 else multiplier)
        self.batch = insertion_batch(model, items, cfg.placement)
        # The wrapped HF model's embeddings (a torch Module attribute, so untyped for mypy).
        self.vocab = model.original_model.get_input_embeddings().weight.shape[0]  # type: ignore[operator]
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


def _baselines(
    model: "TransformerBridge",
    vector: SteeringVector,
    layer: int,
    multiplier: float,
    items: ContrastiveDataset,
) -> tuple[Tensor, Tensor]:
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
    model: "TransformerBridge",
    vector: SteeringVector,
    layer: int,
    multiplier: float,
    items: ContrastiveDataset,
    heldout: ContrastiveDataset | None = None,
    config: ReversalConfig = _DEFAULT_CONFIG,
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
