"""Behaviour probability: the CAA A/B metric and the Yes/No metric, plain, steered, or swept fast.

A/B (CAA): the prompt is the model's chat template with the question as the user turn and the
assistant turn opened with ``"("``; the score of an item is p(matching letter) / sum over the offered
letters of p(letter), read at the last position. Yes/No (model-written evaluations): the same at the
start of the assistant turn over ``Yes``/``No`` (the matching answer may be ``No``). The answer token
ids are found by tokenising each complete answer in context and taking the token right after the
scoring prompt, never by tokenising the letter alone (``"A"`` and the ``A`` after ``"("`` can differ).

Sweeps use ``encode_prefixes`` + ``suffix_scores``: the tokens before the steering start are
unsteered in every cell, so they run once per question into a KV cache, and each layer runs only the
few suffix tokens, with every (vector, multiplier) cell as a batch row on a copy of that cache. The
cache itself is ``caa_lens.prefix``'s (``encode_token_prefixes``, ``suffix_logits``), shared with
``caa_lens.likelihood`` and every other prefix-reusing path.
"""

import hashlib
import json
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from caa_lens.data import ContrastiveDataset, ContrastiveItem
from caa_lens.multipliers import scoring_injections
from caa_lens.prefix import PrefixBatch, encode_token_prefixes, suffix_logits
from caa_lens.prompts import FormattedPrompt, PromptStyle, check_fits, format_prompt, left_pad, pad_token_id
from caa_lens.steering import MODES, Injection, steer_start_columns, steering
from caa_lens.vectors import SteeringVector

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

__all__ = [
    "BehaviourScores",
    "ItemScore",
    "ItemScores",
    "ScoringPrompt",
    "SplitRule",
    "behaviour_probabilities",
    "check_scores_finite",
    "encode_prefixes",
    "grid_injections",
    "item_hash",
    "label_scores",
    "row_scores",
    "scoring_prompt",
    "scoring_prompts",
    "split_position",
    "steered_prompts",
    "suffix_scores",
]

SplitRule = Literal["from_start", "last"]


@dataclass(frozen=True)
class ScoringPrompt:
    """One item ready to score: the prompt that ends where the answer token comes next."""

    prompt: FormattedPrompt
    labels: tuple[str, ...]
    label_token_ids: tuple[int, ...]
    matching: int  # index into labels


@dataclass(frozen=True)
class ItemScore:
    index: int
    item_hash: str
    matching_label: str
    p_matching: float  # normalised over the offered labels
    p_letters_sum: float  # unnormalised mass on the offered labels (sanity: should not be tiny)


@dataclass(frozen=True)
class ItemScores:
    """Per-item scores of one dataset under one steering setting: what every metric's result shares
    (each item score has at least ``p_matching``; the metrics add their own columns)."""

    dataset: str
    dataset_hash: str
    items: tuple

    def mean(self, column: str) -> float:
        """The mean over items of one column of the item scores."""
        return sum(getattr(s, column) for s in self.items) / len(self.items)

    @property
    def mean_p_matching(self) -> float:
        return self.mean("p_matching")

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame([vars(s) for s in self.items])


@dataclass(frozen=True)
class BehaviourScores(ItemScores):
    """Per-item behaviour probabilities of one dataset under one steering setting."""

    items: tuple[ItemScore, ...]

    @property
    def mean_p_letters_sum(self) -> float:
        return self.mean("p_letters_sum")


def item_hash(item: ContrastiveItem) -> str:
    """SHA-256 (16 hex digits) of one item's content: lets result rows be matched to items safely."""
    canonical = json.dumps([item.question, item.matching, item.not_matching, list(item.options), item.kind])
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def scoring_prompt(
    tokenizer,
    item: ContrastiveItem,
    system: str | None = None,
    style: PromptStyle = "auto",
    where: str = "item",
    model: "TransformerBridge | None" = None,
) -> ScoringPrompt:
    """The scoring prompt of an item and the token id of each offered answer, found in context.

    Args:
        model: when given, a prompt longer than its context is refused (``prompts.check_fits``) before
            the answers are tokenised and before anything runs.

    Raises ValueError (prefixed with ``where``) if the prompt does not fit the model, or an answer does
    not tokenise as the scoring prompt followed by a token that starts with the answer's letter or word.
    """
    ab = item.kind == "ab"
    base = format_prompt(tokenizer, item.question, "(" if ab else "", system, style)
    n = len(base)
    if model is not None:
        check_fits(model, n, where)
    ids = []
    for label in item.labels:
        answer = f"({label})" if ab else label
        full = format_prompt(tokenizer, item.question, answer, system, style)
        if full.token_ids[:n] != base.token_ids or full.answer_position != n:
            raise ValueError(
                f"{where}: answer {answer!r} does not tokenise as the scoring prompt plus a token starting "
                f"with {label!r} (prompt ends {base.text[-30:]!r}); the metric cannot be read at one position"
            )
        ids.append(full.token_ids[n])
    if len(set(ids)) != len(ids):
        raise ValueError(f"{where}: answers {item.labels} share a first token; they cannot be told apart")
    return ScoringPrompt(base, item.labels, tuple(ids), item.labels.index(item.matching_letter))


