"""analysis.transfer: layer transfer on the tiny model as paired effects with intervals and a
random-vector null, checked against full-forward scoring."""

import pandas as pd
import pytest
import torch
from helpers.analysis_toy import QUESTIONS, toy_dataset

from analysis.store import load_result, save_result
from analysis.transfer import LayerTransfer, layer_transfer, rehomed
from caa_lens.data import ContrastiveDataset, make_item
from caa_lens.evaluation import behaviour_probabilities, scoring_prompt
from caa_lens.methods import caa_vector
from caa_lens.provenance import make_provenance
from caa_lens.stats import paired_effect, random_like
from caa_lens.steering import Injection
from caa_lens.vectors import SteeringVector


def vector_of(model, directions: torch.Tensor, layers=None) -> SteeringVector:
    provenance = make_provenance(model, "resid_post", "answer", "test", "test", "0", 1, torch.float32)
    return SteeringVector(directions, tuple(layers or range(directions.shape[0])), provenance)


def test_rehomed_moves_direction_between_layers(tiny):
    v = vector_of(tiny, torch.randn(4, tiny.cfg.d_model))
    moved = rehomed(v, 1, 3)
    assert moved.layers == (3,)
    assert torch.equal(moved.at(3), v.at(1))


def test_layer_transfer_matches_direct_scoring(tiny):
    data = toy_dataset(6)
    vector = caa_vector(tiny, data, progress=False).scaled(50.0)
    result = layer_transfer(
        tiny, vector, data, read_layers=[1, 2], apply_layers=[0, 2, 3], multiplier=2.0, n_resamples=200
    )
    assert result.effect.shape == (2, 3)
    assert torch.allclose(result.effect, result.plus - result.minus)
    # The diagonal-like cell "read at 2, applied at 2" is ordinary steering: check it against the
    # full-forward scorer, which shares no code with the prefix-cache path.
    direct = behaviour_probabilities(tiny, data, Injection(vector, 2, 2.0), progress=False).mean_p_matching
    assert result.plus[1, 1].item() == pytest.approx(direct, abs=1e-5)
    moved = rehomed(vector, 1, 3)
    direct = behaviour_probabilities(tiny, data, Injection(moved, 3, -2.0), progress=False).mean_p_matching
    assert result.minus[0, 2].item() == pytest.approx(direct, abs=1e-5)
    unsteered = behaviour_probabilities(tiny, data, progress=False).mean_p_matching
    assert result.baseline == pytest.approx(unsteered, abs=1e-5)
    # The tensors the plots use agree with the table.
    swing = result.table[result.table.side == "swing"].set_index(["read", "apply"])
    assert swing.loc[(2, 2)].effect == pytest.approx(result.effect[1, 1].item(), abs=1e-6)
    assert swing.loc[(1, 3)].effect_low == pytest.approx(result.effect_low[0, 2].item())
    assert swing.loc[(1, 3)].null_high == pytest.approx(result.null_high[0, 2].item())


def test_layer_transfer_zero_multiplier_has_no_effect(tiny):
    data = toy_dataset(4)
    vector = caa_vector(tiny, data, progress=False)
    result = layer_transfer(tiny, vector, data, multiplier=0.0, n_resamples=100)
    assert result.effect.abs().max() == 0
    assert result.table.effect.abs().max() < 1e-6 and not (result.table.effect_low > 0).any()
    assert not (result.table.effect_high < 0).any()


def all_a_dataset(n: int) -> ContrastiveDataset:
    """Items whose matching answer is always (A): a push towards the letter A is a behaviour push."""
    text = "{} ({})\n\nChoices:\n (A) yes\n (B) no"
    return ContrastiveDataset(
        "all_a", tuple(make_item(text.format(QUESTIONS[i % 6], i), "(A)", "(B)") for i in range(n))
    )


