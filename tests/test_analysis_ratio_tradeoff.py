"""analysis.ratio_tradeoff: the ratio sweep's paired effects, block-bootstrap perplexity intervals,
steered token losses equal to capability's perplexity, and budgeted selection."""

import math
import re

import matplotlib

matplotlib.use("Agg")

import pandas as pd
import pytest
import torch
from helpers.analysis_toy import toy_dataset

from analysis import plots
from analysis.ratio_tradeoff import (
    most_efficient_ratio,
    nll_increase,
    perplexity_text,
    ratio_tradeoff,
    select_ratio,
    steered_token_losses,
)
from analysis.store import load_result, save_result
from caa_lens.capability import perplexity
from caa_lens.data import neutral_text
from caa_lens.evaluation import behaviour_probabilities, scoring_prompts
from caa_lens.methods import caa_vector
from caa_lens.stats import paired_effect
from caa_lens.steering import Injection


def ratio_table(changes, lows, increases):
    return pd.DataFrame(
        {
            "ratio": [0.05, 0.1, 0.2, 0.5, 1.0][: len(changes)],
            "behaviour_change": changes,
            "behaviour_change_low": lows,
            "behaviour_change_high": [c + 0.05 for c in changes],
            "perplexity_increase": increases,
        }
    )


def test_select_ratio_picks_the_largest_effect_within_the_budget():
    table = ratio_table(
        [0.02, 0.10, 0.25, 0.40, 0.30], [0.0, 0.05, 0.15, 0.30, 0.2], [0.0, 0.02, 0.06, 0.15, 0.5]
    )
    ratio, reason = select_ratio(table, perplexity_budget=0.10)
    assert ratio == 0.2 and "0.2" in reason and "10%" in reason  # 0.5 moves more but costs 15%
    # The choice follows the budget, not a threshold artefact.
    assert select_ratio(table, perplexity_budget=0.20)[0] == 0.5
    assert select_ratio(table, perplexity_budget=0.03)[0] == 0.1
    assert select_ratio(table, perplexity_budget=1.0)[0] == 0.5  # 1.0 costs more and moves less


def test_select_ratio_prefers_an_interval_that_excludes_zero():
    # 0.2 has the larger change but its interval reaches below zero; 0.1's does not.
    table = ratio_table([0.05, 0.08, 0.12], [0.0, 0.02, -0.03], [0.0, 0.01, 0.02])
    assert select_ratio(table, 0.1)[0] == 0.1
    # With no interval excluding zero the largest positive change is still named, with a caveat.
    ratio, reason = select_ratio(ratio_table([0.05, 0.08], [-0.01, -0.02], [0.0, 0.01]), 0.1)
    assert ratio == 0.1 and "indistinguishable from no effect" in reason


def test_select_ratio_says_why_none_qualifies():
    ratio, reason = select_ratio(ratio_table([0.1, 0.2], [0.05, 0.1], [0.3, 0.6]), 0.1)
    assert math.isnan(ratio) and "raise the budget" in reason and "+30.0%" in reason
    ratio, reason = select_ratio(ratio_table([-0.1, 0.0], [-0.2, -0.1], [0.0, 0.01]), 0.1)
    assert math.isnan(ratio) and "moves the behaviour" in reason
    with pytest.raises(ValueError, match="positive fraction"):
        select_ratio(ratio_table([0.1], [0.05], [0.0]), 0.0)


def test_most_efficient_ratio_is_a_deprecated_alias():
    table = ratio_table([0.02, 0.10, 0.25], [0.0, 0.05, 0.15], [0.0, 0.02, 0.06])
    with pytest.warns(DeprecationWarning, match="select_ratio"):
        assert most_efficient_ratio(table) == select_ratio(table)[0] == 0.2


