"""Prompt formatting: (system?, user, assistant prefix) -> token ids and the positions later stages need.

Positions are found from the tokenizer's character offsets, never guessed: the same answer text can
be one token or two depending on what precedes it, and a template's last token can merge with the
first character of the assistant's text.

Positions (0-based, in the unpadded sequence):
- ``steer_start``: the last token of the prompt before the assistant's text, i.e. the end of the
  user turn including the template's assistant header (``[/INST]`` in Llama-2,
  ``<|im_start|>assistant\\n`` in ChatML). CAA steers from here on; the CAA reference steered from
  the final token of ``[/INST]``.
- ``answer_position``: the token holding the first letter or digit of the assistant prefix (the
  ``A`` of ``(A)``, the ``Yes`` of `` Yes``): where CAA reads activations.
- ``last``: the final token (where the Patterns paper reads and steers, and where next-token
  probabilities are read).
- ``user_start``: the token holding the first non-space character of the user's text, found by
  rendering the template with a marker in place of the text. ActAdd (``mode="front"``) anchors its
  positional vector here: it was read from the raw prompt text, so its rows belong to the user's
  tokens, not to a template header or system prompt in front of them.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
from jaxtyping import Int
from torch import Tensor

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

__all__ = [
    "PLAIN_TEMPLATE",
    "FormattedPrompt",
    "PromptStyle",
    "check_fits",
    "format_prompt",
    "left_pad",
    "pad_token_id",
    "prompt_text",
    "right_pad",
]

PromptStyle = Literal["auto", "chat", "plain"]
PLAIN_TEMPLATE = "Input: {user}\nResponse:"


@dataclass(frozen=True)
class FormattedPrompt:
    """Token ids of one prompt and the positions of interest in them (see the module docstring).

    ``user_start`` is ``None`` when the user's text cannot be located (an empty message, or a template
    that rewrites the message); only ``mode="front"`` steering needs it, and refuses such a prompt.
    """

    token_ids: tuple[int, ...]
    text: str
    steer_start: int
    answer_position: int | None
    user_start: int | None = None

    @property
    def last(self) -> int:
        return len(self.token_ids) - 1

    def __len__(self) -> int:
        return len(self.token_ids)


def _uses_chat(tokenizer, style: PromptStyle) -> bool:
    if style not in ("auto", "chat", "plain"):
        raise ValueError(f"unknown prompt style {style!r}: expected 'auto', 'chat' or 'plain'")
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if style == "chat" and not has_template:
        raise ValueError("style='chat' asked for, but this tokenizer has no chat template; use style='plain'")
    return style == "chat" or (style == "auto" and has_template)


def _chat_text(tokenizer, user: str, system: str | None) -> str:
    messages = [{"role": "user", "content": user}]
    if system is not None:
        messages.insert(0, {"role": "system", "content": system})
    try:
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    except Exception as err:  # templates signal "no system role" (Gemma) by raising from Jinja
        if system is None:
            raise
        if "system" not in str(err).lower():
            raise
        merged = [{"role": "user", "content": f"{system}\n\n{user}"}]
        return tokenizer.apply_chat_template(merged, add_generation_prompt=True, tokenize=False)


def _assistant_separator(tokenizer, user: str, system: str | None, prompt: str) -> str:
    """Whitespace the template writes between its assistant header and the reply (Llama-2: one space).

    Read off the template itself by rendering a finished exchange, so each family gets the spacing its
    training data had: ``[/INST] (A)`` for Llama-2, ``assistant\n(A)`` for ChatML.
    """
    marker = "\u2603reply"
    messages = [{"role": "user", "content": user}, {"role": "assistant", "content": marker}]
    if system is not None:
        messages.insert(0, {"role": "system", "content": system})
    try:
        full = tokenizer.apply_chat_template(messages, tokenize=False)
    except Exception:
        return ""
    at = full.find(marker, len(prompt)) if full.startswith(prompt) else -1
    between = full[len(prompt) : at] if at >= 0 else ""
    return between if between.isspace() else ""


def prompt_text(tokenizer, user: str, system: str | None = None, style: PromptStyle = "auto") -> str:
    """The text of a prompt up to where the assistant's reply begins."""
    if _uses_chat(tokenizer, style):
        return _chat_text(tokenizer, user, system)
    body = PLAIN_TEMPLATE.format(user=user)
    return f"{system}\n\n{body}" if system else body


def _user_char(tokenizer, user: str, system: str | None, chat: bool, prompt: str) -> int | None:
    """Index in ``prompt`` of the first non-space character of the user's text, or ``None``.

    Chat: the template is rendered with a marker as the message; what precedes the marker is the
    template's text before the user turn's content, whatever the family (a default system prompt,
    a Llama-2 ``<<SYS>>`` block, a system prompt merged into the user turn). Searching the prompt for
    the user's words instead could land inside a system prompt that happens to contain them.
    """
    stripped = user.lstrip()
    if not stripped.strip():
        return None
    if chat:
        marker = "\u2603user"
        try:
            rendered = _chat_text(tokenizer, marker, system)
        except Exception:  # a template that rejects the marker cannot be located by it
            return None
        head = rendered.find(marker)
        if head < 0 or not prompt.startswith(rendered[:head]):
            return None
    else:
        head = (len(f"{system}\n\n") if system else 0) + PLAIN_TEMPLATE.index("{user}")
    rest = prompt[head:]
    if rest.startswith(user):
        return head + len(user) - len(stripped)
    if rest.startswith(stripped):  # the template trims the message (Llama-3, Gemma: ``| trim``)
        return head
    return None


