"""ActAdd's sentiment experiment (Turner et al. 2023, arXiv 2308.10248) on any model: the "Love" - "Hate"
vector on negative sentences as the user's text; VADER's positive rate and mean compound score of the
completions. How effects are paired and nulled: ``analysis.actadd_generation``.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import caa_lens as cl
from analysis.actadd_data import negative_sentences
from analysis.actadd_generation import (
    GenerationConfig,
    GenerationExperiment,
    SizedForms,
    run_generation_experiment,
)
from caa_lens.ood import OODPrompt
from caa_lens.scorers import SentimentScorer

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

__all__ = ["SentimentConfig", "SentimentResult", "sentiment_shift"]


@dataclass(frozen=True)
class SentimentConfig(GenerationConfig):
    """The sentiment experiment: ``pair`` ("Love" - "Hate") on the first ``n_prompts`` negative
    sentences at ``layers`` (default: 2 and 4 of 30, scaled: ActAdd's depth and half of it)."""

    pair: str = "love-hate"
    n_prompts: int | None = 40
    reference_layers: tuple[int, ...] = (2, 4)  # ActAdd's depth (6 of 48 -> 4 of 30) and half of it
    coefficients: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0)
    # quick and short: ActAdd's depth only (4 of 30); short at c = 2, 8.
    forms: ClassVar[SizedForms] = SizedForms((4,), (4,), (2.0, 8.0))


class SentimentResult(GenerationExperiment):
    """``sentiment_shift``'s result (metrics positive, sentiment, completion_nll, degenerate)."""


def sentiment_shift(
    model: "TransformerBridge",
    config: SentimentConfig = SentimentConfig(),
    sentences: Sequence[str] | None = None,
    shared_data: str | Path | None = None,
    vector: cl.SteeringVector | None = None,
    progress: bool = False,
) -> SentimentResult:
    """ActAdd's sentiment experiment: negative sentences as the user's text, steered with "Love" - "Hate".

    Metrics: ``positive`` (VADER compound >= 0.05; the best cell is picked on it), ``sentiment`` (mean
    compound), ``completion_nll`` and ``degenerate``. ``sentences`` default: ``negative_sentences``
    (SST-2 dev negatives from the shared data, else the bundled stand-ins).
    """
    if sentences is None:
        chosen, source = negative_sentences(shared_data, config.n_prompts or 40)
    else:
        chosen, source = tuple(sentences), "given sentences"
    items = [OODPrompt(f"s{i:03d}", s, "negative") for i, s in enumerate(chosen)]
    return run_generation_experiment(
        SentimentResult,
        "sentiment",
        model,
        items,
        source,
        vector,
        config,
        config.pair,
        SentimentScorer(),
        ["positive", "sentiment"],
        "positive",
        progress,
    )
