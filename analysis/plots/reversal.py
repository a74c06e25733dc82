"""Figure of the adversarial reversal search (``analysis.reversal``): its progress, its Pareto front
and the top insertion's held-out effects."""

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from analysis.plots.style import finish, styled
from analysis.reversal import ReversalResult

__all__ = ["plot_reversal_progress"]


def plot_reversal_progress(result: ReversalResult, save: str | Path | None = None) -> Figure:
    """Reversal and fluency of each lambda's member per iteration, the final Pareto front, and the top
    insertion's paired effects with 95% intervals on the held-out and (in-sample) search items."""
    history = result.history
    effect = abs(result.steered - result.unsteered)
    effects = result.effects
    with styled():
        panels = 3 if effects is not None and len(effects) else 2
        figure, axes = plt.subplots(1, panels, figsize=(4.5 * panels, 3.4))
        left, right = axes[0], axes[1]
        for i, (lam, rows) in enumerate(history.groupby("lambda")):
            left.plot(rows.iteration, rows.reversal, color=f"C{i}", label=f"λ={lam:g}")
        if effect > 0:
            left.axhline(effect, color="black", ls="--", lw=1, label="unsteered value")
        left.set(
            xlabel="iteration", ylabel="reversal (Δ p against steering)", title="Search progress (in-sample)"
        )
        left.legend(fontsize=7)
        right.plot(
            result.pareto.cross_entropy, result.pareto.reversal, marker="o", ms=3, drawstyle="steps-post"
        )
        right.set(xlabel="cross-entropy of insertion (nats/token)", ylabel="reversal", title="Pareto front")
        if effect > 0:
            right.axhline(effect, color="black", ls="--", lw=1)
        if panels == 3:
            assert effects is not None
            ax = axes[2]
            quantities = list(dict.fromkeys(effects.quantity))
            for offset, (split, colour) in zip(
                (-0.15, 0.15), (("heldout", "black"), ("search", "grey")), strict=True
            ):
                rows = effects[effects.split == split].set_index("quantity").reindex(quantities)
                if rows["mean"].isna().all():
                    continue
                y = np.arange(len(quantities)) + offset
                error = np.vstack([rows["mean"] - rows.low, rows.high - rows["mean"]])
                n = int(rows.n.dropna().iloc[0])
                ax.errorbar(
                    rows["mean"],
                    y,
                    xerr=error,
                    fmt="o",
                    ms=3,
                    capsize=2,
                    color=colour,
                    label=f"{split} (n={n})",
                )
            ax.axvline(0, color="black", lw=0.8)
            ax.set_yticks(range(len(quantities)), [q.replace("_", " ") for q in quantities])
            ax.invert_yaxis()
            ax.set(xlabel="Δ p, signed so + is the claim (95% CI)")
            ax.set_title(
                "Top insertion: " + ("reversed" if result.reversed else "not reversed") + " (held-out)"
            )
            ax.legend(fontsize=7)
        figure.tight_layout()
    return finish(figure, save)
