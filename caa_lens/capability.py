"""Capability under steering: MMLU / TruthfulQA in A/B form, and perplexity of a text.

The A/B capability sets (``caa/test/mmlu/mmlu.json``, ``caa/test/truthfulqa/truthful_qa.json``:
``{prompt, correct, incorrect}``) load with ``caa_lens.data.load_behaviour_dataset``, which maps
``correct`` to the "matching" answer, so they are scored by the behaviour metric: p(correct)
normalised over the offered letters. Accuracy counts an item right when that is above 0.5.

Chance is read off the data, not assumed: the correct letters of a set are rarely balanced (the
shared MMLU A/B file has 299 A and 271 B), so an answerer that always gives the commonest letter
scores its share (0.525 there), not 0.5. ``CapabilityScore.majority_baseline`` is that share, and
"above chance" means above it. For a
layer x multiplier grid run ``caa_lens.sweep.run_sweep`` on the capability set and summarise its
table with ``capability_summary``.

Perplexity uses sliding windows of at most the model's context: window k covers text tokens
``[k * stride, k * stride + context)`` and scores only the tokens no earlier window scored, so every
token after the first window is predicted with at least ``context - stride`` tokens of context.
"""

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import torch
from tqdm.auto import tqdm

from caa_lens.data import ContrastiveDataset
from caa_lens.evaluation import behaviour_probabilities
from caa_lens.multipliers import check_injection_multipliers
from caa_lens.prompts import PromptStyle, pad_token_id, right_pad
from caa_lens.steering import Injection, steering

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

__all__ = [
    "CapabilityScore",
    "PerplexityResult",
    "TextWindows",
    "ab_capability",
    "capability_summary",
    "correct_letter_shares",
    "majority_baseline",
    "perplexity",
    "read_text",
    "sliding_windows",
    "text_windows",
]


@dataclass(frozen=True)
class CapabilityScore:
    """A/B capability of one dataset under one steering setting.

    Attributes:
        accuracy: fraction of items with p(correct) > 0.5.
        correct_letter_shares: for each letter that is ever correct, the fraction of items it is
            correct for: the accuracy of an answerer that always gives that letter.
        majority_label, majority_baseline: the commonest correct letter and its share, the accuracy
            to beat (the first letter in order on a tie).
    """

    dataset: str
    n_items: int
    accuracy: float
    mean_p_correct: float
    mean_p_letters_sum: float
    majority_label: str
    majority_baseline: float
    correct_letter_shares: dict[str, float] = field(hash=False)

    @property
    def accuracy_over_baseline(self) -> float:
        """Accuracy minus the majority-letter baseline: > 0 means better than answering one letter."""
        return self.accuracy - self.majority_baseline


def correct_letter_shares(labels: Sequence[str]) -> dict[str, float]:
    """The share of each correct letter among ``labels`` (one per item), letters in sorted order.

    >>> correct_letter_shares(["A", "B", "A", "A"])
    {'A': 0.75, 'B': 0.25}
    """
    if not labels:
        raise ValueError("no items: the letter shares of an empty set are undefined")
    counts = Counter(labels)
    return {label: counts[label] / len(labels) for label in sorted(counts)}


def majority_baseline(labels: Sequence[str]) -> tuple[str, float]:
    """The commonest correct letter and its share: the accuracy of always answering it."""
    shares = correct_letter_shares(labels)
    label = max(shares, key=shares.__getitem__)  # max keeps the first of equals: sorted order
    return label, shares[label]


