"""Paper-style figures, one function per analysis result; each returns a matplotlib Figure.

No function reads files or shows windows; ``save`` (a path) is the only I/O, written after drawing.
Figures use one small style (``STYLE``) applied per figure through ``matplotlib.rc_context``, so the
caller's global matplotlib settings are left alone. Import with any backend; tests use Agg.
"""

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from analysis.interference import Interference
from analysis.norms import NormProfile, RatioTradeoff
from analysis.pca import PcaProjections, Separability
from analysis.reversal import ReversalResult
from analysis.scaling import SampleSizeScaling, SizeEffect
from analysis.similarity import BehaviourSimilarity, LayerSimilarity, LayerTransfer

STYLE = {
    "figure.dpi": 110,
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "legend.frameon": False,
    "savefig.bbox": "tight",
}
SIDE_COLOURS = ("#d95f02", "#1b9e77")  # not matching, matching
DIVERGING = "RdBu_r"


def _styled():
    """The figures' style as a context (matplotlib's stubs type rc keys as literals)."""
    return plt.rc_context(STYLE)  # type: ignore[arg-type]


def _finish(figure: Figure, save: str | Path | None) -> Figure:
    if save is not None:
        Path(save).parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(save, bbox_inches="tight")  # the style is not active outside its context
    return figure


def _heatmap(ax, matrix: np.ndarray, labels_x, labels_y, vmin: float, vmax: float, cmap: str, label: str):
    image = ax.imshow(matrix, vmin=vmin, vmax=vmax, cmap=cmap, origin="lower", aspect="auto")
    step_x = max(1, math.ceil(len(labels_x) / 15))
    step_y = max(1, math.ceil(len(labels_y) / 15))
    ax.set_xticks(range(0, len(labels_x), step_x), [str(x) for x in labels_x][::step_x])
    ax.set_yticks(range(0, len(labels_y), step_y), [str(y) for y in labels_y][::step_y])
    ax.grid(False)
    ax.figure.colorbar(image, ax=ax, label=label, shrink=0.85)
    return image


def plot_layer_similarity(result: LayerSimilarity, title: str = "", save: str | Path | None = None) -> Figure:
    """Layer x layer cosine heatmap, and the mean cosine by layer distance."""
    with _styled():
        figure, (left, right) = plt.subplots(1, 2, figsize=(9, 3.8), width_ratios=(1.2, 1))
        _heatmap(left, result.matrix.numpy(), result.layers, result.layers, -1.0, 1.0, DIVERGING, "cosine")
        left.set(xlabel="layer", ylabel="layer", title=title or "Cosine similarity between layers")
        table = result.by_distance
        right.errorbar(table.distance, table["mean"], yerr=table["std"], marker="o", ms=3, capsize=2)
        right.set(xlabel="layer distance |i - j|", ylabel="mean cosine", title="By layer distance")
        figure.tight_layout()
    return _finish(figure, save)


def plot_behaviour_similarity(
    result: BehaviourSimilarity, layer: int, save: str | Path | None = None
) -> Figure:
    """Behaviour x behaviour cosine matrix at one layer."""
    with _styled():
        figure, ax = plt.subplots(figsize=(4.5, 3.8))
        matrix = result.matrix[result.layers.index(layer)].numpy()
        _heatmap(ax, matrix, result.names, result.names, -1.0, 1.0, DIVERGING, "cosine")
        ax.set_xticklabels(result.names, rotation=45, ha="right")
        ax.set_title(f"Behaviour vectors, layer {layer}")
        figure.tight_layout()
    return _finish(figure, save)


