"""Batched behaviour scoring for the analyses, on ``caa_lens.prefix``'s cache through ``caa_lens.evaluation``.

Every analysis that measures a behaviour effect (layer transfer, sample size, norm ratio,
interference) scores many steering conditions on the same items. The question prefix before the
steering start is unsteered in every condition, so it runs once per item chunk
(``encode_prefixes``); each condition then costs only the few suffix tokens, as one batch row on a
copy of that cache. ``condition_scores`` generalises ``suffix_scores`` to several injections per row
(at different layers), which interference needs; both read the rows with ``evaluation.row_scores``.
"""

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from jaxtyping import Float
from torch import Tensor

from caa_lens.data import ContrastiveDataset
from caa_lens.evaluation import encode_prefixes, row_scores, scoring_prompts, suffix_scores
from caa_lens.prefix import PrefixBatch
from caa_lens.steering import Injection
from caa_lens.vectors import SteeringVector

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

__all__ = ["Condition", "condition_scores", "layer_scores", "prefix_batches"]

# One steering setting: the (vector, layer, multiplier) triples applied together; empty = unsteered.
Condition = tuple[tuple[SteeringVector, int, float], ...]


def prefix_batches(
    model: "TransformerBridge", dataset: ContrastiveDataset, items_per_batch: int = 16
) -> list[PrefixBatch]:
    """The dataset's unsteered prefixes, encoded once in chunks of ``items_per_batch`` items."""
    prompts = scoring_prompts(model.tokenizer, dataset)
    return [
        encode_prefixes(model, prompts[start : start + items_per_batch])
        for start in range(0, len(prompts), items_per_batch)
    ]


def layer_scores(
    model: "TransformerBridge",
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


def _condition_chunk(
    model: "TransformerBridge", batch: PrefixBatch, chunk: Sequence[Condition]
) -> Float[Tensor, "item cond"]:
    n_items, n_cond = len(batch.prompts), len(chunk)
    keys: dict[tuple[int, int], tuple[SteeringVector, int, Tensor]] = {}
    for c, condition in enumerate(chunk):
        for vector, layer, multiplier in condition:
            key = (id(vector), layer)
            if key not in keys:
                keys[key] = (vector, layer, torch.zeros(n_cond))
            keys[key][2][c] += float(multiplier)
    # Rows are item-major (row = item * n_cond + condition).
    injections = [
        Injection(vector, layer, grid.repeat(n_items), "from_start") for vector, layer, grid in keys.values()
    ]
    rows = torch.arange(n_items).repeat_interleave(n_cond)
    return row_scores(model, batch, rows, injections)[:, 0].reshape(n_items, n_cond).float()


def condition_scores(
    model: "TransformerBridge",
    batches: Sequence[PrefixBatch],
    conditions: Sequence[Condition],
    max_rows: int = 96,
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
