"""Figure of combined steering (``analysis.interference``): the effect of each combination of
vectors on each behaviour, and the interaction beside its random null."""

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from analysis.interference import Interference
from analysis.plots.style import DIVERGING, finish, styled

__all__ = ["plot_interference"]


def plot_interference(result: Interference, save: str | Path | None = None) -> Figure:
    """Effect (with 95% interval) of each combination of steered behaviours (rows) on each scored
    behaviour (columns), and the interaction of each multi-vector combination beside its random null."""
    effect = result.effect.numpy()
    bound = float(np.nanmax(np.abs(effect))) or 1.0
    labels = ["+".join(c) for c in result.combinations]
    joint = [c for c, combo in enumerate(result.combinations) if len(combo) > 1]
    interaction = result.interaction
    panels = 2 if interaction is not None and joint else 1
    with styled():
        figure, axes = plt.subplots(
            1,
            panels,
            figsize=(1.2 * len(result.scored) + 3 + 4.5 * (panels - 1), 0.45 * len(labels) + 1.6),
            squeeze=False,
        )
        ax = axes[0, 0]
        image = ax.imshow(effect, cmap=DIVERGING, vmin=-bound, vmax=bound, aspect="auto")
        low, high = result.effect_low, result.effect_high
        for (r, c), value in np.ndenumerate(effect):
            text = f"{value:+.2f}"
            if low is not None and high is not None:
                text += f"\n[{float(low[r, c]):+.2f}, {float(high[r, c]):+.2f}]"
            ax.text(c, r, text, ha="center", va="center", fontsize=6)
        ax.set_xticks(range(len(result.scored)), result.scored, rotation=30, ha="right")
        ax.set_yticks(range(len(labels)), labels)
        ax.grid(False)
        ax.set(
            xlabel="behaviour scored", ylabel="vectors applied", title="Δ p(matching) under combined steering"
        )
        figure.colorbar(image, ax=ax, label="Δ p(matching)")
        if panels == 2:
            assert interaction is not None
            ax = axes[0, 1]
            cells = [(c, b) for c in joint for b in range(len(result.scored))]
            y = np.arange(len(cells))
            mean = np.array([float(interaction[c, b]) for c, b in cells])
            if result.interaction_low is not None and result.interaction_high is not None:
                lows = np.array([float(result.interaction_low[c, b]) for c, b in cells])
                highs = np.array([float(result.interaction_high[c, b]) for c, b in cells])
                error = np.vstack([mean - lows, highs - mean])
            else:
                error = None
            nulls = (result.null_interaction_low, result.null_interaction_high)
            if nulls[0] is not None and nulls[1] is not None:
                for k, (c, b) in enumerate(cells):
                    band = float(nulls[0][c, b]), float(nulls[1][c, b])
                    ax.fill_betweenx([k - 0.3, k + 0.3], *band, color="grey", alpha=0.3, lw=0,
                                     label="random same-norm" if k == 0 else None)  # fmt: skip
            ax.errorbar(
                mean, y, xerr=error, fmt="o", ms=3, capsize=2, color="C0", label="joint − sum of singles"
            )
            ax.axvline(0, color="black", lw=0.8)
            ax.set_yticks(y, [f"{labels[c]} → {result.scored[b]}" for c, b in cells], fontsize=7)
            ax.invert_yaxis()
            ax.set(xlabel="interaction Δ p (95% CI)", title="Interference")
            ax.legend(fontsize=7)
        figure.tight_layout()
    return finish(figure, save)
