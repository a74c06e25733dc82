"""Saving and loading steering vectors: one self-checking safetensors file, never someone else's file.

A saved vector is one safetensors file (no pickle), format 2: its header's ``__metadata__`` holds the
format, the layers, the shape, the provenance (JSON strings) and a SHA-256 of the file's canonical
bytes without that digest, so the tensors, the layers and the provenance are checked together and a
truncated or edited file is refused on load instead of steering with garbage. A human-readable copy
of the metadata is written beside it as ``NAME.safetensors.json`` (optional; never read back). Format-1
files (metadata in a ``NAME.json`` sidecar, which could overwrite a dataset of that name) still load.

Saving never touches a file caa_lens did not write (``check_vector_output``), and replaces a vector
and its sidecar together (``caa_lens.files.replace_together``): both are written to temporary files
first, and if anything fails the previous pair is left as it was.
"""

import hashlib
import json
import struct
import warnings
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from torch import Tensor

from caa_lens.files import replace_together, safetensors_bytes
from caa_lens.identity import model_identity
from caa_lens.outputs import OutputError, check_output_file
from caa_lens.provenance import Provenance, VectorMismatchError, check_compatible
from caa_lens.vectors import SteeringVector

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "LEGACY_FORMAT",
    "LEGACY_FORMAT_VERSION",
    "SIDECAR_FORMAT",
    "SUFFIX",
    "CorruptVectorError",
    "check_vector_output",
    "is_vector_file",
    "is_vector_sidecar",
    "legacy_sidecar_path",
    "load_vector",
    "save_vector",
    "sidecar_path",
    "vector_bytes",
    "vector_path",
]

FORMAT = "caa_lens.vector"
FORMAT_VERSION = 2
SIDECAR_FORMAT = "caa_lens.vector.sidecar"
SUFFIX = ".safetensors"
# Format 1 marked its safetensors header with this and kept everything else in NAME.json.
LEGACY_FORMAT = "caa_lens"
LEGACY_FORMAT_VERSION = "1"
# Headers and sidecars larger than this are not ours (ours are a few kB): not read when recognising.
_MAX_METADATA_BYTES = 16 << 20


class CorruptVectorError(ValueError):
    """A saved vector's file does not match the size or digest recorded beside it."""


def vector_path(path: str | Path) -> Path:
    """The file a vector is saved to: ``path`` itself if it ends in ``.safetensors``, else with it appended.

    Raises:
        OutputError: ``path`` has another suffix (``refusal.json``): a vector is never written under a
            name that looks like, and could overwrite, a file of another kind.
    """
    path = Path(path)
    if path.is_dir():  # `--out results/`: saving to `results.safetensors` beside it would surprise
        raise OutputError(f"{path} is a directory; give a file path ending in {SUFFIX} for the vector")
    if path.suffix == SUFFIX:
        return path
    if path.suffix:
        raise OutputError(
            f"{path}: a steering vector is saved as a {SUFFIX} file, not {path.suffix!r}; "
            f"give a path ending in {SUFFIX} (or no suffix, and {SUFFIX} is added)"
        )
    return path.with_name(path.name + SUFFIX)


def sidecar_path(path: str | Path) -> Path:
    """The human-readable metadata copy beside a vector file: ``NAME.safetensors.json``.

    The full file name plus ``.json`` (not ``NAME.json``, format 1's name), so it can never be a
    dataset or any other file named after the vector's stem.
    """
    path = Path(path)
    return path.with_name(path.name + ".json")


def legacy_sidecar_path(path: str | Path) -> Path:
    """Where format 1 kept a vector's metadata: ``NAME.json`` beside ``NAME.safetensors``."""
    return Path(path).with_suffix(".json")


