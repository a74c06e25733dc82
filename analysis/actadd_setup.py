"""What every ActAdd experiment shares before it runs: its layers, its vector's front window, which prompts
hold that window, the rows' norms, and the settings the results record.

ActAdd adds its rows from the first token of the user's text (``caa_lens.steering``). A prompt whose
user text is shorter than the vector's window is dropped before anything runs (``window="user"``), and
the dropped prompts are listed in the prompts table; ``window="prompt"`` keeps the package's own rule
(the window may run into the chat template after the user's text, as long as it ends inside the prompt).
"""

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd

import caa_lens as cl
from caa_lens.ood import OODPrompt
from caa_lens.prompts import format_prompt
from caa_lens.steering import Injection, front_rows

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

__all__ = [
    "CONTROLS_AT",
    "NULL_SCOPES",
    "ControlsAt",
    "Window",
    "actadd_layer",
    "bundled_pair",
    "front_window",
    "jsonable",
    "prompt_windows",
    "row_norms",
]

ControlsAt = Literal["all", "layer", "cell"]
Window = Literal["user", "prompt"]
CONTROLS_AT = ("all", "layer", "cell")
NULL_SCOPES = {"all": "every cell", "layer": "best layer", "cell": "best cell"}


def actadd_layer(n_layers: int) -> int:
    """ActAdd's GPT-2-XL injection layer (6 of 48) at the same depth fraction: 4 of 30, 1 of 4.

    >>> actadd_layer(48), actadd_layer(30), actadd_layer(4)
    (6, 4, 1)
    """
    return min(n_layers - 1, int(6 * n_layers / 48 + 0.5))


def bundled_pair(name: str) -> cl.PromptPair:
    """The bundled prompt pair called ``name`` (``caa_lens.bundled_prompt_pairs``), e.g. "weddings"."""
    pairs = {p.name: p for p in cl.bundled_prompt_pairs()}
    if name not in pairs:
        raise ValueError(f"no bundled prompt pair {name!r}: expected one of {sorted(pairs)}")
    return pairs[name]


def front_window(model: "TransformerBridge", vector: cl.SteeringVector, layer: int) -> int:
    """How many positions the vector covers in mode front (its BOS row dropped): the window a prompt
    must hold."""
    return int(front_rows(Injection(vector, layer, 1.0, "front"), model.tokenizer).shape[0])


def row_norms(
    model: "TransformerBridge", vector: cl.SteeringVector, layers: Sequence[int], texts: Sequence
) -> pd.DataFrame:
    """The norm of every row the vector adds at each layer, beside the mean residual norm there
    (``caa_lens.residuals.residual_norm`` of ``texts`` at the vector's site): ``ratio`` is how many
    residual norms one unit of the coefficient adds at that row."""
    rows = []
    for layer in layers:
        added = front_rows(Injection(vector, layer, 1.0, "front"), model.tokenizer).double().norm(dim=-1)
        resid = cl.residual_norm(model, layer, list(texts), site=vector.provenance.site)
        rows += [
            {"layer": int(layer), "row": i, "norm": float(n), "resid_norm": resid, "ratio": float(n) / resid}
            for i, n in enumerate(added)
        ]
    return pd.DataFrame(rows, columns=["layer", "row", "norm", "resid_norm", "ratio"])


def prompt_windows(
    model: "TransformerBridge",
    prompts: Sequence[OODPrompt],
    width: int,
    window: Window = "user",
    system: str | None = None,
) -> pd.DataFrame:
    """Whether the front window of ``width`` positions fits each prompt, and which prompts are used.

    Columns: prompt_id, prompt, user_tokens (the user's text in the prompt), tail_tokens (template tokens after
    it), window, used, reason. ``window="user"``: the user's text must hold the whole window (ActAdd's
    rows land on the user's words); ``"prompt"``: the window may run on into the template, but must end
    inside the prompt (the package refuses a window that would reach generated tokens).
    """
    if window not in ("user", "prompt"):
        raise ValueError(f"window must be 'user' or 'prompt', got {window!r}")
    rows = []
    for p in prompts:
        formatted = format_prompt(model.tokenizer, p.prompt, system=system)
        # The template's text after the user's message, tokenised alone: it starts with a special
        # token or a space, so it tokenises alike in context (the user's words may not: a template
        # that puts a space before them changes their first token).
        after = formatted.text.rsplit(p.prompt, 1)[-1] if p.prompt in formatted.text else ""
        tail = len(model.tokenizer(after, add_special_tokens=False).input_ids) if after else 0
        if formatted.user_start is None:
            user, used, reason = 0, False, "user text not located in the formatted prompt"
        else:
            user = len(formatted) - formatted.user_start - tail
            room = user if window == "user" else user + tail
            used = width <= room
            reason = "" if used else f"{room} tokens from the user's first token, window {width}"
        rows.append((p.id, p.prompt, user, tail, width, used, reason))
    columns = ["prompt_id", "prompt", "user_tokens", "tail_tokens", "window", "used", "reason"]
    return pd.DataFrame(rows, columns=columns)


def jsonable(value):
    """``value`` with numpy scalars made Python numbers and tuples made lists, for a JSON summary."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    return value
