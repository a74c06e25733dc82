"""ActAdd's experiments as a job that writes its results: the three in short form, each saved with its
figure into one ActAdd output directory (the main job runs this into a subdirectory of its results).
"""

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from analysis.actadd_perplexity import RelatedTextConfig, RelatedTextResult, related_text_perplexity
from analysis.actadd_sentiment import SentimentConfig, SentimentResult, sentiment_shift
from analysis.actadd_store import claim_actadd_dir, save_actadd
from analysis.actadd_topic import TopicConfig, TopicResult, weddings_topic

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

__all__ = ["ActAddShort", "run_actadd_short"]


@dataclass(frozen=True, eq=False)
class ActAddShort:
    """The three experiments in short form, as the main job runs them."""

    topic: TopicResult
    perplexity: RelatedTextResult
    sentiment: SentimentResult
    paths: tuple[Path, ...]


def run_actadd_short(
    model: "TransformerBridge", out: str | Path, shared_data: str | Path | None = None, quick: bool = False
) -> ActAddShort:
    """All three experiments in short form (``quick``: the smoke sizes for the tiny model), each saved
    with its figure into ``out`` (an ActAdd output directory; give the main job a subdirectory of its
    results, e.g. ``results/actadd``). Took 155 s on the default model on two busy CPU cores."""
    from analysis.plots import save_actadd_figure

    out = claim_actadd_dir(out)
    size = "quick" if quick else "short"
    topic_config: TopicConfig = getattr(TopicConfig(), size)()
    text_config: RelatedTextConfig = getattr(RelatedTextConfig(), size)()
    sentiment_config: SentimentConfig = getattr(SentimentConfig(), size)()
    topic = weddings_topic(model, topic_config)
    perplexity = related_text_perplexity(model, text_config, shared_data=shared_data)
    sentiment = sentiment_shift(model, sentiment_config, shared_data=shared_data)
    paths: list[Path] = []
    for result in (topic, perplexity, sentiment):
        paths += save_actadd(result, out)
        paths.append(save_actadd_figure(result, out))
    return ActAddShort(topic, perplexity, sentiment, tuple(paths))
