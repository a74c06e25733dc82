"""Steered generation: a batched decoding loop over plain ``model(...)`` forward calls.

The bridge's own ``generate(fwd_hooks=...)`` silently ignores the hooks, so decoding is done here:
prompts are left-padded with an attention mask (the bridge derives position ids from it), and each
step runs one forward pass, either on the new token with a KV cache (``caa_lens.prefix.prefill`` then
``decode_step``) or on the whole sequence (full recompute). Steering is positional (``caa_lens.steering``), so both give the same
greedy tokens. Each injection is anchored by its mode: CAA (``from_start``) at each prompt's
``steer_start``, ``last`` at the final prompt token (so the last prompt token and every generated
token are steered), ActAdd (``front``) at the first token of the user's text (``user_start``).
"""

import math
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from jaxtyping import Float, Int
from torch import Tensor

from caa_lens.multipliers import check_injection_multipliers
from caa_lens.prefix import Decoding, decode_step, prefill
from caa_lens.prompts import FormattedPrompt, check_fits, format_prompt, left_pad, pad_token_id
from caa_lens.steering import MODES, Injection, front_rows, steer_start_columns, steering

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

__all__ = ["GenerationResult", "check_generation", "end_token_ids", "generate", "next_tokens"]


@dataclass(frozen=True)
class GenerationResult:
    """Generated continuations, one per prompt, in the order given.

    ``token_ids`` holds the new tokens of each row up to and including its end-of-sequence token
    (no padding); ``texts`` is their decoding without special tokens.
    """

    texts: tuple[str, ...]
    token_ids: tuple[tuple[int, ...], ...]
    prompt_token_ids: tuple[tuple[int, ...], ...]


def end_token_ids(model: "TransformerBridge") -> tuple[int, ...]:
    """Tokens that end a reply: the tokenizer's EOS and any the model's generation config lists."""
    ids = {model.tokenizer.eos_token_id}
    config = getattr(getattr(model, "original_model", None), "generation_config", None)
    extra = getattr(config, "eos_token_id", None)
    ids.update(extra if isinstance(extra, (list, tuple)) else [extra])
    return tuple(sorted(int(i) for i in ids if i is not None))