def _header_of(raw: bytes) -> dict:
    """The JSON header of safetensors bytes (ValueError when there is none)."""
    if len(raw) < 8:
        raise ValueError(f"{len(raw)} bytes: too short for a safetensors header")
    (size,) = struct.unpack("<Q", raw[:8])
    if size > _MAX_METADATA_BYTES or 8 + size > len(raw):
        raise ValueError(f"header length {size} does not fit the file's {len(raw)} bytes")
    header = json.loads(raw[8 : 8 + size])
    if not isinstance(header, dict):
        raise ValueError("the header is not a JSON object")
    return header


def _file_metadata(path: Path) -> dict:
    """The ``__metadata__`` of a safetensors file, reading only its header."""
    with open(path, "rb") as handle:
        start = handle.read(8)
        if len(start) < 8:
            raise ValueError("too short for a safetensors header")
        (size,) = struct.unpack("<Q", start)
        if size > _MAX_METADATA_BYTES:
            raise ValueError(f"header length {size} is not a caa_lens vector's")
        header = _header_of(start + handle.read(size))
    found = header.get("__metadata__") or {}
    return found if isinstance(found, dict) else {}


def is_vector_file(path: str | Path) -> bool:
    """True if ``path`` is a steering vector file caa_lens wrote (format 2, or a format-1 file)."""
    try:
        found = _file_metadata(Path(path))
    except (OSError, ValueError):
        return False
    legacy = found.get("format") == LEGACY_FORMAT and found.get("format_version") == LEGACY_FORMAT_VERSION
    return found.get("format") == FORMAT or legacy


def _read_json(path: Path) -> object:
    if path.stat().st_size > _MAX_METADATA_BYTES:
        raise ValueError(f"{path} is larger than any caa_lens metadata file")
    return json.loads(path.read_text(encoding="utf-8"))


def is_vector_sidecar(path: str | Path) -> bool:
    """True if ``path`` is the JSON metadata copy caa_lens writes beside a vector (``NAME.safetensors.json``)."""
    try:
        record = _read_json(Path(path))
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and record.get("format") == SIDECAR_FORMAT


def _is_legacy_sidecar_of(meta_path: Path, vector: Path) -> bool:
    """True if ``meta_path`` is format 1's metadata file for the vector file ``vector``."""
    try:
        record = _read_json(meta_path)
    except (OSError, ValueError):
        return False
    return (
        isinstance(record, dict)
        and record.get("format_version") == 1
        and isinstance(record.get("file"), dict)
        and record["file"].get("name") == vector.name
        and "provenance" in record
    )


def check_vector_output(path: str | Path, sidecar: bool = True) -> Path:
    """Check, writing nothing, that a vector can be saved at ``path``; return the path it will have.

    Call it before loading a model or extracting, so an unusable output path fails at once. Refused
    (``OutputError``, the file left untouched): a suffix other than ``.safetensors``; a directory; an
    unwritable directory; an existing file at the vector path that is not a caa_lens vector; and, with
    ``sidecar``, an existing file at ``NAME.safetensors.json`` that is not a caa_lens vector sidecar.
    """
    path = check_output_file(vector_path(path), "steering vector", is_vector_file)
    if sidecar:
        check_output_file(sidecar_path(path), "steering vector sidecar", is_vector_sidecar)
    return path


def _metadata(vector: SteeringVector) -> dict[str, str]:
    return {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "layers": json.dumps(list(vector.layers)),
        "shape": json.dumps(list(vector.directions.shape)),
        "provenance": json.dumps(vector.provenance.to_json(), sort_keys=True),
    }


def _digest(tensors: Mapping[str, Tensor], metadata: Mapping[str, str]) -> str:
    # safetensors_bytes is canonical (sorted keys, fixed separators), so re-serialising what was read
    # gives back the bytes that were hashed whenever nothing in the tensors or the metadata changed.
    return hashlib.sha256(safetensors_bytes(tensors, metadata)).hexdigest()


