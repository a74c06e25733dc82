"""Every figure of the main job, drawn from its saved results alone.

``FIGURES`` maps a figure type to a function ``(results_dir, figures_dir) -> [paths]``; the scripts in
``figures/`` and ``caa-lens figures`` call it, so one command redraws any figure from a results
directory without recomputing anything.
"""

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # figures are files here; never open a window from a script
import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from analysis import plots
from analysis.store import load_result
from caa_lens.outputs import check_output_dir

Drawer = Callable[[Path, Path], list[Path]]


def _saved(directory: Path) -> set[str]:
    return {p.name.removesuffix(".json") for p in (directory / "results").glob("*.json")}


# PNG text chunk that marks a figure as caa_lens's own, so redrawing may replace it and nothing else.
FIGURE_SOFTWARE = "caa_lens figures"


def is_caa_lens_png(path: Path) -> bool:
    """True for a PNG whose ``Software`` text chunk says caa_lens drew it."""
    with open(path, "rb") as handle:
        head = handle.read(1 << 16)
    if not head.startswith(b"\x89PNG\r\n\x1a\n"):
        return False
    return b"tEXtSoftware\x00" + FIGURE_SOFTWARE.encode() in head


def is_figures_dir(path: Path) -> bool:
    """True when every file in ``path`` is a figure caa_lens drew (an empty directory too)."""
    return all(p.is_file() and p.suffix == ".png" and is_caa_lens_png(p) for p in Path(path).iterdir())