def scoring_prompts(
    tokenizer,
    dataset: ContrastiveDataset,
    system: str | None = None,
    style: PromptStyle = "auto",
    model: "TransformerBridge | None" = None,
) -> list[ScoringPrompt]:
    """Every item's scoring prompt; with ``model``, each is checked to fit its context (errors name
    the dataset file and item)."""
    where = dataset.source or dataset.name
    return [
        scoring_prompt(tokenizer, item, system, style, f"{where}: item {i}", model)
        for i, item in enumerate(dataset)
    ]


def _describe(injections: Sequence[Injection]) -> str:
    if not injections:
        return "unsteered"
    return ", ".join(f"layer {i.layer} x {float(i.multiplier):g}" for i in injections)  # type: ignore[arg-type]


def check_scores_finite(scores: Tensor, where: Sequence[str]) -> None:
    """Raise, naming the first offending row, if a score is NaN or infinite (``where[r]`` names row r).

    Steering that overflows inside the model (a norm's sum of squares, say) yields NaN probabilities;
    they must stop the run, not become a number in a table or a mean.
    """
    bad = (~torch.isfinite(scores.reshape(len(where), -1))).any(dim=1).nonzero().flatten().tolist()
    if bad:
        raise ValueError(
            f"{where[bad[0]]}: the behaviour probability is not finite ({len(bad)} of {len(where)} rows); "
            f"the steered activations overflowed. Use a smaller multiplier"
        )


def label_scores(
    logits: Float[Tensor, "row vocab"], prompts: Sequence[ScoringPrompt]
) -> Float[Tensor, "row 2"]:
    """``(p_matching normalised, mass on the offered labels)`` per row; row ``r`` uses ``prompts[r]``."""
    probs = logits.double().softmax(dim=-1).cpu()
    out = torch.empty((len(prompts), 2), dtype=torch.float64)
    for row, prompt in enumerate(prompts):
        p = probs[row, list(prompt.label_token_ids)]
        out[row, 0] = p[prompt.matching] / p.sum()
        out[row, 1] = p.sum()
    return out


@contextmanager
def steered_prompts(
    model: "TransformerBridge",
    injections: Sequence[Injection],
    prompts: Sequence[FormattedPrompt],
    offsets: Sequence[int],
) -> Iterator[None]:
    """Steer a left-padded batch, each injection anchored by its mode as ``generation.generate`` does."""
    with ExitStack() as stack:
        for mode in MODES:  # one context per anchor rule; nested contexts add up
            group = [injection for injection in injections if injection.mode == mode]
            if group:
                stack.enter_context(steering(model, group, start=steer_start_columns(prompts, offsets, mode)))
        yield


def behaviour_probabilities(
    model: "TransformerBridge",
    dataset: ContrastiveDataset,
    injections: Injection | Sequence[Injection] = (),
    batch_size: int = 16,
    system: str | None = None,
    style: PromptStyle = "auto",
    progress: bool = True,
) -> BehaviourScores:
    """The A/B or Yes/No behaviour probability of every item, one full forward pass per batch.

    Args:
        injections: steering applied to every item (float multipliers only; sweep multipliers with
            ``caa_lens.sweep.run_sweep``). ``from_start`` is anchored at each prompt's steer_start.
        batch_size: items per forward pass (left-padded with an attention mask).

    >>> from caa_lens.tiny import tiny_model
    >>> from caa_lens.data import ContrastiveDataset, make_item
    >>> item = make_item("Sunny?\\n\\nChoices:\\n (A) yes\\n (B) no", "(A)", "(B)")
    >>> scores = behaviour_probabilities(tiny_model(), ContrastiveDataset("d", (item,)), progress=False)
    >>> 0 < scores.mean_p_matching < 1
    True
    """
    injections = scoring_injections(injections, batch_size, "behaviour_probabilities")
    # Every prompt is checked against the context before the first forward pass.
    prompts = scoring_prompts(model.tokenizer, dataset, system, style, model)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i].prompt))  # less padding
    results = torch.empty((len(prompts), 2), dtype=torch.float64)
    device = model.cfg.device
    bar = tqdm(total=len(prompts), desc=f"score {dataset.name}", unit="item", disable=not progress)
    with torch.inference_mode():
        for begin in range(0, len(order), batch_size):
            chosen = order[begin : begin + batch_size]
            batch = [prompts[i].prompt for i in chosen]
            ids, mask, offsets = left_pad([p.token_ids for p in batch], pad_token_id(model.tokenizer))
            with steered_prompts(model, injections, batch, offsets):
                logits = model(ids.to(device), attention_mask=mask.to(device))
            results[chosen] = label_scores(logits[:, -1], [prompts[i] for i in chosen])
            bar.update(len(chosen))
    bar.close()
    source = dataset.source or dataset.name
    check_scores_finite(
        results, [f"{source}: item {i} ({_describe(injections)})" for i in range(len(prompts))]
    )
    scores = tuple(
        ItemScore(i, item_hash(item), p.labels[p.matching], float(r[0]), float(r[1]))
        for i, (item, p, r) in enumerate(zip(dataset, prompts, results, strict=True))
    )
    return BehaviourScores(dataset.name, dataset.content_hash, scores)


