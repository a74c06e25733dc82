"""Figure of the open-ended behaviour study (``analysis.behaviour_study``): each behaviour's
held-out effect against its null band, and the fluency it cost."""

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from analysis.plots.style import SIDE_COLOURS, finish, styled

__all__ = ["plot_behaviour_headline"]


def plot_behaviour_headline(headline, save: str | Path | None = None) -> Figure:
    """The open-ended headline: per behaviour, its metric's held-out effect with its 95% interval over
    the null band of random same-norm vectors (left), and the fluency cost it paid (right).

    ``headline`` is ``analysis.behaviour_study.headline_table`` (or the main job's
    ``behaviour_headline.csv``). Metrics have different units, so each row is read against its own band.
    """
    rows = headline.reset_index(drop=True)
    with styled():
        figure, (left, right) = plt.subplots(
            1, 2, figsize=(9.0, 0.55 * len(rows) + 1.4), sharey=True, gridspec_kw={"width_ratios": [3, 2]}
        )
        y = np.arange(len(rows))[::-1]
        for at, row in zip(y, rows.itertuples(), strict=True):
            left.add_patch(
                plt.Rectangle((row.null_low, at - 0.3), row.null_high - row.null_low, 0.6, color="0.85", lw=0)
            )
            colour = SIDE_COLOURS[1] if row.verdict == "passes" else SIDE_COLOURS[0]
            left.errorbar(
                row.effect, at, xerr=[[row.effect - row.effect_low], [row.effect_high - row.effect]],
                fmt="o", color=colour, capsize=3,
            )  # fmt: skip
            right.errorbar(
                row.fluency_cost, at,
                xerr=[[row.fluency_cost - row.fluency_cost_low], [row.fluency_cost_high - row.fluency_cost]],
                fmt="s", color="0.3", capsize=3,
            )  # fmt: skip
        labels = [f"{r.behaviour}\n{r.metric}, L{r.layer} m={r.multiplier:+.3g}" for r in rows.itertuples()]
        left.set_yticks(y, labels)
        left.axvline(0, color="0.4", lw=0.8)
        right.axvline(0, color="0.4", lw=0.8)
        left.set_xlabel("effect on the behaviour metric\n(steered - unsteered, same held-out prompts)")
        right.set_xlabel("fluency cost\n(completion NLL increase, nats/token)")
        left.set_title("grey: null band (random same-norm vectors); green passes, orange fails")
        return finish(figure, save)
