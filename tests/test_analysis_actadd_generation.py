"""analysis.actadd_generation: the shared quick and short forms give each experiment its own layers and
coefficients and the same sizes otherwise; the config refuses bad grids."""

import pytest

from analysis.actadd_generation import GenerationConfig
from analysis.actadd_sentiment import SentimentConfig
from analysis.actadd_topic import TopicConfig


def sizes(config: GenerationConfig) -> tuple:
    return (
        config.n_prompts,
        config.reference_layers,
        config.coefficients,
        config.controls,
        config.controls_at,
        config.max_new_tokens,
        config.n_resamples,
    )


def test_quick_and_short_forms():
    assert sizes(TopicConfig().quick()) == (4, (2, 6), (4.0, 16.0), 2, "all", 8, 500)
    assert sizes(SentimentConfig().quick()) == (4, (4,), (4.0, 16.0), 2, "all", 8, 500)
    assert sizes(TopicConfig().short()) == (12, (2, 4), (1.0, 2.0), 2, "cell", 24, 4000)
    assert sizes(SentimentConfig().short()) == (12, (4,), (2.0, 8.0), 2, "cell", 24, 4000)
    assert type(TopicConfig().quick()) is TopicConfig and type(SentimentConfig().short()) is SentimentConfig
    # The rest of the config is kept.
    assert TopicConfig(pair="other", seed=3).short().pair == "other"
    assert TopicConfig(seed=3).quick().seed == 3


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"coefficients": (0.0,)}, "at least one non-zero coefficient"),
        ({"coefficients": (1.0, 1.0)}, "coefficients repeat"),
        ({"layers": ()}, "layers must be a non-empty list"),
        ({"controls": -1}, "controls and control_seed must be >= 0"),
        ({"n_prompts": 0}, "n_prompts must be >= 1"),
    ],
)
def test_config_refuses_bad_grids(changes, message):
    with pytest.raises(ValueError, match=message):
        TopicConfig(**changes)