def vector_bytes(vector: SteeringVector) -> bytes:
    """The bytes of ``vector``'s file: safetensors with its metadata and digest in the header."""
    tensors = {"directions": vector.directions.detach().cpu().contiguous()}
    unsigned = _metadata(vector)
    return safetensors_bytes(tensors, unsigned | {"sha256": _digest(tensors, unsigned)})


def _sidecar_bytes(vector: SteeringVector, name: str, payload: bytes) -> bytes:
    record = {
        "format": SIDECAR_FORMAT,
        "format_version": FORMAT_VERSION,
        "note": f"a readable copy of the metadata in the header of {name}; load_vector does not read this file",
        "file": {"name": name, "bytes": len(payload), "sha256": hashlib.sha256(payload).hexdigest()},
        "layers": list(vector.layers),
        "shape": list(vector.directions.shape),
        "provenance": vector.provenance.to_json(),
    }
    return (json.dumps(record, indent=1) + "\n").encode()


def save_vector(vector: SteeringVector, path: str | Path, sidecar: bool = True) -> Path:
    """Save ``vector`` as one self-checking safetensors file (format 2) and return its path.

    Args:
        vector: the vector to save.
        path: a ``.safetensors`` path, or a path without suffix (``.safetensors`` is appended).
        sidecar: also write ``NAME.safetensors.json``, a readable copy of the metadata (never read
            back: the header is the record). Without it, an outdated sidecar of ours is removed.

    Raises:
        OutputError: see ``check_vector_output``; raised before anything is written.
        OSError: the write failed (a full disk...); the previous vector and sidecar, if any, are
            left byte-identical and no temporary file remains.

    >>> import tempfile, torch
    >>> from caa_lens.provenance import make_provenance
    >>> from caa_lens.tiny import tiny_model
    >>> model = tiny_model()
    >>> p = make_provenance(model, "resid_post", "answer", "demo", "demo", "0", 1, torch.float32)
    >>> out = save_vector(SteeringVector(torch.ones(1, 64), (2,), p), tempfile.mkdtemp() + "/demo")
    >>> out.name, sidecar_path(out).name, load_vector(out, model).layers
    ('demo.safetensors', 'demo.safetensors.json', (2,))
    """
    path = check_vector_output(path, sidecar)
    payload = vector_bytes(vector)
    files = [(path, payload)]
    if sidecar:
        files.append((sidecar_path(path), _sidecar_bytes(vector, path.name, payload)))
    path.parent.mkdir(parents=True, exist_ok=True)
    replace_together(files)
    # Metadata files of ours that describe what was just replaced would now be wrong: remove them.
    stale = [legacy_sidecar_path(path)] if _is_legacy_sidecar_of(legacy_sidecar_path(path), path) else []
    if not sidecar and is_vector_sidecar(sidecar_path(path)):
        stale.append(sidecar_path(path))
    for outdated in stale:
        outdated.unlink(missing_ok=True)
    return path


def _corrupt(path: Path, problem: str) -> CorruptVectorError:
    return CorruptVectorError(f"{path}: {problem}; save the vector again, or restore the file from a copy")


def _read_v2(path: Path, raw: bytes, found: Mapping[str, str]) -> SteeringVector:
    from safetensors.torch import load

    version = str(found.get("format_version"))
    if not version.isdigit() or int(version) != FORMAT_VERSION:
        raise CorruptVectorError(
            f"{path}: vector file format {version!r}, this caa_lens reads formats 1 and {FORMAT_VERSION} "
            "(a newer caa_lens wrote it? upgrade caa_lens)"
        )
    try:
        tensors = load(raw)
    except Exception as err:  # safetensors raises its own error types for a damaged buffer
        raise _corrupt(path, f"its tensors cannot be read (truncated?): {err}") from err
    unsigned = {key: value for key, value in found.items() if key != "sha256"}
    if "sha256" not in found or _digest(tensors, unsigned) != found["sha256"]:
        raise _corrupt(path, "its contents do not match the SHA-256 in its header (modified after saving?)")
    try:
        layers = json.loads(unsigned["layers"])
        shape = json.loads(unsigned["shape"])
        provenance = Provenance.from_json(json.loads(unsigned["provenance"]))
        directions = tensors["directions"]
        if list(directions.shape) != shape:
            raise ValueError(f"directions have shape {list(directions.shape)}, the header says {shape}")
        return SteeringVector(directions, layers, provenance)
    except (KeyError, TypeError, ValueError) as err:
        raise _corrupt(path, f"malformed vector metadata ({err})") from err


