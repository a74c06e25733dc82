"""analysis.norms: region norms against an independent residual read, and the ratio sweep."""

import math

import pandas as pd
import pytest
import torch
from helpers.analysis_toy import toy_dataset

from analysis.norms import REGIONS, most_efficient_ratio, norm_profile, ratio_tradeoff
from caa_lens.capability import perplexity
from caa_lens.evaluation import behaviour_probabilities, scoring_prompts
from caa_lens.extraction import pair_prompts
from caa_lens.methods import caa_vector
from caa_lens.residuals import residual_stack
from caa_lens.steering import Injection


def test_norm_profile_matches_residual_stack(tiny):
    data = toy_dataset(3)
    vector = caa_vector(tiny, data, layers=[1, 3], progress=False)
    table = norm_profile(tiny, vector, data, batch_size=2).table  # two batches, padded
    assert list(table.layer) == [1, 3]
    sums = {r: torch.zeros(2, dtype=torch.float64) for r in REGIONS}
    counts = dict.fromkeys(REGIONS, 0)
    for item, scored in zip(data, scoring_prompts(tiny.tokenizer, data), strict=True):
        prompt = pair_prompts(tiny.tokenizer, item)[0]
        norms = residual_stack(tiny, prompt, [1, 3]).double().norm(dim=-1)  # [layer, pos], one prompt
        regions = {
            "read": [prompt.answer_position],
            "steered": list(range(prompt.steer_start, len(scored.prompt))),
            "all": list(range(len(prompt))),
            "all_but_first": list(range(1, len(prompt))),
        }
        for region, positions in regions.items():
            sums[region] += norms[:, positions].sum(-1)
            counts[region] += len(positions)
    for region in REGIONS:
        expected = sums[region] / counts[region]
        assert table[f"resid_{region}"].tolist() == pytest.approx(expected.tolist(), rel=1e-5)
        ratio = vector.norms().double() / expected
        assert table[f"ratio_{region}"].tolist() == pytest.approx(ratio.tolist(), rel=1e-5)


def test_most_efficient_ratio():
    table = pd.DataFrame(
        {
            "ratio": [0.1, 0.2, 0.5, 1.0],
            "behaviour_change": [0.01, 0.1, 0.2, -0.1],
            "efficiency": [math.nan, 2.0, 1.0, 5.0],  # 1.0 is efficient but moves the wrong way
        }
    )
    assert most_efficient_ratio(table) == 0.2
    assert math.isnan(most_efficient_ratio(table.iloc[[0, 3]]))


def test_ratio_tradeoff_on_tiny(tiny):
    data = toy_dataset(4)
    vector = caa_vector(tiny, data, layers=[2], progress=False)
    text = "The quick brown fox jumps over the lazy dog. I love the ocean and I hate the rain."
    result = ratio_tradeoff(tiny, vector, 2, data, text, ratios=(0.5, -1.0, 3.0), reference_norm=2.0)
    table = result.table
    assert list(table.ratio) == [0.5, -1.0, 3.0]
    # ||m v|| = ratio * reference_norm, with the sign of the ratio.
    norm = float(vector.at(2).norm())
    assert (table.multiplier * norm).tolist() == pytest.approx([1.0, -2.0, 6.0], rel=1e-5)
    m = float(table.multiplier.iloc[2])
    direct = behaviour_probabilities(tiny, data, Injection(vector, 2, m), progress=False).mean_p_matching
    assert table.p_matching.iloc[2] == pytest.approx(direct, abs=1e-5)
    assert result.baseline_score == pytest.approx(
        behaviour_probabilities(tiny, data, progress=False).mean_p_matching, abs=1e-5
    )
    unsteered = perplexity(tiny, text, context=256, progress=False).perplexity
    assert result.baseline_perplexity == pytest.approx(unsteered, rel=1e-5)
    assert table.perplexity_increase.tolist() == pytest.approx(
        (table.perplexity / unsteered - 1).tolist(), rel=1e-5
    )
    # behaviour change is signed by the ratio's direction
    assert table.behaviour_change.iloc[1] == pytest.approx(
        -(table.p_matching.iloc[1] - result.baseline_score)
    )


def test_ratio_tradeoff_default_reference_is_residual_norm(tiny):
    from caa_lens.steering import residual_norm

    data = toy_dataset(2)
    vector = caa_vector(tiny, data, layers=[1], progress=False)
    result = ratio_tradeoff(tiny, vector, 1, data, "Hello there, how are you today?", ratios=(0.1,))
    expected = residual_norm(tiny, 1, [p.prompt for p in scoring_prompts(tiny.tokenizer, data)])
    assert result.reference_norm == pytest.approx(expected)
