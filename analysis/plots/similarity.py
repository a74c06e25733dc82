"""Figures of vector geometry across layers and behaviours (``analysis.similarity``, ``analysis.transfer``): cosine
heatmaps, and the layer-transfer matrix of steering effects."""

import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from analysis.plots.style import DIVERGING, finish, heatmap, styled
from analysis.similarity import BehaviourSimilarity, LayerSimilarity
from analysis.transfer import LayerTransfer

__all__ = ["plot_behaviour_similarity", "plot_layer_similarity", "plot_layer_transfer"]


def plot_layer_similarity(result: LayerSimilarity, title: str = "", save: str | Path | None = None) -> Figure:
    """Layer x layer cosine heatmap, and the mean cosine by layer distance beside its baseline band."""
    with styled():
        figure, (left, right) = plt.subplots(1, 2, figsize=(9, 3.8), width_ratios=(1.2, 1))
        heatmap(left, result.matrix.numpy(), result.layers, result.layers, -1.0, 1.0, DIVERGING, "cosine")
        left.set(xlabel="layer", ylabel="layer", title=title or "Cosine similarity between layers")
        table = result.by_distance
        right.errorbar(
            table.distance,
            table["mean"],
            yerr=table["std"],
            marker="o",
            ms=3,
            capsize=2,
            label="vector (± sd)",
        )
        if "baseline_mean" in table and len(table):  # results saved before the baseline have none
            kind = result.baseline.replace("_", " ")
            right.fill_between(
                table.distance, table.baseline_low, table.baseline_high, color="grey", alpha=0.25, lw=0
            )
            right.plot(
                table.distance, table.baseline_mean, color="grey", ls="--", lw=1, label=f"{kind} baseline"
            )
        if not math.isnan(result.random_abs_cosine):
            right.axhline(result.random_abs_cosine, color="black", ls=":", lw=1, label="E|cos| random")
        right.set(xlabel="layer distance |i - j|", ylabel="mean cosine", title="By layer distance")
        right.xaxis.set_major_locator(MaxNLocator(integer=True))  # distances are whole layers
        right.legend(fontsize=7)
        figure.tight_layout()
    return finish(figure, save)


def plot_behaviour_similarity(
    result: BehaviourSimilarity, layer: int, save: str | Path | None = None
) -> Figure:
    """Behaviour x behaviour cosine matrix at one layer."""
    with styled():
        figure, ax = plt.subplots(figsize=(4.5, 3.8))
        matrix = result.matrix[result.layers.index(layer)].numpy()
        heatmap(ax, matrix, result.names, result.names, -1.0, 1.0, DIVERGING, "cosine")
        ax.set_xticklabels(result.names, rotation=45, ha="right")
        ax.set_title(f"Behaviour vectors, layer {layer}")
        figure.tight_layout()
    return finish(figure, save)


def plot_layer_transfer(result: LayerTransfer, save: str | Path | None = None) -> Figure:
    """Steering swing p(+m) - p(-m) of the vector read at layer i (rows) applied at layer j (columns),
    marked where its 95% interval clears the random same-norm null; and the swing by apply layer with
    its interval and the null band, one line per read layer."""
    effect = result.effect.numpy()
    bound = float(np.nanmax(np.abs(effect))) or 1.0
    low, high = result.effect_low, result.effect_high
    intervals = low is not None and high is not None
    with styled():
        figure, axes = plt.subplots(
            1, 2 if intervals else 1, figsize=(10.5 if intervals else 5.2, 4.2), squeeze=False
        )
        ax = axes[0, 0]
        heatmap(
            ax, effect, result.apply_layers, result.read_layers, -bound, bound, DIVERGING, "p(+m) - p(-m)"
        )
        ax.set(xlabel="applied at layer", ylabel="read at layer")
        ax.set_title(f"Layer transfer (m = ±{result.multiplier:g})")
        if intervals:
            assert low is not None and high is not None
            band = (result.null_low, result.null_high)
            if band[0] is None or band[1] is None or _all_nan(band[0]):
                floor = ceiling = np.zeros_like(effect)  # no null: mark intervals that exclude zero
            else:
                floor, ceiling = band[0].numpy(), band[1].numpy()
            clear = (low.numpy() > ceiling) | (high.numpy() < floor)
            for (r, c), marked in np.ndenumerate(clear):
                if marked:
                    ax.text(c, r, "*", ha="center", va="center", fontsize=9)
            ax.set_title(f"Layer transfer (m = ±{result.multiplier:g}; *: 95% CI outside the null)")
            right = axes[0, 1]
            x = np.arange(len(result.apply_layers))
            for i, read in enumerate(result.read_layers):
                error = np.vstack([effect[i] - low[i].numpy(), high[i].numpy() - effect[i]])
                right.errorbar(
                    x,
                    effect[i],
                    yerr=error,
                    marker="o",
                    ms=3,
                    capsize=2,
                    color=f"C{i % 10}",
                    label=f"read {read}",
                )
                if result.null_low is not None and result.null_high is not None:
                    right.fill_between(
                        x,
                        result.null_low[i].numpy(),
                        result.null_high[i].numpy(),
                        color=f"C{i % 10}",
                        alpha=0.12,
                        lw=0,
                    )
            right.axhline(0, color="black", lw=0.8)
            right.set_xticks(x, [str(a) for a in result.apply_layers])
            right.set(xlabel="applied at layer", ylabel="p(+m) - p(-m) (95% CI)")
            right.set_title(f"Swing; shaded: random same-norm null (n = {result.n_items} items)")
            right.legend(fontsize=7, ncol=2)
        figure.tight_layout()
    return finish(figure, save)


def _all_nan(values) -> bool:
    """Whether a stored band is all NaN (a transfer run with ``null_seeds=()``)."""
    return bool(np.isnan(np.asarray(values)).all())
