"""analysis.plots.scaling: the sample-size figure draws from a small result, with its effects, and saves when asked."""

import matplotlib

matplotlib.use("Agg")

import pytest
from helpers.plot_results import check_draws_and_saves

from analysis.plots.scaling import plot_sample_size

DRAWINGS = {
    "scaling": lambda r, save: plot_sample_size(r["scaling"], [0, 1], r["effect"], save=save),
}


@pytest.mark.parametrize("name", sorted(DRAWINGS))
def test_plot_draws_and_saves(name, tmp_path):
    check_draws_and_saves(DRAWINGS[name], tmp_path / "sub" / f"{name}.png")
