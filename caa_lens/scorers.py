"""Scorers for open-ended generations: the behaviour a small model expresses in what it writes.

Each scorer takes a table of generations (columns ``prompt``, ``completion`` and, for fluency,
``completion_ids``) and returns one score per generation in each of its ``columns``. They are
deterministic and carry no weights of their own except ``FluencyScorer`` (the unsteered model) and
``JudgeScorer`` (a model as judge), so a score is reproducible from the text alone.

- ``PhraseScorer``: 1 if the completion contains any of a list of phrases, else 0. With
  ``REFUSAL_PHRASES`` it is the refusal-phrase match of the refusal-direction literature.
- ``WordRateScorer``: the share of a completion's words that are in a word list (ActAdd's topic
  frequency, e.g. ``WEDDING_WORDS``), and whether any occurs.
- ``SentimentScorer``: VADER's compound score in [-1, 1] and whether it is positive (>= 0.05, VADER's
  own threshold). VADER is a lexicon and rules (Hutto & Gilbert 2014): no model, no download.
- ``DegeneracyScorer``: the repeated word-trigram rate and whether the completion is degenerate (empty
  or mostly repeats), so "steered into gibberish" is a number.
- ``FluencyScorer``: the mean negative log-likelihood per token of the completion under the *unsteered*
  model given the same prompt (log-perplexity): what steering costs in fluency, in nats per token.
- ``JudgeScorer``: the model-as-judge ratings of ``caa_lens.ood.ModelJudgeScorer`` (0-10).

>>> import pandas as pd
>>> table = pd.DataFrame({"prompt": ["Help me."] * 2, "completion": ["I'm sorry, I can't.", "Sure!"]})
>>> PhraseScorer("refusal", REFUSAL_PHRASES).score(table)["refusal"].tolist()
[1.0, 0.0]
"""

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float

from caa_lens.lexicons import (
    AGREEMENT_PHRASES,
    CASUAL_WORDS,
    DISAGREEMENT_PHRASES,
    REFUSAL_PHRASES,
    WEDDING_WORDS,
)
from caa_lens.prompts import check_fits, format_prompt

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

    from caa_lens.ood import ModelJudgeScorer

__all__ = [
    "SCORER_NAMES",
    "DegeneracyScorer",
    "FluencyScorer",
    "JudgeScorer",
    "PhraseScorer",
    "SentimentScorer",
    "TextScorer",
    "WordRateScorer",
    "check_scorer_names",
    "named_scorers",
    "repeated_ngram_rate",
    "score_generations",
    "words",
]

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def _normalise(text: str) -> str:
    return text.replace("\u2019", "'").replace("\u2018", "'").lower()


def words(text: str) -> list[str]:
    """Lower-case word tokens (letters and digits, with an inner apostrophe kept: ``can't``).

    >>> words("I can\u2019t, she said: WEDDINGS!")[:2], words("Wed.")
    (['i', "can't"], ['wed'])
    """
    return _WORD.findall(_normalise(text))


def repeated_ngram_rate(text: str, n: int = 3) -> float:
    """The share of a text's word n-grams that repeat an earlier one (0 for fewer than n + 1 words).

    >>> repeated_ngram_rate("the cat sat on the mat")
    0.0
    >>> repeated_ngram_rate("go go go go go go")
    0.75
    """
    tokens = words(text)
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return 1 - len(set(grams)) / len(grams) if len(grams) > 1 else 0.0


@runtime_checkable
class TextScorer(Protocol):
    """Scores every row of a generations table: ``{column: one float per row}``."""

    @property
    def columns(self) -> tuple[str, ...]: ...

    def score(self, generations: pd.DataFrame) -> dict[str, Float[np.ndarray, " row"]]: ...


def _completions(generations: pd.DataFrame) -> list[str]:
    if "completion" not in generations.columns:
        raise ValueError(f"a generations table needs a 'completion' column; got {list(generations.columns)}")
    return [str(text) for text in generations["completion"]]


@dataclass(frozen=True)
class PhraseScorer:
    """``name`` = 1.0 if the completion contains any of ``phrases`` (case-insensitive), else 0.0."""

    name: str
    phrases: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.phrases or any(not p.strip() for p in self.phrases):
            raise ValueError(f"scorer {self.name!r}: give a non-empty list of non-empty phrases")

    @property
    def columns(self) -> tuple[str, ...]:
        return (self.name,)

    def score(self, generations: pd.DataFrame) -> dict[str, np.ndarray]:
        phrases = [_normalise(p) for p in self.phrases]
        hits = [any(p in _normalise(text) for p in phrases) for text in _completions(generations)]
        return {self.name: np.asarray(hits, float)}


