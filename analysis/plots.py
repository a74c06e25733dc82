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
from matplotlib.ticker import MaxNLocator

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
    """Layer x layer cosine heatmap, and the mean cosine by layer distance beside its baseline band."""
    with _styled():
        figure, (left, right) = plt.subplots(1, 2, figsize=(9, 3.8), width_ratios=(1.2, 1))
        _heatmap(left, result.matrix.numpy(), result.layers, result.layers, -1.0, 1.0, DIVERGING, "cosine")
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


def _require_columns(table, columns: Sequence[str], what: str) -> None:
    """Results saved before the intervals and nulls existed cannot be drawn honestly: say so."""
    lacking = [c for c in columns if c not in table.columns]
    if lacking:
        raise ValueError(
            f"the {what} table lacks {lacking}: it was made by an older caa_lens; rerun the analysis "
            f"(analysis.{what}) to get its intervals and null bands"
        )


def _yerr(rows, column: str, prefix: str | None = None) -> np.ndarray:
    """Asymmetric error bars from ``<prefix>_low/_high`` (``prefix`` defaults to ``column``); a NaN
    bound (too little data for an interval) draws no bar."""
    prefix = prefix or column
    below = (rows[column] - rows[f"{prefix}_low"]).to_numpy(float)
    above = (rows[f"{prefix}_high"] - rows[column]).to_numpy(float)
    return np.nan_to_num(np.vstack([below, above]).clip(min=0))


