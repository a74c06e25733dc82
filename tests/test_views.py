"""Token-level views: projections against a manual read, the documented hook order, the renderers."""

import dataclasses
import json

import pytest
import torch
from helpers.token_views import hand_made_projection

from caa_lens.generation import generate
from caa_lens.hooks import hook_name
from caa_lens.prompts import format_prompt
from caa_lens.provenance import make_provenance
from caa_lens.steering import Injection
from caa_lens.vectors import SteeringVector
from caa_lens.views import TokenProjection, render_html, save_html, show, token_projections

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
def test_projections_are_the_models_own_residual_and_injected_is_apart(
    tiny, prompt, vector, mode, multiplier
):
    """The projection is an unsteered read of the steered tokens; m * (v . v/||v||) is reported apart,
    at the steered positions only. (The read used to be inside the steering context, so steered
    tokens showed m * ||v|| on top of the model's own residual.)"""
    injection = Injection(vector, layer=LAYER, multiplier=multiplier, mode=mode)
    steered = token_projections(tiny, prompt, vector, LAYER, injection, max_new_tokens=4)
    assert steered.token_ids[steered.n_prompt :] == generate(tiny, [prompt], injection, 4).token_ids[0]
    projections, cosines = _manual(tiny, steered.token_ids, vector.at(LAYER))  # independent, unsteered
    torch.testing.assert_close(steered.projections, projections, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(steered.cosines, cosines, rtol=1e-9, atol=1e-9)
    n = len(steered.tokens)
    where = {
        "from_start": range(prompt.steer_start, n),
        "last": range(prompt.last, n),
        "front": range(prompt.user_start, prompt.user_start + 1),  # one vector: the user's first token
        "all": range(n),
    }[mode]
    assert steered.steered.nonzero().flatten().tolist() == list(where)
    v = vector.at(LAYER).double()
    expected = torch.zeros(n, dtype=torch.float64)
    expected[list(where)] = multiplier * float(v @ (v / v.norm()))
    torch.testing.assert_close(steered.injected, expected, rtol=1e-9, atol=1e-9)
    assert torch.equal(steered.injected[~steered.steered], torch.zeros(n - len(where), dtype=torch.float64))
    # Reading the same tokens with no injections gives the same projections and nothing injected.
    plain = token_projections(tiny, prompt, vector, LAYER, continuation=steered.token_ids[steered.n_prompt :])
    assert torch.equal(plain.projections, steered.projections) and not plain.injected.any()


def test_injected_of_an_actadd_injection_follows_its_rows(tiny, prompt, vector):
    from caa_lens.data import PromptPair
    from caa_lens.methods import actadd_vector
    from caa_lens.steering import front_rows

    pair = PromptPair("sun", "Is it sunny", "Is it raining")
    actadd = actadd_vector(tiny, pair, layers=(LAYER,), site="resid_post")
    injection = Injection(actadd, LAYER, 2.0, "front")
    view = token_projections(tiny, prompt, vector, LAYER, injection, max_new_tokens=2)
    rows = front_rows(injection, tiny.tokenizer).double()
    start, width = prompt.user_start, rows.shape[0]
    assert view.steered.nonzero().flatten().tolist() == list(range(start, start + width))
    v = vector.at(LAYER).double()
    expected = torch.zeros(len(view.tokens), dtype=torch.float64)
    expected[start : start + width] = 2.0 * (rows @ (v / v.norm()))
    torch.testing.assert_close(view.injected, expected, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(view.projections, _manual(tiny, view.token_ids, vector.at(LAYER))[0])


def test_earlier_and_later_layers(tiny, prompt, vector):
    """Injections at other layers add nothing at the read site (injected 0) and the projection stays
    the model's own; block L's output is block L+1's input, so those count as the same site."""
    plain = token_projections(tiny, prompt, vector, LAYER, max_new_tokens=0)
    start = prompt.steer_start
    earlier = token_projections(tiny, prompt, vector, LAYER, Injection(vector, 0, 8.0), max_new_tokens=0)
    assert torch.equal(earlier.projections, plain.projections) and not earlier.injected.any()
    assert earlier.steer_start == start  # still marked: the injection applies there, at another layer
    later = token_projections(tiny, prompt, vector, LAYER, Injection(vector, 2, 8.0), max_new_tokens=0)
    assert torch.equal(later.projections, plain.projections) and not later.injected.any()
    pre = SteeringVector(
        vector.directions, vector.layers, dataclasses.replace(vector.provenance, site="resid_pre")
    )
    # resid_post of layer 0 is resid_pre of layer 1: the same tensor, so the injection is in the read.
    same = token_projections(tiny, prompt, pre, LAYER, Injection(vector, 0, 8.0), max_new_tokens=0)
    v0, v1 = vector.at(0).double(), vector.at(LAYER).double()
    torch.testing.assert_close(
        same.injected[start:], torch.full_like(same.injected[start:], 8.0 * float(v0 @ v1) / float(v1.norm()))
    )
    assert not same.injected[:start].any()


def test_string_and_raw_token_prompts(tiny, vector):
    from_text = token_projections(
        tiny, "Is it sunny?", vector, LAYER, Injection(vector, LAYER, 2.0), max_new_tokens=0
    )
    assert from_text.steer_start == format_prompt(tiny.tokenizer, "Is it sunny?").steer_start
    ids = list(tiny.tokenizer("The quick brown fox").input_ids)
    raw = token_projections(tiny, ids, vector, LAYER, Injection(vector, LAYER, 2.0), max_new_tokens=2)
    assert raw.token_ids[: len(ids)] == tuple(ids) and raw.steer_start == len(ids) - 1
    # Raw ids are all user text: ActAdd starts right after the leading BOS (or at 0 without one).
    front = Injection(vector, LAYER, 2.0, "front")
    assert ids[0] == tiny.tokenizer.bos_token_id
    assert token_projections(tiny, ids, vector, LAYER, front, max_new_tokens=0).steer_start == 1
    assert token_projections(tiny, ids[1:], vector, LAYER, front, max_new_tokens=0).steer_start == 0


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
            torch.zeros(2),
        )


def test_html_is_offline_and_holds_the_tokens(tiny, prompt, vector):
    view = token_projections(tiny, prompt, vector, LAYER, Injection(vector, LAYER, 4.0), max_new_tokens=3)
    page = render_html(view)
    assert "unpkg.com" not in page and "cdn." not in page.lower()
    assert 'from "http' not in page and "<script src" not in page.lower()
    assert "CircuitsVis.render(" in page  # the bundle is inlined and called directly
    assert json.dumps(list(view.tokens))[1:-1] in page  # the tokens, in order, as circuitsvis props
    assert f"steered from token {prompt.steer_start}" in page
    assert "model's own residual (read without steering)" in page
    assert f"the injection adds {4.0 * view.vector_norm:.3g} per steered token" in page
    rendered = show(view)
    # str() of circuitsvis output normally gives the CDN version; show()'s gives the offline one too.
    assert str(rendered) == rendered.local_src and "unpkg.com" not in str(rendered)
    assert "CircuitsVis.render(" in rendered._repr_html_()


def test_html_survives_hostile_tokens(tmp_path):
    view = hand_made_projection(["<s>", "</script><b>x", "<!-- y", "café"], [-300.0, 1.0, -2.0, 0.5])
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


@pytest.mark.slow
def test_own_residual_on_the_default_model(default_model):
    """On the real model too: the projection is the unsteered read, the injection m*||v|| apart."""
    prompt = format_prompt(default_model.tokenizer, "How will my exam go tomorrow?")
    vector = _vector(default_model, layers=(12,))
    steered = token_projections(
        default_model, prompt, vector, 12, Injection(vector, 12, 5.0), max_new_tokens=0
    )
    plain = token_projections(default_model, prompt, vector, 12, max_new_tokens=0)
    assert torch.equal(steered.projections, plain.projections)
    injected = steered.injected[prompt.steer_start :]
    torch.testing.assert_close(injected, torch.full_like(injected, 5.0 * steered.vector_norm))
    assert not steered.injected[: prompt.steer_start].any()
