"""The main job's figures drawn from saved results alone: the registry behind ``figures/`` and
``caa-lens figures``.

Each entry is a ``FigureSpec[R]`` (``analysis.plots.spec``): it names a figure type, the saved files it reads, the PNG files it writes, a ``find``
that turns a results directory into ``(file stem, R)`` pairs (none when nothing is saved) and the
``plot`` that draws one ``R``. ``FIGURES`` holds the main job's figure types (``caa-lens demo``
writes their inputs); ``analysis.plots.actadd_registry`` holds the ActAdd figures. One command redraws any figure without recomputing anything, and never
writes into a directory that holds anything but caa_lens figures.
"""

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd
from matplotlib.figure import Figure

from analysis.interference import Interference
from analysis.norms import NormProfile
from analysis.pca import PcaProjections, Separability
from analysis.plots.behaviours import plot_behaviour_headline
from analysis.plots.interference import plot_interference
from analysis.plots.norms import plot_norm_profile, plot_ratio_tradeoff
from analysis.plots.pca import plot_pca_grid, plot_separability
from analysis.plots.reversal import plot_reversal_progress
from analysis.plots.scaling import plot_sample_size
from analysis.plots.similarity import plot_behaviour_similarity, plot_layer_similarity, plot_layer_transfer
from analysis.plots.spec import FigureSpec, check_kinds
from analysis.plots.style import files_backend, is_figures_dir
from analysis.plots.sweep import plot_sweep_layers, plot_sweep_multipliers
from analysis.plots.tokens import plot_projection
from analysis.ratio_tradeoff import RatioTradeoff
from analysis.reversal import ReversalResult
from analysis.scaling import SampleSizeScaling
from analysis.similarity import BehaviourSimilarity, LayerSimilarity
from analysis.size_effect import SizeEffect
from analysis.store import load_result
from analysis.transfer import LayerTransfer
from caa_lens.outputs import check_output_dir
from caa_lens.views import TokenProjection

__all__ = ["FIGURES", "draw"]

R = TypeVar("R")

# ------------------------------------------------------------------------------ reading saved results


def _saved(results: Path) -> set[str]:
    return {p.name.removesuffix(".json") for p in (results / "results").glob("*.json")}


def _load(results: Path, name: str, kind: type[R]) -> R:
    result = load_result(results / "results", name)
    if not isinstance(result, kind):
        raise TypeError(f"results/{name}.json holds a {type(result).__name__}, not a {kind.__name__}")
    return result


def _one(name: str, kind: type[R]) -> Callable[[Path], list[tuple[str, R]]]:
    """The saved result ``name`` (drawn into ``name.png``), if there is one."""

    def find(results: Path) -> list[tuple[str, R]]:
        return [(name, _load(results, name, kind))] if name in _saved(results) else []

    return find


def _each(prefix: str, kind: type[R]) -> Callable[[Path], list[tuple[str, R]]]:
    """Every saved result whose name starts with ``prefix`` (one per behaviour), each into ``NAME.png``."""

    def find(results: Path) -> list[tuple[str, R]]:
        names = sorted(n for n in _saved(results) if n.startswith(prefix))
        return [(n, _load(results, n, kind)) for n in names]

    return find


def _behaviour_headline(results: Path) -> list[tuple[str, pd.DataFrame]]:
    path = results / "behaviour_headline.csv"
    if not path.is_file():
        return []
    headline = pd.read_csv(path)
    return [] if headline.empty else [("behaviours", headline)]


@dataclass(frozen=True)
class _SweepPanel:
    """A sweep's effects, which items they cover, and the layer to draw them at (None: every layer)."""

    effects: pd.DataFrame
    subtitle: str
    layer: int | None


def _sweep_effects(results: Path) -> tuple[pd.DataFrame | None, str]:
    """The sweep's effects from a results directory, and which items they cover.

    In order: ``sweep_effects.csv`` (the main job's effects table: the report items, as in the
    report), the sweep tables ``sweep/*.jsonl`` (``effects_summary`` over all their items), then an
    old ``sweep_summary.csv`` of means (drawn as differences of means, without intervals).
    """
    from caa_lens.sweep_effects import effects_summary
    from caa_lens.sweep_io import SweepFileError, is_sweep_file, load_results

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


def _sweep(results: Path) -> list[tuple[str, _SweepPanel]]:
    effects, items = _sweep_effects(results)
    if effects is None:
        return []
    subtitle = f"effects on {items}" if items else ""
    layer = _focus_layer(results, {int(x) for x in effects["layer"]})
    return [
        ("sweep_layers", _SweepPanel(effects, subtitle, None)),
        ("sweep_multipliers", _SweepPanel(effects, subtitle, layer)),
    ]


def _plot_sweep(panel: _SweepPanel) -> Figure:
    if panel.layer is None:
        return plot_sweep_layers(panel.effects, panel.subtitle)
    return plot_sweep_multipliers(panel.effects, panel.layer, panel.subtitle)


def _layer_similarities(results: Path) -> list[tuple[str, tuple[LayerSimilarity, str]]]:
    """Each behaviour's layer similarity, titled with the behaviour's name."""
    found = _each("layer_similarity-", LayerSimilarity)(results)
    return [(stem, (result, stem.split("-", 1)[1])) for stem, result in found]


def _plot_layer_similarity(item: tuple[LayerSimilarity, str]) -> Figure:
    return plot_layer_similarity(*item)


