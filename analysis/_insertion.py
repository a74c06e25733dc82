"""Prompts with inserted tokens, scored steered, in batches, with or without gradients.

Used by the reversal search. An item's scoring prompt is split at the insertion point (the start or
the end of the question inside the user turn): the part before it is the same for every candidate,
so it runs once into a KV cache (``caa_lens.prefix``); each candidate runs only its own tokens and the
rest of the prompt, as input embeddings with explicit positions on a copy of that cache.
Steering starts after the inserted tokens (CAA steers from the end of the user turn), so the logits
that predict the inserted tokens are those of the unsteered model: one steered pass gives both the
behaviour score and the fluency (cross-entropy) of the insertion.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor

from caa_lens.data import ContrastiveDataset, ContrastiveItem
from caa_lens.evaluation import ScoringPrompt, scoring_prompt
from caa_lens.prefix import CachedPrefix, encode_for_gradients, run_suffixes
from caa_lens.prompts import right_pad
from caa_lens.steering import Injection
from caa_lens.vectors import SteeringVector

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

__all__ = [
    "InsertionBatch",
    "InsertionScores",
    "Placement",
    "allowed_tokens",
    "inserted_text",
    "insertion_batch",
    "insertion_index",
    "score_onehots",
    "score_tokens",
]

Placement = Literal["prefix", "suffix"]


def insertion_index(tokenizer, prompt: ScoringPrompt, question: str, placement: Placement) -> int:
    """Token index where inserted tokens go: before the question (prefix) or after it (suffix).

    Tokens that straddle the question's boundary stay on the far side of the insertion, so the
    question's own tokens are never split.
    """
    text = prompt.prompt.text
    at = text.find(question)
    if at < 0:
        raise ValueError(f"the question does not appear verbatim in its prompt: {text[:80]!r}")
    boundary = at if placement == "prefix" else at + len(question)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, ends = list(encoded["input_ids"]), [end for _, end in encoded["offset_mapping"]]
    shift = len(prompt.prompt.token_ids) - len(ids)  # a BOS the formatter added in front of the text
    if shift not in (0, 1) or tuple(ids) != prompt.prompt.token_ids[shift:]:
        raise ValueError("re-tokenising the prompt text does not reproduce its token ids")
    index = shift + sum(1 for end in ends if end <= boundary)
    if not 0 < index <= prompt.prompt.steer_start:
        raise ValueError(
            f"insertion index {index} is not inside the user turn (steer_start {prompt.prompt.steer_start})"
        )
    return index


def allowed_tokens(tokenizer, vocab_size: int, ascii_only: bool = True) -> Tensor:
    """Boolean mask of tokens the search may insert: no special tokens; optionally printable ASCII."""
    allowed = torch.ones(vocab_size, dtype=torch.bool)
    special = [i for i in tokenizer.all_special_ids if i < vocab_size]
    allowed[special] = False
    allowed[len(tokenizer) :] = False  # embedding rows beyond the tokenizer (padding) are not tokens
    if ascii_only:
        for token in range(min(vocab_size, len(tokenizer))):
            text = tokenizer.decode([token])
            if not (text.strip() and text.isascii() and text.isprintable()):
                allowed[token] = False
    return allowed


@dataclass(frozen=True, eq=False)
class InsertionBatch:
    """Items split at their insertion points, with the shared parts already in a KV cache."""

    prompts: tuple[ScoringPrompt, ...]
    prefix: CachedPrefix  # the parts before the insertion, left-padded
    prefix_lengths: tuple[int, ...]
    first_logprobs: Float[Tensor, "item vocab"]  # predicts the first inserted token
    tails: tuple[tuple[int, ...], ...]  # tokens after the insertion
    steer_offsets: tuple[int, ...]  # steer_start relative to the start of the tail


def insertion_batch(
    model: "TransformerBridge", dataset: ContrastiveDataset, placement: Placement = "suffix"
) -> InsertionBatch:
    """Split every item at its insertion point and run the parts before it once (no gradients)."""
    prompts, cuts = [], []
    for index, item in enumerate(dataset):
        prompt = scoring_prompt(model.tokenizer, item, where=f"{dataset.name}: item {index}")
        prompts.append(prompt)
        cuts.append(insertion_index(model.tokenizer, prompt, item.question, placement))
    heads = [p.prompt.token_ids[:c] for p, c in zip(prompts, cuts, strict=True)]
    # For gradients: the cache is later used inside passes that need them.
    prefix, logits = encode_for_gradients(model, heads, where="insertion search prefix pass")
    return InsertionBatch(
        tuple(prompts),
        prefix,
        tuple(len(h) for h in heads),
        logits[:, -1].float().log_softmax(-1),
        tuple(p.prompt.token_ids[c:] for p, c in zip(prompts, cuts, strict=True)),
        tuple(p.prompt.steer_start - c for p, c in zip(prompts, cuts, strict=True)),
    )


@dataclass(frozen=True, eq=False)
class InsertionScores:
    """Per candidate and item: steered p(matching) and mean cross-entropy of the inserted tokens."""

    p_matching: Float[Tensor, "candidate item"]
    cross_entropy: Float[Tensor, "candidate item"]


def _embedding_matrix(model: "TransformerBridge") -> Tensor:
    """The HF model's input embedding matrix: the inserted tokens go in as rows of it (or one-hot mixes)."""
    original: Any = model.original_model
    return original.get_input_embeddings().weight


