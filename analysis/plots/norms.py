"""Figures of steering strength (``analysis.norms``): vector and residual norms by layer, and the
behaviour effect against the perplexity it costs as the norm ratio grows."""

import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from analysis.norms import NormProfile
from analysis.plots.style import finish, require_columns, styled, yerr
from analysis.ratio_tradeoff import RatioTradeoff

__all__ = ["plot_norm_profile", "plot_ratio_tradeoff"]


def plot_norm_profile(result: NormProfile, save: str | Path | None = None) -> Figure:
    """Vector and residual norms by layer (log scale), and the ratios ||v|| / ||resid||."""
    table = result.table
    regions = [c.removeprefix("resid_") for c in table.columns if c.startswith("resid_")]
    with styled():
        figure, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
        left.plot(table.layer, table.vector_norm, color="black", marker="o", ms=3, label="||v||")
        for region in regions:
            left.plot(table.layer, table[f"resid_{region}"], marker=".", label=f"||resid|| {region}")
            right.plot(table.layer, table[f"ratio_{region}"], marker=".", label=region)
        left.set(xlabel="layer", ylabel="L2 norm", yscale="log", title="Norms")
        right.set(xlabel="layer", ylabel="||v|| / ||resid||", title="Norm ratio")
        left.legend(fontsize=7)
        right.legend(fontsize=7)
        figure.tight_layout()
    return finish(figure, save)


def plot_ratio_tradeoff(result: RatioTradeoff, save: str | Path | None = None) -> Figure:
    """Behaviour effect and perplexity increase (with intervals) against |ratio|, both steering signs,
    with the perplexity budget and the chosen ratio."""
    table = result.table
    require_columns(
        table,
        [
            "behaviour_change_low",
            "behaviour_change_high",
            "perplexity_increase_low",
            "perplexity_increase_high",
        ],
        "ratio_tradeoff",
    )
    signs = ((1, "C0", "-", "towards behaviour (+)"), (-1, "C1", "--", "against behaviour (-)"))
    with styled():
        figure, (left, right) = plt.subplots(1, 2, figsize=(9.5, 3.6))
        for sign, colour, style, label in signs:
            rows = table[np.sign(table.ratio) == sign].sort_values("ratio", key=abs)
            if rows.empty:
                continue
            x = rows.ratio.abs()
            left.errorbar(
                x, rows.behaviour_change, yerr=yerr(rows, "behaviour_change"), color=colour, ls=style,
                marker="o", ms=3, capsize=2, label=label,
            )  # fmt: skip
            # Perplexity grows by orders of magnitude at large ratios: ppl / unsteered on a log axis
            # keeps the budget region readable (1 + increase; the interval maps the same way).
            right.errorbar(
                x, 1 + rows.perplexity_increase, yerr=yerr(rows, "perplexity_increase"), color=colour,
                ls=style, marker="o", ms=3, capsize=2, label=label,
            )  # fmt: skip
        left.axhline(0, color="grey", lw=0.8)
        right.axhline(1, color="grey", lw=0.8)
        right.axhline(
            1 + result.perplexity_budget,
            color="red",
            ls=":",
            lw=1.2,
            label=f"budget {result.perplexity_budget:+.0%}",
        )
        if not math.isnan(result.best_ratio):
            for ax in (left, right):
                ax.axvline(
                    abs(result.best_ratio), color="black", ls=":", lw=1, label=f"chosen {result.best_ratio:g}"
                )
        left.set(
            xlabel="|ratio| = ||m v|| / ||resid||",
            ylabel="Δ p(matching) in the steered direction",
            xscale="log",
        )
        left.set_title(f"Behaviour effect vs unsteered ({result.level:.0%} CI), layer {result.layer}")
        right.set(
            xlabel="|ratio| = ||m v|| / ||resid||",
            ylabel="perplexity / unsteered",
            xscale="log",
            yscale="log",
        )
        right.set_title(f"Perplexity ({result.level:.0%} block bootstrap over tokens)")
        left.legend(fontsize=7)
        right.legend(fontsize=7)
        if math.isnan(result.best_ratio):
            chosen = "no ratio chosen: " + result.selection
        else:
            chosen = (
                f"chosen ratio {result.best_ratio:g}: largest behaviour effect within the perplexity budget"
            )
            if "indistinguishable" in result.selection:
                chosen += " (but its interval includes 0)"
        figure.suptitle(chosen if len(chosen) <= 140 else chosen[:137] + "...", fontsize=8)
        figure.tight_layout()
    return finish(figure, save)
