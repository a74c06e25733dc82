"""Figures of ActAdd's three experiments (``analysis.actadd_topic``, ``analysis.actadd_perplexity``,
``analysis.actadd_sentiment``), one per experiment.

The same conventions as every caa_lens figure: the ``STYLE`` rc context per figure, 95% intervals as
error bars, null bands (random vectors of the same norm) shaded.
"""

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from analysis.actadd_generation import GenerationExperiment
from analysis.actadd_perplexity import RelatedTextResult
from analysis.plots.style import styled

__all__ = ["plot_actadd", "plot_related_text", "plot_sentiment", "plot_topic"]

RELATED_COLOUR = "#d95f02"
OTHER_COLOURS = ("#1f77b4", "#2ca02c", "#9467bd", "#7f7f7f", "#17becf")
NULL_NOTE = "bars: 95% interval; shaded: null band (random vectors, same norm)"


def _check(effects: pd.DataFrame, metric: str) -> pd.DataFrame:
    rows = effects[effects["metric"] == metric]
    if rows.empty:
        raise ValueError(f"the effects table has no {metric!r} rows (metrics: {sorted(set(effects.metric))})")
    return rows


def _absolute_panel(ax, effects: pd.DataFrame, metric: str, ylabel: str, absolute: bool) -> None:
    """One line per layer against the coefficient; coefficient 0 is the unsteered value.

    ``absolute``: draw steered means (the unsteered value plus the paired effect and its interval);
    else the paired effect itself. The null band is drawn where the table has one, shifted the same way.
    """
    rows = _check(effects, metric)
    layers = sorted({int(x) for x in rows["layer"]})
    colours = plt.get_cmap("viridis")
    span = max(1.0, float(rows["multiplier"].abs().max()))
    width = 0.04 * span
    for k, layer in enumerate(layers):
        cells = rows[rows["layer"] == layer].sort_values("multiplier")
        colour = colours(k / max(1, len(layers) - 1) * 0.85)
        base = float(cells["unsteered"].iloc[0]) if absolute else 0.0
        shift = (k - (len(layers) - 1) / 2) * 0.012 * span  # a small offset keeps the layers' bars apart
        x = np.concatenate([[0.0], cells["multiplier"].to_numpy(float) + shift])
        y = np.concatenate([[base], base + cells["effect"].to_numpy(float)])
        low = np.concatenate([[base], base + cells["effect_low"].to_numpy(float)])
        high = np.concatenate([[base], base + cells["effect_high"].to_numpy(float)])
        ax.errorbar(
            x,
            y,
            yerr=[y - low, high - y],
            color=colour,
            lw=1.2,
            capsize=2,
            marker="o",
            ms=3,
            label=f"layer {layer}",
        )
        nulled = cells[cells["null_low"].notna()] if "null_low" in cells else cells.iloc[:0]
        for cell in nulled.itertuples():
            at, low_, high_ = cell.multiplier + shift, base + cell.null_low, base + cell.null_high
            ax.bar(at, high_ - low_, bottom=low_, width=width, color=colour, alpha=0.25, lw=0)
            # Edges drawn too: a band of zero height (every random vector scored alike) stays visible.
            ax.hlines([low_, high_], at - width / 2, at + width / 2, color=colour, lw=1.5, alpha=0.8)
        best = cells[cells["best"].astype(bool)] if "best" in cells else cells.iloc[:0]
        for cell in best.itertuples():
            ax.scatter(
                [cell.multiplier + shift],
                [base + cell.effect],
                s=70,
                facecolors="none",
                edgecolors="black",
                zorder=4,
                label="best cell (in-sample)",
            )
    if not absolute:
        ax.axhline(0, color="grey", lw=0.8, ls=":")
    low_limit, high_limit = ax.get_ylim()
    ax.set_ylim(low_limit - 0.04 * (high_limit - low_limit), high_limit)  # bands at the floor stay visible
    ax.set(xlabel="coefficient c", ylabel=ylabel)


