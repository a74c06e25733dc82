"""analysis.plots.tokens: the static token-view figure, with the injection drawn apart from the colours."""

import io

import matplotlib

matplotlib.use("Agg")

import pytest
import torch
from helpers.token_views import hand_made_projection
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from analysis.plots.tokens import plot_projection
from caa_lens.prompts import format_prompt
from caa_lens.provenance import make_provenance
from caa_lens.steering import Injection
from caa_lens.vectors import SteeringVector
from caa_lens.views import token_projections

LAYER = 1


@pytest.fixture(scope="module")
def prompt(tiny):
    return format_prompt(tiny.tokenizer, "Is it sunny today?", "(A)")


@pytest.fixture(scope="module")
def vector(tiny):
    generator = torch.Generator().manual_seed(0)
    directions = torch.randn(3, tiny.cfg.d_model, generator=generator)
    provenance = make_provenance(
        tiny, "resid_post", "answer", "mean_difference", "test", "0", 1, torch.float32
    )
    return SteeringVector(directions, (0, 1, 2), provenance)


def test_figure_renders(tiny, prompt, vector):
    view = token_projections(tiny, prompt, vector, LAYER, Injection(vector, LAYER, 4.0), max_new_tokens=3)
    fig = plot_projection(view)
    assert isinstance(fig, Figure)
    fig.savefig(io.BytesIO(), format="png")
    ax = fig.axes[0]
    assert len(ax.patches) >= len(view.tokens) and len(ax.get_xticklabels()) == len(view.tokens)
    legend = {t.get_text() for t in ax.get_legend().get_texts()}
    assert legend == {"generated", "steering starts", "injected (m v·v/||v||)"}
    hatched = [bar for bar in ax.patches if bar.get_hatch()]
    assert len(hatched) == int(view.steered.sum())  # one outline per steered token, on its own bar
    for bar, at in zip(hatched, view.steered.nonzero().flatten().tolist(), strict=True):
        assert bar.get_y() == pytest.approx(float(view.projections[at]))
        assert bar.get_height() == pytest.approx(float(view.injected[at]))


def test_figure_on_a_given_axes_with_an_outlier_and_mathtext(tmp_path):
    view = hand_made_projection(
        ["<s>", "$x$", "a\nb", " c", "$"], [-500.0, 1.0, -2.0, 0.5, 3.0], n_prompt=5, start=9
    )
    fig = Figure()
    ax: Axes = fig.add_subplot()
    assert plot_projection(view, ax=ax) is fig
    fig.savefig(tmp_path / "view.png")  # "$" must not be parsed as mathtext
    assert ax.get_ylim()[0] > -500  # the first token's outlier does not set the scale...
    assert any("-500" in t.get_text() for t in ax.texts)  # ...it is labelled instead
    assert ax.get_legend() is None  # nothing generated and nothing steered
