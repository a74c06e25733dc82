"""Capability under steering: MMLU / TruthfulQA in A/B form, and perplexity of a text.

The A/B capability sets (``caa/test/mmlu/mmlu.json``, ``caa/test/truthfulqa/truthful_qa.json``:
``{prompt, correct, incorrect}``) load with ``caa_lens.data.load_behaviour_dataset``, which maps
``correct`` to the "matching" answer, so they are scored by the behaviour metric: p(correct)
normalised over the offered letters. Accuracy counts an item right when that is above 0.5. For a
layer x multiplier grid run ``caa_lens.sweep.run_sweep`` on the capability set and summarise its
table with ``capability_summary``.

Perplexity uses sliding windows of at most the model's context: window k covers text tokens
``[k * stride, k * stride + context)`` and scores only the tokens no earlier window scored, so every
token after the first window is predicted with at least ``context - stride`` tokens of context.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from caa_lens.data import ContrastiveDataset
from caa_lens.evaluation import behaviour_probabilities, check_injection_multipliers
from caa_lens.prompts import PromptStyle, pad_token_id
from caa_lens.steering import Injection, steering


@dataclass(frozen=True)
class CapabilityScore:
    """A/B capability of one dataset under one steering setting."""

    dataset: str
    n_items: int
    accuracy: float  # fraction of items with p(correct) > 0.5
    mean_p_correct: float
    mean_p_letters_sum: float


def ab_capability(
    model,
    dataset: ContrastiveDataset,
    injections: Injection | Sequence[Injection] = (),
    batch_size: int = 16,
    system: str | None = None,
    style: PromptStyle = "auto",
    progress: bool = True,
) -> CapabilityScore:
    """Accuracy and mean p(correct) of an A/B capability set (MMLU, TruthfulQA) under steering.

    Every prompt is checked against the model's context, and the multipliers against overflow, before
    the first forward pass (``behaviour_probabilities``); errors name the dataset file and item.
    """
    scores = behaviour_probabilities(model, dataset, injections, batch_size, system, style, progress)
    correct = [s.p_matching > 0.5 for s in scores.items]
    return CapabilityScore(
        dataset.name,
        len(correct),
        sum(correct) / len(correct),
        scores.mean_p_matching,
        scores.mean_p_letters_sum,
    )


def capability_summary(results: pd.DataFrame) -> pd.DataFrame:
    """Accuracy and mean p(correct) per vector x layer x multiplier of a sweep table on a capability set."""
    table = results.assign(correct=results["p_matching"] > 0.5)
    grouped = table.groupby(["vector", "layer", "multiplier"], sort=True)
    return grouped.agg(
        accuracy=("correct", "mean"),
        mean_p_correct=("p_matching", "mean"),
        p_letters_sum=("p_letters_sum", "mean"),
        n_items=("item_index", "count"),
    ).reset_index()


@dataclass(frozen=True)
class PerplexityResult:
    perplexity: float
    mean_nll: float  # nats per scored token
    n_tokens: int  # tokens scored
    n_windows: int
    context: int  # text tokens per window (the BOS, when added, comes on top)
    stride: int


def read_text(path: str | Path, max_chars: int | None = None) -> str:
    """A UTF-8 text file (e.g. WikiText-2's ``wiki.test.raw``), optionally cut to ``max_chars``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"text file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text (byte {err.start}: {err.reason})") from err
    return text[:max_chars] if max_chars is not None else text


def sliding_windows(
    n_tokens: int, context: int, stride: int, first_scored: int
) -> list[tuple[int, int, int]]:
    """``(begin, end, score_from)`` per window: tokens ``[score_from, end)`` are scored in that window.

    >>> sliding_windows(10, 4, 2, 1)
    [(0, 4, 1), (2, 6, 4), (4, 8, 6), (6, 10, 8)]
    """
    if not 0 < stride <= context:
        raise ValueError(f"stride must be in 1..context ({context}), got {stride}")
    windows, scored_until, begin = [], first_scored, 0
    while True:
        end = min(begin + context, n_tokens)
        if end > scored_until:
            windows.append((begin, end, scored_until))
            scored_until = end
        if end >= n_tokens:
            return windows
        begin += stride


def perplexity(
    model,
    text: str | Sequence[int],
    injections: Injection | Sequence[Injection] = (),
    context: int | None = None,
    stride: int | None = None,
    max_tokens: int | None = None,
    add_bos: bool | None = None,
    batch_size: int = 1,
    progress: bool = True,
) -> PerplexityResult:
    """Perplexity of a text (or token ids) under steering, with sliding windows.

    Args:
        injections: steering applied in every window at every position from the window's first column:
            use ``mode="all"`` or ``"from_start"`` (anchored at column 0; with ``add_bos`` that includes
            the BOS). ``"front"`` (ActAdd) steers the first positions of every window.
        context: text tokens per window; default ``min(n_ctx, 1024)`` (minus one for the BOS).
        stride: how far windows advance; default ``context // 2``.
        max_tokens: score only the first ``max_tokens`` tokens of the text (WikiText-2 is ~300k).
        add_bos: prepend the BOS to every window as unscored context; default: if the tokenizer adds
            one itself. Without a BOS the first token of the text cannot be scored.
        batch_size: windows per forward pass (the logits take ``batch * context * vocab`` floats).

    >>> from caa_lens.tiny import tiny_model
    >>> result = perplexity(tiny_model(), "The quick brown fox jumps over the lazy dog.", progress=False)
    >>> result.perplexity > 1
    True
    """
    injections = (injections,) if isinstance(injections, Injection) else tuple(injections)
    if any(i.mode == "last" for i in injections):
        raise ValueError("mode='last' has no meaning for perplexity; use 'all' or 'from_start'")
    check_injection_multipliers(injections)
    tokenizer = model.tokenizer
    if isinstance(text, str):
        ids = list(tokenizer(text, add_special_tokens=False).input_ids)
    else:
        ids = [int(t) for t in text]
    ids = ids[:max_tokens] if max_tokens is not None else ids
    bos = tokenizer.bos_token_id
    if add_bos is None:
        add_bos = bos is not None and tokenizer("a").input_ids[:1] == [bos]
    if add_bos and bos is None:
        raise ValueError("add_bos=True but the tokenizer has no BOS token")
    prefix = [bos] if add_bos else []
    n_ctx = int(getattr(model.cfg, "n_ctx", 1024) or 1024)
    context = context or min(n_ctx, 1024) - len(prefix)
    if context + len(prefix) > n_ctx:
        raise ValueError(f"context {context} (+{len(prefix)} BOS) exceeds the model's n_ctx {n_ctx}")
    stride = stride or max(1, context // 2)
    windows = sliding_windows(len(ids), context, stride, 0 if add_bos else 1)
    if not windows:
        raise ValueError(f"the text has {len(ids)} tokens: nothing to score")
    nll, count = 0.0, 0
    device = model.cfg.device
    pad = pad_token_id(tokenizer)
    bar = tqdm(total=len(windows), desc="perplexity", unit="window", disable=not progress)
    with torch.inference_mode(), steering(model, injections, start=0):
        for b in range(0, len(windows), batch_size):
            chunk = windows[b : b + batch_size]
            rows = [prefix + ids[begin:end] for begin, end, _ in chunk]
            width = max(len(r) for r in rows)
            # Right padding: causal attention keeps the pads from affecting real positions.
            batch = torch.full((len(rows), width), pad, dtype=torch.long)
            mask = torch.zeros_like(batch)
            for i, row in enumerate(rows):
                batch[i, : len(row)] = torch.tensor(row)
                mask[i, : len(row)] = 1
            logits = model(batch.to(device), attention_mask=mask.to(device))
            for i, (begin, end, score_from) in enumerate(chunk):
                # Text token t sits at column t - begin + len(prefix); the column before predicts it.
                columns = torch.arange(score_from, end) - begin + len(prefix)
                logprobs = logits[i, columns - 1].double().log_softmax(dim=-1)
                targets = batch[i, columns].to(logprobs.device)
                nll -= float(logprobs.gather(-1, targets[:, None]).sum())
                count += len(columns)
            bar.update(len(chunk))
    bar.close()
    mean = nll / count
    if not math.isfinite(mean):
        raise ValueError(
            f"the perplexity is not finite (mean NLL {mean}) under steering "
            f"{[(i.layer, i.multiplier) for i in injections]}: the steered activations overflowed; "
            f"use a smaller multiplier"
        )
    return PerplexityResult(math.exp(mean), mean, count, len(windows), context, stride)
