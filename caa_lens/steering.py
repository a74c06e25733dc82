"""Injection: add steering vectors to the residual stream inside a context manager.

Positions are *absolute columns* of the (left-padded) batch. Under a KV cache each forward pass
holds only the new tokens, and TransformerLens does not tell a hook where they sit, so the context
puts a forward pre-hook on the underlying Hugging Face model (``model.original_model``) that reads
where the pass starts: ``cache_position[0]`` when the caller passes it (HF ``generate``), else the
length of ``past_key_values`` (the bridge passes the cache object through), else 0 (no cache: a full
recompute starts at column 0). The cache length is the ground truth for "how many columns came
before", whoever drives the loop (our ``generate``, the bridge's, or a hand-written one), so this is
used rather than counting tokens seen by a hook, which breaks as soon as an unrelated forward pass
runs inside the context. The offset is cleared after every pass so a hook can never use a stale one.

Modes (``s`` = the row's start column, ``c`` = a column):

- ``"from_start"`` (CAA): add ``m * v`` at every ``c >= s``, generated tokens included.
- ``"front"`` (ActAdd): add ``m * h[c - s]`` for ``s <= c < s + len(h)``, where ``s`` is the column of
  the first token of the *user's text* (``FormattedPrompt.user_start``), not of the formatted prompt:
  ``h`` was read from the raw prompt pair, so its rows belong to the user's words, and column 0 of a
  chat prompt is the template's header (SmolLM2: a default system prompt). Purely positional, so
  the prompt pass is steered and generated tokens only see it through the cache (full recompute adds
  it again at the same positions, which gives the same result).
  The BOS row: ActAdd reads ``BOS + prompt`` (``prepend_bos``), and inside a template the BOS (if any)
  is at column 0, far from the user's text, so row 0 has no counterpart there. It is also the
  difference of two identical BOS residuals (zero up to float noise: position 0 sees only itself).
  ``front_rows`` therefore drops it, and row 1 (the pair's first word) lands on the user's first token.
- ``"last"`` (Patterns paper): the same positional rule as ``from_start``, anchored by the caller at
  the final prompt token, so the last prompt token and every generated token are steered. Steering
  "the last position of each pass" instead would differ between cached and uncached decoding.
- ``"all"``: every column (``start`` is ignored).
"""

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, get_args

import torch
from jaxtyping import Float
from torch import Tensor

from caa_lens.hooks import check_site, hook_name
from caa_lens.identity import model_identity
from caa_lens.prompts import FormattedPrompt
from caa_lens.provenance import check_compatible
from caa_lens.vectors import SteeringVector

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

__all__ = [
    "MODES",
    "Injection",
    "Mode",
    "front_rows",
    "steer_start_columns",
    "steering",
]

Mode = Literal["from_start", "front", "last", "all"]
MODES: tuple[str, ...] = get_args(Mode)


@dataclass(frozen=True, eq=False)
class Injection:
    """One steering vector added at one layer.

    Args:
        vector: the steering vector; ``vector.at(layer)`` is added (``[d_model]``, or ``[pos, d_model]``
            for ActAdd, which needs ``mode="front"`` and is added from the user's first token on, its
            BOS row dropped: ``front_rows``).
        layer: the block whose residual stream is steered (must be one of ``vector.layers``).
        multiplier: a finite float, or a 1-D tensor with one multiplier per batch row (a sweep).
        mode: ``"from_start"``, ``"front"``, ``"last"`` or ``"all"`` (see the module docstring).
        site: ``"resid_pre"``, ``"resid_mid"`` or ``"resid_post"``; ``None`` means the site the vector
            was read at (``vector.provenance.site``).
        allow_mismatch: apply a vector made on another model or site (transfer experiments).
    """

    vector: SteeringVector
    layer: int
    multiplier: float | int | Tensor = 1.0
    mode: str = "from_start"
    site: str | None = None
    allow_mismatch: bool = False

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown steering mode {self.mode!r}: expected one of {', '.join(MODES)}")
        object.__setattr__(self, "site", check_site(self.site or self.vector.provenance.site))
        direction = self.vector.at(self.layer)
        if direction.dim() == 2 and self.mode != "front":
            raise ValueError(
                f"a positional (ActAdd, [pos, d_model]) vector can only be injected with mode='front', "
                f"not mode={self.mode!r}"
            )
        if isinstance(self.multiplier, Tensor):
            if self.multiplier.dim() != 1 or self.multiplier.numel() == 0:
                raise ValueError(
                    f"a tensor multiplier must be 1-D with one value per batch row, "
                    f"got shape {tuple(self.multiplier.shape)}"
                )
            if not torch.isfinite(self.multiplier).all():
                raise ValueError(f"multipliers must be finite, got {self.multiplier.tolist()}")
        elif not math.isfinite(self.multiplier):
            raise ValueError(f"multiplier must be finite, got {self.multiplier}")


