"""analysis.reversal_search: a tiny-budget search is well formed, seeded, and reports fitness that
recomputes; its claim is read on held-out items only, and it is refused on too few items."""

import math
from dataclasses import replace

import pandas as pd
import pytest
import torch
from helpers.analysis_toy import toy_dataset

from analysis._insertion import allowed_tokens, insertion_batch, insertion_index, score_onehots, score_tokens
from analysis.reversal import ReversalConfig, ReversalResult
from analysis.reversal_search import reversal_search
from analysis.store import load_result, save_result
from caa_lens.evaluation import behaviour_probabilities, scoring_prompt
from caa_lens.methods import caa_vector
from caa_lens.steering import Injection, steering

# min_items lowered: the tests search on 3 items (the default refuses fewer than 20).
CONFIG = ReversalConfig(
    n_tokens=3,
    lambdas=(0.0, 0.1),
    children_per_member=3,
    top_k=5,
    iterations=2,
    progress=False,
    min_items=2,
    n_resamples=500,
)


@pytest.fixture(scope="module")
def setup(tiny):
    data = toy_dataset(8)
    vector = caa_vector(tiny, data, progress=False).scaled(80.0)
    return vector, data.select(range(3)), data.select(range(3, 6))


@pytest.fixture(scope="module")
def result(tiny, setup):
    vector, items, heldout = setup
    return reversal_search(tiny, vector, 2, 2.0, items, heldout, CONFIG)


def reference_scores(model, vector, layer, multiplier, items, token_ids, placement="suffix"):
    """Full forward passes, batch 1, no cache: steered p(matching) and unsteered cross-entropy."""
    ps, ces = [], []
    for item in items:
        prompt = scoring_prompt(model.tokenizer, item)
        cut = insertion_index(model.tokenizer, prompt, item.question, placement)
        ids = list(prompt.prompt.token_ids[:cut]) + list(token_ids) + list(prompt.prompt.token_ids[cut:])
        start = prompt.prompt.steer_start + len(token_ids)
        with torch.no_grad(), steering(model, Injection(vector, layer, multiplier), start=start):
            logits = model(torch.tensor([ids]))[0]
        with torch.no_grad():
            plain = model(torch.tensor([ids]))[0].log_softmax(-1)
        probs = logits[-1].softmax(-1)[list(prompt.label_token_ids)]
        ps.append(float(probs[prompt.matching] / probs.sum()))
        targets = torch.tensor(ids[cut : cut + len(token_ids)])
        ces.append(float(-plain[cut - 1 : cut - 1 + len(token_ids)].gather(1, targets[:, None]).mean()))
    return sum(ps) / len(ps), sum(ces) / len(ces)


def test_result_is_well_formed(result):
    assert result.iterations == 2 and result.stopped_by == "iterations"
    assert len(result.history) == 2 * 2 and set(result.history["lambda"]) == {0.0, 0.1}
    assert len(result.best) == 3 and math.isnan(result.best["lambda"].iloc[-1])
    assert all(len(ids) == 3 for ids in result.best.token_ids)
    assert result.n_evaluated >= 2 and result.direction in (1.0, -1.0)
    assert result.best.text.map(lambda t: isinstance(t, str)).all()
    assert not math.isnan(result.heldout_steered) and result.best.heldout_reversal.notna().all()
    # The top-reversal row really has the highest reversal of everything on the Pareto front.
    assert result.best.reversal.iloc[-1] == pytest.approx(result.pareto.reversal.max())
    assert (result.history.best_reversal.diff().dropna() >= 0).all()
    assert isinstance(result.reversed, bool) and isinstance(result.verdict, str)
    # The claim is about the top in-sample candidate, measured on both splits.
    assert result.chosen_token_ids == tuple(result.best.token_ids.iloc[-1])
    assert result.chosen_text == result.best.text.iloc[-1]
    assert (result.n_search, result.n_heldout) == (3, 3)
    assert len(result.effects) == 8 and set(result.effects.split) == {"search", "heldout"}
    assert (result.effects.low <= result.effects["mean"]).all()
    assert (result.effects["mean"] <= result.effects.high).all()
    assert result.effect("reversal").n == 3 and result.effect("steering", "search").n == 3
    # In-sample reversal of the chosen insertion is what the search reported for it.
    assert result.effect("reversal", "search").mean == pytest.approx(result.best.reversal.iloc[-1], abs=1e-5)