def plot_pca_grid(
    result: PcaProjections,
    layers: Sequence[int] | None = None,
    columns: int = 5,
    save: str | Path | None = None,
) -> Figure:
    """Scatter of the first two components per layer: colour = behaviour side, marker = answer letter."""
    chosen = list(result.layers if layers is None else layers)
    rows = math.ceil(len(chosen) / columns)
    markers = dict(zip(sorted(set(result.letters)), "o^sDvP*X", strict=False))
    letters = np.array(result.letters)
    side = result.side.numpy()
    with _styled():
        figure, axes = plt.subplots(rows, columns, figsize=(2.2 * columns, 2.1 * rows), squeeze=False)
        for ax in axes.flat[len(chosen) :]:
            ax.axis("off")
        for ax, layer in zip(axes.flat, chosen, strict=False):
            coords = result.coordinates[result.layers.index(layer)].numpy()
            for s, colour in enumerate(SIDE_COLOURS):
                for letter, marker in markers.items():
                    keep = (side == s) & (letters == letter)
                    ax.scatter(
                        coords[keep, 0], coords[keep, 1], s=6, c=colour, marker=marker, alpha=0.6, lw=0
                    )
            ax.set_title(f"layer {layer}", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
        handles = [
            plt.Line2D([], [], ls="", marker=markers[letter], color=colour, label=f"{name}, ({letter})")
            for colour, name in zip(SIDE_COLOURS, ("not matching", "matching"), strict=True)
            for letter in markers
        ]
        figure.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8)
        figure.suptitle("PCA of contrastive activations (colour: behaviour side, marker: answer)")
        figure.tight_layout(rect=(0, 0.05, 1, 0.97))
    return _finish(figure, save)


def plot_separability(result: Separability, save: str | Path | None = None) -> Figure:
    """Held-out probe accuracy by layer for the behaviour side and the answer letter."""
    table = result.table
    with _styled():
        figure, ax = plt.subplots(figsize=(5.5, 3.4))
        ax.plot(table.layer, table.behaviour_accuracy, marker="o", ms=3, label="behaviour side")
        ax.plot(table.layer, table.letter_accuracy, marker="s", ms=3, label="answer letter")
        ax.axhline(0.5, color="grey", ls="--", lw=1, label="chance")
        ax.set(xlabel="layer", ylabel="held-out accuracy", ylim=(0.3, 1.02))
        ax.set_title(f"Linear separability ({result.probe} probe)")
        ax.legend()
        figure.tight_layout()
    return _finish(figure, save)


def plot_norm_profile(result: NormProfile, save: str | Path | None = None) -> Figure:
    """Vector and residual norms by layer (log scale), and the ratios ||v|| / ||resid||."""
    table = result.table
    regions = [c.removeprefix("resid_") for c in table.columns if c.startswith("resid_")]
    with _styled():
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
    return _finish(figure, save)


def plot_ratio_tradeoff(result: RatioTradeoff, save: str | Path | None = None) -> Figure:
    """Behaviour change and perplexity increase against the ratio, and the trade-off curve."""
    table = result.table
    with _styled():
        figure, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
        left.plot(table.ratio, table.behaviour_change, marker="o", ms=3, color="C0", label="behaviour change")
        twin = left.twinx()
        twin.plot(table.ratio, table.perplexity_increase, marker="s", ms=3, color="C3", label="perplexity +")
        left.set(xlabel="||m v|| / ||resid||", ylabel="Δ p(matching)", xscale="log")
        twin.set_ylabel("relative perplexity increase", color="C3")
        left.set_title(f"Layer {result.layer}")
        right.plot(table.perplexity_increase, table.behaviour_change, marker="o", ms=3)
        for _, row in table.iterrows():
            right.annotate(f"{row.ratio:g}", (row.perplexity_increase, row.behaviour_change), fontsize=7)
        if not math.isnan(result.best_ratio):
            best = table[table.ratio == result.best_ratio].iloc[0]
            right.scatter(
                [best.perplexity_increase], [best.behaviour_change], s=60, facecolors="none", edgecolors="red"
            )
        right.set(
            xlabel="relative perplexity increase", ylabel="Δ p(matching)", title="Trade-off (labels: ratio)"
        )
        figure.tight_layout()
    return _finish(figure, save)


