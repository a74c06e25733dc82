"""ActAdd's contrast: the residual-stream difference of two prompts at every position.

ActAdd (Turner et al.) steers with ``h(p+) - h(p-)`` of a prompt pair (``"Love"`` / ``"Hate"``), added
at the front of the user's text. Both prompts run in one batch; the shorter is right-padded with the
token of a single space (not a pad token: the vector must cover real positions), as the paper does.
"""

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from jaxtyping import Float
from torch import Tensor

from caa_lens.data import PromptPair
from caa_lens.hooks import check_layers, hook_name, stop_layer_for

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

__all__ = ["extract_prompt_pair", "prompt_pair_tokens"]


def prompt_pair_tokens(tokenizer, pair: PromptPair, prepend_bos: bool = True) -> tuple[list[int], list[int]]:
    """ActAdd tokenisation: both prompts, the shorter right-padded with the token of a single space."""
    bos = [tokenizer.bos_token_id] if prepend_bos and tokenizer.bos_token_id is not None else []
    positive = bos + tokenizer(pair.positive, add_special_tokens=False).input_ids
    negative = bos + tokenizer(pair.negative, add_special_tokens=False).input_ids
    space = tokenizer(" ", add_special_tokens=False).input_ids
    if len(space) != 1:
        raise ValueError(
            f"the tokenizer splits a single space into {len(space)} tokens; cannot pad ActAdd prompts"
        )
    width = max(len(positive), len(negative))
    positive += space * (width - len(positive))
    negative += space * (width - len(negative))
    return positive, negative


def extract_prompt_pair(
    model: "TransformerBridge",
    pair: PromptPair,
    layers: int | Sequence[int] | None = None,
    site: str = "resid_pre",
    prepend_bos: bool = True,
) -> Float[Tensor, "layer pos d_model"]:
    """ActAdd: ``h(p+) - h(p-)`` at every position of the space-padded prompts, per layer."""
    chosen = check_layers(model, layers)
    names = [hook_name(model, layer, site) for layer in chosen]
    positive, negative = prompt_pair_tokens(model.tokenizer, pair, prepend_bos)
    with torch.inference_mode():
        _, cache = model.run_with_cache(
            torch.tensor([positive, negative]), names_filter=names, stop_at_layer=stop_layer_for(chosen)
        )
        acts = torch.stack([cache[name] for name in names], dim=0)  # [layer, 2, pos, d]
    return (acts[:, 0] - acts[:, 1]).float()
