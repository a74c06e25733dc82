"""The behaviour study: picked on selection prompts, reported on held-out ones with a null; a planted
behaviour passes, a random direction of the same norm does not."""

import pytest
import torch

from analysis.behaviour_study import (
    BehaviourSpec,
    StudyConfig,
    behaviour_study,
    headline_table,
    split_prompts,
)
from caa_lens.ood import OODPrompt
from caa_lens.open_ended import GenerationSettings
from caa_lens.provenance import make_provenance
from caa_lens.scorers import SentimentScorer, WordRateScorer
from caa_lens.stats import random_like
from caa_lens.vectors import SteeringVector

PROMPTS = tuple(OODPrompt(f"p{i}", f"Question number {i}: what is {i} plus {i}?", "test") for i in range(15))
SPEC = BehaviourSpec("the-topic", "the_rate", (WordRateScorer("the", ("the",)),), (0.5, 1.0))


def planted_vector(model) -> SteeringVector:
    """Along the unembedding of ' the' at the last block: completions become mostly ' the'."""
    last = model.cfg.n_layers - 1
    (token,) = model.tokenizer.encode(" the", add_special_tokens=False)
    direction = model.W_U[:, token].detach().clone()
    provenance = make_provenance(model, "resid_post", "answer", "test", "test", "0", 1, torch.float32)
    return SteeringVector((40 * direction / direction.norm())[None], (last,), provenance)


def config(model, **changes) -> StudyConfig:
    base = {
        "layers": (model.cfg.n_layers - 1,),
        "controls": 3,
        "fluency_budget": 100.0,
        "settings": GenerationSettings(max_new_tokens=5),
        "n_resamples": 1000,
    }
    return StudyConfig(**(base | changes))


def test_split_is_seeded_disjoint_and_complete():
    split = split_prompts(PROMPTS, 1 / 3, seed=3)
    assert split == split_prompts(PROMPTS, 1 / 3, seed=3)
    assert not set(split.selection) & set(split.report)
    assert sorted(split.selection + split.report) == sorted(p.id for p in PROMPTS)
    assert len(split.selection) == 5
    assert split.digest != split_prompts(PROMPTS, 1 / 3, seed=4).digest


def test_planted_behaviour_passes_and_is_reported_on_held_out_prompts(tiny):
    study = behaviour_study(tiny, planted_vector(tiny), PROMPTS, SPEC, config(tiny))
    assert study.passed
    assert study.n_selection == 5 and study.n_report == 10
    reported = set(study.generations.prompt_id)
    assert reported.isdisjoint(set(split_prompts(PROMPTS, 1 / 3, 0).selection))
    (row,) = headline_table([study]).itertuples()
    assert row.verdict == "passes" and row.effect_low > 0 and row.vs_null == "above null"
    assert row.n_report == 10


def test_a_random_direction_of_the_same_norm_fails(tiny):
    vector = random_like(planted_vector(tiny), seed=7)
    study = behaviour_study(tiny, vector, PROMPTS, SPEC, config(tiny))
    assert not study.passed
    assert headline_table([study]).verdict.tolist() == ["fails"]


def test_the_fluency_budget_constrains_the_pick(tiny):
    study = behaviour_study(tiny, planted_vector(tiny), PROMPTS, SPEC, config(tiny, fluency_budget=-100.0))
    assert "NO cell was within the fluency budget" in study.pick_reason


def test_spec_refuses_a_metric_no_scorer_gives():
    with pytest.raises(ValueError, match="no scorer produces the metric 'refusal'"):
        BehaviourSpec("x", "refusal", (SentimentScorer(),), (1.0,))


def test_config_needs_controls_for_a_null():
    with pytest.raises(ValueError, match="at least 2 controls"):
        StudyConfig(layers=(1,), controls=1)


def test_the_selection_prompts_choose_between_candidate_vectors(tiny):
    candidates = {"random": random_like(planted_vector(tiny), seed=3), "planted": planted_vector(tiny)}
    study = behaviour_study(tiny, candidates, PROMPTS, SPEC, config(tiny))
    assert study.vector == "planted" and study.passed
    assert set(study.selection.vector) == {"random", "planted"}
    assert set(study.generations.vector) == {"planted"} | {f"random:planted:{s}" for s in (1000, 1001, 1002)}
    assert headline_table([study]).vector.tolist() == ["planted"]