def _rows(batch: InsertionBatch, n_candidates: int, n_tokens: int) -> dict[str, Tensor]:
    """Item-major row layout (row = item * n_candidates + candidate) of the tails, masks and positions."""
    tail_ids, tail_mask = right_pad(batch.tails, 0)
    n_items, width = len(batch.tails), n_tokens + tail_ids.shape[1]
    # The inserted tokens come first in every row: real tokens, then the row's tail.
    suffix_mask = torch.cat([torch.ones((n_items, n_tokens), dtype=torch.long), tail_mask], dim=1)
    lengths = torch.tensor(batch.prefix_lengths)
    positions = lengths[:, None] + torch.arange(width)[None]
    columns = batch.prefix.width + n_tokens + torch.tensor(batch.steer_offsets)
    last = n_tokens + torch.tensor([len(t) for t in batch.tails]) - 1

    def expand(t: Tensor) -> Tensor:
        return t.repeat_interleave(n_candidates, dim=0)

    return {
        "owners": expand(torch.arange(n_items)),
        "tail_ids": expand(tail_ids),
        "mask": expand(suffix_mask),
        "positions": expand(positions),
        "start": expand(columns),
        "last": expand(last),
    }


def _forward(
    model: "TransformerBridge",
    batch: InsertionBatch,
    inserted: Float[Tensor, "candidate n_tokens d_model"],
    vector: SteeringVector,
    layer: int,
    multiplier: float,
) -> tuple[Tensor, Tensor]:
    """Steered pass over inserted embeddings + tails: (p_matching [row], log-probs [row, n-1, vocab]).

    The log-probs at the inserted positions predict the next inserted token (unsteered: steering
    starts after them).
    """
    n_candidates, n_tokens, _ = inserted.shape
    n_items = len(batch.tails)
    device = model.cfg.device
    embedding = _embedding_matrix(model)
    rows = _rows(batch, n_candidates, n_tokens)
    tails = embedding[rows["tail_ids"].to(device)].detach()
    embeds = torch.cat([inserted.repeat(n_items, 1, 1), tails], dim=1)
    injection = Injection(vector, layer, float(multiplier), "from_start")
    # inputs_embeds get no positions derived from the mask: pass each row's own positions.
    logits = run_suffixes(
        model,
        batch.prefix,
        rows["owners"],
        embeds,
        rows["mask"],
        injection,
        start=rows["start"].to(device),
        position_ids=rows["positions"].to(device),
    )
    last = rows["last"].to(device)
    final = logits[torch.arange(logits.shape[0], device=device), last].float().log_softmax(-1)
    labels = torch.tensor([p.label_token_ids for p in batch.prompts], device=device)
    matching = torch.tensor([p.matching for p in batch.prompts], device=device)
    label_lp = final.gather(1, labels.repeat_interleave(n_candidates, 0))
    picked = label_lp.gather(1, matching.repeat_interleave(n_candidates)[:, None])[:, 0]
    return (picked - label_lp.logsumexp(-1)).exp(), logits[:, : n_tokens - 1].float().log_softmax(-1)


def _scores(p_matching: Tensor, cross_entropy: Tensor, n_items: int) -> InsertionScores:
    return InsertionScores(p_matching.reshape(n_items, -1).T, cross_entropy.reshape(n_items, -1).T)


def score_onehots(
    model: "TransformerBridge",
    batch: InsertionBatch,
    onehots: Float[Tensor, "candidate n_tokens vocab"],
    vector: SteeringVector,
    layer: int,
    multiplier: float,
) -> InsertionScores:
    """Score candidates given as (gradient-carrying) one-hot token matrices.

    The inserted embeddings are ``onehot @ W_E`` and the cross-entropy is linear in the one-hots, so
    gradients with respect to ``onehots`` are exact; with exact one-hots the result equals
    ``score_tokens``.
    """
    n_items = len(batch.tails)
    device = model.cfg.device
    embedding = _embedding_matrix(model)
    onehots = onehots.to(device, embedding.dtype)
    p_matching, logprobs = _forward(model, batch, onehots @ embedding, vector, layer, multiplier)
    expanded = onehots.repeat(n_items, 1, 1).float()
    first = -(expanded[:, 0] * batch.first_logprobs.to(device).repeat_interleave(onehots.shape[0], 0)).sum(-1)
    rest = -(expanded[:, 1:] * logprobs).sum((-1, -2))
    return _scores(p_matching, (first + rest) / onehots.shape[1], n_items)


def score_tokens(
    model: "TransformerBridge",
    batch: InsertionBatch,
    candidates: Int[Tensor, "candidate n_tokens"],
    vector: SteeringVector,
    layer: int,
    multiplier: float,
    max_rows: int = 64,
) -> InsertionScores:
    """Score token-id candidates without gradients, in chunks of about ``max_rows`` rows."""
    n_items = len(batch.tails)
    device = model.cfg.device
    embedding = _embedding_matrix(model)
    step = max(1, max_rows // n_items)
    parts = []
    with torch.no_grad():
        for begin in range(0, candidates.shape[0], step):
            chunk = candidates[begin : begin + step].to(device)
            p_matching, logprobs = _forward(model, batch, embedding[chunk], vector, layer, multiplier)
            ids = chunk.repeat(n_items, 1)
            first = (
                -batch.first_logprobs.to(device)
                .repeat_interleave(chunk.shape[0], 0)
                .gather(1, ids[:, :1])[:, 0]
            )
            rest = -logprobs.gather(-1, ids[:, 1:, None])[..., 0].sum(-1)
            parts.append(_scores(p_matching, (first + rest) / chunk.shape[1], n_items))
    return InsertionScores(
        torch.cat([p.p_matching for p in parts]).cpu(), torch.cat([p.cross_entropy for p in parts]).cpu()
    )


def inserted_text(tokenizer, item: ContrastiveItem, token_ids: Sequence[int], placement: Placement) -> str:
    """The user message with the inserted tokens decoded in place (for display only)."""
    inserted = tokenizer.decode(list(token_ids))
    return f"{inserted}{item.question}" if placement == "prefix" else f"{item.question}{inserted}"
