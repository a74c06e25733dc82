"""SteeringVector validation and algebra, and norm equalisation."""

import pytest
import torch
from helpers.vector_toys import other_tiny_models, provenance, vector

from caa_lens.provenance import VectorMismatchError
from caa_lens.vectors import SteeringVector, equalize_norms

# ---------------------------------------------------------------------------------------------- validation


@pytest.fixture(scope="module")
def other_models():
    """Tiny models that differ from the session's one in width, depth, or only in name."""
    return other_tiny_models()


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_values_are_refused_naming_the_layers(tiny, bad):
    directions = torch.zeros(3, 64)
    directions[1, 5] = bad
    directions[2, 0] = bad
    with pytest.raises(ValueError, match=r"NaN or infinite values at layers \[1, 3\]"):
        SteeringVector(directions, (0, 1, 3), provenance(tiny))


def test_width_mismatch(tiny):
    with pytest.raises(ValueError, match="width 32, provenance says 64"):
        SteeringVector(torch.zeros(1, 32), (0,), provenance(tiny))


def test_duplicate_layers(tiny):
    with pytest.raises(ValueError, match="duplicate layers"):
        SteeringVector(torch.zeros(2, 64), (1, 1), provenance(tiny))


def test_layer_count_and_shape(tiny):
    with pytest.raises(ValueError, match="2 directions for 3 layers"):
        SteeringVector(torch.zeros(2, 64), (0, 1, 2), provenance(tiny))
    with pytest.raises(ValueError, match="at least one layer"):
        SteeringVector(torch.zeros(0, 64), (), provenance(tiny))
    with pytest.raises(ValueError, match=r"\[layer, d_model\]"):
        SteeringVector(torch.zeros(1, 2, 3, 64), (0,), provenance(tiny))


def test_accessors(tiny):
    v = vector(tiny, (0, 2, 3))
    assert not v.is_positional and vector(tiny, (1,), pos=4).is_positional
    assert torch.equal(v.at(2), v.directions[1])
    with pytest.raises(KeyError, match="no direction for layer 1"):
        v.at(1)
    assert torch.allclose(v.norms(), v.directions.norm(dim=-1))
    assert v.select(3).layers == (3,) and torch.equal(v.select([3, 0]).directions, v.directions[[2, 0]])


# ---------------------------------------------------------------------------------------------- algebra


def test_normalized(tiny):
    v = vector(tiny, (0, 1, 2))
    assert torch.allclose(v.normalized().norms(), torch.ones(3))
    assert torch.allclose(v.normalized(4.0).norms(), torch.full((3,), 4.0))
    targets = torch.tensor([1.0, 2.0, 3.0])
    scaled = v.normalized(targets)
    assert torch.allclose(scaled.norms(), targets)
    cosine = torch.nn.functional.cosine_similarity(scaled.directions, v.directions, dim=-1)
    assert torch.allclose(cosine, torch.ones(3))
    positional = vector(tiny, (1, 2), pos=3)
    assert torch.allclose(positional.normalized(targets[:2]).norms(), targets[:2])


def test_normalized_refuses_zero_norm(tiny):
    directions = torch.randn(3, 64)
    directions[2] = 0
    with pytest.raises(ValueError, match=r"zero-norm direction \(layers \[3\]\)"):
        SteeringVector(directions, (0, 1, 3), provenance(tiny)).normalized()


@pytest.mark.parametrize("factor", [float("nan"), float("inf")])
def test_scaled_refuses_non_finite(tiny, factor):
    with pytest.raises(ValueError, match="finite"):
        vector(tiny).scaled(factor)


def test_scaled_and_multiplication(tiny):
    v = vector(tiny)
    assert torch.equal((2.5 * v).directions, v.directions * 2.5)
    assert torch.equal((v * -1.0).directions, -v.directions)
    assert "scaled x2.5" in v.scaled(2.5).provenance.method


def test_add_and_subtract(tiny):
    a, b = vector(tiny, seed=1), vector(tiny, seed=2)
    total, difference = a + b, a - b
    assert torch.equal(total.directions, a.directions + b.directions)
    assert torch.equal(difference.directions, a.directions - b.directions)
    assert total.provenance.n_pairs == 16 and " - " in difference.provenance.method
    assert total.provenance.dataset_hash != a.provenance.dataset_hash


def test_add_refuses_layer_or_shape_mismatch(tiny):
    with pytest.raises(VectorMismatchError, match=r"layers \(1, 2\).*\(1, 3\)"):
        vector(tiny, (1, 2)) + vector(tiny, (1, 3))
    with pytest.raises(VectorMismatchError):
        vector(tiny, (1, 2)) - vector(tiny, (1, 2), pos=2)


def test_add_refuses_different_sites(tiny):
    with pytest.raises(VectorMismatchError, match="hook site"):
        vector(tiny, site="resid_post") + vector(tiny, site="resid_pre")


def test_add_refuses_different_models(tiny, other_models):
    with pytest.raises(VectorMismatchError, match="model name"):
        vector(tiny) + vector(other_models["renamed"])


def test_equalize_norms(tiny):
    vectors = {name: vector(tiny, (0, 1, 3), seed=i).scaled(float(i + 1)) for i, name in enumerate("abc")}
    before = torch.stack([v.norms() for v in vectors.values()])
    equal = equalize_norms(vectors)
    assert list(equal) == ["a", "b", "c"]
    for name, v in equal.items():
        assert torch.allclose(v.norms(), before.mean(0), rtol=1e-6)
        cosine = torch.nn.functional.cosine_similarity(v.directions, vectors[name].directions, dim=-1)
        assert torch.allclose(cosine, torch.ones(3), atol=1e-6)
    with pytest.raises(VectorMismatchError, match="'b' has layers"):
        equalize_norms({"a": vector(tiny, (0, 1)), "b": vector(tiny, (0, 2))})
    with pytest.raises(ValueError, match="no vectors"):
        equalize_norms({})


# ---------------------------------------------------------------------------------------------- layers


@pytest.mark.parametrize(
    ("layers", "expected"),
    [
        ((10.9,), r"layer 10\.9 \(float\) in \(10\.9,\) is not an integer"),
        ((True, 2), r"layer True \(bool\) .* is not an integer"),
        (("3",), r"layer '3' \(str\) .* is not an integer"),
        ((1, -1), r"layer -1 in \(1, -1\) is negative"),
        ("12", r"layers must be a sequence of layer indices"),
    ],
)
def test_layers_must_be_non_negative_integers(tiny, layers, expected):
    with pytest.raises(ValueError, match=expected):
        SteeringVector(torch.ones(len(layers), 64), layers, provenance(tiny))


def test_layers_are_stored_as_a_tuple_of_ints(tiny):
    import numpy as np

    v = SteeringVector(torch.ones(2, 64), [np.int64(3), 1], provenance(tiny))
    assert v.layers == (3, 1) and all(type(layer) is int for layer in v.layers)
