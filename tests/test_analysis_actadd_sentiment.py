"""analysis.actadd_sentiment on the tiny model: the quick form runs end to end and saves; a planted
positive word is recovered."""

from helpers.actadd import (
    check_saved,
    equal_prompts,
    no_shared_env,  # noqa: F401  (autouse: the bundled fallbacks, no shared data)
    planted,
)

from analysis.actadd_sentiment import SentimentConfig, sentiment_shift
from analysis.actadd_setup import actadd_layer


def test_sentiment_quick_end_to_end(tiny, tmp_path):
    result = sentiment_shift(tiny, SentimentConfig().quick())
    assert set(result.effects.metric) == {"positive", "sentiment", "completion_nll", "degenerate"}
    assert result.effects.layer.eq(actadd_layer(4)).all() and "stand-in" in result.info["source"]
    check_saved(result, tmp_path, "sentiment", ("effects", "generations", "prompts", "vector_norms"))


def test_planted_sentiment_is_recovered(tiny):
    prompts, reach = equal_prompts(tiny)
    config = SentimentConfig(
        layers=(3,),
        coefficients=(50.0,),
        controls=3,
        controls_at="all",
        max_new_tokens=1,
        window="prompt",
        n_resamples=1000,
    )
    vector = planted(tiny, " Yes", reach)  # VADER: "Yes" is positive (compound 0.40)
    result = sentiment_shift(tiny, config, sentences=[p.prompt for p in prompts], vector=vector)
    cell = result.cell("positive")
    assert cell.steered == 1.0 and cell.vs_null == "above null"