def _start_offset(args: tuple, kwargs: dict) -> int:
    """Absolute column of the first token of a forward pass of the HF model."""
    cache_position = kwargs.get("cache_position")
    if cache_position is not None:
        return int(cache_position.reshape(-1)[0])
    # transformers 5.x renames the argument to ``cache`` (``past_key_values`` goes in 5.40).
    past = kwargs.get("past_key_values", kwargs.get("cache"))
    if past is None:
        return 0
    if not hasattr(past, "get_seq_length"):
        raise TypeError(
            f"steering needs a transformers Cache object as past_key_values, got {type(past).__name__}"
        )
    return int(past.get_seq_length())


class _Cursor:
    """Where the current forward pass starts; ``None`` outside a pass."""

    offset: int | None = None


def _per_row(values: Tensor, batch: int, what: str, device: torch.device) -> Tensor:
    """A 0-d tensor as is, or a 1-D one (one entry per row) as a ``[batch, 1]`` column."""
    if values.dim() == 0:
        return values.to(device)
    if values.shape[0] != batch:
        raise ValueError(f"{what} has {values.shape[0]} entries but the batch has {batch} rows")
    return values.to(device).reshape(-1, 1)


def _start_tensor(start: int | Sequence[int] | Tensor) -> Tensor:
    columns = torch.as_tensor(start).long()
    if columns.dim() > 1 or (columns < 0).any():
        raise ValueError(f"start must be a non-negative column or one per row, got {start!r}")
    return columns


def _read_with_bos(vector: SteeringVector, tokenizer) -> bool:
    """Whether a positional vector's row 0 was read at a BOS token (``actadd_vector``'s default)."""
    settings = vector.provenance.settings
    # Files written before settings existed used the default, prepend_bos=True.
    return (
        vector.provenance.method == "actadd"
        and bool(settings.get("prepend_bos", True))
        and getattr(tokenizer, "bos_token_id", None) is not None
    )


def front_rows(injection: Injection, tokenizer) -> Float[Tensor, "pos d_model"]:
    """The rows ``mode="front"`` adds, the first one at the first token of the user's text.

    An ActAdd vector read with a BOS loses its BOS row (see the module docstring); a 1-D vector is one
    row (it steers the user's first token only). ``tokenizer`` is the model's: a vector read where the
    tokenizer has no BOS token has no BOS row.

    >>> import torch
    >>> from caa_lens.provenance import Provenance
    >>> prov = Provenance("m", "h", 2, 1, "resid_pre", "all", "actadd", "d", "0", 1, "float32")
    >>> h = SteeringVector(torch.tensor([[[0.0, 0.0], [1.0, 2.0], [3.0, 4.0]]]), (0,), prov)
    >>> from caa_lens.tiny import tiny_tokenizer
    >>> front_rows(Injection(h, 0, mode="front"), tiny_tokenizer()).tolist()
    [[1.0, 2.0], [3.0, 4.0]]
    """
    direction = injection.vector.at(injection.layer)
    if direction.dim() == 1:
        return direction[None]
    if _read_with_bos(injection.vector, tokenizer):
        direction = direction[1:]
    if direction.shape[0] == 0:
        raise ValueError(
            "the ActAdd vector holds only its BOS row: nothing to add at the user's text; "
            "extract it from non-empty prompts"
        )
    return direction


def _make_hook(injection: Injection, start: Tensor, cursor: _Cursor, tokenizer):
    if injection.mode == "front":
        direction = front_rows(injection, tokenizer)
    else:
        direction = injection.vector.at(injection.layer)
    multiplier = injection.multiplier
    mode = injection.mode

    def steer(resid: Float[Tensor, "batch pos d_model"], hook) -> Float[Tensor, "batch pos d_model"]:
        if cursor.offset is None:
            raise RuntimeError(
                "steering hook fired outside a forward pass of model.original_model: "
                "cannot tell which absolute positions it holds"
            )
        batch, n_new, _ = resid.shape
        vec = direction.to(device=resid.device, dtype=resid.dtype)
        if isinstance(multiplier, Tensor):
            scale = _per_row(multiplier, batch, "the multiplier tensor", resid.device).to(resid.dtype)
            scale = scale.unsqueeze(-1)  # [batch, 1, 1]
        else:
            scale = torch.tensor(multiplier, dtype=resid.dtype, device=resid.device)
        columns = cursor.offset + torch.arange(n_new, device=resid.device)
        relative = columns - _per_row(start, batch, "start", resid.device)  # [batch or 1, pos]
        if mode == "all":
            return resid + scale * vec
        if mode == "front":
            inside = (relative >= 0) & (relative < vec.shape[0])
            if not inside.any():
                return resid
            delta = scale * vec[relative.clamp(0, vec.shape[0] - 1)]  # [batch, pos, d_model]
        else:
            inside = relative >= 0
            delta = scale * vec
        # torch.where (not a 0/1 factor) keeps unsteered positions bit-identical to the input.
        return torch.where(inside.unsqueeze(-1), resid + delta, resid)

    return steer


