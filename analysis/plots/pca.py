"""Figures of the contrastive activations themselves (``analysis.pca``): their first two principal
components per layer, and how linearly separable the behaviour and the answer letter are."""

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from analysis.pca import PcaProjections, Separability
from analysis.plots.style import SIDE_COLOURS, finish, styled

__all__ = ["plot_pca_grid", "plot_separability"]


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
    with styled():
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
    return finish(figure, save)


def plot_separability(result: Separability, save: str | Path | None = None) -> Figure:
    """Held-out probe accuracy by layer for the behaviour side and the answer letter."""
    table = result.table
    with styled():
        figure, ax = plt.subplots(figsize=(5.5, 3.4))
        ax.plot(table.layer, table.behaviour_accuracy, marker="o", ms=3, label="behaviour side")
        ax.plot(table.layer, table.letter_accuracy, marker="s", ms=3, label="answer letter")
        ax.axhline(0.5, color="grey", ls="--", lw=1, label="chance")
        ax.set(xlabel="layer", ylabel="held-out accuracy", ylim=(0.3, 1.02))
        ax.set_title(f"Linear separability ({result.probe} probe)")
        ax.legend()
        figure.tight_layout()
    return finish(figure, save)