def ab_capability(
    model: "TransformerBridge",
    dataset: ContrastiveDataset,
    injections: Injection | Sequence[Injection] = (),
    batch_size: int = 16,
    system: str | None = None,
    style: PromptStyle = "auto",
    progress: bool = True,
) -> CapabilityScore:
    """Accuracy and mean p(correct) of an A/B capability set (MMLU, TruthfulQA) under steering,
    with the majority-letter baseline of the set to compare the accuracy with.

    Every prompt is checked against the model's context, and the multipliers against overflow, before
    the first forward pass (``behaviour_probabilities``); errors name the dataset file and item.
    """
    scores = behaviour_probabilities(model, dataset, injections, batch_size, system, style, progress)
    correct = [s.p_matching > 0.5 for s in scores.items]
    labels = [item.matching_letter for item in dataset]
    label, baseline = majority_baseline(labels)
    return CapabilityScore(
        dataset.name,
        len(correct),
        sum(correct) / len(correct),
        scores.mean_p_matching,
        scores.mean_p_letters_sum,
        label,
        baseline,
        correct_letter_shares(labels),
    )


def capability_summary(results: pd.DataFrame) -> pd.DataFrame:
    """Accuracy and mean p(correct) per vector x layer x multiplier of a sweep table on a capability set,
    with ``majority_baseline``: the accuracy of always answering the commonest correct letter of the
    items in that cell (from the table's ``matching_label``)."""
    if "matching_label" not in results.columns:
        raise ValueError(
            "the sweep table has no matching_label column, so the majority-letter baseline cannot be "
            "computed: rerun the sweep with this version of caa_lens"
        )
    table = results.assign(correct=results["p_matching"] > 0.5)
    grouped = table.groupby(["vector", "layer", "multiplier"], sort=True)
    summary = grouped.agg(
        accuracy=("correct", "mean"),
        mean_p_correct=("p_matching", "mean"),
        p_letters_sum=("p_letters_sum", "mean"),
        n_items=("item_index", "count"),
        majority_baseline=("matching_label", lambda labels: majority_baseline(list(labels))[1]),
    )
    return summary.reset_index()


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


@dataclass(frozen=True)
class TextWindows:
    """A text cut into scoring windows: its token ids, the unscored prefix (the BOS or nothing) put
    before every window, and the ``(begin, end, score_from)`` windows of ``sliding_windows``."""

    ids: list[int]
    prefix: list[int]
    windows: list[tuple[int, int, int]]
    context: int  # text tokens per window
    stride: int

    @property
    def first_scored(self) -> int:
        """Without a BOS the first token has nothing before it and is not scored."""
        return 0 if self.prefix else 1


def text_windows(
    model: "TransformerBridge",
    text: str | Sequence[int],
    context: int | None = None,
    stride: int | None = None,
    max_tokens: int | None = None,
    add_bos: bool | None = None,
) -> TextWindows:
    """Tokenise ``text`` (or take its ids) and plan the sliding windows ``perplexity`` scores.

    One place for the BOS rule, the context and stride defaults and the context check, so every
    per-token loss of a text (``perplexity``, the ratio study's token losses) scores the same tokens.
    """
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
        raise ValueError(f"the text has {len(ids)} tokens: nothing to score; give a longer text")
    return TextWindows(ids, prefix, windows, context, stride)


def perplexity(
    model: "TransformerBridge",
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
            the BOS). ``"front"`` (ActAdd) steers the first text positions of every window (after the
            BOS, whose row an ActAdd vector drops: ``caa_lens.steering.front_rows``).
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
    plan = text_windows(model, text, context, stride, max_tokens, add_bos)
    ids, prefix, windows = plan.ids, plan.prefix, plan.windows
    nll, count = 0.0, 0
    device = model.cfg.device
    pad = pad_token_id(tokenizer)
    bar = tqdm(total=len(windows), desc="perplexity", unit="window", disable=not progress)
    front = [i for i in injections if i.mode == "front"]
    others = [i for i in injections if i.mode != "front"]
    # ActAdd's rows start at the text's first token, as they start at the user's first token in a
    # prompt; the other modes start at column 0 (the BOS included, as documented above).
    with torch.inference_mode(), steering(model, others, start=0), steering(model, front, start=len(prefix)):
        for b in range(0, len(windows), batch_size):
            chunk = windows[b : b + batch_size]
            batch, mask = right_pad([prefix + ids[begin:end] for begin, end, _ in chunk], pad)
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
    return PerplexityResult(math.exp(mean), mean, count, len(windows), plan.context, plan.stride)
