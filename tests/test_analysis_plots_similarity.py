"""analysis.plots.similarity: the cosine heatmaps and the layer-transfer figure draw from small results and save when asked."""

import matplotlib

matplotlib.use("Agg")

import pytest
from helpers.plot_results import check_draws_and_saves

from analysis.plots.similarity import plot_behaviour_similarity, plot_layer_similarity, plot_layer_transfer

DRAWINGS = {
    "layer_similarity": lambda r, save: plot_layer_similarity(r["layer_similarity"], save=save),
    "behaviour": lambda r, save: plot_behaviour_similarity(r["behaviour"], 1, save=save),
    "transfer": lambda r, save: plot_layer_transfer(r["transfer"], save=save),
}


@pytest.mark.parametrize("name", sorted(DRAWINGS))
def test_plot_draws_and_saves(name, tmp_path):
    check_draws_and_saves(DRAWINGS[name], tmp_path / "sub" / f"{name}.png")