def _save(figure: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    # the plots' style is not active here
    figure.savefig(path, bbox_inches="tight", metadata={"Software": FIGURE_SOFTWARE})
    plt.close(figure)
    return path


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
    with plt.rc_context(plots.STYLE):  # type: ignore[arg-type]
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
    with plt.rc_context(plots.STYLE):  # type: ignore[arg-type]
        figure, ax = plt.subplots(figsize=(4.8, 3.4))
        for k, name in enumerate(sorted(rows["vector"].unique())):
            _effect_line(ax, rows[rows["vector"] == name], "multiplier", f"C{k}", str(name))
        ax.axhline(0, color="grey", lw=0.8, ls=":")
        ax.set(title=f"steering at layer {layer}", xlabel="multiplier", ylabel=EFFECT_YLABEL)
        ax.legend(title=_legend_note(rows).replace("; ", "\n") or None, fontsize=7, title_fontsize=7)
        _subtitle(figure, [*filter(None, [subtitle]), *notes])
    return figure


def _sweep_effects(results: Path) -> tuple[pd.DataFrame | None, str]:
    """The sweep's effects from a results directory, and which items they cover.

    In order: ``sweep_effects.csv`` (the main job's effects table: the report items, as in the
    report), the sweep tables ``sweep/*.jsonl`` (``effects_summary`` over all their items), then an
    old ``sweep_summary.csv`` of means (drawn as differences of means, without intervals).
    """
    from caa_lens.sweep import SweepFileError, effects_summary, is_sweep_file, load_results

    saved = results / "sweep_effects.csv"
    if saved.is_file():
        frame = pd.read_csv(saved)
        if {"vector", "layer", "multiplier", "effect", "effect_low", "effect_high"} <= set(frame.columns):
            report = "split" in frame and (frame["split"] == "report").all()
            return frame, "held-out report items" if report else ""
    tables = []
    for path in sorted((results / "sweep").glob("*.jsonl")):
        if not is_sweep_file(path):
            continue
        try:
            tables.append(load_results(path))
        except SweepFileError:  # a sweep stopped before its first rows: nothing of it to draw
            continue
    if tables:
        return effects_summary(pd.concat(tables, ignore_index=True)), "all test items"
    if (results / "sweep_summary.csv").is_file():
        return pd.read_csv(results / "sweep_summary.csv"), ""
    return None, ""


def _focus_layer(results: Path, layers: set[int]) -> int:
    """The main job's focus layer (manifest, else selection.json), else the middle swept layer."""
    for name in ("manifest.json", "selection.json"):
        path = results / name
        if path.is_file():
            value = json.loads(path.read_text()).get("focus_layer")
            if isinstance(value, int) and value in layers:
                return value
    ordered = sorted(layers)
    return ordered[len(ordered) // 2]


def _sweep(results: Path, figures: Path) -> list[Path]:
    effects, items = _sweep_effects(results)
    if effects is None:
        return []
    subtitle = f"effects on {items}" if items else ""
    paths = [_save(plot_sweep_layers(effects, subtitle), figures / "sweep_layers.png")]
    layer = _focus_layer(results, {int(x) for x in effects["layer"]})
    by_multiplier = plot_sweep_multipliers(effects, layer, subtitle)
    paths.append(_save(by_multiplier, figures / "sweep_multipliers.png"))
    return paths


def _each(prefix: str, draw: Callable[[Any, str], Figure]) -> Drawer:
    def drawer(results: Path, figures: Path) -> list[Path]:
        names = sorted(n for n in _saved(results) if n.startswith(prefix))
        return [_save(draw(load_result(results / "results", n), n), figures / f"{n}.png") for n in names]

    return drawer


def _one(name: str, draw: Callable[[Any], Figure]) -> Drawer:
    def drawer(results: Path, figures: Path) -> list[Path]:
        if name not in _saved(results):
            return []
        return [_save(draw(load_result(results / "results", name)), figures / f"{name}.png")]

    return drawer


def _sample_size(results: Path, figures: Path) -> list[Path]:
    if "sample_size" not in _saved(results):
        return []
    scaling = load_result(results / "results", "sample_size")
    effect = (
        load_result(results / "results", "sample_size_effect")
        if "sample_size_effect" in _saved(results)
        else None
    )
    layers = sorted(set(scaling.layers))  # type: ignore[attr-defined]
    shown = [layers[len(layers) // 4], layers[len(layers) // 2], layers[(3 * len(layers)) // 4]]
    return [_save(plots.plot_sample_size(scaling, sorted(set(shown)), effect), figures / "sample_size.png")]  # type: ignore[arg-type]


def _behaviour_similarity(results: Path, figures: Path) -> list[Path]:
    if "behaviour_similarity" not in _saved(results):
        return []
    result = load_result(results / "results", "behaviour_similarity")
    layer = result.layers[len(result.layers) // 2]  # type: ignore[attr-defined]
    return [_save(plots.plot_behaviour_similarity(result, layer), figures / "behaviour_similarity.png")]  # type: ignore[arg-type]


def _token_view(results: Path, figures: Path) -> list[Path]:
    from caa_lens.views import plot_projection

    if "token_view" not in _saved(results):
        return []
    return [
        _save(plot_projection(load_result(results / "results", "token_view")), figures / "token_view.png")
    ]  # type: ignore[arg-type]


def _behaviours(results: Path, figures: Path) -> list[Path]:
    path = results / "behaviour_headline.csv"
    if not path.is_file():
        return []
    headline = pd.read_csv(path)
    if headline.empty:
        return []
    return [_save(plots.plot_behaviour_headline(headline), figures / "behaviours.png")]


FIGURES: dict[str, Drawer] = {
    "behaviours": _behaviours,
    "sweep": _sweep,
    "layer_similarity": _each(
        "layer_similarity-", lambda r, n: plots.plot_layer_similarity(r, n.split("-", 1)[1])
    ),  # type: ignore[arg-type]
    "behaviour_similarity": _behaviour_similarity,
    "pca": _each("pca-", lambda r, n: plots.plot_pca_grid(r)),  # type: ignore[arg-type]
    "separability": _each("separability-", lambda r, n: plots.plot_separability(r)),  # type: ignore[arg-type]
    "norm_profile": _one("norm_profile", plots.plot_norm_profile),  # type: ignore[arg-type]
    "ratio_tradeoff": _one("ratio_tradeoff", plots.plot_ratio_tradeoff),  # type: ignore[arg-type]
    "sample_size": _sample_size,
    "layer_transfer": _one("layer_transfer", plots.plot_layer_transfer),  # type: ignore[arg-type]
    "interference": _one("interference", plots.plot_interference),  # type: ignore[arg-type]
    "reversal": _one("reversal", plots.plot_reversal_progress),  # type: ignore[arg-type]
    "token_view": _token_view,
}


def draw(
    results: str | Path, figures: str | Path | None = None, kinds: list[str] | None = None
) -> list[Path]:
    """Draw the chosen figure types (all by default) from ``results`` into ``figures`` (default: results/figures)."""
    results = Path(results)
    target = Path(figures) if figures is not None else results / "figures"
    unknown = sorted(set(kinds or []) - set(FIGURES))
    if unknown:
        raise ValueError(f"unknown figure types {unknown}: expected some of {sorted(FIGURES)}")
    # Redraw only over figures caa_lens drew: never into a directory holding anything else.
    check_output_dir(target, "figures", is_figures_dir)
    paths: list[Path] = []
    for kind in kinds or list(FIGURES):
        paths += FIGURES[kind](results, target)
    return paths


def script_main(kind: str, argv: list[str] | None = None) -> None:
    """Entry point of the one-figure scripts in ``figures/``: ``python figures/KIND.py RESULTS [OUT]``."""
    import argparse

    parser = argparse.ArgumentParser(
        description=f"Draw the {kind!r} figure(s) from a caa-lens results directory."
    )
    parser.add_argument("results", type=Path, help="directory written by `caa-lens demo`")
    parser.add_argument("out", type=Path, nargs="?", help="output directory (default: RESULTS/figures)")
    parser.add_argument("--out", dest="out_option", type=Path, help="the same as OUT")
    args = parser.parse_args(argv)
    if args.out and args.out_option and args.out != args.out_option:
        parser.error("give the output directory once (OUT or --out)")
    for path in draw(args.results, args.out or args.out_option, [kind]):
        print(path)