def split_position(prompt: FormattedPrompt, rule: SplitRule) -> int:
    """Where steering starts: ``steer_start`` (CAA) or the last token (Patterns paper)."""
    if rule not in ("from_start", "last"):
        raise ValueError(f"unknown split rule {rule!r}: expected 'from_start' or 'last'")
    return prompt.steer_start if rule == "from_start" else prompt.last


def encode_prefixes(
    model: "TransformerBridge", prompts: Sequence[ScoringPrompt], split: SplitRule = "from_start"
) -> PrefixBatch:
    """Run the unsteered prefixes (tokens before the steering start) of a batch of items once."""
    cuts = [split_position(p.prompt, split) for p in prompts]
    if min(cuts) == 0:
        raise ValueError("an item's steering starts at its first token: there is no prefix to reuse")
    return encode_token_prefixes(
        model,
        [p.prompt.token_ids[:c] for p, c in zip(prompts, cuts, strict=True)],
        [[p.prompt.token_ids[c:]] for p, c in zip(prompts, cuts, strict=True)],
        prompts,
    )


def grid_injections(
    vectors: Sequence[SteeringVector], layer: int, multipliers: Sequence[float], n_rows: int
) -> list[Injection]:
    """Injections steering ``n_rows`` groups of rows ordered (vector, multiplier) within each group.

    Each vector gets one ``Injection`` whose per-row multiplier is zero on the other vectors' rows
    (adding ``0 * v`` leaves a float unchanged), so every cell of the grid shares one forward pass.
    """
    n_vectors, n_mults = len(vectors), len(multipliers)
    values = torch.tensor([float(m) for m in multipliers], dtype=torch.float32)
    injections = []
    for j, vector in enumerate(vectors):
        grid = torch.zeros((n_vectors, n_mults))
        grid[j] = values
        injections.append(Injection(vector, layer, grid.flatten().repeat(n_rows), "from_start"))
    return injections


def row_scores(
    model: "TransformerBridge", batch: PrefixBatch, rows: Int[Tensor, " row"], injections: Sequence[Injection]
) -> Float[Tensor, "row 2"]:
    """``(p_matching, p_letters_sum)`` of letter-metric suffix rows ``rows`` (repeats allowed), steered
    by ``injections`` (per-row multipliers: one per entry of ``rows``), read at each suffix's last token.

    The one reading of the letter metric on a prefix batch: ``suffix_scores`` (one vector at a time)
    and ``analysis``'s condition scores (several injections per row) both go through it.
    """
    last = (batch.suffix_mask.sum(dim=1) - 1)[rows]
    logits = suffix_logits(model, batch, rows, injections)
    with torch.inference_mode():
        final = logits[torch.arange(rows.shape[0]), last.to(logits.device)]
    owners = batch.suffix_owners
    return label_scores(final, [batch.prompts[owners[int(r)]] for r in rows])


def suffix_scores(
    model: "TransformerBridge",
    batch: PrefixBatch,
    vectors: Sequence[SteeringVector],
    layer: int,
    multipliers: Sequence[float],
) -> Float[Tensor, "item vector multiplier 2"]:
    """``(p_matching, p_letters_sum)`` for every item x vector x multiplier at one layer, in one pass.

    Rows are ordered item, vector, multiplier (``grid_injections``).
    """
    n_items, n_vectors, n_mults = len(batch.prompts), len(vectors), len(multipliers)
    rows = torch.arange(n_items).repeat_interleave(n_vectors * n_mults)
    scores = row_scores(model, batch, rows, grid_injections(vectors, layer, multipliers, n_items))
    return scores.reshape(n_items, n_vectors, n_mults, 2)