def next_tokens(
    logits: Float[Tensor, "batch vocab"],
    temperature: float,
    top_p: float | None,
    generator: torch.Generator | None,
) -> Int[Tensor, " batch"]:
    """Greedy (``temperature == 0``) or nucleus-sampled next tokens."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p is not None and top_p < 1:
        ranked, order = probs.sort(dim=-1, descending=True)
        # Keep the smallest prefix whose mass reaches top_p: drop a token once the mass before it does.
        ranked = ranked.masked_fill(ranked.cumsum(dim=-1) - ranked >= top_p, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, ranked)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def _check_arguments(max_new_tokens: int, temperature: float, top_p: float | None) -> None:
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if not (math.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"temperature must be finite and >= 0 (0 is greedy), got {temperature}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")


def _check_injections(
    model: "TransformerBridge", injections: tuple[Injection, ...], prompts: list[FormattedPrompt]
) -> None:
    check_injection_multipliers(injections)  # an overflowing multiplier decodes garbage from NaN logits
    for injection in injections:
        multiplier = injection.multiplier
        if isinstance(multiplier, Tensor) and multiplier.shape[0] != len(prompts):
            raise ValueError(
                f"the multiplier tensor has {multiplier.shape[0]} entries for {len(prompts)} prompts"
            )
        if injection.mode == "front":
            starts = steer_start_columns(prompts, [0] * len(prompts), "front")  # refuses unlocated text
            width = front_rows(injection, model.tokenizer).shape[0]
            # Generated tokens would be steered too (the cache grows into the window): refused.
            short = [i for i, (p, s) in enumerate(zip(prompts, starts, strict=True)) if s + width > len(p)]
            if short:
                raise ValueError(
                    f"the front (ActAdd) vector covers {width} positions from the first token of the "
                    f"user's text, past the end of prompts {short}: use longer prompts or a shorter "
                    "prompt pair"
                )


def check_generation(
    model: "TransformerBridge",
    prompts: Sequence[FormattedPrompt],
    injections: Sequence[Injection],
    max_new_tokens: int,
    names: Sequence[str] | None = None,
) -> None:
    """Refuse, before any forward pass, a prompt that cannot grow by ``max_new_tokens`` within the
    context, or steering that cannot be applied to it (a bad multiplier; an ActAdd window running past
    the prompt's end). ``names[i]`` names prompt ``i`` in the message (default ``prompt i``).

    Callers that generate in several batches check every prompt once here first, so a bad prompt fails
    in seconds, not after the batches before it ran.
    """
    for row, prompt in enumerate(prompts):
        where = names[row] if names is not None else f"prompt {row}"
        check_fits(model, len(prompt) + max_new_tokens, f"{where} plus {max_new_tokens} new tokens")
    _check_injections(model, tuple(injections), list(prompts))


def generate(
    model: "TransformerBridge",
    prompts: Sequence[FormattedPrompt] | Sequence[str],
    injections: Injection | Sequence[Injection] = (),
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    top_p: float | None = None,
    seed: int = 0,
    use_cache: bool = True,
    stop_at_eos: bool = True,
) -> GenerationResult:
    """Generate continuations of a batch of prompts, steered by ``injections``.

    Args:
        model: a TransformerBridge in raw mode.
        prompts: ``FormattedPrompt`` objects, or strings formatted with ``format_prompt`` (the model's
            chat template when it has one).
        injections: steering to apply; a tensor multiplier gives one multiplier per prompt.
        max_new_tokens: the most tokens generated per prompt.
        temperature: 0 for greedy decoding, else the sampling temperature.
        top_p: nucleus sampling mass (sampling only); ``None`` samples from the full distribution.
        seed: seeds a private ``torch.Generator``: the same call gives the same tokens.
        use_cache: decode with a KV cache (``True``) or recompute the whole sequence each step.
        stop_at_eos: stop each row after its end-of-sequence token; rows that stopped are padded.

    >>> from caa_lens.tiny import tiny_model
    >>> result = generate(tiny_model(), ["Is it sunny?"], max_new_tokens=3, stop_at_eos=False)
    >>> len(result.token_ids[0])
    3
    """
    _check_arguments(max_new_tokens, temperature, top_p)
    formatted = [p if isinstance(p, FormattedPrompt) else format_prompt(model.tokenizer, p) for p in prompts]
    if not formatted:
        raise ValueError("no prompts to generate from")
    injections = (injections,) if isinstance(injections, Injection) else tuple(injections)
    check_generation(model, formatted, injections, max_new_tokens)
    device = torch.device(str(model.cfg.device))
    pad = pad_token_id(model.tokenizer)
    ids, mask, offsets = left_pad([p.token_ids for p in formatted], pad)
    ids, mask = ids.to(device), mask.to(device)
    ends = torch.tensor(end_token_ids(model) if stop_at_eos else (), dtype=torch.long, device=device)
    generator = torch.Generator(device=device).manual_seed(seed) if temperature > 0 else None
    decoding: Decoding | None = None  # the KV cache, once the prompt pass has filled it
    finished = torch.zeros(len(formatted), dtype=torch.bool, device=device)
    lengths = torch.zeros(len(formatted), dtype=torch.long, device=device)
    steps: list[Tensor] = []

    with torch.inference_mode(), ExitStack() as stack:
        for mode in MODES:  # one context per anchor; nested contexts add up
            group = [injection for injection in injections if injection.mode == mode]
            if group:
                stack.enter_context(
                    steering(model, group, start=steer_start_columns(formatted, offsets, mode))
                )
        step_input = ids
        for _ in range(max_new_tokens):
            if not use_cache:
                logits = model(step_input, attention_mask=mask, use_cache=False)
            elif decoding is None:  # the prompt pass; later steps append to the cache it filled
                decoding, logits = prefill(model, step_input, mask)
            else:
                logits = decode_step(model, decoding, step_input, mask)
            token = next_tokens(logits[:, -1, :], temperature, top_p, generator)
            alive = ~finished
            token = torch.where(alive, token, torch.full_like(token, pad))
            steps.append(token)
            lengths += alive.long()
            finished = finished | torch.isin(token, ends)
            if bool(finished.all()):
                break
            # Rows that already stopped get masked pads, so they cannot influence anything.
            ids = torch.cat([ids, token[:, None]], dim=1)
            mask = torch.cat([mask, alive.long()[:, None]], dim=1)
            step_input = token[:, None] if use_cache else ids

    table = torch.stack(steps, dim=1).tolist() if steps else [[] for _ in formatted]
    token_ids = tuple(tuple(row[:n]) for row, n in zip(table, lengths.tolist(), strict=True))
    texts = tuple(model.tokenizer.decode(list(row), skip_special_tokens=True) for row in token_ids)
    return GenerationResult(texts, token_ids, tuple(p.token_ids for p in formatted))