def plot_ratio_tradeoff(result: RatioTradeoff, save: str | Path | None = None) -> Figure:
    """Behaviour effect and perplexity increase (with intervals) against |ratio|, both steering signs,
    with the perplexity budget and the chosen ratio."""
    table = result.table
    _require_columns(
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
    with _styled():
        figure, (left, right) = plt.subplots(1, 2, figsize=(9.5, 3.6))
        for sign, colour, style, label in signs:
            rows = table[np.sign(table.ratio) == sign].sort_values("ratio", key=abs)
            if rows.empty:
                continue
            x = rows.ratio.abs()
            left.errorbar(
                x, rows.behaviour_change, yerr=_yerr(rows, "behaviour_change"), color=colour, ls=style,
                marker="o", ms=3, capsize=2, label=label,
            )  # fmt: skip
            # Perplexity grows by orders of magnitude at large ratios: ppl / unsteered on a log axis
            # keeps the budget region readable (1 + increase; the interval maps the same way).
            right.errorbar(
                x, 1 + rows.perplexity_increase, yerr=_yerr(rows, "perplexity_increase"), color=colour,
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
    return _finish(figure, save)


def plot_sample_size(
    result: SampleSizeScaling,
    layers: Sequence[int],
    effect: SizeEffect | None = None,
    save: str | Path | None = None,
) -> Figure:
    """Cosine to a held-out reference vector (per-seed band) beside the sign-shuffled null band,
    split-half stability, and (with ``effect``) the paired steering effects with the random-vector null."""
    table = result.table
    _require_columns(table, ["cosine_to_heldout", "null_low", "null_high"], "scaling")
    if effect is not None:
        _require_columns(effect.table, ["plus_effect", "plus_low", "null_plus_low"], "scaling")
    panels = 3 if effect is not None else 2
    with _styled():
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
                    t.n, t[f"{sign}_effect"], yerr=_yerr(t, f"{sign}_effect", sign),
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
    return _finish(figure, save)


def plot_reversal_progress(result: ReversalResult, save: str | Path | None = None) -> Figure:
    """Reversal and fluency of each lambda's member per iteration, the final Pareto front, and the top
    insertion's paired effects with 95% intervals on the held-out and (in-sample) search items."""
    history = result.history
    effect = abs(result.steered - result.unsteered)
    effects = result.effects
    with _styled():
        panels = 3 if effects is not None and len(effects) else 2
        figure, axes = plt.subplots(1, panels, figsize=(4.5 * panels, 3.4))
        left, right = axes[0], axes[1]
        for i, (lam, rows) in enumerate(history.groupby("lambda")):
            left.plot(rows.iteration, rows.reversal, color=f"C{i}", label=f"λ={lam:g}")
        if effect > 0:
            left.axhline(effect, color="black", ls="--", lw=1, label="unsteered value")
        left.set(
            xlabel="iteration", ylabel="reversal (Δ p against steering)", title="Search progress (in-sample)"
        )
        left.legend(fontsize=7)
        right.plot(
            result.pareto.cross_entropy, result.pareto.reversal, marker="o", ms=3, drawstyle="steps-post"
        )
        right.set(xlabel="cross-entropy of insertion (nats/token)", ylabel="reversal", title="Pareto front")
        if effect > 0:
            right.axhline(effect, color="black", ls="--", lw=1)
        if panels == 3:
            assert effects is not None
            ax = axes[2]
            quantities = list(dict.fromkeys(effects.quantity))
            for offset, (split, colour) in zip(
                (-0.15, 0.15), (("heldout", "black"), ("search", "grey")), strict=True
            ):
                rows = effects[effects.split == split].set_index("quantity").reindex(quantities)
                if rows["mean"].isna().all():
                    continue
                y = np.arange(len(quantities)) + offset
                error = np.vstack([rows["mean"] - rows.low, rows.high - rows["mean"]])
                n = int(rows.n.dropna().iloc[0])
                ax.errorbar(
                    rows["mean"],
                    y,
                    xerr=error,
                    fmt="o",
                    ms=3,
                    capsize=2,
                    color=colour,
                    label=f"{split} (n={n})",
                )
            ax.axvline(0, color="black", lw=0.8)
            ax.set_yticks(range(len(quantities)), [q.replace("_", " ") for q in quantities])
            ax.invert_yaxis()
            ax.set(xlabel="Δ p, signed so + is the claim (95% CI)")
            ax.set_title(
                "Top insertion: " + ("reversed" if result.reversed else "not reversed") + " (held-out)"
            )
            ax.legend(fontsize=7)
        figure.tight_layout()
    return _finish(figure, save)


def plot_interference(result: Interference, save: str | Path | None = None) -> Figure:
    """Effect (with 95% interval) of each combination of steered behaviours (rows) on each scored
    behaviour (columns), and the interaction of each multi-vector combination beside its random null."""
    effect = result.effect.numpy()
    bound = float(np.nanmax(np.abs(effect))) or 1.0
    labels = ["+".join(c) for c in result.combinations]
    joint = [c for c, combo in enumerate(result.combinations) if len(combo) > 1]
    interaction = result.interaction
    panels = 2 if interaction is not None and joint else 1
    with _styled():
        figure, axes = plt.subplots(
            1,
            panels,
            figsize=(1.2 * len(result.scored) + 3 + 4.5 * (panels - 1), 0.45 * len(labels) + 1.6),
            squeeze=False,
        )
        ax = axes[0, 0]
        image = ax.imshow(effect, cmap=DIVERGING, vmin=-bound, vmax=bound, aspect="auto")
        low, high = result.effect_low, result.effect_high
        for (r, c), value in np.ndenumerate(effect):
            text = f"{value:+.2f}"
            if low is not None and high is not None:
                text += f"\n[{float(low[r, c]):+.2f}, {float(high[r, c]):+.2f}]"
            ax.text(c, r, text, ha="center", va="center", fontsize=6)
        ax.set_xticks(range(len(result.scored)), result.scored, rotation=30, ha="right")
        ax.set_yticks(range(len(labels)), labels)
        ax.grid(False)
        ax.set(
            xlabel="behaviour scored", ylabel="vectors applied", title="Δ p(matching) under combined steering"
        )
        figure.colorbar(image, ax=ax, label="Δ p(matching)")
        if panels == 2:
            assert interaction is not None
            ax = axes[0, 1]
            cells = [(c, b) for c in joint for b in range(len(result.scored))]
            y = np.arange(len(cells))
            mean = np.array([float(interaction[c, b]) for c, b in cells])
            if result.interaction_low is not None and result.interaction_high is not None:
                lows = np.array([float(result.interaction_low[c, b]) for c, b in cells])
                highs = np.array([float(result.interaction_high[c, b]) for c, b in cells])
                error = np.vstack([mean - lows, highs - mean])
            else:
                error = None
            nulls = (result.null_interaction_low, result.null_interaction_high)
            if nulls[0] is not None and nulls[1] is not None:
                for k, (c, b) in enumerate(cells):
                    band = float(nulls[0][c, b]), float(nulls[1][c, b])
                    ax.fill_betweenx([k - 0.3, k + 0.3], *band, color="grey", alpha=0.3, lw=0,
                                     label="random same-norm" if k == 0 else None)  # fmt: skip
            ax.errorbar(
                mean, y, xerr=error, fmt="o", ms=3, capsize=2, color="C0", label="joint − sum of singles"
            )
            ax.axvline(0, color="black", lw=0.8)
            ax.set_yticks(y, [f"{labels[c]} → {result.scored[b]}" for c, b in cells], fontsize=7)
            ax.invert_yaxis()
            ax.set(xlabel="interaction Δ p (95% CI)", title="Interference")
            ax.legend(fontsize=7)
        figure.tight_layout()
    return _finish(figure, save)


def plot_layer_transfer(result: LayerTransfer, save: str | Path | None = None) -> Figure:
    """Steering swing p(+m) - p(-m) of the vector read at layer i (rows) applied at layer j (columns),
    marked where its 95% interval clears the random same-norm null; and the swing by apply layer with
    its interval and the null band, one line per read layer."""
    effect = result.effect.numpy()
    bound = float(np.nanmax(np.abs(effect))) or 1.0
    low, high = result.effect_low, result.effect_high
    intervals = low is not None and high is not None
    with _styled():
        figure, axes = plt.subplots(
            1, 2 if intervals else 1, figsize=(10.5 if intervals else 5.2, 4.2), squeeze=False
        )
        ax = axes[0, 0]
        _heatmap(
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
    return _finish(figure, save)


def _all_nan(values) -> bool:
    """Whether a stored band is all NaN (a transfer run with ``null_seeds=()``)."""
    return bool(np.isnan(np.asarray(values)).all())


def plot_behaviour_headline(headline, save: str | Path | None = None) -> Figure:
    """The open-ended headline: per behaviour, its metric's held-out effect with its 95% interval over
    the null band of random same-norm vectors (left), and the fluency cost it paid (right).

    ``headline`` is ``analysis.behaviour_study.headline_table`` (or the main job's
    ``behaviour_headline.csv``). Metrics have different units, so each row is read against its own band.
    """
    rows = headline.reset_index(drop=True)
    with _styled():
        figure, (left, right) = plt.subplots(
            1, 2, figsize=(9.0, 0.55 * len(rows) + 1.4), sharey=True, gridspec_kw={"width_ratios": [3, 2]}
        )
        y = np.arange(len(rows))[::-1]
        for at, row in zip(y, rows.itertuples(), strict=True):
            left.add_patch(
                plt.Rectangle((row.null_low, at - 0.3), row.null_high - row.null_low, 0.6, color="0.85", lw=0)
            )
            colour = SIDE_COLOURS[1] if row.verdict == "passes" else SIDE_COLOURS[0]
            left.errorbar(
                row.effect, at, xerr=[[row.effect - row.effect_low], [row.effect_high - row.effect]],
                fmt="o", color=colour, capsize=3,
            )  # fmt: skip
            right.errorbar(
                row.fluency_cost, at,
                xerr=[[row.fluency_cost - row.fluency_cost_low], [row.fluency_cost_high - row.fluency_cost]],
                fmt="s", color="0.3", capsize=3,
            )  # fmt: skip
        labels = [f"{r.behaviour}\n{r.metric}, L{r.layer} m={r.multiplier:+.3g}" for r in rows.itertuples()]
        left.set_yticks(y, labels)
        left.axvline(0, color="0.4", lw=0.8)
        right.axvline(0, color="0.4", lw=0.8)
        left.set_xlabel("effect on the behaviour metric\n(steered - unsteered, same held-out prompts)")
        right.set_xlabel("fluency cost\n(completion NLL increase, nats/token)")
        left.set_title("grey: null band (random same-norm vectors); green passes, orange fails")
        return _finish(figure, save)
