"""Saving and loading steering vectors: bit-exact, self-checking, atomic, never over another's file."""

import dataclasses
import errno
import hashlib
import json
import os
import struct
import warnings

import pytest
import torch
from helpers.vector_toys import other_tiny_models, vector

from caa_lens.files import safetensors_bytes
from caa_lens.outputs import OutputError
from caa_lens.provenance import Provenance, VectorMismatchError
from caa_lens.vector_files import (
    CorruptVectorError,
    check_vector_output,
    is_vector_file,
    is_vector_sidecar,
    load_vector,
    save_vector,
    sidecar_path,
)
from caa_lens.vectors import SteeringVector


@pytest.fixture(scope="module")
def other_models():
    """Tiny models that differ from the session's one in width, depth, or only in name."""
    return other_tiny_models()


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
