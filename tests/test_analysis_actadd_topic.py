"""analysis.actadd_topic on the tiny model: the quick form runs end to end and saves; the random controls
run at the best cell only when asked; a planted topic word is recovered, a planted other word is not
counted."""

import pandas as pd
from helpers.actadd import (
    check_saved,
    equal_prompts,
    no_shared_env,  # noqa: F401  (autouse: the bundled fallbacks, no shared data)
    planted,
)

from analysis.actadd_topic import TopicConfig, weddings_topic


def test_topic_quick_end_to_end(tiny, tmp_path):
    result = weddings_topic(tiny, TopicConfig().quick())
    effects = result.effects
    assert set(effects.metric) == {"wedding_any", "wedding_rate", "completion_nll", "degenerate"}
    assert set(effects.layer) == {0, 1} and set(effects.multiplier) == {4.0, 16.0}
    assert (effects.n_prompts == 4).all() and (effects.null_scope == "every cell").all()
    assert effects.n_null.eq(2).all() and effects.best.sum() == 4  # one cell, four metrics
    assert result.info["n_prompts"] == 4 and result.info["window"] == result.prompts.window.iloc[0]
    check_saved(result, tmp_path, "weddings", ("effects", "generations", "prompts", "vector_norms"))


def test_controls_at_the_best_cell_only(tiny):
    config = TopicConfig().quick()
    result = weddings_topic(tiny, TopicConfig(**{**config.__dict__, "controls_at": "cell"}))
    effects = result.effects
    nulled = effects[effects.null_scope == "best cell"]
    assert set(zip(nulled.layer, nulled.multiplier, strict=True)) == {
        (result.best_layer, result.best_coefficient)
    }
    rest = effects[effects.null_scope == "none"]
    assert len(rest) == len(effects) - 4 and (rest.vs_null == "no null").all()
    assert result.generations.vector.str.startswith("random:").any()


def topic_planted(tiny, token: str) -> pd.Series:
    prompts, reach = equal_prompts(tiny)
    config = TopicConfig(
        layers=(3,),
        coefficients=(50.0,),
        words=("answer",),
        topic="answer",
        controls=3,
        controls_at="all",
        max_new_tokens=1,
        window="prompt",
        n_resamples=1000,
    )
    result = weddings_topic(tiny, config, prompts=prompts, vector=planted(tiny, token, reach))
    return result.cell("answer_any")


def test_planted_topic_word_is_recovered(tiny):
    # A window ending on the last prompt token, along the unembedding of " answer": every first token
    # becomes " answer"; random vectors of the same norms do not write it.
    cell = topic_planted(tiny, " answer")
    assert cell.unsteered < 0.5 and cell.steered == 1.0
    assert cell.effect_low > 0.4 and cell.vs_null == "above null"


def test_planted_other_word_is_not_counted(tiny):
    cell = topic_planted(tiny, " question")
    assert cell.steered == 0.0 and cell.vs_null != "above null"
