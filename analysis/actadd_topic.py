"""ActAdd's topic experiment (Turner et al. 2023, arXiv 2308.10248) on any model: the "weddings" ActAdd
vector injected in mode ``"front"`` over layers x coefficients on neutral prompts; the share of
completions with a wedding word, the wedding-word rate, and the fluency cost (the completion's NLL under
the unsteered model). How effects are paired and nulled: ``analysis.actadd_generation``.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import caa_lens as cl
from analysis.actadd_data import topic_prompts
from analysis.actadd_generation import (
    GenerationConfig,
    GenerationExperiment,
    SizedForms,
    run_generation_experiment,
)
from caa_lens.lexicons import WEDDING_WORDS
from caa_lens.ood import OODPrompt
from caa_lens.scorers import WordRateScorer

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

__all__ = ["TopicConfig", "TopicResult", "weddings_topic"]


@dataclass(frozen=True)
class TopicConfig(GenerationConfig):
    """The topic experiment: ``pair`` injected over ``layers`` (default: 2, 4, 6, 8, 10 of 30, scaled
    to the model's depth) x ``coefficients``; ``words`` are the topic words counted in completions.

    The coefficients are smaller than GPT-2-XL's c = 4-8: on the default model the vector's last two
    rows (the positions where ActAdd pads the shorter prompt with spaces) are several residual norms
    long at c = 1 (the saved ``vector_norms`` table)."""

    pair: str = "weddings"
    topic: str = "wedding"
    words: tuple[str, ...] = WEDDING_WORDS

    # quick: layers 2 and 6 (of 30); short: 2 and 4 x c = 1, 2 (the full run's best cell: layer 2, c = 2).
    forms: ClassVar[SizedForms] = SizedForms((2, 6), (2, 4), (1.0, 2.0))


class TopicResult(GenerationExperiment):
    """``weddings_topic``'s result (metrics ``<topic>_any``, ``<topic>_rate``, completion_nll, degenerate)."""


def weddings_topic(
    model: "TransformerBridge",
    config: TopicConfig = TopicConfig(),
    prompts: Sequence[OODPrompt] | None = None,
    vector: cl.SteeringVector | None = None,
    progress: bool = False,
) -> TopicResult:
    """ActAdd's topic experiment: how often completions mention the topic under the pair's vector.

    Args:
        config: the grid and sizes (``TopicConfig``; ``.quick()`` for a smoke run).
        prompts: default ``topic_prompts()`` (24 neutral prompts).
        vector: a steering vector to use instead of ``actadd_vector(model, pair)`` (a planted one in
            tests); it needs directions at the chosen layers.

    The unsteered completions are generated once and paired with every cell. Metrics:
    ``<topic>_any`` (the share of completions with a topic word: the paper's measure, and the one the
    best cell is picked on), ``<topic>_rate`` (topic words per word), ``completion_nll`` (fluency
    cost: nats per token under the unsteered model) and ``degenerate`` (share of looping completions).
    """
    topic = WordRateScorer(config.topic, tuple(config.words))
    items = topic_prompts() if prompts is None else tuple(prompts)
    source = "analysis/data/actadd_prompts.json" if prompts is None else "given prompts"
    return run_generation_experiment(
        TopicResult,
        "weddings",
        model,
        items,
        source,
        vector,
        config,
        config.pair,
        topic,
        topic.columns[::-1],
        f"{config.topic}_any",
        progress,
    )
