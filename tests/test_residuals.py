"""Residual-stream reads, and steering strength measured against them (residual norms, norm-ratio
multipliers)."""

import math

import pytest
import torch

from caa_lens.hooks import hook_name
from caa_lens.prompts import format_prompt
from caa_lens.provenance import make_provenance
from caa_lens.residuals import multiplier_for_ratio, residual_norm, residual_norms, residual_stack
from caa_lens.vectors import SteeringVector


def make_vector(model) -> SteeringVector:
    """A random steering vector over layers 0-3 with norm about 1 per layer."""
    generator = torch.Generator().manual_seed(0)
    directions = torch.randn(4, model.cfg.d_model, generator=generator) / math.sqrt(model.cfg.d_model)
    provenance = make_provenance(model, "resid_post", "test", "random", "test", "0", 1, torch.float32)
    return SteeringVector(directions, (0, 1, 2, 3), provenance)


def test_residual_norm_matches_a_direct_computation(tiny):
    texts = ["The capital of France is Paris.", "I love the ocean and I hate the rain. Yes."]
    name = hook_name(tiny, 2)
    norms = []
    for text in texts:
        ids = torch.tensor([tiny.tokenizer(text).input_ids])
        with torch.inference_mode():
            _, cache = tiny.run_with_cache(ids, names_filter=[name])
        norms.append(cache[name][0].norm(dim=-1))
    expected_skip = torch.cat([n[1:] for n in norms]).mean().item()
    expected_all = torch.cat(norms).mean().item()
    assert residual_norm(tiny, 2, texts) == pytest.approx(expected_skip, rel=1e-5)
    assert residual_norm(tiny, 2, texts, skip_first=False) == pytest.approx(expected_all, rel=1e-5)
    token_ids = [tiny.tokenizer(text).input_ids for text in texts]
    assert residual_norm(tiny, 2, token_ids) == pytest.approx(expected_skip, rel=1e-5)


def test_multiplier_for_ratio_sets_the_norm(tiny):
    vector = make_vector(tiny)
    for ratio in (0.5, -2.0):
        m = multiplier_for_ratio(vector, 2, ratio, reference_norm=3.0)
        assert (m * vector.at(2)).norm().item() == pytest.approx(abs(ratio) * 3.0, rel=1e-5)
        assert math.copysign(1, m) == math.copysign(1, ratio)
    zero = SteeringVector(torch.zeros_like(vector.directions), vector.layers, vector.provenance)
    with pytest.raises(ValueError, match="the vector is zero"):
        multiplier_for_ratio(zero, 2, 1.0, 3.0)
    with pytest.raises(ValueError, match="must be finite"):
        multiplier_for_ratio(vector, 2, float("nan"), 3.0)


def test_residual_stack_and_norms_match_a_cached_forward_pass(tiny):
    prompt = format_prompt(tiny.tokenizer, "Is it sunny today?")
    stack = residual_stack(tiny, prompt, [1, 3])
    assert stack.shape == (2, len(prompt.token_ids), tiny.cfg.d_model)
    with torch.inference_mode():
        _, cache = tiny.run_with_cache(torch.tensor([prompt.token_ids]))
    for row, layer in zip(stack, (1, 3), strict=True):
        torch.testing.assert_close(row, cache[hook_name(tiny, layer)][0].float())
    norms = residual_norms(tiny, prompt, [1, 3])
    torch.testing.assert_close(norms, stack[:, 1:].norm(dim=-1).mean(dim=-1))
    torch.testing.assert_close(
        residual_norms(tiny, prompt, [1, 3], skip_first=False), stack.norm(dim=-1).mean(dim=-1)
    )
