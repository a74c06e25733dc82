"""Figure of sample-size scaling (``analysis.scaling``): how many pairs a stable vector needs."""

from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from analysis.plots.style import finish, require_columns, styled, yerr
from analysis.scaling import SampleSizeScaling
from analysis.size_effect import SizeEffect

__all__ = ["plot_sample_size"]


def plot_sample_size(
    result: SampleSizeScaling,
    layers: Sequence[int],
    effect: SizeEffect | None = None,
    save: str | Path | None = None,
) -> Figure:
    """Cosine to a held-out reference vector (per-seed band) beside the sign-shuffled null band,
    split-half stability, and (with ``effect``) the paired steering effects with the random-vector null."""
    table = result.table
    require_columns(table, ["cosine_to_heldout", "null_low", "null_high"], "scaling")
    if effect is not None:
        require_columns(effect.table, ["plus_effect", "plus_low", "null_plus_low"], "scaling")
    panels = 3 if effect is not None else 2
    with styled():
        figure, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 3.5))
        for i, layer in enumerate(layers):
            rows = table[table.layer == layer].sort_values("n")
            colour = f"C{i}"
            axes[0].plot(
                rows.n, rows.cosine_to_heldout, marker="o", ms=3, color=colour, label=f"layer {layer}"
            )
            axes[0].fill_between(rows.n, rows.ci_low, rows.ci_high, color=colour, alpha=0.2, lw=0)
            # The null band as dashed edges, so several layers' bands stay readable over the curves.
            for edge in ("null_low", "null_high"):
                axes[0].plot(rows.n, rows[edge], color=colour, ls="--", lw=0.9, alpha=0.8)
            axes[1].plot(rows.n, rows.split_half, marker="o", ms=3, color=colour, label=f"layer {layer}")
        axes[0].plot([], [], color="grey", ls="--", lw=0.9, label=f"sign-shuffled null ({result.level:.0%})")
        axes[0].axhline(0, color="grey", lw=0.8)
        axes[0].set(xscale="log", xlabel="pairs n", ylabel="cosine to held-out reference vector")
        axes[0].set_title(
            f"Agreement with {result.reference_pairs} held-out pairs ({result.n_seeds} seeds)", fontsize=9
        )
        axes[1].set(
            xscale="log", xlabel="pairs n", ylabel="cosine between halves", title="Split-half stability"
        )
        axes[0].legend(fontsize=7)
        if effect is not None:
            t = effect.table.sort_values("n")
            for sign, colour in (("plus", "C0"), ("minus", "C1")):
                label = f"{'+' if sign == 'plus' else '-'}m vs unsteered"
                axes[2].errorbar(
                    t.n, t[f"{sign}_effect"], yerr=yerr(t, f"{sign}_effect", sign),
                    color=colour, marker="o", ms=3, capsize=2, label=label,
                )  # fmt: skip
                axes[2].fill_between(
                    t.n, t[f"null_{sign}_low"], t[f"null_{sign}_high"], color=colour, alpha=0.15, lw=0,
                    label=f"random same-norm, {'+' if sign == 'plus' else '-'}m",
                )  # fmt: skip
            axes[2].axhline(0, color="grey", lw=0.8)
            axes[2].set(
                xscale="log", xlabel="pairs n", ylabel=f"Δ p(matching) (paired, {effect.level:.0%} CI)"
            )
            axes[2].set_title(f"Steering effect, layer {effect.layer}, m=±{effect.multiplier:g}", fontsize=9)
            axes[2].legend(fontsize=7)
        figure.tight_layout()
    return finish(figure, save)
