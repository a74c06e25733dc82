"""Norm profile: how big a steering vector is next to the residual stream it is added to.

``norm_profile`` reports, per layer, ||v|| and the mean residual norm at the read position (the
answer letter), at the steered positions (from the end of the user turn to the scored position),
over all prompt positions, and over all positions but the first (whose norm is an attention-sink
outlier), with the ratios. How hard to push (the ratio against behaviour and perplexity) is
``analysis.ratio_tradeoff``.
"""

from dataclasses import dataclass
from typing import TYPE_CHECKING

import pandas as pd
import torch
from torch import Tensor

from caa_lens.data import ContrastiveDataset
from caa_lens.evaluation import scoring_prompts
from caa_lens.extraction import pair_prompts
from caa_lens.hooks import hook_name
from caa_lens.prompts import left_pad, pad_token_id
from caa_lens.vectors import SteeringVector

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

__all__ = ["REGIONS", "NormProfile", "norm_profile"]

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
    model: "TransformerBridge", vector: SteeringVector, dataset: ContrastiveDataset, batch_size: int = 16
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
