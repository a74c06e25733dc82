"""Batched behaviour scoring for the analyses, built on ``caa_lens.evaluation``'s prefix-cache API.

Every analysis that measures a behaviour effect (layer transfer, sample size, norm ratio,
interference) scores many steering conditions on the same items. The question prefix before the
steering start is unsteered in every condition, so it runs once per item chunk
(``encode_prefixes``); each condition then costs only the few suffix tokens, as one batch row on a
copy of that cache. ``condition_scores`` generalises ``suffix_scores`` to several injections per row
(at different layers), which interference needs.
"""

import copy
from collections.abc import Sequence
from contextlib import nullcontext

import torch
from jaxtyping import Float
from torch import Tensor

from caa_lens.data import ContrastiveDataset
from caa_lens.evaluation import PrefixBatch, encode_prefixes, label_scores, scoring_prompts, suffix_scores
from caa_lens.steering import Injection, steering
from caa_lens.vectors import SteeringVector

# One steering setting: the (vector, layer, multiplier) triples applied together; empty = unsteered.
Condition = tuple[tuple[SteeringVector, int, float], ...]


def prefix_batches(model, dataset: ContrastiveDataset, items_per_batch: int = 16) -> list[PrefixBatch]:
    """The dataset's unsteered prefixes, encoded once in chunks of ``items_per_batch`` items."""
    prompts = scoring_prompts(model.tokenizer, dataset)
    return [
        encode_prefixes(model, prompts[start : start + items_per_batch])
        for start in range(0, len(prompts), items_per_batch)
    ]


def layer_scores(
    model,
    batches: Sequence[PrefixBatch],
    vectors: Sequence[SteeringVector],
    layer: int,
    multipliers: Sequence[float],
    max_rows: int = 96,
) -> Float[Tensor, "item vector multiplier"]:
    """p(matching) for every item x vector x multiplier at one layer (``suffix_scores`` in chunks).

    Chunks over vectors keep the copied KV cache to about ``max_rows`` rows: a full grid at once
    would copy the cache once per cell and run out of memory on real models.
    """
    per_batch = []
    for batch in batches:
        rows_per_vector = len(batch.prompts) * len(multipliers)
        step = max(1, max_rows // max(1, rows_per_vector))
        parts = [
            suffix_scores(model, batch, list(vectors[start : start + step]), layer, list(multipliers))[..., 0]
            for start in range(0, len(vectors), step)
        ]
        per_batch.append(torch.cat(parts, dim=1))
    return torch.cat(per_batch, dim=0).float()


def _condition_chunk(model, batch: PrefixBatch, chunk: Sequence[Condition]) -> Float[Tensor, "item cond"]:
    n_items, n_cond = len(batch.prompts), len(chunk)
    keys: dict[tuple[int, int], tuple[SteeringVector, int, Tensor]] = {}
    for c, condition in enumerate(chunk):
        for vector, layer, multiplier in condition:
            key = (id(vector), layer)
            if key not in keys:
                keys[key] = (vector, layer, torch.zeros(n_cond))
            keys[key][2][c] += float(multiplier)
    # Rows are item-major (row = item * n_cond + condition), matching batch_repeat_interleave.
    injections = [
        Injection(vector, layer, grid.repeat(n_items), "from_start") for vector, layer, grid in keys.values()
    ]
    cache = copy.deepcopy(batch.cache)  # suffix passes extend the cache in place
    cache.batch_repeat_interleave(n_cond)  # type: ignore[attr-defined]
    mask = torch.cat([batch.prefix_mask, batch.suffix_mask], dim=1).repeat_interleave(n_cond, dim=0)
    ids = batch.suffix_ids.repeat_interleave(n_cond, dim=0)
    last = (batch.suffix_mask.sum(dim=1) - 1).repeat_interleave(n_cond)
    device = model.cfg.device
    context = steering(model, injections, start=batch.width) if injections else nullcontext()
    with torch.inference_mode(), context:
        logits = model(ids.to(device), attention_mask=mask.to(device), past_key_values=cache)
        final = logits[torch.arange(ids.shape[0]), last.to(logits.device)]
    rows = [p for p in batch.prompts for _ in range(n_cond)]
    return label_scores(final, rows)[:, 0].reshape(n_items, n_cond).float()


def condition_scores(
    model, batches: Sequence[PrefixBatch], conditions: Sequence[Condition], max_rows: int = 96
) -> Float[Tensor, "condition item"]:
    """p(matching) of every item under every condition (several injections per row allowed).

    Each distinct (vector, layer) gets one injection whose per-row multiplier is zero on the rows of
    conditions that do not use it, so all conditions of a chunk share one forward pass.
    """
    if not conditions:
        raise ValueError("no conditions to score")
    per_batch = []
    for batch in batches:
        step = max(1, max_rows // len(batch.prompts))
        parts = [
            _condition_chunk(model, batch, conditions[start : start + step])
            for start in range(0, len(conditions), step)
        ]
        per_batch.append(torch.cat(parts, dim=1))
    return torch.cat(per_batch, dim=0).T.contiguous()