def ar1_noise(n: int, phi: float, generator: torch.Generator, memory: int = 300) -> torch.Tensor:
    """Stationary unit-variance AR(1) noise: x_t = phi x_(t-1) + sqrt(1 - phi^2) e_t, as a filter of
    ``memory`` past shocks (phi^memory is negligible)."""
    shocks = torch.randn(n + memory, generator=generator, dtype=torch.float64)
    kernel = (1 - phi**2) ** 0.5 * phi ** torch.arange(memory - 1, -1, -1, dtype=torch.float64)
    return torch.nn.functional.conv1d(shocks[None, None], kernel[None, None])[0, 0, 1:]


def test_nll_increase_recovers_a_planted_perplexity_effect():
    # Per-token losses whose increase under "steering" is 0.05 nats plus noise that is correlated
    # across neighbouring tokens (as real losses are). The block bootstrap's interval covers the
    # planted value about as often as it claims; resampling single tokens (block 1) is overconfident.
    planted, covered, covered_by_tokens = 0.05, 0, 0
    for seed in range(60):
        generator = torch.Generator().manual_seed(seed)
        base = 3 + torch.rand(2048, generator=generator, dtype=torch.float64)
        steered = base + planted + 0.3 * ar1_noise(2048, 0.9, generator)
        mean, low, high = nll_increase(steered, base, block_tokens=64, n_resamples=300, seed=seed)
        covered += low <= planted <= high
        _, low1, high1 = nll_increase(steered, base, block_tokens=1, n_resamples=300, seed=seed)
        covered_by_tokens += low1 <= planted <= high1
        assert low <= mean <= high
    assert covered >= 48  # 95% nominal (57 of 60); fewer than 48 would mean too-narrow intervals
    assert covered_by_tokens < 40  # token-level resampling ignores the dependence
    # One run, read as a perplexity increase: exp(0.05) - 1 = 5.1% lies in the interval.
    generator = torch.Generator().manual_seed(100)
    base = 3 + torch.rand(4096, generator=generator, dtype=torch.float64)
    mean, low, high = nll_increase(base + planted + 0.3 * ar1_noise(4096, 0.9, generator), base)
    assert math.expm1(low) <= math.expm1(planted) <= math.expm1(high)
    assert nll_increase(base[:50] + 1, base[:50])[0] == pytest.approx(1.0)
    assert all(math.isnan(x) for x in nll_increase(base[:50] + 1, base[:50])[1:])  # one block: no interval


def test_steered_token_losses_match_capability_perplexity(tiny):
    data = toy_dataset(4)
    vector = caa_vector(tiny, data, layers=[2], progress=False)
    text = neutral_text()[:1500]
    multipliers = [0.0, 30.0, -60.0]
    # rows_per_pass=3 mixes multipliers and windows of different lengths in one pass.
    losses = steered_token_losses(
        tiny, vector, 2, multipliers, text, context=128, max_tokens=500, rows_per_pass=3
    )
    assert losses.shape == (3, 500)  # the tiny tokenizer adds a BOS, so every token is scored
    for row, m in zip(losses, multipliers, strict=True):
        reference = perplexity(
            tiny, text, Injection(vector, 2, m, "all"), context=128, max_tokens=500, progress=False
        )
        assert float(row.mean()) == pytest.approx(reference.mean_nll, rel=1e-6)
    assert not torch.equal(losses[0], losses[2])