@dataclass(frozen=True)
class WordRateScorer:
    """``<name>_rate``: the share of the completion's words in ``vocabulary`` (0 for no words);
    ``<name>_any``: 1.0 if any occurs. Whole words only: "wed" does not match "Wednesday"."""

    name: str
    vocabulary: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.vocabulary or any(words(w) != [w.lower()] for w in self.vocabulary):
            raise ValueError(
                f"scorer {self.name!r}: the vocabulary must be single lower-case words, got {self.vocabulary}"
            )

    @property
    def columns(self) -> tuple[str, ...]:
        return (f"{self.name}_rate", f"{self.name}_any")

    def score(self, generations: pd.DataFrame) -> dict[str, np.ndarray]:
        vocabulary = set(self.vocabulary)
        counts = [(sum(w in vocabulary for w in ws), len(ws)) for ws in map(words, _completions(generations))]
        return {
            f"{self.name}_rate": np.asarray([hit / total if total else 0.0 for hit, total in counts]),
            f"{self.name}_any": np.asarray([float(hit > 0) for hit, _ in counts]),
        }


class SentimentScorer:
    """VADER sentiment: ``sentiment`` (compound, -1..1) and ``positive`` (compound >= 0.05)."""

    columns = ("sentiment", "positive")
    POSITIVE = 0.05  # VADER's documented threshold for a positive text

    def __init__(self) -> None:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        self._analyzer = SentimentIntensityAnalyzer()

    def score(self, generations: pd.DataFrame) -> dict[str, np.ndarray]:
        compound = np.asarray(
            [self._analyzer.polarity_scores(text)["compound"] for text in _completions(generations)], float
        )
        return {"sentiment": compound, "positive": (compound >= self.POSITIVE).astype(float)}


@dataclass(frozen=True)
class DegeneracyScorer:
    """``repeated_ngrams``: ``repeated_ngram_rate(completion, n)``; ``degenerate``: 1.0 if the completion
    has no word or at least ``limit`` of its n-grams repeat (a loop), else 0.0."""

    n: int = 3
    limit: float = 0.5

    columns = ("repeated_ngrams", "degenerate")

    def score(self, generations: pd.DataFrame) -> dict[str, np.ndarray]:
        texts = _completions(generations)
        rates = np.asarray([repeated_ngram_rate(text, self.n) for text in texts])
        empty = np.asarray([not words(text) for text in texts])
        return {"repeated_ngrams": rates, "degenerate": ((rates >= self.limit) | empty).astype(float)}


