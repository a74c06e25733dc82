"""Every figure of the main job, drawn from its saved results alone.

``FIGURES`` maps a figure type to a function ``(results_dir, figures_dir) -> [paths]``; the scripts in
``figures/`` and ``caa-lens figures`` call it, so one command redraws any figure from a results
directory without recomputing anything.
"""

from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # figures are files here; never open a window from a script
import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure

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


def plot_sweep_layers(summary: pd.DataFrame) -> Figure:
    """Behaviour probability against layer, one line per multiplier, one panel per behaviour (CAA Fig. 3)."""
    vectors = sorted(summary["vector"].unique())
    with plt.rc_context(plots.STYLE):  # type: ignore[arg-type]
        figure, axes = plt.subplots(1, len(vectors), figsize=(4 * len(vectors), 3.2), squeeze=False)
        for ax, name in zip(axes[0], vectors, strict=True):
            rows = summary[summary["vector"] == name]
            colours = plt.get_cmap("coolwarm")
            multipliers = sorted(rows["multiplier"].unique())
            for k, multiplier in enumerate(multipliers):
                line = rows[rows["multiplier"] == multiplier].sort_values("layer")
                ax.plot(
                    line["layer"],
                    line["p_matching"],
                    marker="o",
                    ms=3,
                    color=colours(k / max(1, len(multipliers) - 1)),
                    label=f"{multiplier:+g}",
                )
            ax.set(title=name, xlabel="steered layer", ylabel="p(matching answer)", ylim=(0, 1))
        axes[0][-1].legend(title="multiplier", fontsize=7, loc="center left", bbox_to_anchor=(1, 0.5))
    return figure


def plot_sweep_multipliers(summary: pd.DataFrame, layer: int) -> Figure:
    """Behaviour probability against multiplier at one layer, one line per behaviour (CAA Fig. 2)."""
    with plt.rc_context(plots.STYLE):  # type: ignore[arg-type]
        figure, ax = plt.subplots(figsize=(4.5, 3.2))
        for name in sorted(summary["vector"].unique()):
            rows = summary[(summary["vector"] == name) & (summary["layer"] == layer)].sort_values(
                "multiplier"
            )
            ax.errorbar(
                rows["multiplier"],
                rows["p_matching"],
                yerr=rows.get("sem"),
                marker="o",
                ms=3,
                capsize=2,
                label=name,
            )
        ax.axhline(0.5, color="grey", lw=0.8, ls=":")
        ax.set(
            title=f"steering at layer {layer}", xlabel="multiplier", ylabel="p(matching answer)", ylim=(0, 1)
        )
        ax.legend()
    return figure


def _sweep(results: Path, figures: Path) -> list[Path]:
    summary = pd.read_csv(results / "sweep_summary.csv")
    paths = [_save(plot_sweep_layers(summary), figures / "sweep_layers.png")]
    manifest = (
        pd.read_json(results / "manifest.json", typ="series")
        if (results / "manifest.json").exists()
        else None
    )
    layer = int(manifest["focus_layer"]) if manifest is not None else int(summary["layer"].median())
    if layer not in set(summary["layer"]):
        layer = int(summary["layer"].iloc[0])
    paths.append(_save(plot_sweep_multipliers(summary, layer), figures / "sweep_multipliers.png"))
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


FIGURES: dict[str, Drawer] = {
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