def test_reported_fitness_equals_recomputation(tiny, setup, result):
    vector, items, heldout = setup
    for _, row in result.best.iterrows():
        p, ce = reference_scores(tiny, vector, 2, 2.0, items, row.token_ids)
        reversal = result.direction * (result.steered - p)
        lam = 0.0 if math.isnan(row["lambda"]) else row["lambda"]
        assert row.p_steered == pytest.approx(p, abs=1e-5)
        assert row.cross_entropy == pytest.approx(ce, rel=1e-4)
        assert row.fitness == pytest.approx(reversal - lam * ce, abs=1e-4)
        held_p, _ = reference_scores(tiny, vector, 2, 2.0, heldout, row.token_ids)
        assert row.heldout_p_steered == pytest.approx(held_p, abs=1e-5)
        plain_p, _ = reference_scores(tiny, vector, 2, 0.0, items, row.token_ids)
        assert row.p_unsteered == pytest.approx(plain_p, abs=1e-5)
        held_plain, _ = reference_scores(tiny, vector, 2, 0.0, heldout, row.token_ids)
        assert row.heldout_p_unsteered == pytest.approx(held_plain, abs=1e-5)


def test_heldout_effects_equal_an_independent_per_item_computation(tiny, setup, result):
    """The held-out numbers from full forward passes, one item at a time, with and without steering."""
    vector, _, heldout = setup
    ids = result.chosen_token_ids
    plain = behaviour_probabilities(tiny, heldout, progress=False).mean_p_matching
    steered = behaviour_probabilities(
        tiny, heldout, Injection(vector, 2, 2.0), progress=False
    ).mean_p_matching
    inserted, _ = reference_scores(tiny, vector, 2, 2.0, heldout, ids)
    inserted_plain, _ = reference_scores(tiny, vector, 2, 0.0, heldout, ids)
    d = result.direction
    expected = {
        "steering": d * (steered - plain),
        "reversal": d * (steered - inserted),
        "insertion_alone": d * (plain - inserted_plain),
        "specific_reversal": d * (steered - inserted) - d * (plain - inserted_plain),
    }
    for quantity, value in expected.items():
        effect = result.effect(quantity)
        assert effect.mean == pytest.approx(value, abs=1e-5), quantity
        assert effect.low <= effect.mean <= effect.high
    assert (result.heldout_unsteered, result.heldout_steered) == pytest.approx((plain, steered), abs=1e-6)
    top = result.best.iloc[-1]
    assert top.heldout_reversal == pytest.approx(expected["reversal"], abs=1e-5)
    assert top.heldout_reversal_low <= top.heldout_reversal <= top.heldout_reversal_high


def test_search_is_seeded(tiny, setup, result):
    vector, items, heldout = setup
    again = reversal_search(tiny, vector, 2, 2.0, items, heldout, CONFIG)
    assert list(again.best.token_ids) == list(result.best.token_ids)


def test_time_budget_stops_the_search(tiny, setup):
    vector, items, _ = setup
    config = replace(CONFIG, n_tokens=2, lambdas=(0.0,), iterations=50, time_budget_s=0.0)
    stopped = reversal_search(tiny, vector, 2, 2.0, items, None, config)
    assert stopped.stopped_by == "time" and stopped.iterations == 0 and stopped.history.empty
    assert len(stopped.best) == 2 and math.isnan(stopped.heldout_steered)
    # Without held-out items nothing is claimed, whatever the search items say.
    assert set(stopped.effects.split) == {"search"} and stopped.n_heldout == 0
    assert not stopped.reversed and stopped.verdict.startswith("not established: no held-out")


