"""The prefix/KV-cache engine: run a shared prefix once, then only what follows it, on copies.

Every fast path of caa_lens and its analyses has the same shape. The tokens before the first
steered position (or before the positions that differ between rows) are the same in every row that
follows them, so they run once into a transformers ``DynamicCache`` through the bridge, and each row
then runs only its own suffix on a copy of that cache: extraction (both answers of a pair after
their shared question), A/B and likelihood scoring (every sweep cell after an item's question), the
OOD judge's rubrics, the fluency scorer (every completion after its prompt), the insertion search
(every candidate after the part of the prompt before it), and generation (a prompt pass, then one
token at a time). This module is the only place that builds, copies, selects or extends a cache or
passes one to the model, so the rules below hold everywhere:

- Prefixes are left-padded (``prompts.left_pad``), so every suffix starts at the same column, the
  prefix width; suffixes are right-padded (``prompts.right_pad``): under causal attention the pads
  after a row's last real token cannot affect it.
- A prefix pass checks that the cache holds every prefix column. With transformers 5.24 under
  TransformerLens 4.3 the bridge's attention stopped writing the cache, and the suffixes then attend
  to nothing before them: every number wrong, no error. The check turns that into an error.
- A suffix pass never changes the prefix's cache: it runs on a copy holding the rows it needs
  (``copy.deepcopy`` then ``batch_select_indices``), so one prefix serves any number of passes.
- Steering (``caa_lens.steering.steering``) starts at the first suffix column unless the caller
  gives other columns; the prefix itself is never steered here.

>>> from caa_lens.tiny import tiny_model
>>> model = tiny_model()
>>> prefix = encode(model, [[1, 2, 3], [4, 5]])
>>> ids, mask = right_pad([[6], [7, 8]], 0)
>>> run_suffixes(model, prefix, [0, 1, 1], ids[[0, 1, 1]], mask[[0, 1, 1]]).shape[:2]
torch.Size([3, 2])
"""

import copy
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from caa_lens.prompts import left_pad, pad_token_id, right_pad
from caa_lens.steering import Injection, steering

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

__all__ = [
    "CachedPrefix",
    "Decoding",
    "PrefixBatch",
    "decode_step",
    "encode",
    "encode_for_gradients",
    "encode_token_prefixes",
    "prefill",
    "run_suffixes",
    "suffix_logits",
]


def _new_cache() -> Any:
    """An empty ``transformers.DynamicCache`` (imported here, lazily, like the rest of transformers)."""
    from transformers import DynamicCache

    return DynamicCache()


def _require_filled(cache: Any, columns: int, where: str) -> None:
    """Raise unless ``cache`` holds ``columns`` positions after a pass over that many columns."""
    held = cache.get_seq_length()
    if held != columns:
        import transformers

        raise RuntimeError(
            f"{where}: the KV cache holds {held} positions after a pass over {columns}, so the reused "
            f"prefix would be lost and the results wrong. transformers {transformers.__version__} does not "
            "fill the cache through TransformerLens's bridge; install the range in caa_lens's pyproject.toml "
            "(transformers<5.19)."
        )


@dataclass(frozen=True, eq=False)
class CachedPrefix:
    """Left-padded prefixes after one pass: their keys and values, and where the real tokens are.

    ``cache`` is never extended or changed: every suffix pass works on a copy of the rows it needs.
    ``mask`` is the prefixes' attention mask (1 on real tokens); its width is the column where every
    suffix starts. ``lengths`` are the real tokens of each prefix (the position of its first suffix
    token, for callers that pass positions themselves).
    """

    cache: Any  # transformers.DynamicCache, filled up to the last layer the prefix pass ran
    mask: Int[Tensor, "item prefix"]

    @property
    def width(self) -> int:
        """Prefix columns: the column of every row's first suffix token."""
        return int(self.mask.shape[1])

    @property
    def lengths(self) -> Int[Tensor, " item"]:
        return self.mask.sum(dim=1)


def _run_prefix(
    model: "TransformerBridge", prefixes: Sequence[Sequence[int]], options: dict[str, int], where: str
) -> tuple[CachedPrefix, Tensor]:
    """The prefix pass (under the caller's grad mode): left-pad, fill a new cache, check it is filled."""
    if not prefixes or min(len(p) for p in prefixes) == 0:
        raise ValueError("every prefix needs at least one token: there is nothing to reuse")
    ids, mask, _ = left_pad([list(p) for p in prefixes], pad_token_id(model.tokenizer))
    cache = _new_cache()
    device = model.cfg.device
    output = model(ids.to(device), attention_mask=mask.to(device), past_key_values=cache, **options)
    _require_filled(cache, ids.shape[1], where)
    return CachedPrefix(cache, mask), output