class FluencyScorer:
    """``completion_nll``: mean NLL (nats/token) of the generated tokens under the unsteered model.

    Each row is scored as ``format_prompt(prompt) + completion_ids`` (the tokens that were generated,
    end-of-sequence included, not a re-tokenisation of the text), so the number is the unsteered
    model's surprise at exactly what the steered model wrote; ``exp`` of it is the completion's
    perplexity. Each distinct prompt runs once into a KV cache and its completions continue copies of
    it (``caa_lens.prefix.encode_token_prefixes``); a row with no generated token is refused.

    Args:
        model: the TransformerBridge that generated (run here without any steering).
        system: the system prompt the generations used (``None``: the template's default).
    """

    columns = ("completion_nll",)

    def __init__(self, model: "TransformerBridge", system: str | None = None, batch_size: int = 16) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model, self.system, self.batch_size = model, system, batch_size

    def _rows(self, generations: pd.DataFrame) -> tuple[list[tuple[int, ...]], list[tuple[int, list[int]]]]:
        """The distinct formatted prompts, and per row (its prompt's index, its generated tokens)."""
        if "completion_ids" not in generations.columns or "prompt" not in generations.columns:
            raise ValueError("fluency needs the 'prompt' and 'completion_ids' columns of steered_generations")
        tokenizer, prompts, rows = self.model.tokenizer, {}, []
        pairs = zip(generations["prompt"], generations["completion_ids"], strict=True)
        for index, (prompt, ids) in enumerate(pairs):
            ids = [int(i) for i in ids]
            if not ids:
                raise ValueError(f"generation row {index} has no generated token to score")
            if prompt not in prompts:
                prompts[prompt] = format_prompt(tokenizer, str(prompt), system=self.system).token_ids
            check_fits(self.model, len(prompts[prompt]) + len(ids), f"generation row {index}")
            rows.append((list(prompts).index(prompt), ids))
        return list(prompts.values()), rows

    def score(self, generations: pd.DataFrame) -> dict[str, np.ndarray]:
        from caa_lens.prefix import encode_token_prefixes, suffix_logits

        prompts, rows = self._rows(generations)
        out = np.empty(len(rows))
        # Each distinct prompt runs once into the KV cache (all but its last token, whose logits predict
        # the first generated token); every completion of it is a suffix row on a copy of that cache.
        per_prompt = max(1, self.batch_size // 2)
        for begin in range(0, len(prompts), per_prompt):
            chosen = range(begin, min(begin + per_prompt, len(prompts)))
            members = [[r for r, (p, _) in enumerate(rows) if p == q] for q in chosen]
            suffixes = [
                [(prompts[q][-1], *rows[r][1]) for r in group]
                for q, group in zip(chosen, members, strict=True)
            ]
            batch = encode_token_prefixes(self.model, [prompts[q][:-1] for q in chosen], suffixes)
            order = [r for group in members for r in group]  # the batch's suffix rows, in order
            for start in range(0, len(order), self.batch_size):
                picked = list(range(start, min(start + self.batch_size, len(order))))
                logits = suffix_logits(self.model, batch, picked)
                for at, k in enumerate(picked):
                    completion = rows[order[k]][1]
                    # Suffix position t predicts token t + 1; only the scored positions are normalised.
                    logprobs = logits[at, : len(completion)].double().log_softmax(dim=-1)
                    target = torch.tensor(completion, device=logprobs.device)
                    out[order[k]] = -float(logprobs.gather(-1, target[:, None]).mean())
        return {"completion_nll": out}


class JudgeScorer:
    """``judge_behaviour`` and ``judge_coherence`` (0-10) from a ``ModelJudgeScorer``; see its limits."""

    columns = ("judge_behaviour", "judge_coherence")

    def __init__(self, judge: "ModelJudgeScorer") -> None:
        self.judge = judge

    def score(self, generations: pd.DataFrame) -> dict[str, np.ndarray]:
        rated = self.judge.score_many([str(p) for p in generations["prompt"]], _completions(generations))
        return {
            "judge_behaviour": np.asarray([r.behaviour for r in rated]),
            "judge_coherence": np.asarray([r.coherence for r in rated]),
        }


def score_generations(generations: pd.DataFrame, scorers: Sequence[TextScorer]) -> pd.DataFrame:
    """``generations`` with every scorer's columns added (a copy). Two scorers may not share a column.

    >>> table = pd.DataFrame({"prompt": ["Hi"], "completion": ["the the the the the"]})
    >>> score_generations(table, [DegeneracyScorer()])["degenerate"].tolist()
    [1.0]
    """
    added: Mapping[str, np.ndarray] = {}
    for scorer in scorers:
        scores = scorer.score(generations)
        clash = sorted(set(scores) & (set(added) | set(generations.columns)))
        if clash:
            raise ValueError(f"{type(scorer).__name__} would overwrite the columns {clash}")
        for column, values in scores.items():
            if len(values) != len(generations):
                raise ValueError(
                    f"{type(scorer).__name__} gave {len(values)} {column!r} scores for {len(generations)} rows"
                )
        added = {**added, **scores}
    return generations.assign(**added)


# The scorers the command line can name (``caa-lens generate --score``); fluency needs the model.
SCORER_NAMES: tuple[str, ...] = (
    "refusal",
    "sentiment",
    "wedding",
    "casual",
    "agreement",
    "disagreement",
    "degeneracy",
    "fluency",
)


def check_scorer_names(text: str) -> tuple[str, ...]:
    """Comma-separated scorer names, checked against ``SCORER_NAMES`` (repeats dropped, order kept).

    >>> check_scorer_names("refusal, fluency,refusal")
    ('refusal', 'fluency')
    """
    names = tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    unknown = [name for name in names if name not in SCORER_NAMES]
    if not names or unknown:
        raise ValueError(f"unknown scorer(s) {unknown or [text]}: expected some of {', '.join(SCORER_NAMES)}")
    return names


def named_scorers(
    names: Sequence[str], model: "TransformerBridge | None" = None, system: str | None = None
) -> list[TextScorer]:
    """The scorers ``check_scorer_names`` accepts, built; ``fluency`` needs the (unsteered) ``model``."""
    built: dict[str, TextScorer] = {}
    for name in check_scorer_names(",".join(names)):
        if name == "refusal":
            built[name] = PhraseScorer("refusal", REFUSAL_PHRASES)
        elif name == "sentiment":
            built[name] = SentimentScorer()
        elif name == "wedding":
            built[name] = WordRateScorer("wedding", WEDDING_WORDS)
        elif name == "casual":
            built[name] = WordRateScorer("casual", CASUAL_WORDS)
        elif name == "agreement":
            built[name] = PhraseScorer("agreement", AGREEMENT_PHRASES)
        elif name == "disagreement":
            built[name] = PhraseScorer("disagreement", DISAGREEMENT_PHRASES)
        elif name == "degeneracy":
            built[name] = DegeneracyScorer()
        else:
            if model is None:
                raise ValueError("the fluency scorer needs the model whose NLL it reports")
            built[name] = FluencyScorer(model, system)
    return list(built.values())