def _tokenizer_prepends_bos(tokenizer) -> bool:
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer("a").input_ids[:1] == [bos]


def format_prompt(
    tokenizer,
    user: str,
    assistant_prefix: str = "",
    system: str | None = None,
    style: PromptStyle = "auto",
    prepend_bos: bool | None = None,
) -> FormattedPrompt:
    """Tokenise a prompt in the model's format and locate its steering and reading positions.

    Args:
        tokenizer: a Hugging Face *fast* tokenizer (character offsets are needed).
        user: the user's message.
        assistant_prefix: the start of the assistant's reply, e.g. ``"(A)"`` to read an answer or
            ``"("`` to score the next letter. Plain style joins it after ``Response:`` with one space.
        system: an optional system prompt. ``None`` keeps the template's own default (SmolLM2's
            template inserts one). Templates without a system role get it prepended to the user turn.
        style: ``"chat"`` (the tokenizer's chat template), ``"plain"`` (``Input: ...\\nResponse:``, for
            base models) or ``"auto"`` (chat when the tokenizer has a template).
        prepend_bos: plain style only; ``None`` follows the tokenizer's own convention. Chat templates
            write their own BOS, so none is ever added to them (no double BOS).

    >>> from caa_lens.tiny import tiny_tokenizer
    >>> p = format_prompt(tiny_tokenizer(), "Is it sunny?", "(A)")
    >>> p.text
    '<s>[INST] Is it sunny? [/INST] (A)'
    >>> tiny_tokenizer().decode(p.token_ids[p.answer_position]).strip()
    'A'
    """
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError("format_prompt needs a fast tokenizer (use_fast=True) for character offsets")
    chat = _uses_chat(tokenizer, style)
    prompt = prompt_text(tokenizer, user, system, "chat" if chat else "plain")
    prefix = assistant_prefix
    if prefix and not prefix[0].isspace():
        prefix = (_assistant_separator(tokenizer, user, system, prompt) if chat else " ") + prefix
    text = prompt + prefix
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = list(encoded["input_ids"])
    offsets: list[tuple[int, int]] = [tuple(o) for o in encoded["offset_mapping"]]
    bos = tokenizer.bos_token_id
    add_bos = (not chat) and (_tokenizer_prepends_bos(tokenizer) if prepend_bos is None else prepend_bos)
    if add_bos and bos is not None and ids[:1] != [bos]:
        ids.insert(0, bos)
        offsets.insert(0, (0, 0))
    if not ids:
        raise ValueError("the prompt tokenised to no tokens")

    prompt_chars = len(prompt)
    # Last token starting inside the prompt text. Special tokens report offsets too, so the BOS and
    # template markers are handled like any other token.
    starts = [start if end > start else -1 for start, end in offsets]
    steer_start = max((i for i, s in enumerate(starts) if s < prompt_chars), default=0)
    answer_position = None
    letter = next((k for k, ch in enumerate(prefix) if ch.isalnum()), None)
    if letter is not None:
        target = prompt_chars + letter
        answer_position = next(i for i, (s, e) in enumerate(offsets) if s <= target < e)
    # The token holding the user's first character; a token may begin with template text before it
    # (Llama-2's " I" after "[INST]"), which is still the token that carries the user's first word.
    user_char = _user_char(tokenizer, user, system, chat, prompt)
    user_start = None
    if user_char is not None:
        user_start = next((i for i, (s, e) in enumerate(offsets) if s <= user_char < e), None)
    return FormattedPrompt(tuple(ids), text, steer_start, answer_position, user_start)


def check_fits(model: "TransformerBridge", length: int, where: str) -> None:
    """Refuse a sequence longer than the model's context window, naming where it came from.

    Past ``n_ctx`` rotary models silently extrapolate and learned-position models fail deep inside
    torch; either way the number would be wrong, so it is an error here.
    """
    n_ctx = getattr(model.cfg, "n_ctx", None)
    if n_ctx and length > int(n_ctx):
        raise ValueError(f"{where}: {length} tokens exceed the model's context of {int(n_ctx)} tokens")


def pad_token_id(tokenizer) -> int:
    """The id used to fill padded positions (they are masked, so any valid id works)."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.bos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0


def right_pad(
    sequences: Sequence[Sequence[int]], pad_id: int
) -> tuple[Int[Tensor, "batch pos"], Int[Tensor, "batch pos"]]:
    """Right-pad token sequences into one batch: the ids and the attention mask (1 on real tokens).

    Under causal attention the pads come after every real token, so they cannot affect one; position
    ``p`` of every sequence is column ``p``.

    >>> right_pad([[5, 6, 7], [8]], pad_id=0)[0].tolist()
    [[5, 6, 7], [8, 0, 0]]
    """
    if not sequences:
        raise ValueError("cannot pad an empty list of sequences")
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = torch.tensor(list(seq), dtype=torch.long)
        mask[row, : len(seq)] = 1
    return ids, mask


def left_pad(
    sequences: list[tuple[int, ...]] | list[list[int]], pad_id: int
) -> tuple[Int[Tensor, "batch pos"], Int[Tensor, "batch pos"], list[int]]:
    """Left-pad token sequences into one batch.

    Returns the ids, the attention mask (1 on real tokens) and each row's offset: position ``p`` of
    sequence ``i`` sits at column ``offsets[i] + p``.
    """
    if not sequences:
        raise ValueError("cannot pad an empty list of sequences")
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    offsets = []
    for row, seq in enumerate(sequences):
        offset = width - len(seq)
        ids[row, offset:] = torch.tensor(list(seq), dtype=torch.long)
        mask[row, offset:] = 1
        offsets.append(offset)
    return ids, mask, offsets
