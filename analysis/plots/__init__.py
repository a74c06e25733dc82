"""All of caa_lens's plotting: paper-style figures of each analysis result, in one style, and the
typed registry that redraws every figure from saved results (``figures/NAME.py``, ``caa-lens figures``).

Each ``plot_*`` takes a result dataclass (or table) and returns a matplotlib Figure; none reads files
or shows windows, and ``save=`` (where offered) writes a plain PNG after drawing. ``draw`` and
``draw_actadd`` redraw registered figures into a figures directory, marking each PNG as caa_lens's
own (``is_caa_lens_png``) so redrawing replaces nothing else. Modules: ``style`` (colours, rc
settings, saving), one plot module per analysis, ``spec`` / ``registry`` / ``actadd_registry`` (the
registries) and ``script`` (the scripts' entry point).

>>> from analysis.plots import FIGURES
>>> FIGURES["pca"].reads, FIGURES["pca"].files
(('results/pca-*.json',), ('pca-*.png',))
"""

from analysis.plots.actadd import plot_actadd, plot_related_text, plot_sentiment, plot_topic
from analysis.plots.actadd_registry import ACTADD_FIGURES, draw_actadd, save_actadd_figure
from analysis.plots.behaviours import plot_behaviour_headline
from analysis.plots.interference import plot_interference
from analysis.plots.norms import plot_norm_profile, plot_ratio_tradeoff
from analysis.plots.pca import plot_pca_grid, plot_separability
from analysis.plots.registry import FIGURES, draw
from analysis.plots.reversal import plot_reversal_progress
from analysis.plots.scaling import plot_sample_size
from analysis.plots.script import script_main
from analysis.plots.similarity import plot_behaviour_similarity, plot_layer_similarity, plot_layer_transfer
from analysis.plots.spec import FigureSpec
from analysis.plots.style import (
    DIVERGING,
    FIGURE_SOFTWARE,
    SIDE_COLOURS,
    STYLE,
    is_caa_lens_png,
    is_figures_dir,
    save_figure,
)
from analysis.plots.sweep import plot_sweep_layers, plot_sweep_multipliers, sweep_effects_view
from analysis.plots.tokens import plot_projection

__all__ = [
    "ACTADD_FIGURES",
    "DIVERGING",
    "FIGURES",
    "FIGURE_SOFTWARE",
    "SIDE_COLOURS",
    "STYLE",
    "FigureSpec",
    "draw",
    "draw_actadd",
    "is_caa_lens_png",
    "is_figures_dir",
    "plot_actadd",
    "plot_behaviour_headline",
    "plot_behaviour_similarity",
    "plot_interference",
    "plot_layer_similarity",
    "plot_layer_transfer",
    "plot_norm_profile",
    "plot_pca_grid",
    "plot_projection",
    "plot_ratio_tradeoff",
    "plot_related_text",
    "plot_reversal_progress",
    "plot_sample_size",
    "plot_sentiment",
    "plot_separability",
    "plot_sweep_layers",
    "plot_sweep_multipliers",
    "plot_topic",
    "save_actadd_figure",
    "save_figure",
    "script_main",
    "sweep_effects_view",
]