def encode(
    model: "TransformerBridge",
    prefixes: Sequence[Sequence[int]],
    stop_at_layer: int | None = None,
    where: str = "prefix pass",
) -> CachedPrefix:
    """Run token prefixes, left-padded, once into a new KV cache (unsteered) and check it is filled.

    Runs under ``torch.inference_mode``. Hooks the caller has attached (``model.hooks``) see this
    pass: extraction stops it with one after the last layer it reads.

    Args:
        prefixes: one non-empty token sequence per item.
        stop_at_layer: passed to the bridge: the pass fills the cache of the blocks before it only (a
            later suffix pass must stop there too). ``model.cfg.n_layers`` runs every block.
        where: names the pass in the error when the cache comes back unfilled.
    """
    options = {} if stop_at_layer is None else {"stop_at_layer": stop_at_layer}
    with torch.inference_mode():
        return _run_prefix(model, prefixes, options, where)[0]


def encode_for_gradients(
    model: "TransformerBridge", prefixes: Sequence[Sequence[int]], where: str = "prefix pass"
) -> tuple[CachedPrefix, Float[Tensor, "item prefix vocab"]]:
    """``encode`` through every block under ``torch.no_grad``, so the cache can feed suffix passes that
    need gradients (the insertion search), and the prefix pass's logits (they predict the first
    suffix token).

    The logits are returned beside the ``CachedPrefix``, not in it: items x columns x vocabulary must
    not ride along with a batch kept for many suffix passes.
    """
    with torch.no_grad():
        return _run_prefix(model, prefixes, {}, where)


def _rows_of(cache: Any, owners: Tensor, consume: bool) -> Any:
    """``cache`` holding row ``owners[k]`` as row ``k``: a copy, or (``consume``) the cache itself."""
    rows = cache if consume else copy.deepcopy(cache)  # a suffix pass extends its cache in place
    rows.batch_select_indices(owners)
    return rows


def run_suffixes(
    model: "TransformerBridge",
    prefix: CachedPrefix,
    owners: Sequence[int] | Int[Tensor, " row"],
    inputs: Int[Tensor, "row suffix"] | Float[Tensor, "row suffix d_model"],
    suffix_mask: Int[Tensor, "row suffix"],
    injections: Injection | Sequence[Injection] = (),
    start: int | Int[Tensor, " row"] | None = None,
    position_ids: Int[Tensor, "row suffix"] | None = None,
    stop_at_layer: int | None = None,
    consume: bool = False,
) -> Tensor:
    """One pass of right-padded suffixes, row ``k`` continuing prefix ``owners[k]`` (repeats allowed).

    Runs on a copy of the prefix's cache, under the caller's grad mode and hooks (extraction reads
    its activations through hooks and stops at a layer; the insertion search needs gradients).

    Args:
        inputs: token ids, or input embeddings (the insertion search), one row per suffix.
        suffix_mask: 1 on each row's real suffix tokens.
        injections: steering for this pass, from column ``start``.
        start: where steering starts: a column of the whole (prefix + suffix) batch, or one per row;
            ``None`` is the first suffix column (``prefix.width``).
        position_ids: explicit positions (needed with embeddings: the bridge derives positions from
            the mask for token ids only).
        stop_at_layer: passed to the bridge; must not exceed the prefix pass's.
        consume: this is the prefix's last pass: its cache is re-rowed and extended in place instead
            of copied (one copy of every layer's keys and values less), and ``prefix`` must not be
            used again. For callers that encode a batch, run it once and drop it (extraction, OOD).

    Returns:
        What the model returned: the logits ``[row, suffix, vocab]``, or the activation a stop hook
        ended the pass with.
    """
    chosen = torch.as_tensor(owners, dtype=torch.long).reshape(-1)
    device = model.cfg.device
    cache = _rows_of(prefix.cache, chosen.to(device), consume)
    mask = torch.cat([prefix.mask[chosen.cpu()], suffix_mask.cpu()], dim=1)
    options: dict[str, object] = {} if stop_at_layer is None else {"stop_at_layer": stop_at_layer}
    if position_ids is not None:
        options["position_ids"] = position_ids
    injections = (injections,) if isinstance(injections, Injection) else tuple(injections)
    at = prefix.width if start is None else start
    context = steering(model, injections, start=at) if injections else nullcontext()
    with context:
        return model(inputs.to(device), attention_mask=mask.to(device), past_key_values=cache, **options)