def _still_registered(model: "TransformerBridge", hooks: list[tuple[str, object]]) -> bool:
    return all(
        any(getattr(handle, "user_hook", None) is fn for handle in model.hook_dict[name].fwd_hooks)
        for name, fn in hooks
    )


@contextmanager
def steering(
    model: "TransformerBridge",
    injections: Injection | Sequence[Injection],
    *,
    start: int | Sequence[int] | Tensor,
) -> Iterator[None]:
    """Add the injections' vectors to the residual stream for every forward pass inside the context.

    Several injections are summed (on the same hook or on different layers). Contexts nest: an inner
    context adds to the outer one and each removes exactly its own hooks when it exits, whether it
    exits normally, by an exception, a KeyboardInterrupt, or a generator being closed early. If the
    hooks disappear while the context is open (``model.reset_hooks()``), the next forward pass raises
    instead of silently running unsteered.

    Args:
        model: a TransformerBridge in raw mode.
        injections: one ``Injection`` or several.
        start: the absolute column (in the padded batch) where steering begins: one int for every
            row, or one per row (see ``steer_start_columns``). For ``mode="front"`` it is the column of
            the first token of the user's text. Ignored by ``mode="all"``.

    >>> import torch
    >>> from caa_lens.tiny import tiny_model
    >>> from caa_lens.vectors import SteeringVector
    >>> from caa_lens.provenance import make_provenance
    >>> model = tiny_model()
    >>> prov = make_provenance(model, "resid_post", "answer", "caa", "doc", "0", 1, torch.float32)
    >>> vector = SteeringVector(torch.ones(1, 64), (1,), prov)
    >>> with steering(model, Injection(vector, layer=1, multiplier=2.0), start=3):
    ...     logits = model(torch.tensor([[1, 20, 30, 40, 50]]))
    """
    injections = (injections,) if isinstance(injections, Injection) else tuple(injections)
    identity = model_identity(model)
    fwd_hooks: list[tuple[str, object]] = []
    cursor = _Cursor()
    columns = _start_tensor(start)
    for injection in injections:
        name = hook_name(model, injection.layer, injection.site or "resid_post")
        check_compatible(
            injection.vector.provenance,
            identity,
            injection.site or "resid_post",
            allow_mismatch=injection.allow_mismatch,
        )
        fwd_hooks.append((name, _make_hook(injection, columns, cursor, getattr(model, "tokenizer", None))))
    hf_model = getattr(model, "original_model", None)
    if hf_model is None:
        raise NotImplementedError(
            "steering needs a TransformerBridge over a Hugging Face model (original_model)"
        )

    def begin_pass(module, args, kwargs):
        if not _still_registered(model, fwd_hooks):
            raise RuntimeError(
                "steering hooks were removed while their context was open "
                "(model.reset_hooks() inside `with steering(...)`?)"
            )
        cursor.offset = _start_offset(args, kwargs)

    def end_pass(module, args, output):
        cursor.offset = None

    pre_handle = hf_model.register_forward_pre_hook(begin_pass, with_kwargs=True)
    post_handle = hf_model.register_forward_hook(end_pass, always_call=True)
    try:
        with model.hooks(fwd_hooks=fwd_hooks):
            yield
    finally:
        pre_handle.remove()
        post_handle.remove()


def steer_start_columns(
    prompts: Sequence[FormattedPrompt], offsets: Sequence[int], mode: str = "from_start"
) -> list[int]:
    """Each prompt's steering start as a column of the padded batch (``offsets`` from ``left_pad``).

    ``from_start``: the prompt's ``steer_start`` (CAA); ``last``: its final token; ``front``: the first
    token of the user's text (``user_start``: ActAdd's rows belong to the user's words, not to the
    template around them); ``all``: its first real token (unused: ``all`` steers every column).

    Raises:
        ValueError: ``front`` for a prompt whose user text was not located (``user_start is None``).
    """
    if len(prompts) != len(offsets):
        raise ValueError(f"{len(prompts)} prompts but {len(offsets)} offsets")
    if mode not in MODES:
        raise ValueError(f"unknown steering mode {mode!r}: expected one of {', '.join(MODES)}")
    if mode == "front":
        unlocated = [row for row, prompt in enumerate(prompts) if prompt.user_start is None]
        if unlocated:
            raise ValueError(
                f"prompts {unlocated} have no located user text (FormattedPrompt.user_start is None), "
                "so an ActAdd (front) vector has nowhere to start: build them with format_prompt from a "
                "non-empty user message, or give user_start yourself"
            )
    return [offset + _anchor(prompt, mode) for prompt, offset in zip(prompts, offsets, strict=True)]


def _anchor(prompt: FormattedPrompt, mode: str) -> int:
    if mode == "from_start":
        return prompt.steer_start
    if mode == "last":
        return prompt.last
    if mode == "front":
        assert prompt.user_start is not None  # steer_start_columns refused the others
        return prompt.user_start
    return 0
