"""The ActAdd figures drawn from saved results alone: a registry parallel to ``FIGURES``.

``caa-lens actadd ...`` writes each experiment's tables and summary into one directory (see
``analysis.actadd_store.save_actadd``); ``ACTADD_FIGURES`` redraws them from those files, by default
beside the tables (``EXPERIMENT.png``), replacing only figures caa_lens drew.
"""

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from matplotlib.figure import Figure

from analysis.actadd_generation import GenerationExperiment
from analysis.actadd_perplexity import RelatedTextResult
from analysis.actadd_store import is_actadd_dir, load_actadd
from analysis.plots.actadd import plot_actadd, plot_related_text, plot_sentiment, plot_topic
from analysis.plots.spec import FigureSpec, check_kinds
from analysis.plots.style import files_backend, is_caa_lens_png, is_figures_dir, save_figure
from caa_lens.outputs import check_output_dir, check_output_file

__all__ = ["ACTADD_FIGURES", "draw_actadd", "save_actadd_figure"]

R = TypeVar("R")


def _actadd(experiment: str, kind: type[R]) -> Callable[[Path], list[tuple[str, R]]]:
    """One ActAdd experiment saved by ``save_actadd`` (drawn into ``EXPERIMENT.png``), if it is there."""

    def find(results: Path) -> list[tuple[str, R]]:
        if not is_actadd_dir(results) or not (results / f"{experiment}.json").is_file():
            return []
        result = load_actadd(results, experiment)
        if not isinstance(result, kind):
            raise TypeError(
                f"{results / experiment}.json holds a {type(result).__name__}, not a {kind.__name__}"
            )
        return [(experiment, result)]

    return find


ACTADD_FIGURES: dict[str, FigureSpec[Any]] = {
    spec.name: spec
    for spec in (
        FigureSpec[GenerationExperiment](
            "actadd_topic",
            "Share of completions with a wedding word against the coefficient, one line per layer, with "
            "the fluency cost (ActAdd's topic experiment).",
            ("weddings.json", "weddings_*.csv"),
            ("weddings.png",),
            _actadd("weddings", GenerationExperiment),
            plot_topic,
        ),
        FigureSpec[RelatedTextResult](
            "actadd_perplexity",
            "Perplexity ratio steered / unsteered of related and unrelated texts against the "
            "coefficient (ActAdd's perplexity experiment).",
            ("perplexity.json", "perplexity_*.csv"),
            ("perplexity.png",),
            _actadd("perplexity", RelatedTextResult),
            plot_related_text,
        ),
        FigureSpec[GenerationExperiment](
            "actadd_sentiment",
            "VADER positive rate of replies to negative sentences against the coefficient, with the "
            "fluency cost (ActAdd's sentiment experiment).",
            ("sentiment.json", "sentiment_*.csv"),
            ("sentiment.png",),
            _actadd("sentiment", GenerationExperiment),
            plot_sentiment,
        ),
    )
}


def _save_actadd(plot: Callable[[R], Figure], item: R, out: Path, stem: str) -> Path:
    # The target may be the ActAdd directory itself (tables beside the figure): check the one file,
    # before drawing.
    path = check_output_file(out / f"{stem}.png", "caa_lens figure", is_caa_lens_png)
    return save_figure(plot(item), path)


def draw_actadd(
    results: str | Path, out: str | Path | None = None, kinds: list[str] | None = None
) -> list[Path]:
    """Draw the chosen ActAdd figures (all saved ones by default) from a directory written by
    ``caa-lens actadd ...`` into ``out`` (default: beside the tables, in ``results`` itself); a
    separate ``out`` must hold nothing but caa_lens figures."""
    results = Path(results)
    if not is_actadd_dir(results):
        raise ValueError(f"{results} is not a directory written by `caa-lens actadd`")
    target = Path(out) if out is not None else results
    chosen = check_kinds(kinds, ACTADD_FIGURES)
    if target != results:
        check_output_dir(target, "figures", is_figures_dir)
    files_backend()
    paths: list[Path] = []
    for kind in chosen:
        spec = ACTADD_FIGURES[kind]
        paths += [_save_actadd(spec.plot, item, target, stem) for stem, item in spec.find(results)]
    return paths


def save_actadd_figure(result: GenerationExperiment | RelatedTextResult, out: str | Path) -> Path:
    """Draw the result's figure into ``out/<experiment>.png`` with the caa_lens PNG marker; an existing
    file there is replaced only if caa_lens drew it."""
    stem = "perplexity" if isinstance(result, RelatedTextResult) else result.experiment
    files_backend()
    return _save_actadd(plot_actadd, result, Path(out), stem)
