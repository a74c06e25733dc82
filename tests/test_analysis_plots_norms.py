"""analysis.plots.norms: the norm profile and the ratio trade-off draw from small results and save when asked."""

import matplotlib

matplotlib.use("Agg")

import pytest
from helpers.plot_results import check_draws_and_saves

from analysis.plots.norms import plot_norm_profile, plot_ratio_tradeoff

DRAWINGS = {
    "norms": lambda r, save: plot_norm_profile(r["norms"], save=save),
    "ratio": lambda r, save: plot_ratio_tradeoff(r["ratio"], save=save),
}


@pytest.mark.parametrize("name", sorted(DRAWINGS))
def test_plot_draws_and_saves(name, tmp_path):
    check_draws_and_saves(DRAWINGS[name], tmp_path / "sub" / f"{name}.png")
