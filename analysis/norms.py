"""Norm ratios: how big a steering vector is next to the residual stream it is added to.

``norm_profile`` reports, per layer, ||v|| and the mean residual norm at the read position (the
answer letter), at the steered positions (from the end of the user turn to the scored position),
over all prompt positions, and over all positions but the first (whose norm is an attention-sink
outlier), with the ratios. ``ratio_tradeoff`` sweeps the ratio ||m v|| / ||resid|| and measures the
behaviour change and the perplexity increase together: the Patterns paper's open question of which
ratio buys the most behaviour per unit of capability lost.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
import torch
from torch import Tensor

from analysis._scoring import layer_scores, prefix_batches
from caa_lens.capability import perplexity as perplexity_of
from caa_lens.data import ContrastiveDataset
from caa_lens.evaluation import scoring_prompts
from caa_lens.extraction import pair_prompts
from caa_lens.hooks import hook_name
from caa_lens.prompts import left_pad, pad_token_id
from caa_lens.steering import Injection, multiplier_for_ratio, residual_norm
from caa_lens.vectors import SteeringVector

REGIONS = ("read", "steered", "all", "all_but_first")


@dataclass(frozen=True, eq=False)
class NormProfile:
    """Per layer: ``vector_norm``, ``resid_<region>`` mean norms and ``ratio_<region>`` = ||v|| / resid."""

    table: pd.DataFrame


def _region_masks(
    lengths: list[int], offsets: list[int], width: int, reads: list[int], starts: list[int], scored: list[int]
) -> dict[str, Tensor]:
    masks = {region: torch.zeros(len(lengths), width, dtype=torch.bool) for region in REGIONS}
    for row, (length, offset) in enumerate(zip(lengths, offsets, strict=True)):
        masks["read"][row, offset + reads[row]] = True
        masks["steered"][row, offset + starts[row] : offset + scored[row] + 1] = True
        masks["all"][row, offset : offset + length] = True
        masks["all_but_first"][row, offset + 1 : offset + length] = True
    return masks


def _norm_capture(name: str, into: dict[str, Tensor]):
    def hook(resid: Tensor, hook) -> None:
        into[name] = resid.detach().double().norm(dim=-1).cpu()

    return hook


def norm_profile(
    model, vector: SteeringVector, dataset: ContrastiveDataset, batch_size: int = 16
) -> NormProfile:
    """Vector norm and residual norms by region at each of the vector's layers, over ``dataset``.

    Each item is run once with its matching answer (``... (A)``): the read position is the answer
    letter (where CAA reads), the steered positions run from ``steer_start`` to the position the A/B
    metric is read at (the ``(``), which is where a CAA steering vector acts while being scored.
    """
    layers = tuple(vector.layers)
    names = [hook_name(model, layer, vector.provenance.site) for layer in layers]
    prompts = [pair_prompts(model.tokenizer, item)[0] for item in dataset]
    scored = [len(p.prompt) - 1 for p in scoring_prompts(model.tokenizer, dataset)]
    sums = {region: torch.zeros(len(layers), dtype=torch.float64) for region in REGIONS}
    counts = dict.fromkeys(REGIONS, 0)
    pad = pad_token_id(model.tokenizer)
    for begin in range(0, len(prompts), batch_size):
        batch = prompts[begin : begin + batch_size]
        ids, mask, offsets = left_pad([p.token_ids for p in batch], pad)
        norms: dict[str, Tensor] = {}

        hooks = [(name, _norm_capture(name, norms)) for name in names]
        with torch.inference_mode(), model.hooks(fwd_hooks=hooks):
            model(
                ids.to(model.cfg.device),
                attention_mask=mask.to(model.cfg.device),
                stop_at_layer=max(layers) + 1,
            )
        reads = [p.answer_position if p.answer_position is not None else p.last for p in batch]
        masks = _region_masks(
            [len(p) for p in batch],
            offsets,
            ids.shape[1],
            reads,
            [p.steer_start for p in batch],
            scored[begin : begin + batch_size],
        )
        stacked = torch.stack([norms[name] for name in names])  # [layer, batch, pos]
        for region, where in masks.items():
            sums[region] += stacked[:, where].sum(-1)
            counts[region] += int(where.sum())
    vector_norms = vector.norms().double()
    table = pd.DataFrame({"layer": list(layers), "vector_norm": vector_norms.tolist()})
    for region in REGIONS:
        mean = sums[region] / counts[region]
        table[f"resid_{region}"] = mean.tolist()
        table[f"ratio_{region}"] = (vector_norms / mean).tolist()
    return NormProfile(table)


@dataclass(frozen=True, eq=False)
class RatioTradeoff:
    """Behaviour change and perplexity increase at each ratio ||m v|| / ||resid|| at one layer.

    ``behaviour_change`` is the change of mean p(matching) in the direction of the ratio's sign;
    ``perplexity_increase`` is relative (ppl / ppl_unsteered - 1); ``efficiency`` is their quotient,
    NaN where the perplexity increase is below ``min_perplexity_increase`` (a quotient of two tiny
    differences is noise). ``best_ratio`` has the highest efficiency among ratios that move the
    behaviour the intended way (NaN when none qualifies).
    """

    layer: int
    reference_norm: float
    baseline_score: float
    baseline_perplexity: float
    min_perplexity_increase: float
    table: (
        pd.DataFrame
    )  # ratio, multiplier, p_matching, behaviour_change, perplexity, perplexity_increase, efficiency
    best_ratio: float


def most_efficient_ratio(table: pd.DataFrame) -> float:
    """The ratio with the highest efficiency among rows that move the behaviour the intended way."""
    valid = table[(table.behaviour_change > 0) & table.efficiency.notna()]
    return float(valid.ratio[valid.efficiency.idxmax()]) if len(valid) else math.nan


def ratio_tradeoff(
    model,
    vector: SteeringVector,
    layer: int,
    dataset: ContrastiveDataset,
    text: str | Sequence[int],
    ratios: Sequence[float] = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0),
    reference_norm: float | None = None,
    min_perplexity_increase: float = 0.01,
    max_tokens: int | None = 1024,
    context: int | None = 256,
) -> RatioTradeoff:
    """Sweep ||m v|| / ||resid|| at ``layer``; score the behaviour on ``dataset`` and perplexity on text.

    Args:
        text: reference text or its token ids (e.g. WikiText-2) for ``caa_lens.capability.perplexity``,
            steered at every position (``mode="all"``); ``max_tokens`` and ``context`` are passed on.
        ratios: target ratios; the multiplier of each is ``multiplier_for_ratio``.
        reference_norm: the residual norm the ratio refers to; by default ``residual_norm`` of the
            dataset's scoring prompts at ``layer`` (first token skipped).
    """
    if reference_norm is None:
        prompts = [p.prompt for p in scoring_prompts(model.tokenizer, dataset)]
        reference_norm = residual_norm(model, layer, prompts, vector.provenance.site)
    multipliers = [multiplier_for_ratio(vector, layer, r, reference_norm) for r in ratios]
    values = [0.0, *multipliers]
    scores = layer_scores(model, prefix_batches(model, dataset), [vector], layer, values).mean(0)[0]
    perplexity = torch.tensor(
        [
            perplexity_of(
                model,
                text,
                Injection(vector, layer, m, "all"),
                context=context,
                max_tokens=max_tokens,
                progress=False,
            ).perplexity
            for m in values
        ]
    )
    base_score, base_ppl = float(scores[0]), float(perplexity[0])
    signs = torch.tensor([math.copysign(1.0, r) for r in ratios])
    change = signs * (scores[1:] - base_score)
    increase = perplexity[1:] / base_ppl - 1
    efficiency = torch.where(increase >= min_perplexity_increase, change / increase, torch.nan)
    table = pd.DataFrame(
        {
            "ratio": list(ratios),
            "multiplier": multipliers,
            "p_matching": scores[1:].tolist(),
            "behaviour_change": change.tolist(),
            "perplexity": perplexity[1:].tolist(),
            "perplexity_increase": increase.tolist(),
            "efficiency": efficiency.tolist(),
        }
    )
    return RatioTradeoff(
        layer,
        float(reference_norm),
        base_score,
        base_ppl,
        min_perplexity_increase,
        table,
        most_efficient_ratio(table),
    )
