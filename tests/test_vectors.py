"""SteeringVector validation and algebra, norm equalisation, and safe save/load."""

import dataclasses
import json
import os
import struct

import pytest
import torch

from caa_lens.tiny import tiny_model
from caa_lens.vectors import (
    CorruptVectorError,
    Provenance,
    SteeringVector,
    VectorMismatchError,
    equalize_norms,
    load_vector,
    make_provenance,
    save_vector,
    sidecar_path,
)


def provenance(model, site: str = "resid_post", dataset: str = "demo") -> Provenance:
    return make_provenance(
        model, site, "answer", "mean_difference", dataset, "0123456789abcdef", 8, torch.float32
    )


def vector(
    model, layers=(1, 2), seed: int = 0, site: str = "resid_post", pos: int | None = None
) -> SteeringVector:
    generator = torch.Generator().manual_seed(seed)
    shape = (len(layers), model.cfg.d_model) if pos is None else (len(layers), pos, model.cfg.d_model)
    return SteeringVector(torch.randn(shape, generator=generator), tuple(layers), provenance(model, site))


@pytest.fixture(scope="module")
def other_models():
    """Tiny models that differ from the session's one in width, depth, or only in name."""
    renamed = tiny_model()
    renamed.cfg.model_name = "another-model"
    return {"narrow": tiny_model(d_model=32, d_mlp=64), "shallow": tiny_model(n_layers=2), "renamed": renamed}


# ---------------------------------------------------------------------------------------------- validation


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


# ---------------------------------------------------------------------------------------------- save/load


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
def test_save_load_round_trip_is_bit_exact(tiny, tmp_path, dtype):
    v = vector(tiny, (0, 3))
    v = dataclasses.replace(v, directions=v.directions.to(dtype))
    path = save_vector(v, tmp_path / "v.safetensors")
    loaded = load_vector(path, model=tiny)
    assert loaded.directions.dtype == dtype
    assert torch.equal(loaded.directions, v.directions)
    assert loaded.layers == v.layers
    assert loaded.provenance == v.provenance
    assert loaded.provenance.versions == v.provenance.versions


def test_positional_round_trip_and_suffix(tiny, tmp_path):
    v = vector(tiny, (1,), pos=5)
    path = save_vector(v, tmp_path / "actadd")
    assert path.name == "actadd.safetensors" and sidecar_path(path).exists()
    assert torch.equal(load_vector(path).directions, v.directions)


def test_file_is_safetensors_without_pickle(tiny, tmp_path):
    path = save_vector(vector(tiny), tmp_path / "v.safetensors")
    raw = path.read_bytes()
    (header_size,) = struct.unpack("<Q", raw[:8])
    assert raw[8:9] == b"{" and not raw.startswith(b"PK")  # a JSON header, not torch's zip of pickles
    assert b"\x80\x02" not in raw[8 : 8 + header_size] and b"\x80\x04" not in raw[8 : 8 + header_size]
    header = json.loads(raw[8 : 8 + header_size])
    assert header["directions"]["dtype"] == "F32" and header["directions"]["shape"] == [2, 64]
    assert header["__metadata__"]["format"] == "caa_lens"
    begin, end = header["directions"]["data_offsets"]
    assert 8 + header_size + end == len(raw) and end - begin == 2 * 64 * 4
    meta = json.loads(sidecar_path(path).read_text())
    assert meta["file"]["bytes"] == len(raw) and meta["provenance"]["model_name"] == "caa-lens-tiny-llama"


def test_writes_are_atomic(tiny, tmp_path, monkeypatch):
    save_vector(vector(tiny), tmp_path / "v.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.json", "v.safetensors"]

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        save_vector(vector(tiny), tmp_path / "w.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.json", "v.safetensors"]  # no partial/temp files


def test_truncated_file_is_corrupt(tiny, tmp_path):
    path = save_vector(vector(tiny), tmp_path / "v.safetensors")
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(CorruptVectorError, match="truncated"):
        load_vector(path)


def test_flipped_byte_is_corrupt(tiny, tmp_path):
    path = save_vector(vector(tiny), tmp_path / "v.safetensors")
    raw = bytearray(path.read_bytes())
    raw[-7] ^= 0x01
    path.write_bytes(bytes(raw))
    with pytest.raises(CorruptVectorError, match="SHA-256"):
        load_vector(path)


def test_missing_or_malformed_sidecar(tiny, tmp_path):
    path = save_vector(vector(tiny), tmp_path / "v.safetensors")
    meta = sidecar_path(path)
    text = meta.read_text()
    meta.write_text(text[: len(text) // 2])
    with pytest.raises(CorruptVectorError, match="malformed"):
        load_vector(path)
    meta.unlink()
    with pytest.raises(CorruptVectorError, match=r"no metadata file v\.json"):
        load_vector(path)
    with pytest.raises(FileNotFoundError):
        load_vector(tmp_path / "absent.safetensors")


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("narrow", r"d_model=64, model has d_model=32"),
        ("renamed", r"model name: vector 'caa-lens-tiny-llama', model 'another-model'"),
        ("shallow", r"layer count: vector made on 4, model has 2"),
    ],
)
def test_loading_into_another_model_is_refused(tiny, tmp_path, other_models, kind, expected):
    path = save_vector(vector(tiny, (0, 1)), tmp_path / "v.safetensors")
    with pytest.raises(VectorMismatchError, match=expected):
        load_vector(path, model=other_models[kind])


def test_layers_beyond_the_model_are_refused_even_when_allowed(tiny, tmp_path, other_models):
    path = save_vector(vector(tiny, (1, 3)), tmp_path / "v.safetensors")
    with pytest.raises(VectorMismatchError, match="layers up to 3, the model has 2"):
        load_vector(path, model=other_models["shallow"], allow_mismatch=True)


def test_width_mismatch_cannot_be_overridden(tiny, tmp_path, other_models):
    path = save_vector(vector(tiny, (0,)), tmp_path / "v.safetensors")
    with pytest.raises(VectorMismatchError, match="d_model"):
        load_vector(path, model=other_models["narrow"], allow_mismatch=True)


def test_allow_mismatch_records_the_differences(tiny, tmp_path, other_models):
    path = save_vector(vector(tiny, (0, 1)), tmp_path / "v.safetensors")
    loaded = load_vector(path, model=other_models["shallow"], site="resid_pre", allow_mismatch=True)
    overrides = loaded.provenance.overrides
    assert any("layer count" in note for note in overrides)
    assert any("config hash" in note for note in overrides)
    assert any("hook site: vector read at resid_post, applied at resid_pre" in note for note in overrides)
    assert torch.equal(loaded.directions, load_vector(path).directions)
    renamed = load_vector(path, model=other_models["renamed"], allow_mismatch=True)
    assert any("model name" in note for note in renamed.provenance.overrides)
    assert load_vector(path, model=tiny).provenance.overrides == ()
    with pytest.raises(VectorMismatchError, match="hook site"):
        load_vector(path, model=tiny, site="resid_pre")


def test_saved_files_get_ordinary_permissions(tiny, tmp_path):
    plain = tmp_path / "plain"
    plain.write_bytes(b"")
    path = save_vector(vector(tiny), tmp_path / "v.safetensors")
    mode = plain.stat().st_mode & 0o777
    assert path.stat().st_mode & 0o777 == mode and sidecar_path(path).stat().st_mode & 0o777 == mode
