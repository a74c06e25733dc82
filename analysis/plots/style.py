"""The one look of every caa_lens figure, the drawing helpers the plot modules share, and saving.

Figures use one small style (``STYLE``) applied per figure through ``matplotlib.rc_context``, so the
caller's global matplotlib settings are left alone. Saved PNGs carry a marker (their ``Software``
text chunk says caa_lens drew them): redrawing may replace such a file and nothing else, and a
figures directory is one that holds nothing but such files. Importing this module does not choose a
matplotlib backend, so notebooks show figures inline; drawing files (``draw``, the scripts in
``figures/``) selects Agg when no backend was chosen yet, so a script never opens a window.
"""

import math
from collections.abc import Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from matplotlib.typing import RcKeyType

__all__ = [
    "DIVERGING",
    "FIGURE_SOFTWARE",
    "SIDE_COLOURS",
    "STYLE",
    "files_backend",
    "finish",
    "heatmap",
    "is_caa_lens_png",
    "is_figures_dir",
    "require_columns",
    "save_figure",
    "styled",
    "yerr",
]

STYLE: dict[RcKeyType, Any] = {
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

# PNG text chunk that marks a figure as caa_lens's own, so redrawing may replace it and nothing else.
FIGURE_SOFTWARE = "caa_lens figures"


def styled() -> AbstractContextManager[None]:
    """The figures' style as a context, so the caller's global settings are left alone."""
    return plt.rc_context(STYLE)


def files_backend() -> None:
    """Select Agg unless a backend is already chosen (a notebook's inline one stays): figures are
    files here, and Agg never opens a window."""
    if matplotlib.get_backend(auto_select=False) is None:
        matplotlib.use("Agg")


def finish(figure: Figure, save: str | Path | None) -> Figure:
    """Save ``figure`` to ``save`` when given (a plain PNG, no marker), and return it."""
    if save is not None:
        Path(save).parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(save, bbox_inches="tight")  # the style is not active outside its context
    return figure


def save_figure(figure: Figure, path: Path) -> Path:
    """Write ``figure`` to ``path`` as a PNG carrying the caa_lens marker, then close it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # the plots' style is not active here
    figure.savefig(path, bbox_inches="tight", metadata={"Software": FIGURE_SOFTWARE})
    plt.close(figure)
    return path


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


def heatmap(ax, matrix: np.ndarray, labels_x, labels_y, vmin: float, vmax: float, cmap: str, label: str):
    """A matrix as an image with at most ~15 tick labels per axis and a labelled colour bar."""
    image = ax.imshow(matrix, vmin=vmin, vmax=vmax, cmap=cmap, origin="lower", aspect="auto")
    step_x = max(1, math.ceil(len(labels_x) / 15))
    step_y = max(1, math.ceil(len(labels_y) / 15))
    ax.set_xticks(range(0, len(labels_x), step_x), [str(x) for x in labels_x][::step_x])
    ax.set_yticks(range(0, len(labels_y), step_y), [str(y) for y in labels_y][::step_y])
    ax.grid(False)
    ax.figure.colorbar(image, ax=ax, label=label, shrink=0.85)
    return image


def require_columns(table, columns: Sequence[str], what: str) -> None:
    """Results saved before the intervals and nulls existed cannot be drawn honestly: say so."""
    lacking = [c for c in columns if c not in table.columns]
    if lacking:
        raise ValueError(
            f"the {what} table lacks {lacking}: it was made by an older caa_lens; rerun the analysis "
            f"(analysis.{what}) to get its intervals and null bands"
        )


def yerr(rows, column: str, prefix: str | None = None) -> np.ndarray:
    """Asymmetric error bars from ``<prefix>_low/_high`` (``prefix`` defaults to ``column``); a NaN
    bound (too little data for an interval) draws no bar."""
    prefix = prefix or column
    below = (rows[column] - rows[f"{prefix}_low"]).to_numpy(float)
    above = (rows[f"{prefix}_high"] - rows[column]).to_numpy(float)
    return np.nan_to_num(np.vstack([below, above]).clip(min=0))