def test_too_few_items_are_refused(tiny, setup):
    vector, items, heldout = setup
    default = replace(CONFIG, min_items=ReversalConfig().min_items)
    assert default.min_items == 20
    with pytest.raises(ValueError, match=r"at least 20 search items, got 3.*min_items"):
        reversal_search(tiny, vector, 2, 2.0, items, heldout, default)
    with pytest.raises(ValueError, match="at least 3 held-out items, got 2"):
        reversal_search(tiny, vector, 2, 2.0, items, heldout.select(range(2)), replace(CONFIG, min_items=3))
    leaky = replace(heldout, items=(heldout.items[0], items.items[1]))
    with pytest.raises(ValueError, match=r"held-out items \[1\] are also search items"):
        reversal_search(tiny, vector, 2, 2.0, items, leaky, CONFIG)


def test_null_steering_is_never_reversed(tiny, setup):
    """A zero vector: the insertion still moves the items, but that is all insertion, no reversal."""
    vector, items, heldout = setup
    config = replace(CONFIG, iterations=1, lambdas=(0.0,))
    result = reversal_search(tiny, vector.scaled(0.0), 2, 2.0, items, heldout, config)
    steering = result.effect("steering")
    assert steering.mean == 0 and not steering.excludes_zero
    assert result.effect("reversal").mean == pytest.approx(result.effect("insertion_alone").mean, abs=1e-5)
    assert result.effect("specific_reversal").mean == pytest.approx(0.0, abs=1e-5)
    assert not result.reversed and "nothing to reverse" in result.verdict


def test_result_round_trips_through_the_store(result, tmp_path):
    save_result(result, tmp_path, "reversal")
    loaded = load_result(tmp_path, "reversal")
    assert type(loaded) is ReversalResult and loaded.config == result.config
    assert loaded.chosen_token_ids == result.chosen_token_ids and loaded.chosen_text == result.chosen_text
    assert (loaded.n_search, loaded.n_heldout) == (result.n_search, result.n_heldout)
    assert (loaded.reversed, loaded.verdict) == (result.reversed, result.verdict)
    pd.testing.assert_frame_equal(loaded.effects, result.effects)


@pytest.mark.parametrize("placement", ["prefix", "suffix"])
def test_onehot_path_equals_token_path(tiny, setup, placement):
    vector, items, _ = setup
    batch = insertion_batch(tiny, items, placement)
    candidates = torch.tensor([[40, 50, 60], [70, 80, 90]])
    tokens = score_tokens(tiny, batch, candidates, vector, 2, 2.0)
    with torch.no_grad():
        onehots = torch.nn.functional.one_hot(candidates, len(tiny.tokenizer)).float()
        relaxed = score_onehots(tiny, batch, onehots, vector, 2, 2.0)
    assert torch.allclose(tokens.p_matching, relaxed.p_matching.cpu(), atol=1e-5)
    assert torch.allclose(tokens.cross_entropy, relaxed.cross_entropy.cpu(), atol=1e-4)
    p, ce = reference_scores(tiny, vector, 2, 2.0, items, [70, 80, 90], placement)
    assert tokens.p_matching[1].mean().item() == pytest.approx(p, abs=1e-5)
    assert tokens.cross_entropy[1].mean().item() == pytest.approx(ce, rel=1e-4)


def test_gradient_reaches_the_onehots(tiny, setup):
    vector, items, _ = setup
    batch = insertion_batch(tiny, items)
    onehots = torch.nn.functional.one_hot(torch.tensor([[40, 50, 60]]), len(tiny.tokenizer)).float()
    onehots.requires_grad_(True)
    score_onehots(tiny, batch, onehots, vector, 2, 2.0).p_matching.sum().backward()
    assert onehots.grad is not None and onehots.grad.abs().sum() > 0


def test_allowed_tokens_exclude_specials(tiny):
    allowed = allowed_tokens(tiny.tokenizer, len(tiny.tokenizer))
    assert not allowed[tiny.tokenizer.all_special_ids].any()
    assert allowed.sum() > 100