def test_ratio_tradeoff_on_tiny(tiny, tmp_path):
    data = toy_dataset(4)
    vector = caa_vector(tiny, data, layers=[2], progress=False)
    text = neutral_text()[:1200]
    result = ratio_tradeoff(
        tiny, vector, 2, data, text, ratios=(0.5, -1.0, 3.0), reference_norm=2.0, max_tokens=400, context=128,
        n_resamples=300,
    )  # fmt: skip
    table = result.table
    # Both signs of every ratio, the given ones first.
    assert list(table.ratio) == [0.5, -1.0, 3.0, -0.5, 1.0, -3.0]
    # ||m v|| = ratio * reference_norm, with the sign of the ratio.
    norm = float(vector.at(2).norm())
    assert (table.multiplier * norm).tolist() == pytest.approx([1.0, -2.0, 6.0, -1.0, 2.0, -6.0], rel=1e-5)
    m = float(table.multiplier.iloc[1])
    steered = [
        s.p_matching
        for s in behaviour_probabilities(tiny, data, Injection(vector, 2, m), progress=False).items
    ]
    unsteered = [s.p_matching for s in behaviour_probabilities(tiny, data, progress=False).items]
    assert table.p_matching.iloc[1] == pytest.approx(sum(steered) / 4, abs=1e-5)
    assert result.baseline_score == pytest.approx(sum(unsteered) / 4, abs=1e-5)
    # The behaviour change is paired on the items and signed by the ratio's direction (-1.0 here).
    expected = paired_effect([-p for p in steered], [-p for p in unsteered], n_resamples=300)
    row = table.iloc[1]
    assert (row.behaviour_change, row.behaviour_change_low, row.behaviour_change_high) == pytest.approx(
        (expected.mean, expected.low, expected.high), abs=1e-5
    )
    base = perplexity(tiny, text, context=128, max_tokens=400, progress=False)
    assert result.baseline_perplexity == pytest.approx(base.perplexity, rel=1e-6)
    assert table.perplexity_increase.tolist() == pytest.approx(
        (table.perplexity / base.perplexity - 1).tolist(), rel=1e-6
    )
    assert (table.perplexity_increase_low <= table.perplexity_increase).all()
    assert (table.perplexity_increase <= table.perplexity_increase_high).all()
    assert result.n_tokens == 400 and result.n_items == 4 and result.text_source == "text given by the caller"
    assert result.best_ratio == select_ratio(table, 0.10)[0] or math.isnan(result.best_ratio)
    assert result.selection == select_ratio(table, 0.10)[1]
    save_result(result, tmp_path, "ratio")
    loaded = load_result(tmp_path, "ratio")
    pd.testing.assert_frame_equal(loaded.table, table)
    assert (loaded.selection, loaded.perplexity_budget) == (result.selection, 0.10)
    plots.plot_ratio_tradeoff(loaded, save=tmp_path / "ratio.png")
    assert (tmp_path / "ratio.png").stat().st_size > 1000


def test_ratio_tradeoff_default_reference_is_residual_norm(tiny):
    from caa_lens.residuals import residual_norm

    data = toy_dataset(2)
    vector = caa_vector(tiny, data, layers=[1], progress=False)
    result = ratio_tradeoff(
        tiny, vector, 1, data, "Hello there, how are you today?", ratios=(0.1,), both_signs=False
    )
    expected = residual_norm(tiny, 1, [p.prompt for p in scoring_prompts(tiny.tokenizer, data)])
    assert result.reference_norm == pytest.approx(expected)
    assert list(result.table.ratio) == [0.1]


def test_perplexity_text_prefers_shared_wikitext_then_the_bundled_text(tmp_path, monkeypatch):
    monkeypatch.delenv("CAA_LENS_SHARED_DATA", raising=False)
    text, source = perplexity_text()
    assert text == neutral_text() and "bundled" in source
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "wiki.test.raw").write_text(" = Heading = \n Some wiki text .\n")
    monkeypatch.setenv("CAA_LENS_SHARED_DATA", str(tmp_path))
    text, source = perplexity_text()
    assert text.startswith(" = Heading") and "WikiText-2" in source
    assert perplexity_text(tmp_path)[0] == text  # a directory argument works the same way
    with pytest.raises(FileNotFoundError, match="no perplexity text"):
        perplexity_text(tmp_path / "missing.txt")
    monkeypatch.setenv("CAA_LENS_SHARED_DATA", str(tmp_path / "elsewhere"))
    with pytest.warns(UserWarning, match="bundled neutral text"):
        assert perplexity_text()[0] == neutral_text()


def test_bundled_neutral_text_is_long_and_never_repeats():
    text = neutral_text()
    assert len(text.split()) > 3000
    sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+", text) if len(s.split()) > 4]
    assert len(sentences) > 150 and len(set(sentences)) == len(sentences)
    paragraphs = [p for p in text.split("\n\n") if p.strip()]
    assert len(set(paragraphs)) == len(paragraphs)