def planted_vector(model, data: ContrastiveDataset, scale: float) -> SteeringVector:
    """The unembedding direction of A minus B at every layer, with norm ``scale``: a known push."""
    a, b = scoring_prompt(model.tokenizer, data.items[0]).label_token_ids
    unembed = model.original_model.get_output_embeddings().weight.detach()
    direction = (unembed[a] - unembed[b]) / (unembed[a] - unembed[b]).norm() * scale
    provenance = make_provenance(model, "resid_post", "answer", "planted", "all_a", "0", 1, torch.float32)
    return SteeringVector(
        direction.repeat(model.cfg.n_layers, 1), tuple(range(model.cfg.n_layers)), provenance
    )


def per_item(model, data, injection=()) -> torch.Tensor:
    scores = behaviour_probabilities(model, data, injection, progress=False)
    return torch.tensor([s.p_matching for s in scores.items], dtype=torch.float64)


def test_layer_transfer_recovers_a_planted_effect_within_its_interval(tiny):
    data = all_a_dataset(10)
    vector = planted_vector(tiny, data, scale=0.2)
    result = layer_transfer(
        tiny, vector, data, read_layers=[3], apply_layers=[1, 3], multiplier=1.5, n_resamples=1000
    )
    table = result.table.set_index(["read", "apply", "side"])
    assert result.n_items == 10 and len(result.table) == 2 * 3
    # Independent per-item computation: full forward passes, with and without the push.
    base = per_item(tiny, data)
    for apply_layer in (1, 3):
        moved = rehomed(vector, 3, apply_layer)
        plus, minus = (per_item(tiny, data, Injection(moved, apply_layer, m)) for m in (1.5, -1.5))
        for side, (after, before) in {
            "plus": (plus, base),
            "minus": (minus, base),
            "swing": (plus, minus),
        }.items():
            row = table.loc[(3, apply_layer, side)]
            expected = paired_effect(after, before, n_resamples=1000)  # the same items, paired the same way
            assert row.effect == pytest.approx(expected.mean, abs=1e-5)
            assert row.effect_low == pytest.approx(expected.low, abs=1e-4)
            assert row.effect_high == pytest.approx(expected.high, abs=1e-4)
            assert row.effect_low <= expected.mean <= row.effect_high and row.n == 10
        # The planted push is large and its way: outside zero and outside the random directions' range.
        assert table.loc[(3, apply_layer, "plus")].effect_low > 0.05
        assert table.loc[(3, apply_layer, "minus")].effect_high < -0.05
        assert table.loc[(3, apply_layer, "swing")].vs_null == "above null"
        assert table.loc[(3, apply_layer, "swing")].n_null == 2
    j = result.apply_layers.index(3)
    assert result.effect_low[0, j] <= result.effect[0, j] <= result.effect_high[0, j]
    assert result.null_low[0, j] <= result.null_high[0, j] < result.effect_low[0, j]


@pytest.mark.parametrize("seed", [1, 2])
def test_random_vector_interval_covers_zero_at_small_multipliers(tiny, seed):
    data = toy_dataset(12)
    vector = random_like(caa_vector(tiny, data, progress=False).scaled(50.0), seed)
    for multiplier in (0.1, 0.5):
        result = layer_transfer(tiny, vector, data, [2], [2, 3], multiplier, null_seeds=(), n_resamples=1000)
        assert (result.table.effect_low <= 0).all() and (result.table.effect_high >= 0).all()
        assert (result.table.vs_null == "no null").all() and torch.isnan(result.null_low).all()


def test_layer_transfer_round_trips_through_the_store(tiny, tmp_path):
    data = toy_dataset(4)
    original = layer_transfer(
        tiny, caa_vector(tiny, data, progress=False), data, [1], [1, 2], 2.0, n_resamples=50
    )
    save_result(original, tmp_path, "transfer")
    loaded = load_result(tmp_path, "transfer")
    assert type(loaded) is LayerTransfer and loaded.n_items == 4
    for field in ("plus", "minus", "effect", "effect_low", "effect_high", "null_low", "null_high"):
        torch.testing.assert_close(getattr(loaded, field), getattr(original, field))
    pd.testing.assert_frame_equal(loaded.table, original.table)
