"""Residual-stream reads that are not contrastive, and steering strength measured against them.

``residual_stack`` and ``residual_norms`` read one prompt's residual stream; ``residual_norm`` is the
mean norm at one layer over reference texts, and ``multiplier_for_ratio`` the multiplier that makes a
vector that many times as long, so steering strengths are comparable across layers and models.
"""

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from jaxtyping import Float
from torch import Tensor

from caa_lens.hooks import check_layer, check_layers, hook_name, stop_layer_for
from caa_lens.prompts import FormattedPrompt, left_pad, pad_token_id
from caa_lens.vectors import SteeringVector

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

__all__ = ["multiplier_for_ratio", "residual_norm", "residual_norms", "residual_stack"]


def residual_stack(
    model: "TransformerBridge",
    prompt: FormattedPrompt,
    layers: int | Sequence[int] | None = None,
    site: str = "resid_post",
) -> Float[Tensor, "layer pos d_model"]:
    """The residual stream of one prompt at every position for the chosen layers (``stop_at_layer``)."""
    chosen = check_layers(model, layers)
    names = [hook_name(model, layer, site) for layer in chosen]
    with torch.inference_mode():
        _, cache = model.run_with_cache(
            torch.tensor([prompt.token_ids]), names_filter=names, stop_at_layer=stop_layer_for(chosen)
        )
    return torch.stack([cache[name][0] for name in names]).float()


def residual_norms(
    model: "TransformerBridge",
    prompt: FormattedPrompt,
    layers: int | Sequence[int] | None = None,
    site: str = "resid_post",
    skip_first: bool = True,
) -> Float[Tensor, " layer"]:
    """Mean L2 norm of the residual per layer, over positions (the first, an outlier, skipped by default)."""
    stack = residual_stack(model, prompt, layers, site)
    if skip_first and stack.shape[1] > 1:
        stack = stack[:, 1:]
    return stack.norm(dim=-1).mean(dim=-1)


def _as_token_ids(model: "TransformerBridge", item: str | FormattedPrompt | Sequence[int]) -> list[int]:
    if isinstance(item, str):
        return list(model.tokenizer(item).input_ids)  # the tokenizer's own BOS convention
    if isinstance(item, FormattedPrompt):
        return list(item.token_ids)
    return [int(t) for t in item]


def residual_norm(
    model: "TransformerBridge",
    layer: int,
    texts_or_token_ids: Sequence[str] | Sequence[FormattedPrompt] | Sequence[Sequence[int]],
    site: str = "resid_post",
    skip_first: bool = True,
) -> float:
    """Mean L2 norm of the residual stream at ``layer`` over all positions of reference texts.

    The first token is skipped by default: its norm is an outlier (an attention sink) that would
    dominate the mean. Texts longer than ``model.cfg.n_ctx`` are truncated. Run it outside any
    steering context, or the norm includes the steering.
    """
    name = hook_name(model, layer, site)
    sequences = [_as_token_ids(model, item) for item in texts_or_token_ids]
    n_ctx = getattr(model.cfg, "n_ctx", None)
    sequences = [s[:n_ctx] if n_ctx else s for s in sequences]
    sequences = [s for s in sequences if len(s) > int(skip_first)]
    if not sequences:
        raise ValueError(
            "no positions to measure: every reference text is empty (or one token with skip_first)"
        )
    ids, mask, offsets = left_pad(sequences, pad_token_id(model.tokenizer))
    captured: list[Tensor] = []

    def capture(resid: Float[Tensor, "batch pos d_model"], hook) -> None:
        captured.append(resid.detach())

    with torch.inference_mode(), model.hooks(fwd_hooks=[(name, capture)]):
        model(
            ids.to(model.cfg.device),
            attention_mask=mask.to(model.cfg.device),
            stop_at_layer=stop_layer_for((check_layer(model, layer),)),
        )
    norms = captured[0].double().norm(dim=-1).cpu()  # [batch, pos]
    keep = mask.bool()
    if skip_first:
        keep[torch.arange(len(offsets)), torch.tensor(offsets)] = False
    return float(norms[keep].mean())


def multiplier_for_ratio(vector: SteeringVector, layer: int, ratio: float, reference_norm: float) -> float:
    """The multiplier ``m`` with ``||m v|| = ratio * reference_norm`` (negative ratios flip the sign).

    For a positional (ActAdd) vector ``||v||`` is the mean norm of its non-zero positions.

    >>> import torch
    >>> from caa_lens.provenance import Provenance
    >>> prov = Provenance("m", "h", 2, 1, "resid_post", "last", "caa", "d", "0", 1, "float32")
    >>> multiplier_for_ratio(SteeringVector(torch.tensor([[3.0, 4.0]]), (0,), prov), 0, 0.5, 10.0)
    1.0
    """
    if not (math.isfinite(ratio) and math.isfinite(reference_norm)) or reference_norm <= 0:
        raise ValueError(
            f"ratio and reference_norm must be finite and reference_norm > 0, "
            f"got {ratio} and {reference_norm}"
        )
    norms = vector.at(layer).double().reshape(-1, vector.at(layer).shape[-1]).norm(dim=-1)
    norms = norms[norms > 0]
    if norms.numel() == 0:
        raise ValueError(f"the vector is zero at layer {layer}: no multiplier gives a non-zero norm")
    return float(ratio * reference_norm / norms.mean())
