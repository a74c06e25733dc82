"""The typed figure spec every registered figure is: what it reads, how it draws, which files it writes."""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from matplotlib.figure import Figure

from analysis.plots.style import save_figure

__all__ = ["FigureSpec", "check_kinds"]

R = TypeVar("R")


@dataclass(frozen=True)
class FigureSpec(Generic[R]):
    """One figure type: where its inputs are saved, how one input is drawn, which files it writes.

    Attributes:
        name: the figure type (``caa-lens figures --kind NAME``; its script is ``figures/NAME.py``).
        summary: what the figure shows, one sentence.
        reads: the saved files it reads, as globs relative to the results directory (alternatives
            for one input are listed in the order they are tried).
        files: the PNG files it writes, as globs relative to the figures directory.
        find: the inputs saved in a results directory, each with the stem of its PNG file; empty
            when the results hold none (the figure is then skipped, not an error).
        plot: draws one input.
    """

    name: str
    summary: str
    reads: tuple[str, ...]
    files: tuple[str, ...]
    find: Callable[[Path], list[tuple[str, R]]]
    plot: Callable[[R], Figure]

    def draw(self, results: Path, figures: Path) -> list[Path]:
        """Draw every input ``find`` sees in ``results`` into ``figures`` (no directory check here)."""
        return [save_figure(self.plot(item), figures / f"{stem}.png") for stem, item in self.find(results)]


def check_kinds(kinds: Sequence[str] | None, registry: dict[str, FigureSpec[Any]]) -> list[str]:
    """``kinds`` (all of the registry when None), checked against ``registry``."""
    unknown = sorted(set(kinds or []) - set(registry))
    if unknown:
        raise ValueError(f"unknown figure types {unknown}: expected some of {sorted(registry)}")
    return list(kinds or registry)