def plot_sample_size(
    result: SampleSizeScaling,
    layers: Sequence[int],
    effect: SizeEffect | None = None,
    save: str | Path | None = None,
) -> Figure:
    """Cosine to the full-data vector (with bootstrap band) and split-half stability against n."""
    table = result.table
    panels = 3 if effect is not None else 2
    with _styled():
        figure, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 3.4))
        for i, layer in enumerate(layers):
            rows = table[table.layer == layer]
            axes[0].plot(rows.n, rows.cosine_to_full, marker="o", ms=3, color=f"C{i}", label=f"layer {layer}")
            axes[0].fill_between(rows.n, rows.ci_low, rows.ci_high, color=f"C{i}", alpha=0.2)
            axes[1].plot(rows.n, rows.split_half, marker="o", ms=3, color=f"C{i}", label=f"layer {layer}")
        axes[0].set(xscale="log", xlabel="pairs n", ylabel="cosine to full-data vector")
        axes[0].set_title(f"Convergence ({result.level:.0%} bootstrap band)")
        axes[1].set(
            xscale="log", xlabel="pairs n", ylabel="cosine between halves", title="Split-half stability"
        )
        axes[0].legend()
        if effect is not None:
            t = effect.table
            axes[2].plot(t.n, t.effect, marker="o", ms=3)
            axes[2].set(xscale="log", xlabel="pairs n", ylabel="p(+m) - p(-m)")
            axes[2].set_title(f"Steering effect, layer {effect.layer}, m={effect.multiplier:g}")
        figure.tight_layout()
    return _finish(figure, save)


def plot_reversal_progress(result: ReversalResult, save: str | Path | None = None) -> Figure:
    """Reversal and fluency of each lambda's member per iteration, and the final Pareto front."""
    history = result.history
    effect = abs(result.steered - result.unsteered)
    with _styled():
        figure, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
        for i, (lam, rows) in enumerate(history.groupby("lambda")):
            left.plot(rows.iteration, rows.reversal, color=f"C{i}", label=f"λ={lam:g}")
        if effect > 0:
            left.axhline(effect, color="black", ls="--", lw=1, label="unsteered value")
        left.set(xlabel="iteration", ylabel="reversal (Δ p against steering)", title="Search progress")
        left.legend(fontsize=7)
        right.plot(
            result.pareto.cross_entropy, result.pareto.reversal, marker="o", ms=3, drawstyle="steps-post"
        )
        right.set(xlabel="cross-entropy of insertion (nats/token)", ylabel="reversal", title="Pareto front")
        if effect > 0:
            right.axhline(effect, color="black", ls="--", lw=1)
        figure.tight_layout()
    return _finish(figure, save)


def plot_interference(result: Interference, save: str | Path | None = None) -> Figure:
    """Effect of each combination of steered behaviours (rows) on each scored behaviour (columns)."""
    effect = result.effect.numpy()
    bound = float(np.nanmax(np.abs(effect))) or 1.0
    labels = ["+".join(c) for c in result.combinations]
    with _styled():
        figure, ax = plt.subplots(figsize=(1.2 * len(result.scored) + 3, 0.35 * len(labels) + 1.6))
        image = ax.imshow(effect, cmap=DIVERGING, vmin=-bound, vmax=bound, aspect="auto")
        for (r, c), value in np.ndenumerate(effect):
            ax.text(c, r, f"{value:+.2f}", ha="center", va="center", fontsize=7)
        ax.set_xticks(range(len(result.scored)), result.scored, rotation=30, ha="right")
        ax.set_yticks(range(len(labels)), labels)
        ax.grid(False)
        ax.set(
            xlabel="behaviour scored", ylabel="vectors applied", title="Δ p(matching) under combined steering"
        )
        figure.colorbar(image, ax=ax, label="Δ p(matching)")
        figure.tight_layout()
    return _finish(figure, save)


def plot_layer_transfer(result: LayerTransfer, save: str | Path | None = None) -> Figure:
    """Steering swing p(+m) - p(-m) of the vector read at layer i (rows) applied at layer j (columns)."""
    effect = result.effect.numpy()
    bound = float(np.nanmax(np.abs(effect))) or 1.0
    with _styled():
        figure, ax = plt.subplots(figsize=(5.2, 4.2))
        _heatmap(
            ax, effect, result.apply_layers, result.read_layers, -bound, bound, DIVERGING, "p(+m) - p(-m)"
        )
        ax.set(xlabel="applied at layer", ylabel="read at layer")
        ax.set_title(f"Layer transfer (m = ±{result.multiplier:g})")
        figure.tight_layout()
    return _finish(figure, save)