def _generation_figure(
    result: GenerationExperiment, metric: str, ylabel: str, title: str, cost: str = "completion_nll"
) -> Figure:
    info = result.info
    with styled():
        figure, (left, right) = plt.subplots(1, 2, figsize=(9.6, 3.6))
        _absolute_panel(left, result.effects, metric, ylabel, absolute=True)
        _absolute_panel(
            right,
            result.effects,
            cost,
            "fluency cost: completion NLL\n(steered - unsteered, nats/token)",
            False,
        )
        left.set_title(title)
        right.set_title("cost (unsteered model's NLL of the completion)")
        handles, labels = left.get_legend_handles_labels()
        unique = dict(zip(labels, handles, strict=True))
        right.legend(
            unique.values(),
            unique.keys(),
            fontsize=7,
            loc="center left",
            bbox_to_anchor=(1, 0.5),
            title=NULL_NOTE.replace("; ", "\n"),
            title_fontsize=7,
        )
        scope = info.get("null_scope", "")
        parts = [
            f"{info.get('model', '')}, pair {info.get('pair', '')!r}, mode front",
            f"{info.get('n_prompts', len(set(result.generations.get('prompt_id', []))))} prompts ({info.get('source', '')})",
            f"null at: {scope}" if scope else "",
        ]
        figure.suptitle("; ".join(p for p in parts if p), fontsize=8, y=1.02)
    return figure


def plot_topic(result: GenerationExperiment) -> Figure:
    """Share of completions with a topic word against the coefficient, one line per layer (left), and
    the fluency cost (right): ActAdd's topic-steering figure with intervals and the null band."""
    metric = str(result.select_metric)
    topic = metric.removesuffix("_any")
    return _generation_figure(result, metric, f"share of completions\nwith a {topic} word", f"topic: {topic}")


def plot_sentiment(result: GenerationExperiment) -> Figure:
    """VADER positive rate of the completions against the coefficient (left) and the fluency cost."""
    return _generation_figure(result, "positive", "positive rate (VADER compound >= 0.05)", "sentiment")


def plot_related_text(result: RelatedTextResult) -> Figure:
    """Perplexity ratio steered / unsteered against the coefficient, one line per text (log scale):
    below 1 the vector makes the text easier to predict. Null bands shaded per text."""
    rows = result.tested()
    texts = sorted(rows["text"].unique(), key=lambda t: (t != result.related, t))
    with styled():
        figure, ax = plt.subplots(figsize=(6.4, 3.8))
        for k, text in enumerate(texts):
            cells = rows[rows["text"] == text].sort_values("coefficient")
            colour = RELATED_COLOUR if text == result.related else OTHER_COLOURS[k % len(OTHER_COLOURS)]
            x, y = cells["coefficient"].to_numpy(float), cells["ratio"].to_numpy(float)
            yerr = [y - cells["ratio_low"].to_numpy(float), cells["ratio_high"].to_numpy(float) - y]
            label = f"{text} (related)" if text == result.related else text
            ax.errorbar(
                x,
                y,
                yerr=yerr,
                color=colour,
                lw=2 if text == result.related else 1.1,
                capsize=2,
                marker="o",
                ms=3,
                label=label,
            )
            if cells["null_low"].notna().any():
                ax.fill_between(x, cells["null_low"], cells["null_high"], color=colour, alpha=0.12, lw=0)
        ax.axhline(1, color="grey", lw=0.8, ls=":")
        ax.set_yscale("log")
        plain = FuncFormatter(lambda value, _: f"{value:.3g}")
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(plain)
        values = rows["coefficient"].to_numpy(float)
        if (values > 0).all() and values.max() / values.min() >= 8:  # a wide grid: even spacing on a log axis
            ax.set_xscale("log")
            ax.set_xticks(sorted(set(values)))
            ax.xaxis.set_major_formatter(plain)
            ax.xaxis.set_minor_formatter(FuncFormatter(lambda value, _: ""))
        ax.set(xlabel="coefficient c", ylabel="perplexity ratio\n(steered / unsteered, same sentences)")
        ax.set_title(
            f"{result.info.get('pair', '')!r} vector at layer {result.layer}, front of each sentence"
        )
        ax.legend(
            fontsize=7,
            loc="center left",
            bbox_to_anchor=(1, 0.5),
            title=NULL_NOTE.replace("; ", "\n"),
            title_fontsize=7,
        )
        figure.suptitle(
            f"{result.info.get('model', '')}; texts: {result.info.get('source', '')}", fontsize=8, y=1.02
        )
    return figure


def plot_actadd(result: GenerationExperiment | RelatedTextResult) -> Figure:
    """The figure of any of the three results."""
    if isinstance(result, RelatedTextResult):
        return plot_related_text(result)
    return plot_sentiment(result) if result.experiment == "sentiment" else plot_topic(result)