@dataclass(frozen=True, eq=False)
class PrefixBatch:
    """Unsteered prefixes in a KV cache, and the token suffixes still to run on copies of it.

    A prefix may have several suffixes (the likelihood metric runs each answer text after the same
    question; the fluency scorer every completion after its prompt): suffix row ``r`` continues
    prefix ``owners[r]``. The letter metric has one suffix per prefix, so there ``owners`` is
    ``0, 1, ...`` and suffix row ``i`` is item ``i``.
    """

    prompts: tuple  # one per prefix, whatever the caller keeps beside the batch
    prefix: CachedPrefix
    suffix_ids: Int[Tensor, "row suffix"]
    suffix_mask: Int[Tensor, "row suffix"]
    owners: tuple[int, ...] = ()  # the prefix of each suffix row; () means row i continues prefix i

    @property
    def width(self) -> int:
        """Prefix columns: every suffix starts at this column."""
        return self.prefix.width

    @property
    def suffix_owners(self) -> tuple[int, ...]:
        """The prefix (item) each suffix row continues."""
        return self.owners or tuple(range(int(self.suffix_ids.shape[0])))


def encode_token_prefixes(
    model: "TransformerBridge",
    prefixes: Sequence[Sequence[int]],
    suffixes: Sequence[Sequence[Sequence[int]]],
    prompts: Sequence[object] = (),
) -> PrefixBatch:
    """Run unsteered token prefixes once into a KV cache; keep each prefix's suffixes to run later.

    Every block runs (the suffixes of a scorer need logits), so the cache serves any layer's steering.

    Args:
        prefixes: one token sequence per item, all non-empty (the tokens before steering starts).
        suffixes: for each prefix, the token sequences that continue it (at least one, non-empty).
        prompts: what the caller keeps beside the batch, one per prefix (``PrefixBatch.prompts``).
    """
    if len(suffixes) != len(prefixes) or (prompts and len(prompts) != len(prefixes)):
        raise ValueError(
            f"{len(prefixes)} prefixes but {len(suffixes)} suffix lists / {len(prompts)} prompts"
        )
    if not prefixes or min(len(p) for p in prefixes) == 0:
        raise ValueError("an item's steering starts at its first token: there is no prefix to reuse")
    if any(not group for group in suffixes) or any(not s for group in suffixes for s in group):
        raise ValueError("every prefix needs at least one non-empty suffix to continue it")
    flat = [list(s) for group in suffixes for s in group]
    owners = tuple(item for item, group in enumerate(suffixes) for _ in group)
    suffix_ids, suffix_mask = right_pad(flat, pad_token_id(model.tokenizer))
    # stop_at_layer=n_layers stops nowhere; every block's keys and values are needed.
    prefix = encode(model, prefixes, stop_at_layer=int(model.cfg.n_layers), where="scoring prefix pass")
    identity = owners == tuple(range(len(prefixes)))
    return PrefixBatch(tuple(prompts), prefix, suffix_ids, suffix_mask, () if identity else owners)


def suffix_logits(
    model: "TransformerBridge",
    batch: PrefixBatch,
    rows: Sequence[int] | Int[Tensor, " row"],
    injections: Sequence[Injection] = (),
) -> Float[Tensor, "row suffix vocab"]:
    """Logits of suffix rows ``rows`` of ``batch`` (repeats allowed), each continuing its prefix.

    Batch row ``k`` runs suffix row ``rows[k]``, steered by ``injections`` from the first suffix token
    on (per-row tensor multipliers need ``len(rows)`` entries). The batch's cache is left unchanged.
    """
    chosen = torch.as_tensor(rows, dtype=torch.long).reshape(-1)
    owners = torch.tensor(batch.suffix_owners, dtype=torch.long)[chosen]
    with torch.inference_mode():
        return run_suffixes(
            model, batch.prefix, owners, batch.suffix_ids[chosen], batch.suffix_mask[chosen], injections
        )


@dataclass(frozen=True, eq=False)
class Decoding:
    """The KV cache of a decode loop: filled by ``prefill``, one column longer after each ``decode_step``.

    Unlike ``CachedPrefix`` this cache is extended in place: each step's token joins it.
    """

    cache: Any  # transformers.DynamicCache


def prefill(
    model: "TransformerBridge", ids: Int[Tensor, "batch pos"], mask: Int[Tensor, "batch pos"]
) -> tuple[Decoding, Float[Tensor, "batch pos vocab"]]:
    """The prompt pass of a decode loop (under the caller's steering): its cache and its logits."""
    cache = _new_cache()
    logits = model(ids, attention_mask=mask, past_key_values=cache)
    _require_filled(cache, mask.shape[1], "generate (KV cache)")
    return Decoding(cache), logits


def decode_step(
    model: "TransformerBridge",
    state: Decoding,
    tokens: Int[Tensor, "batch 1"],
    mask: Int[Tensor, "batch pos"],
) -> Float[Tensor, "batch 1 vocab"]:
    """One new token per row on the decode cache, which it extends; ``mask`` covers every column so far."""
    return model(tokens, attention_mask=mask, past_key_values=state.cache)
