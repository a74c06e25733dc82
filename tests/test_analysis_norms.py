"""analysis.norms: region norms against an independent residual read."""

import matplotlib

matplotlib.use("Agg")

import pytest
import torch
from helpers.analysis_toy import toy_dataset

from analysis.norms import (
    REGIONS,
    norm_profile,
)
from caa_lens.evaluation import scoring_prompts
from caa_lens.extraction import pair_prompts
from caa_lens.methods import caa_vector
from caa_lens.residuals import residual_stack


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
