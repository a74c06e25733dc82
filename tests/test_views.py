"""Token-level views: projections against a manual read, the documented hook order, the renderers."""

import io
import json

import pytest
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from caa_lens.generation import generate
from caa_lens.hooks import hook_name
from caa_lens.prompts import format_prompt
from caa_lens.steering import Injection
from caa_lens.vectors import SteeringVector, make_provenance
from caa_lens.views import TokenProjection, plot_projection, render_html, save_html, show, token_projections

LAYER = 1


def _vector(model, layers=(LAYER,), seed=0, site="resid_post") -> SteeringVector:
    generator = torch.Generator().manual_seed(seed)
    directions = torch.randn(len(layers), model.cfg.d_model, generator=generator)
    provenance = make_provenance(model, site, "answer", "mean_difference", "test", "0", 1, torch.float32)
    return SteeringVector(directions, tuple(layers), provenance)


@pytest.fixture(scope="module")
def prompt(tiny):
    return format_prompt(tiny.tokenizer, "Is it sunny today?", "(A)")


@pytest.fixture(scope="module")
def vector(tiny):
    return _vector(tiny, layers=(0, 1, 2))


def _manual(model, ids, direction, layer=LAYER):
    name = hook_name(model, layer)
    with torch.inference_mode():
        _, cache = model.run_with_cache(torch.tensor([ids]), names_filter=[name])
    resid = cache[name][0].double()
    dots = resid @ direction.double()
    return dots / direction.double().norm(), dots / (resid.norm(dim=-1) * direction.double().norm())


