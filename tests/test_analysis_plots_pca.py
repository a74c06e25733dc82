"""analysis.plots.pca: the PCA grid and the separability figure draw from small results and save when asked."""

import matplotlib

matplotlib.use("Agg")

import pytest
from helpers.plot_results import check_draws_and_saves

from analysis.plots.pca import plot_pca_grid, plot_separability

DRAWINGS = {
    "pca": lambda r, save: plot_pca_grid(r["pca"], columns=3, save=save),
    "separability": lambda r, save: plot_separability(r["separability"], save=save),
}


@pytest.mark.parametrize("name", sorted(DRAWINGS))
def test_plot_draws_and_saves(name, tmp_path):
    check_draws_and_saves(DRAWINGS[name], tmp_path / "sub" / f"{name}.png")
