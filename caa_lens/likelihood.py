"""Letter-free behaviour likelihood: score the answer *texts* of an item as the assistant's reply.

Why: the CAA letter metric (p(matching letter) / (p(A) + p(B)) after ``"("``) assumes the model
answers A/B questions in letters. A small model does not (the default SmolLM2-135M barely moves it
under steering), so a steering effect can be real and still invisible there. This metric asks instead
how likely the model finds each answer's own words as its reply to the question, with no letter
anywhere in the prompt (so the answer-letter confound of GUIDE section 6 cannot enter the metric).

Per item:

- The *stem* is the question with its choices block removed (A/B items), or the whole question
  (Yes/No items); the *option texts* are the words after ``(A)``, ``(B)``, ... (or ``Yes``/``No``).
  ``option_texts`` parses them and refuses, naming the file and item, when it cannot.
- Prompt: the stem as the user turn of the model's chat template (``prompts.format_prompt``); reply:
  the option text as the assistant's turn, tokenised in context (the tokens of
  ``format_prompt(tok, stem, text)`` after the prompt's own tokens).
- ``logprob_matching`` / ``logprob_not_matching``: the mean per-token log-probability of each reply
  (length-normalised, so a longer answer is not penalised for its length alone);
  ``logprob_diff`` = their difference; ``p_matching`` = sigmoid(``logprob_diff``), a number in [0, 1]
  that is 0.5 when the two texts are equally likely per token, so ``caa_lens.stats.effects_table`` and
  the sweep summaries read it as they read the letter metric. ``p_token_mean`` (the sweep's
  ``p_letters_sum`` column) is the mean over the two texts of their per-token (geometric-mean)
  probability: the analogue of the letter mass, low when neither text is a likely reply at all.

Steering follows the CAA rule: from the end of the user turn (``FormattedPrompt.steer_start``) on,
the reply tokens included. The tokens before that are unsteered in every setting, so they run once
per batch of items into a KV cache (``prefix.encode_token_prefixes``, the one prefix engine), and
every (answer, vector, multiplier) row runs only the rest on a copy of that cache
(``prefix.suffix_logits``), in chunks that keep the logits to a bounded size.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from caa_lens.answer_texts import OptionTexts, option_texts
from caa_lens.data import ContrastiveDataset, ContrastiveItem
from caa_lens.evaluation import (
    ItemScores,
    SplitRule,
    check_scores_finite,
    grid_injections,
    item_hash,
    split_position,
)
from caa_lens.multipliers import scoring_injections
from caa_lens.prefix import PrefixBatch, encode_token_prefixes, suffix_logits
from caa_lens.prompts import FormattedPrompt, PromptStyle, check_fits, format_prompt
from caa_lens.steering import Injection
from caa_lens.vectors import SteeringVector

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

__all__ = [
    "LOGITS_BUDGET",
    "LikelihoodItemScore",
    "LikelihoodPrompt",
    "LikelihoodScores",
    "encode_likelihood_prefixes",
    "likelihood_prompt",
    "likelihood_prompts",
    "likelihood_scores",
    "likelihood_suffix_scores",
]

# Logits (elements) one suffix pass may hold: the replies are tens of tokens, and rows x tokens x
# vocabulary of a whole sweep cell grid would be gigabytes on a real model.
LOGITS_BUDGET = 1 << 26
_TARGETS_PER_CHUNK = 1 << 24  # elements of the float64 log-softmax over the read positions


@dataclass(frozen=True)
class LikelihoodPrompt:
    """One item ready for the likelihood metric.

    ``prompt`` is the stem as the user turn with the assistant turn opened and empty (its
    ``steer_start`` is where CAA steering starts); ``replies`` are the token ids that follow it when
    the matching, then the non-matching, option text is the assistant's reply.
    """

    prompt: FormattedPrompt
    replies: tuple[tuple[int, ...], tuple[int, ...]]
    texts: OptionTexts
    matching_label: str  # the item's label (``A``, ``Yes``): the per-label split of the effects

    @property
    def longest(self) -> int:
        """Tokens of the longer of the two full sequences (prompt and reply)."""
        return len(self.prompt) + max(len(reply) for reply in self.replies)


@dataclass(frozen=True)
class LikelihoodItemScore:
    index: int
    item_hash: str
    matching_label: str
    p_matching: float  # sigmoid(logprob_diff)
    logprob_diff: float  # logprob_matching - logprob_not_matching
    logprob_matching: float  # mean per-token log-probability of the matching text as the reply
    logprob_not_matching: float
    p_token_mean: float  # (exp(logprob_matching) + exp(logprob_not_matching)) / 2


@dataclass(frozen=True)
class LikelihoodScores(ItemScores):
    """Per-item likelihood scores of one dataset under one steering setting."""

    items: tuple[LikelihoodItemScore, ...]

    @property
    def mean_logprob_diff(self) -> float:
        return self.mean("logprob_diff")

    @property
    def mean_p_token_mean(self) -> float:
        return self.mean("p_token_mean")

    @property
    def preferred_fraction(self) -> float:
        """Share of items whose matching text is the more likely one (``logprob_diff > 0``)."""
        return sum(s.logprob_diff > 0 for s in self.items) / len(self.items)


def likelihood_prompt(
    tokenizer,
    item: ContrastiveItem,
    system: str | None = None,
    style: PromptStyle = "auto",
    where: str = "item",
    model: "TransformerBridge | None" = None,
) -> LikelihoodPrompt:
    """The stem prompt of an item and the reply tokens of its two answer texts, found in context.

    Args:
        model: when given, a prompt and reply longer than its context is refused
            (``prompts.check_fits``) before anything runs.

    Raises:
        ValueError: (prefixed with ``where``) the option texts cannot be located (``option_texts``),
            a reply does not tokenise as a continuation of the prompt (the template's last token would
            merge with the reply's first characters, so the reply's tokens are not separable), or a
            sequence does not fit the model.
    """
    texts = option_texts(item, where)
    base = format_prompt(tokenizer, texts.stem, "", system, style)
    n = len(base)
    replies = []
    for text in (texts.matching, texts.not_matching):
        full = format_prompt(tokenizer, texts.stem, text, system, style)
        if full.token_ids[:n] != base.token_ids or len(full) == n:
            raise ValueError(
                f"{where}: the answer text {text[:40]!r} does not tokenise as a continuation of the prompt "
                f"(which ends {base.text[-30:]!r}): its tokens cannot be scored as the assistant's reply"
            )
        if model is not None:
            check_fits(model, len(full), where)
        replies.append(full.token_ids[n:])
    return LikelihoodPrompt(base, (replies[0], replies[1]), texts, item.matching_letter)


def likelihood_prompts(
    tokenizer,
    dataset: ContrastiveDataset,
    system: str | None = None,
    style: PromptStyle = "auto",
    model: "TransformerBridge | None" = None,
) -> list[LikelihoodPrompt]:
    """Every item's ``likelihood_prompt``; errors name the dataset file and item."""
    where = dataset.source or dataset.name
    return [
        likelihood_prompt(tokenizer, item, system, style, f"{where}: item {i}", model)
        for i, item in enumerate(dataset)
    ]


