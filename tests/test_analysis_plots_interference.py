"""analysis.plots.interference: the combined-steering figure draws from a small result and saves when asked."""

import matplotlib

matplotlib.use("Agg")

import pytest
from helpers.plot_results import check_draws_and_saves

from analysis.plots.interference import plot_interference

DRAWINGS = {
    "interference": lambda r, save: plot_interference(r["interference"], save=save),
}


@pytest.mark.parametrize("name", sorted(DRAWINGS))
def test_plot_draws_and_saves(name, tmp_path):
    check_draws_and_saves(DRAWINGS[name], tmp_path / "sub" / f"{name}.png")
