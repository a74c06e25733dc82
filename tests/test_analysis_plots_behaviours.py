"""analysis.plots.behaviours: the open-ended headline, one row per behaviour."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pandas as pd

from analysis.plots.behaviours import plot_behaviour_headline


def test_one_row_per_behaviour_with_its_null_band(tmp_path):
    headline = pd.DataFrame(
        {
            "behaviour": ["optimism", "weddings"],
            "metric": ["sentiment", "wedding_rate"],
            "layer": [8, 12],
            "multiplier": [4.0, 8.0],
            "effect": [0.2, 0.01],
            "effect_low": [0.1, -0.02],
            "effect_high": [0.3, 0.04],
            "null_low": [-0.05, -0.03],
            "null_high": [0.05, 0.03],
            "verdict": ["passes", "fails"],
            "fluency_cost": [0.3, 0.5],
            "fluency_cost_low": [0.2, 0.4],
            "fluency_cost_high": [0.4, 0.6],
        }
    )
    figure = plot_behaviour_headline(headline, save=tmp_path / "behaviours.png")
    left = figure.axes[0]
    assert [t.get_text().split("\n")[0] for t in left.get_yticklabels()] == ["optimism", "weddings"]
    assert len(left.patches) == 2  # one null band per row
    assert (tmp_path / "behaviours.png").stat().st_size > 1000
    plt.close("all")