def _behaviour_similarity(results: Path) -> list[tuple[str, tuple[BehaviourSimilarity, int]]]:
    """The behaviours' similarity, drawn at the middle of its layers."""
    found = _one("behaviour_similarity", BehaviourSimilarity)(results)
    return [(stem, (result, result.layers[len(result.layers) // 2])) for stem, result in found]


def _plot_behaviour_similarity(item: tuple[BehaviourSimilarity, int]) -> Figure:
    return plot_behaviour_similarity(*item)


_SampleSize = tuple[SampleSizeScaling, list[int], SizeEffect | None]


def _sample_size(results: Path) -> list[tuple[str, _SampleSize]]:
    """The scaling result at three layers (quartiles of its layers), with its steering effects if saved."""
    found = _one("sample_size", SampleSizeScaling)(results)
    if not found:
        return []
    scaling = found[0][1]
    effect = _one("sample_size_effect", SizeEffect)(results)
    layers = sorted(set(scaling.layers))
    shown = [layers[len(layers) // 4], layers[len(layers) // 2], layers[(3 * len(layers)) // 4]]
    return [("sample_size", (scaling, sorted(set(shown)), effect[0][1] if effect else None))]


def _plot_sample_size(item: _SampleSize) -> Figure:
    return plot_sample_size(*item)


def _pca(result: PcaProjections) -> Figure:
    return plot_pca_grid(result)


FIGURES: dict[str, FigureSpec[Any]] = {
    spec.name: spec
    for spec in (
        FigureSpec[pd.DataFrame](
            "behaviours",
            "The headline: each behaviour's held-out effect in the metric it is read by, with its "
            "interval, the null band of random same-norm vectors and the fluency cost.",
            ("behaviour_headline.csv",),
            ("behaviours.png",),
            _behaviour_headline,
            plot_behaviour_headline,
        ),
        FigureSpec[_SweepPanel](
            "sweep",
            "Paired effect on p(matching) against layer (one line per multiplier) and against "
            "multiplier at the focus layer (one line per behaviour).",
            ("sweep_effects.csv", "sweep/*.jsonl", "sweep_summary.csv"),
            ("sweep_layers.png", "sweep_multipliers.png"),
            _sweep,
            _plot_sweep,
        ),
        FigureSpec[tuple[LayerSimilarity, str]](
            "layer_similarity",
            "Cosine similarity between the steering vectors of every pair of layers, per behaviour.",
            ("results/layer_similarity-*.json",),
            ("layer_similarity-*.png",),
            _layer_similarities,
            _plot_layer_similarity,
        ),
        FigureSpec[tuple[BehaviourSimilarity, int]](
            "behaviour_similarity",
            "Cosine similarity between behaviours' vectors at a middle layer.",
            ("results/behaviour_similarity.json",),
            ("behaviour_similarity.png",),
            _behaviour_similarity,
            _plot_behaviour_similarity,
        ),
        FigureSpec[PcaProjections](
            "pca",
            "PCA of positive and negative activations over layers, coloured by side, marked by answer letter.",
            ("results/pca-*.json",),
            ("pca-*.png",),
            _each("pca-", PcaProjections),
            _pca,
        ),
        FigureSpec[Separability](
            "separability",
            "Held-out linear-probe accuracy by layer, for behaviour side and for answer letter.",
            ("results/separability-*.json",),
            ("separability-*.png",),
            _each("separability-", Separability),
            plot_separability,
        ),
        FigureSpec[NormProfile](
            "norm_profile",
            "Vector norm, residual norms at read and steered positions, and their ratio, by layer.",
            ("results/norm_profile.json",),
            ("norm_profile.png",),
            _one("norm_profile", NormProfile),
            plot_norm_profile,
        ),
        FigureSpec[RatioTradeoff](
            "ratio_tradeoff",
            "Behaviour change and perplexity as the ratio ||m v|| / ||resid|| grows.",
            ("results/ratio_tradeoff.json",),
            ("ratio_tradeoff.png",),
            _one("ratio_tradeoff", RatioTradeoff),
            plot_ratio_tradeoff,
        ),
        FigureSpec[_SampleSize](
            "sample_size",
            "Cosine to the full-data vector, split-half stability and steering effect against the "
            "number of pairs.",
            ("results/sample_size.json", "results/sample_size_effect.json"),
            ("sample_size.png",),
            _sample_size,
            _plot_sample_size,
        ),
        FigureSpec[LayerTransfer](
            "layer_transfer",
            "Effect of the vector read at layer i applied at layer j.",
            ("results/layer_transfer.json",),
            ("layer_transfer.png",),
            _one("layer_transfer", LayerTransfer),
            plot_layer_transfer,
        ),
        FigureSpec[Interference](
            "interference",
            "Effect of steering combinations of behaviours on every behaviour.",
            ("results/interference.json",),
            ("interference.png",),
            _one("interference", Interference),
            plot_interference,
        ),
        FigureSpec[ReversalResult](
            "reversal",
            "Progress of the adversarial reversal search.",
            ("results/reversal.json",),
            ("reversal.png",),
            _one("reversal", ReversalResult),
            plot_reversal_progress,
        ),
        FigureSpec[TokenProjection](
            "token_view",
            "Per-token projection of the residual stream onto the vector, prompt and steered generation.",
            ("results/token_view.json",),
            ("token_view.png",),
            _one("token_view", TokenProjection),
            plot_projection,
        ),
    )
}


def draw(
    results: str | Path, figures: str | Path | None = None, kinds: list[str] | None = None
) -> list[Path]:
    """Draw the chosen figure types (all by default) from ``results`` into ``figures`` (default: results/figures)."""
    results = Path(results)
    target = Path(figures) if figures is not None else results / "figures"
    chosen = check_kinds(kinds, FIGURES)
    # Redraw only over figures caa_lens drew: never into a directory holding anything else.
    check_output_dir(target, "figures", is_figures_dir)
    files_backend()
    paths: list[Path] = []
    for kind in chosen:
        paths += FIGURES[kind].draw(results, target)
    return paths