def encode_likelihood_prefixes(
    model: "TransformerBridge", prompts: Sequence[LikelihoodPrompt], split: SplitRule = "from_start"
) -> PrefixBatch:
    """Run the unsteered prefixes of a batch of items once; each item gets two suffix rows (the rest
    of its prompt, then the matching or the non-matching reply), in that order."""
    cuts = [split_position(p.prompt, split) for p in prompts]
    return encode_token_prefixes(
        model,
        [p.prompt.token_ids[:c] for p, c in zip(prompts, cuts, strict=True)],
        [[p.prompt.token_ids[c:] + reply for reply in p.replies] for p, c in zip(prompts, cuts, strict=True)],
        prompts,
    )


def _reply_logprobs(
    logits: Float[Tensor, "row suffix vocab"],
    ids: Int[Tensor, "row suffix"],
    starts: Int[Tensor, "row"],
    lengths: Int[Tensor, "row"],
) -> Float[Tensor, "row"]:
    """Mean log-probability of each row's reply: its tokens at ``starts .. starts + lengths - 1``, each
    read from the logits one position earlier (in float64, a chunk of positions at a time)."""
    positions = torch.arange(ids.shape[1])
    inside = (positions >= starts[:, None]) & (positions < (starts + lengths)[:, None])
    rows, columns = inside.nonzero(as_tuple=True)
    if bool((columns == 0).any()):
        raise ValueError("a reply starts at the first suffix token: no position predicts it")
    targets = ids[rows, columns]
    sums = torch.zeros(ids.shape[0], dtype=torch.float64)
    step = max(1, _TARGETS_PER_CHUNK // int(logits.shape[-1]))
    device = logits.device
    for begin in range(0, len(rows), step):
        part = slice(begin, begin + step)
        read = logits[rows[part].to(device), (columns[part] - 1).to(device)].double().log_softmax(dim=-1)
        picked = read.gather(-1, targets[part].to(device)[:, None]).squeeze(-1).cpu()
        sums.index_add_(0, rows[part], picked)
    return sums / lengths.double()


def _row_logprobs(
    model: "TransformerBridge",
    batch: PrefixBatch,
    rows: Int[Tensor, "row"],
    injections_for: Callable[[slice], Sequence[Injection]],
    max_logits: int,
) -> Float[Tensor, "row"]:
    """Mean reply log-probability of suffix rows ``rows`` of a likelihood batch, in bounded chunks.

    ``injections_for(chunk)`` gives the injections of the batch rows ``rows[chunk]`` (per-row
    multipliers sliced to the chunk).
    """
    replies = torch.tensor([len(reply) for p in batch.prompts for reply in p.replies], dtype=torch.long)
    lengths = replies[rows]
    starts = batch.suffix_mask.sum(dim=1)[rows] - lengths  # every suffix ends with its reply
    width, vocab = int(batch.suffix_ids.shape[1]), int(model.cfg.d_vocab)
    step = max(1, max_logits // (width * vocab))
    out = torch.empty(len(rows), dtype=torch.float64)
    for begin in range(0, len(rows), step):
        chunk = slice(begin, begin + step)
        logits = suffix_logits(model, batch, rows[chunk], injections_for(chunk))
        with torch.inference_mode():
            out[chunk] = _reply_logprobs(logits, batch.suffix_ids[rows[chunk]], starts[chunk], lengths[chunk])
    return out


def _combine(
    matching: Float[Tensor, "*cell"], not_matching: Float[Tensor, "*cell"]
) -> Float[Tensor, "*cell 3"]:
    """``(p_matching, p_token_mean, logprob_diff)`` from the two mean reply log-probabilities."""
    diff = matching - not_matching
    return torch.stack([torch.sigmoid(diff), (matching.exp() + not_matching.exp()) / 2, diff], dim=-1)


def likelihood_suffix_scores(
    model: "TransformerBridge",
    batch: PrefixBatch,
    vectors: Sequence[SteeringVector],
    layer: int,
    multipliers: Sequence[float],
    max_logits: int = LOGITS_BUDGET,
) -> Float[Tensor, "item vector multiplier 3"]:
    """``(p_matching, p_token_mean, logprob_diff)`` for every item x vector x multiplier at one layer.

    The sweep's hook (``run_sweep(metric="likelihood")``), the counterpart of
    ``evaluation.suffix_scores``: every (answer, vector, multiplier) is a row on a copy of the batch's
    prefix cache (rows ordered item, answer, vector, multiplier), steered from the suffix start on,
    in chunks of at most ``max_logits`` logits.
    """
    n_items, n_vectors, n_mults = len(batch.prompts), len(vectors), len(multipliers)
    repeats = n_vectors * n_mults
    n_suffix = int(batch.suffix_ids.shape[0])
    rows = torch.arange(n_suffix).repeat_interleave(repeats)
    grid = grid_injections(vectors, layer, multipliers, n_suffix)

    def injections_for(chunk: slice) -> list[Injection]:
        return [Injection(i.vector, i.layer, i.multiplier[chunk], i.mode) for i in grid]  # type: ignore[index]

    logprobs = _row_logprobs(model, batch, rows, injections_for, max_logits)
    logprobs = logprobs.reshape(n_items, 2, n_vectors, n_mults)
    return _combine(logprobs[:, 0], logprobs[:, 1])


def _split_of(injections: Sequence[Injection]) -> SplitRule:
    """The common anchor of the injections: CAA's ``from_start`` or the Patterns paper's ``last``."""
    modes = {injection.mode for injection in injections}
    other = sorted(modes - {"from_start", "last"})
    if other:
        raise ValueError(
            f"the likelihood metric steers from the end of the user turn ('from_start', CAA) or from the "
            f"last prompt token ('last'), not with mode {other[0]!r}"
        )
    if len(modes) > 1:
        raise ValueError("the likelihood metric takes injections of one mode: all 'from_start' or all 'last'")
    return "last" if modes == {"last"} else "from_start"


def likelihood_scores(
    model: "TransformerBridge",
    dataset: ContrastiveDataset,
    injections: Injection | Sequence[Injection] = (),
    batch_size: int = 8,
    system: str | None = None,
    style: PromptStyle = "auto",
    progress: bool = True,
    max_logits: int = LOGITS_BUDGET,
) -> LikelihoodScores:
    """The letter-free likelihood score of every item, optionally steered.

    Each batch's unsteered prefixes run once; both answers then run as suffix rows on copies of
    the cache (every prompt is checked against the model's context, and the multipliers against
    overflow, before the first pass).

    Args:
        injections: steering for every item (float multipliers; sweep grids with
            ``run_sweep(metric="likelihood")``), all ``from_start`` (the default: CAA) or all ``last``.
        batch_size: items per prefix pass (sorted by length to cut padding).
        max_logits: the most logits one suffix pass may hold (rows are chunked to fit).

    >>> from caa_lens.tiny import tiny_model
    >>> from caa_lens.data import ContrastiveDataset, make_item
    >>> item = make_item("Sunny?\\n\\nChoices:\\n (A) It is sunny.\\n (B) It will rain.", "(A)", "(B)")
    >>> scores = likelihood_scores(tiny_model(), ContrastiveDataset("d", (item,)), progress=False)
    >>> 0 < scores.mean_p_matching < 1
    True
    """
    injections = scoring_injections(injections, batch_size, "likelihood_scores")
    split = _split_of(injections)
    prompts = likelihood_prompts(model.tokenizer, dataset, system, style, model)  # checks every length
    order = sorted(range(len(prompts)), key=lambda i: (prompts[i].longest, i))
    logprobs = torch.empty((len(prompts), 2), dtype=torch.float64)
    bar = tqdm(total=len(prompts), desc=f"likelihood {dataset.name}", unit="item", disable=not progress)
    for begin in range(0, len(order), batch_size):
        chosen = order[begin : begin + batch_size]
        batch = encode_likelihood_prefixes(model, [prompts[i] for i in chosen], split)
        rows = torch.arange(2 * len(chosen))
        values = _row_logprobs(model, batch, rows, lambda chunk: injections, max_logits)
        logprobs[chosen] = values.reshape(len(chosen), 2)
        bar.update(len(chosen))
    bar.close()
    scores = _combine(logprobs[:, 0], logprobs[:, 1])
    source = dataset.source or dataset.name
    steered = ", ".join(f"layer {i.layer} x {float(i.multiplier):g}" for i in injections) or "unsteered"  # type: ignore[arg-type]
    check_scores_finite(scores, [f"{source}: item {i} ({steered})" for i in range(len(prompts))])
    items = tuple(
        LikelihoodItemScore(
            i,
            item_hash(item),
            prompt.matching_label,
            float(score[0]),
            float(score[2]),
            float(lp[0]),
            float(lp[1]),
            float(score[1]),
        )
        for i, (item, prompt, score, lp) in enumerate(zip(dataset, prompts, scores, logprobs, strict=True))
    )
    return LikelihoodScores(dataset.name, dataset.content_hash, items)
