"""Figures of a steering sweep (``caa_lens.sweep``): the paired effect on p(matching) against layer
and against multiplier, with 95% intervals and the null band of random same-norm vectors.

``sweep_effects_view`` turns an effects table (or an old summary of means) into the rows drawn and
says what the figure lacks; the two plots say it above the figure.
"""

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from analysis.plots.style import styled

__all__ = ["EFFECT_YLABEL", "plot_sweep_layers", "plot_sweep_multipliers", "sweep_effects_view"]

EFFECT_YLABEL = "effect on p(matching)\n(steered - unsteered, same items)"


def _is_control(name: object) -> bool:
    return str(name) == "random" or str(name).startswith("random:")


def sweep_effects_view(frame: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """The tested vectors' rows of a sweep effects table, and what the figure lacks.

    ``frame`` is an ``effects_summary`` (or ``effects_table`` / ``with_null``) table; an old summary of
    means (``summarize``: p_matching per cell, no effects) is turned into differences of means
    against multiplier 0 with no intervals, which the notes say. Random controls' own rows are
    dropped: with controls, the null columns hold them as a band.
    """
    rows = frame[~frame["vector"].map(_is_control)].copy()
    notes = []
    if "effect" not in rows:
        if "p_matching" not in rows:
            raise ValueError("a sweep figure needs an effects table (effects_summary) or a summary of means")
        baseline = rows[rows["multiplier"] == 0].set_index(["vector", "layer"])["p_matching"]
        keys = pd.MultiIndex.from_frame(rows[["vector", "layer"]])
        lacking = sorted(set(keys) - set(baseline.index))
        if lacking:
            raise ValueError(
                f"(vector, layer) cells {lacking[:5]} have no multiplier 0, so no effect can be drawn; sweep "
                f"multiplier 0 too (run_sweep adds it)"
            )
        rows["effect"] = rows["p_matching"].to_numpy() - baseline.loc[keys].to_numpy()
        rows["effect_low"] = rows["effect_high"] = float("nan")
        notes.append("difference of means, no intervals")
    if "null_low" not in rows or rows["null_low"].isna().all():
        notes.append("no null band (no random controls)")
        rows["null_low"] = rows["null_high"] = float("nan")
    return rows, notes


def _inside(rows: pd.DataFrame) -> pd.Series:
    """Cells drawn hollow: inside the null band, or (without a band) an interval including 0."""
    if "vs_null" in rows and rows["null_low"].notna().any():
        return rows["vs_null"] == "inside null"
    if rows["effect_low"].isna().all():  # no intervals: nothing to judge, all drawn filled
        return pd.Series(False, index=rows.index)
    return ~((rows["effect_low"] > 0) | (rows["effect_high"] < 0))


def _effect_line(ax, rows: pd.DataFrame, x: str, colour, label: str) -> None:
    """One effect curve: error bars of the interval, the null band shaded, hollow markers inside it."""
    rows = rows.sort_values(x)
    low, high = rows["effect_low"], rows["effect_high"]
    has_interval = low.notna().all() and high.notna().all()
    yerr = [rows["effect"] - low, high - rows["effect"]] if has_interval else None
    ax.errorbar(rows[x], rows["effect"], yerr=yerr, color=colour, lw=1, capsize=2, label=label)
    if rows["null_low"].notna().any():
        ax.fill_between(rows[x], rows["null_low"], rows["null_high"], color=colour, alpha=0.15, lw=0)
    inside = _inside(rows).to_numpy()
    ax.scatter(rows[x][~inside], rows["effect"][~inside], s=16, color=colour, zorder=3)
    ax.scatter(rows[x][inside], rows["effect"][inside], s=16, facecolors="white", edgecolors=colour, zorder=3)


def _legend_note(rows: pd.DataFrame) -> str:
    if rows["null_low"].notna().any():
        return "shaded: null band (random vectors, same norm); hollow: inside it"
    if rows["effect_low"].notna().any():
        return "hollow: interval includes 0"
    return ""


def _subtitle(figure: Figure, parts: list[str]) -> None:
    if parts:
        figure.suptitle("; ".join(parts), fontsize=8, y=1.04)


def plot_sweep_layers(effects: pd.DataFrame, subtitle: str = "") -> Figure:
    """Paired effect on p(matching) against layer, one line per multiplier, one panel per behaviour
    (CAA Fig. 3 as effects): 95% intervals as error bars, the null band shaded, cells inside it hollow.

    ``effects``: an ``effects_summary`` table (or an old summary of means, drawn without intervals);
    ``subtitle``: e.g. which items the effects are over. What the figure lacks is said above it.
    """
    rows, notes = sweep_effects_view(effects)
    rows = rows[rows["multiplier"] != 0]  # the baseline every effect is paired with: zero by definition
    vectors = sorted(rows["vector"].unique())
    with styled():
        figure, axes = plt.subplots(1, len(vectors), figsize=(4 * len(vectors), 3.4), squeeze=False)
        colours = plt.get_cmap("coolwarm")
        for ax, name in zip(axes[0], vectors, strict=True):
            cells = rows[rows["vector"] == name]
            multipliers = sorted(cells["multiplier"].unique())
            for k, multiplier in enumerate(multipliers):
                colour = colours(k / max(1, len(multipliers) - 1))
                _effect_line(
                    ax, cells[cells["multiplier"] == multiplier], "layer", colour, f"{multiplier:+g}"
                )
            ax.axhline(0, color="grey", lw=0.8, ls=":")
            ax.set(title=name, xlabel="steered layer")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes[0][0].set_ylabel(EFFECT_YLABEL)
        legend_title = "\n".join(["multiplier", *filter(None, _legend_note(rows).split("; "))])
        axes[0][-1].legend(
            title=legend_title, fontsize=7, title_fontsize=7, loc="center left", bbox_to_anchor=(1, 0.5)
        )
        _subtitle(figure, [*filter(None, [subtitle]), *notes])
    return figure


def plot_sweep_multipliers(effects: pd.DataFrame, layer: int, subtitle: str = "") -> Figure:
    """Paired effect on p(matching) against multiplier at one layer, one line per behaviour (CAA Fig. 2
    as effects): 95% intervals, the null band shaded, cells inside it hollow (arguments as
    ``plot_sweep_layers``)."""
    rows, notes = sweep_effects_view(effects)
    rows = rows[rows["layer"] == layer]
    with styled():
        figure, ax = plt.subplots(figsize=(4.8, 3.4))
        for k, name in enumerate(sorted(rows["vector"].unique())):
            _effect_line(ax, rows[rows["vector"] == name], "multiplier", f"C{k}", str(name))
        ax.axhline(0, color="grey", lw=0.8, ls=":")
        ax.set(title=f"steering at layer {layer}", xlabel="multiplier", ylabel=EFFECT_YLABEL)
        ax.legend(title=_legend_note(rows).replace("; ", "\n") or None, fontsize=7, title_fontsize=7)
        _subtitle(figure, [*filter(None, [subtitle]), *notes])
    return figure
