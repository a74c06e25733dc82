"""SteeringVector validation and algebra, norm equalisation, and safe save/load."""

import dataclasses
import errno
import hashlib
import json
import os
import struct
import warnings

import pytest
import torch

from caa_lens.files import safetensors_bytes
from caa_lens.models import model_identity
from caa_lens.outputs import OutputError
from caa_lens.tiny import tiny_model
from caa_lens.vectors import (
    CorruptVectorError,
    Provenance,
    SteeringVector,
    VectorMismatchError,
    check_compatible,
    check_vector_output,
    equalize_norms,
    is_vector_file,
    is_vector_sidecar,
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
    assert path.name == "actadd.safetensors" and sidecar_path(path).name == "actadd.safetensors.json"
    assert sidecar_path(path).exists()
    assert torch.equal(load_vector(path).directions, v.directions)


def test_file_is_safetensors_without_pickle(tiny, tmp_path):
    path = save_vector(vector(tiny), tmp_path / "v.safetensors")
    raw = path.read_bytes()
    (header_size,) = struct.unpack("<Q", raw[:8])
    assert raw[8:9] == b"{" and not raw.startswith(b"PK")  # a JSON header, not torch's zip of pickles
    assert b"\x80\x02" not in raw[8 : 8 + header_size] and b"\x80\x04" not in raw[8 : 8 + header_size]
    header = json.loads(raw[8 : 8 + header_size])
    assert header["directions"]["dtype"] == "F32" and header["directions"]["shape"] == [2, 64]
    begin, end = header["directions"]["data_offsets"]
    assert 8 + header_size + end == len(raw) and end - begin == 2 * 64 * 4
    meta = json.loads(sidecar_path(path).read_text())
    assert meta["format"] == "caa_lens.vector.sidecar" and meta["file"]["name"] == "v.safetensors"
    assert meta["file"]["bytes"] == len(raw) and meta["file"]["sha256"] == hashlib.sha256(raw).hexdigest()
    assert meta["provenance"]["model_name"] == "caa-lens-tiny-llama" and meta["layers"] == [1, 2]


def test_header_carries_all_metadata_and_its_digest(tiny, tmp_path):
    v = vector(tiny, (0, 3), pos=2)
    raw = save_vector(v, tmp_path / "v.safetensors").read_bytes()
    (size,) = struct.unpack("<Q", raw[:8])
    meta = json.loads(raw[8 : 8 + size])["__metadata__"]
    assert (meta["format"], meta["format_version"]) == ("caa_lens.vector", "2")
    assert json.loads(meta["layers"]) == [0, 3] and json.loads(meta["shape"]) == [2, 2, 64]
    assert Provenance.from_json(json.loads(meta["provenance"])) == v.provenance
    # The digest covers the file's canonical bytes without it: tensors, layers and provenance together.
    unsigned = {key: value for key, value in meta.items() if key != "sha256"}
    tensors = {"directions": v.directions}
    assert meta["sha256"] == hashlib.sha256(safetensors_bytes(tensors, unsigned)).hexdigest()


def test_writes_are_atomic(tiny, tmp_path, monkeypatch):
    save_vector(vector(tiny), tmp_path / "v.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.safetensors", "v.safetensors.json"]

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        save_vector(vector(tiny), tmp_path / "w.safetensors")
    # no partial or temporary files
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.safetensors", "v.safetensors.json"]


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


def test_the_sidecar_is_never_needed_to_load(tiny, tmp_path):
    v = vector(tiny)
    path = save_vector(v, tmp_path / "v.safetensors")
    meta = sidecar_path(path)
    text = meta.read_text()
    meta.write_text(text[: len(text) // 2])  # a damaged readable copy changes nothing
    assert torch.equal(load_vector(path, model=tiny).directions, v.directions)
    meta.unlink()
    assert load_vector(path, model=tiny).provenance == v.provenance
    with pytest.raises(FileNotFoundError):
        load_vector(tmp_path / "absent.safetensors")


def test_a_vector_without_sidecar(tiny, tmp_path):
    path = save_vector(vector(tiny), tmp_path / "v.safetensors")
    save_vector(vector(tiny, seed=3), path, sidecar=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.safetensors"]  # the outdated copy removed
    assert torch.equal(load_vector(path).directions, vector(tiny, seed=3).directions)


def test_edited_header_layers_are_refused_as_corrupt(tiny, tmp_path):
    """The layer list is covered by the digest: re-encoding the header with other layers is caught."""
    v = vector(tiny, (1, 2))
    path = save_vector(v, tmp_path / "v.safetensors")
    raw = path.read_bytes()
    (size,) = struct.unpack("<Q", raw[:8])
    meta = json.loads(raw[8 : 8 + size])["__metadata__"]
    for edit in ("[1, 3]", "[2, 1]", "[10.9, 2]"):
        path.write_bytes(safetensors_bytes({"directions": v.directions}, meta | {"layers": edit}))
        with pytest.raises(CorruptVectorError, match="SHA-256"):
            load_vector(path)
    path.write_bytes(safetensors_bytes({"directions": v.directions}, meta))
    assert load_vector(path).layers == (1, 2)


def test_a_foreign_safetensors_file_is_not_a_vector(tmp_path):
    path = tmp_path / "weights.safetensors"
    path.write_bytes(safetensors_bytes({"w": torch.ones(2)}, {"format": "pt"}))
    assert not is_vector_file(path)
    with pytest.raises(CorruptVectorError, match="not a caa_lens steering vector"):
        load_vector(path)


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


# ---------------------------------------------------------------------------------------------- safe output


def test_saving_never_overwrites_a_dataset_named_after_the_vector(tiny, tmp_path):
    """Format 1 wrote data.json beside data.safetensors: the user's dataset of that name was lost."""
    dataset = tmp_path / "data.json"
    dataset.write_text('[{"question": "Q?", "answer_matching_behavior": "(A)"}]')
    before = dataset.read_bytes()
    path = save_vector(vector(tiny), tmp_path / "data.safetensors")
    assert dataset.read_bytes() == before
    assert sidecar_path(path) == tmp_path / "data.safetensors.json" and sidecar_path(path).exists()
    assert is_vector_sidecar(sidecar_path(path)) and not is_vector_sidecar(dataset)


@pytest.mark.parametrize("occupied", ["v.safetensors", "v.safetensors.json"])
def test_a_foreign_file_at_either_path_is_refused_untouched(tiny, tmp_path, occupied):
    foreign = tmp_path / occupied
    foreign.write_bytes(b"the user's own file\n")
    with pytest.raises(OutputError, match=rf"{occupied} exists and is not a steering vector"):
        check_vector_output(tmp_path / "v.safetensors")
    with pytest.raises(OutputError, match=rf"{occupied} exists and is not a steering vector"):
        save_vector(vector(tiny), tmp_path / "v.safetensors")
    assert foreign.read_bytes() == b"the user's own file\n"
    assert [p.name for p in tmp_path.iterdir()] == [occupied]  # nothing else was written


def test_a_foreign_sidecar_path_is_fine_without_a_sidecar(tiny, tmp_path):
    foreign = tmp_path / "v.safetensors.json"
    foreign.write_text("{}")
    path = save_vector(vector(tiny), tmp_path / "v.safetensors", sidecar=False)
    assert foreign.read_text() == "{}" and load_vector(path).layers == (1, 2)


@pytest.mark.parametrize("name", ["refusal.json", "v.pt", "notes.txt"])
def test_another_suffix_is_refused(tiny, tmp_path, name):
    target = tmp_path / name
    target.write_text("keep me")
    with pytest.raises(OutputError, match=r"saved as a \.safetensors file"):
        save_vector(vector(tiny), target)
    with pytest.raises(OutputError, match=r"saved as a \.safetensors file"):
        check_vector_output(tmp_path / "new.json")
    assert target.read_text() == "keep me" and [p.name for p in tmp_path.iterdir()] == [name]


def test_check_vector_output_writes_nothing(tiny, tmp_path):
    assert check_vector_output(tmp_path / "sub" / "v") == tmp_path / "sub" / "v.safetensors"
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "d.safetensors").mkdir()
    with pytest.raises(OutputError, match="is a directory"):
        check_vector_output(tmp_path / "d.safetensors")
    path = save_vector(vector(tiny), tmp_path / "v")
    assert check_vector_output(path) == path  # our own vector and sidecar may be replaced
    assert is_vector_file(path) and not is_vector_file(sidecar_path(path))


def test_overwriting_a_vector_replaces_both_files(tiny, tmp_path):
    path = save_vector(vector(tiny, seed=1), tmp_path / "v.safetensors")
    save_vector(vector(tiny, (0, 3), seed=2), path)
    assert load_vector(path).layers == (0, 3)
    assert json.loads(sidecar_path(path).read_text())["layers"] == [0, 3]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.safetensors", "v.safetensors.json"]


def _failing(real, failing_call: int):
    calls = {"n": 0}

    def fake(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == failing_call:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*args, **kwargs)

    return fake


@pytest.mark.parametrize(
    ("function", "failing_call"),
    [("write", 1), ("write", 2), ("fsync", 1), ("fsync", 2), ("replace", 2)],
)
def test_a_failed_overwrite_leaves_the_previous_vector_and_sidecar(
    tiny, tmp_path, monkeypatch, function, failing_call
):
    """Disk full at either file's write or fsync, or a failed second rename: nothing changes."""
    old = vector(tiny, seed=1)
    path = save_vector(old, tmp_path / "v.safetensors")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    monkeypatch.setattr(os, function, _failing(getattr(os, function), failing_call))
    with pytest.raises(OSError, match="No space left"):
        save_vector(vector(tiny, (0, 3), seed=2), path)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # no temp files either
    assert torch.equal(load_vector(path, model=tiny).directions, old.directions)


def test_a_failed_first_save_leaves_nothing(tiny, tmp_path, monkeypatch):
    monkeypatch.setattr(os, "replace", _failing(os.replace, 2))
    with pytest.raises(OSError, match="No space left"):
        save_vector(vector(tiny), tmp_path / "v.safetensors")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------- format 1


def write_format_1(v: SteeringVector, path) -> None:
    """A vector file as caa_lens format 1 wrote it: the tensors, and NAME.json with everything else."""
    payload = safetensors_bytes(
        {"directions": v.directions.contiguous()}, {"format": "caa_lens", "format_version": "1"}
    )
    record = v.provenance.to_json()
    for newer in ("model_weights_hash", "settings"):
        record.pop(newer)
    sidecar = {
        "format_version": 1,
        "layers": list(v.layers),
        "shape": list(v.directions.shape),
        "provenance": record,
        "file": {"name": path.name, "bytes": len(payload), "sha256": hashlib.sha256(payload).hexdigest()},
    }
    path.write_bytes(payload)
    path.with_suffix(".json").write_text(json.dumps(sidecar, indent=1))


def test_format_1_files_still_load(tiny, tmp_path):
    v = vector(tiny, (0, 2))
    path = tmp_path / "old.safetensors"
    write_format_1(v, path)
    assert is_vector_file(path)
    loaded = load_vector(path)
    assert torch.equal(loaded.directions, v.directions) and loaded.layers == (0, 2)
    assert loaded.provenance.settings == {} and loaded.provenance.model_weights_hash == ""
    with pytest.warns(UserWarning, match="no weights fingerprint"):
        load_vector(path, model=tiny)
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 0x01
    path.write_bytes(bytes(raw))
    with pytest.raises(CorruptVectorError, match=r"SHA-256 in old\.json"):
        load_vector(path)


def test_saving_over_a_format_1_vector_removes_its_old_metadata_file(tiny, tmp_path):
    path = tmp_path / "old.safetensors"
    write_format_1(vector(tiny), path)
    save_vector(vector(tiny, seed=4), path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.safetensors", "old.safetensors.json"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # format 2 carries the weights fingerprint: no warning
        assert torch.equal(load_vector(path, model=tiny).directions, vector(tiny, seed=4).directions)


# ---------------------------------------------------------------------------------------------- weights


@pytest.fixture(scope="module")
def other_seed():
    """A tiny model of exactly the same name, shape and config as the fixture's, with other weights."""
    return tiny_model(seed=1)


def test_a_vector_from_other_weights_is_refused(tiny, tmp_path, other_seed):
    mine, theirs = model_identity(tiny), model_identity(other_seed)
    assert (mine.name, mine.config_hash) == (theirs.name, theirs.config_hash)
    assert mine.weights_hash != theirs.weights_hash
    path = save_vector(vector(tiny), tmp_path / "v.safetensors")
    assert load_vector(path).provenance.model_weights_hash == mine.weights_hash
    with pytest.raises(VectorMismatchError, match="model weights: vector made on weights"):
        load_vector(path, model=other_seed)
    loaded = load_vector(path, model=other_seed, allow_mismatch=True)
    assert any(note.startswith("model weights") for note in loaded.provenance.overrides)
    with pytest.raises(VectorMismatchError, match="model weights"):
        check_compatible(vector(tiny).provenance, theirs, "resid_post")
    with pytest.raises(VectorMismatchError, match="model weights"):
        vector(tiny) + vector(other_seed)


def test_unknown_weights_are_not_compared(tiny, other_seed):
    legacy = dataclasses.replace(provenance(tiny), model_weights_hash="")
    assert check_compatible(legacy, model_identity(other_seed), "resid_post") == ()


def test_settings_round_trip_and_must_be_json(tiny, tmp_path):
    p = make_provenance(
        tiny, "resid_post", "answer", "m", "d", "0", 1, torch.float32, {"batch_size": 4, "layers": (1, 2)}
    )
    assert p.settings == {"batch_size": 4, "layers": [1, 2], "model_dtype": "float32"}
    v = SteeringVector(torch.ones(1, 64), (1,), p)
    assert load_vector(save_vector(v, tmp_path / "v")).provenance == p
    with pytest.raises(ValueError, match="settings must be JSON values"):
        dataclasses.replace(p, settings={"dtype": torch.float16})
    old = {k: v for k, v in p.to_json().items() if k not in ("settings", "model_weights_hash")}
    assert Provenance.from_json(old).settings == {}
