"""Residual-stream reads that are not contrastive: per-layer activations and norms of one prompt."""

from collections.abc import Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from caa_lens.hooks import check_layers, hook_name, stop_layer_for
from caa_lens.prompts import FormattedPrompt


def residual_stack(
    model, prompt: FormattedPrompt, layers: int | Sequence[int] | None = None, site: str = "resid_post"
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
    model,
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
