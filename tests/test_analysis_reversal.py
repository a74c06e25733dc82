"""analysis.reversal: a tiny-budget search is well formed, seeded, and reports fitness that recomputes."""

import math

import pytest
import torch
from helpers.analysis_toy import toy_dataset

from analysis._insertion import allowed_tokens, insertion_batch, insertion_index, score_onehots, score_tokens
from analysis.reversal import ReversalConfig, pareto_front, reversal_search
from caa_lens.evaluation import scoring_prompt
from caa_lens.methods import caa_vector
from caa_lens.steering import Injection, steering

CONFIG = ReversalConfig(
    n_tokens=3, lambdas=(0.0, 0.1), children_per_member=3, top_k=5, iterations=2, progress=False
)


@pytest.fixture(scope="module")
def setup(tiny):
    data = toy_dataset(8)
    vector = caa_vector(tiny, data, progress=False).scaled(80.0)
    return vector, data.select(range(3)), data.select(range(3, 5))


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
    assert isinstance(result.reversed, bool)


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


def test_search_is_seeded(tiny, setup, result):
    vector, items, heldout = setup
    again = reversal_search(tiny, vector, 2, 2.0, items, heldout, CONFIG)
    assert list(again.best.token_ids) == list(result.best.token_ids)


def test_time_budget_stops_the_search(tiny, setup):
    vector, items, _ = setup
    config = ReversalConfig(n_tokens=2, lambdas=(0.0,), iterations=50, time_budget_s=0.0, progress=False)
    stopped = reversal_search(tiny, vector, 2, 2.0, items, None, config)
    assert stopped.stopped_by == "time" and stopped.iterations == 0 and stopped.history.empty
    assert len(stopped.best) == 2 and math.isnan(stopped.heldout_steered)


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


def test_pareto_front():
    points = {(1,): (0.5, 3.0), (2,): (0.4, 2.0), (3,): (0.3, 2.5), (4,): (0.1, 1.0)}
    assert pareto_front(points) == [(1,), (2,), (4,)]