def test_unsteered_projections_equal_a_manual_read(tiny, prompt, vector):
    view = token_projections(tiny, prompt, vector, LAYER, max_new_tokens=5)
    assert view.token_ids[: view.n_prompt] == prompt.token_ids and view.n_prompt == len(prompt)
    assert 0 < len(view.token_ids) - view.n_prompt <= 5
    projections, cosines = _manual(tiny, view.token_ids, vector.at(LAYER))
    torch.testing.assert_close(view.projections, projections, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(view.cosines, cosines, rtol=1e-6, atol=1e-6)
    assert view.tokens == tuple(tiny.tokenizer.decode([t]) for t in view.token_ids)
    assert not view.steered.any() and view.steer_start is None
    assert view.generated.tolist() == [i >= view.n_prompt for i in range(len(view.tokens))]
    assert view.vector_norm == pytest.approx(float(vector.at(LAYER).norm()), rel=1e-6)


def test_generation_is_the_steered_generation(tiny, prompt, vector):
    injection = Injection(vector, layer=LAYER, multiplier=6.0)
    view = token_projections(tiny, prompt, vector, LAYER, injection, max_new_tokens=6)
    expected = generate(tiny, [prompt], injection, max_new_tokens=6).token_ids[0]
    assert view.token_ids[view.n_prompt :] == expected


@pytest.mark.parametrize("mode", ["from_start", "last", "front", "all"])
@pytest.mark.parametrize("multiplier", [3.0, -2.5])
def test_read_at_the_steered_hook_is_after_the_injection(tiny, prompt, vector, mode, multiplier):
    """Documented hook order: the cache sees resid + m*v at steered positions, nothing changes elsewhere."""
    injection = Injection(vector, layer=LAYER, multiplier=multiplier, mode=mode)
    steered = token_projections(tiny, prompt, vector, LAYER, injection, max_new_tokens=4)
    # The same tokens read without steering (the generated ones differ between steered and plain runs).
    plain = token_projections(tiny, prompt, vector, LAYER, continuation=steered.token_ids[steered.n_prompt :])
    assert plain.token_ids == steered.token_ids
    n = len(steered.tokens)
    where = {
        "from_start": range(prompt.steer_start, n),
        "last": range(prompt.last, n),
        "front": range(0, 1),  # a single vector in front mode steers the prompt's first token only
        "all": range(n),
    }[mode]
    assert steered.steered.nonzero().flatten().tolist() == list(where)
    shift = steered.projections - plain.projections
    expected = torch.full_like(shift, multiplier * steered.vector_norm)
    torch.testing.assert_close(shift[steered.steered], expected[steered.steered], rtol=1e-5, atol=1e-4)
    # Unsteered positions are bit-identical, not merely close.
    assert torch.equal(steered.projections[~steered.steered], plain.projections[~steered.steered])


def test_earlier_and_later_layers(tiny, prompt, vector):
    """An earlier-layer injection moves only positions from the start on; a later one moves nothing here."""
    plain = token_projections(tiny, prompt, vector, LAYER, max_new_tokens=0)
    start = prompt.steer_start
    earlier = token_projections(tiny, prompt, vector, LAYER, Injection(vector, 0, 8.0), max_new_tokens=0)
    assert torch.equal(earlier.projections[:start], plain.projections[:start])
    assert (earlier.projections[start:] - plain.projections[start:]).abs().min() > 1e-3
    later = token_projections(tiny, prompt, vector, LAYER, Injection(vector, 2, 8.0), max_new_tokens=0)
    assert torch.equal(later.projections, plain.projections)
    assert later.steer_start == start  # still marked: the injection applies there, at another layer


def test_string_and_raw_token_prompts(tiny, vector):
    from_text = token_projections(
        tiny, "Is it sunny?", vector, LAYER, Injection(vector, LAYER, 2.0), max_new_tokens=0
    )
    assert from_text.steer_start == format_prompt(tiny.tokenizer, "Is it sunny?").steer_start
    ids = list(tiny.tokenizer("The quick brown fox").input_ids)
    raw = token_projections(tiny, ids, vector, LAYER, Injection(vector, LAYER, 2.0), max_new_tokens=2)
    assert raw.token_ids[: len(ids)] == tuple(ids) and raw.steer_start == len(ids) - 1


def test_bad_vectors_are_refused(tiny, prompt):
    zero = SteeringVector(torch.zeros(1, tiny.cfg.d_model), (LAYER,), _vector(tiny).provenance)
    with pytest.raises(ValueError, match="zero"):
        token_projections(tiny, prompt, zero, LAYER, max_new_tokens=0)
    positional = SteeringVector(torch.ones(1, 3, tiny.cfg.d_model), (LAYER,), _vector(tiny).provenance)
    with pytest.raises(ValueError, match="positional"):
        token_projections(tiny, prompt, positional, LAYER, max_new_tokens=0)
    with pytest.raises(KeyError):
        token_projections(tiny, prompt, _vector(tiny), 3, max_new_tokens=0)  # no direction at layer 3
    with pytest.raises(ValueError, match="one entry per token"):
        TokenProjection(
            ("a",),
            (1, 2),
            torch.zeros(2),
            torch.zeros(2),
            1,
            torch.zeros(2, dtype=torch.bool),
            0,
            "resid_post",
            1.0,
        )


def _hand_made(tokens, values, n_prompt=2, start=1) -> TokenProjection:
    n = len(tokens)
    steered = torch.arange(n) >= start
    return TokenProjection(
        tuple(tokens),
        tuple(range(n)),
        torch.tensor(values, dtype=torch.float64),
        torch.zeros(n, dtype=torch.float64),
        n_prompt,
        steered,
        1,
        "resid_post",
        1.5,
    )


def test_html_is_offline_and_holds_the_tokens(tiny, prompt, vector):
    view = token_projections(tiny, prompt, vector, LAYER, Injection(vector, LAYER, 4.0), max_new_tokens=3)
    page = render_html(view)
    assert "unpkg.com" not in page and "cdn." not in page.lower()
    assert 'from "http' not in page and "<script src" not in page.lower()
    assert "CircuitsVis.render(" in page  # the bundle is inlined and called directly
    assert json.dumps(list(view.tokens))[1:-1] in page  # the tokens, in order, as circuitsvis props
    assert f"steered from token {prompt.steer_start}" in page
    rendered = show(view)
    # str() of circuitsvis output normally gives the CDN version; show()'s gives the offline one too.
    assert str(rendered) == rendered.local_src and "unpkg.com" not in str(rendered)
    assert "CircuitsVis.render(" in rendered._repr_html_()


def test_html_survives_hostile_tokens(tmp_path):
    view = _hand_made(["<s>", "</script><b>x", "<!-- y", "café"], [-300.0, 1.0, -2.0, 0.5])
    page = render_html(view)
    assert page.lower().count("</script") == 1  # only the tag that closes the inline script
    assert "<!-- y" not in page
    path = save_html(view, tmp_path / "view.html")
    text = path.read_text(encoding="utf-8")
    assert (
        text.startswith("<!DOCTYPE html>")
        and json.dumps("café") in text
        and text.rstrip().endswith("</html>")
    )


def test_figure_renders(tiny, prompt, vector):
    view = token_projections(tiny, prompt, vector, LAYER, Injection(vector, LAYER, 4.0), max_new_tokens=3)
    fig = plot_projection(view)
    assert isinstance(fig, Figure)
    fig.savefig(io.BytesIO(), format="png")
    ax = fig.axes[0]
    assert len(ax.patches) >= len(view.tokens) and len(ax.get_xticklabels()) == len(view.tokens)
    assert {t.get_text() for t in ax.get_legend().get_texts()} == {"generated", "steering starts"}


def test_figure_on_a_given_axes_with_an_outlier_and_mathtext(tmp_path):
    view = _hand_made(["<s>", "$x$", "a\nb", " c", "$"], [-500.0, 1.0, -2.0, 0.5, 3.0], n_prompt=5, start=9)
    fig = Figure()
    ax: Axes = fig.add_subplot()
    assert plot_projection(view, ax=ax) is fig
    fig.savefig(tmp_path / "view.png")  # "$" must not be parsed as mathtext
    assert ax.get_ylim()[0] > -500  # the first token's outlier does not set the scale...
    assert any("-500" in t.get_text() for t in ax.texts)  # ...it is labelled instead
    assert ax.get_legend() is None  # nothing generated and nothing steered


@pytest.mark.slow
def test_hook_order_on_the_default_model(default_model):
    """The documented order holds on the real model too: at steered positions the read moves by m*||v||."""
    prompt = format_prompt(default_model.tokenizer, "How will my exam go tomorrow?")
    vector = _vector(default_model, layers=(12,))
    plain = token_projections(default_model, prompt, vector, 12, max_new_tokens=0)
    steered = token_projections(
        default_model, prompt, vector, 12, Injection(vector, 12, 5.0), max_new_tokens=0
    )
    shift = (steered.projections - plain.projections)[prompt.steer_start :]
    torch.testing.assert_close(shift, torch.full_like(shift, 5.0 * steered.vector_norm), rtol=1e-5, atol=1e-3)
    assert torch.equal(steered.projections[: prompt.steer_start], plain.projections[: prompt.steer_start])