def _read_legacy(path: Path, raw: bytes) -> SteeringVector:
    """Format 1: the safetensors file checked against the size and SHA-256 in ``NAME.json``."""
    from safetensors.torch import load

    meta_path = legacy_sidecar_path(path)
    if not meta_path.exists():
        raise CorruptVectorError(f"{path} has no metadata file {meta_path.name} beside it")
    try:
        meta = json.loads(meta_path.read_text())
        expected = meta["file"]
        provenance = Provenance.from_json(meta["provenance"])
        layers = meta["layers"]
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise CorruptVectorError(f"{meta_path}: malformed vector metadata ({err!r})") from err
    if len(raw) != expected["bytes"]:
        raise CorruptVectorError(
            f"{path} has {len(raw)} bytes, its metadata says {expected['bytes']} (truncated?)"
        )
    if hashlib.sha256(raw).hexdigest() != expected["sha256"]:
        raise CorruptVectorError(
            f"{path} does not match the SHA-256 in {meta_path.name} (modified after saving?)"
        )
    try:
        return SteeringVector(load(raw)["directions"], layers, provenance)
    except (KeyError, ValueError) as err:
        raise CorruptVectorError(f"{meta_path}: malformed vector metadata ({err})") from err


def load_vector(
    path: str | Path,
    model: "TransformerBridge | None" = None,
    site: str | None = None,
    allow_mismatch: bool = False,
) -> SteeringVector:
    """Load a saved vector, verifying its digest and, given a model, that it was made on that model.

    Args:
        model: when given, the vector must have been made on this model (name, config, width, layers,
            weights fingerprint). A file without a weights fingerprint (format 1) loads with a warning.
        site: the hook site it will be applied at (defaults to the one it was read at).
        allow_mismatch: accept a different model/site for transfer experiments; the differences are
            appended to ``provenance.overrides`` so results record them.

    Raises:
        FileNotFoundError: no file at ``path``.
        CorruptVectorError: not a caa_lens vector, damaged, or edited after saving.
        VectorMismatchError: made for another model or site (see ``check_compatible``).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"vector file {path} does not exist")
    raw = path.read_bytes()
    try:
        found = _header_of(raw).get("__metadata__") or {}
    except ValueError as err:
        raise _corrupt(path, f"not a readable safetensors file (truncated?): {err}") from err
    if found.get("format") == FORMAT:
        vector = _read_v2(path, raw, found)
    elif found.get("format") == LEGACY_FORMAT:
        vector = _read_legacy(path, raw)
    else:
        raise CorruptVectorError(
            f"{path} is a safetensors file but not a caa_lens steering vector (no format {FORMAT!r} in its header)"
        )
    if model is not None:
        identity = model_identity(model)
        if max(vector.layers) >= identity.n_layers:
            raise VectorMismatchError(
                f"vector has layers up to {max(vector.layers)}, the model has {identity.n_layers} layers"
            )
        provenance = vector.provenance
        if not provenance.model_weights_hash:
            warnings.warn(
                f"{path} records no weights fingerprint (saved by an older caa_lens): it cannot be checked "
                "that it was made on this model's weights, only on its name and shape; save it again to add one",
                stacklevel=2,
            )
        notes = check_compatible(provenance, identity, site or provenance.site, allow_mismatch)
        if notes:
            vector = replace(vector, provenance=replace(provenance, overrides=provenance.overrides + notes))
    return vector
