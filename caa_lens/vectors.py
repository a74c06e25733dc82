"""Steering vectors: per-layer directions with their provenance, algebra, and safe save/load.

A ``SteeringVector`` holds one direction per layer (``[layer, d_model]``) or, for ActAdd, one
per-position difference per layer (``[layer, pos, d_model]``), plus a ``Provenance`` record saying
exactly how it was made.

A saved vector is one safetensors file (no pickle), format 2: its header's ``__metadata__`` holds the
format, the layers, the shape, the provenance (JSON strings) and a SHA-256 of the file's canonical
bytes without that digest, so the tensors, the layers and the provenance are checked together and a
truncated or edited file is refused on load instead of steering with garbage. A human-readable copy
of the metadata is written beside it as ``NAME.safetensors.json`` (optional; never read back). Format-1
files (metadata in a ``NAME.json`` sidecar, which could overwrite a dataset of that name) still load.

Saving never touches a file caa_lens did not write (``check_vector_output``), and replaces a vector
and its sidecar together: both are written to temporary files first, and if anything fails the
previous pair is left as it was.
"""

import errno
import hashlib
import json
import math
import numbers
import os
import shutil
import struct
import uuid
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from importlib import metadata
from pathlib import Path

import torch
from jaxtyping import Float
from torch import Tensor

from caa_lens.files import safetensors_bytes
from caa_lens.models import ModelIdentity, model_identity
from caa_lens.outputs import OutputError, check_output_file

FORMAT = "caa_lens.vector"
FORMAT_VERSION = 2
SIDECAR_FORMAT = "caa_lens.vector.sidecar"
SUFFIX = ".safetensors"
# Format 1 marked its safetensors header with this and kept everything else in NAME.json.
LEGACY_FORMAT = "caa_lens"
LEGACY_FORMAT_VERSION = "1"
# Headers and sidecars larger than this are not ours (ours are a few kB): not read when recognising.
_MAX_METADATA_BYTES = 16 << 20


class VectorMismatchError(ValueError):
    """A vector was made for a different model, width, layer range or hook site."""


class CorruptVectorError(ValueError):
    """A saved vector's file does not match the size or digest recorded beside it."""


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "unknown"


def package_versions() -> dict[str, str]:
    return {p: _version(p) for p in ("caa-lens", "transformer-lens", "torch", "transformers")}


@dataclass(frozen=True)
class Provenance:
    """How a vector was made: enough to find, trust and regenerate it."""

    model_name: str
    model_config_hash: str
    d_model: int
    n_layers: int
    site: str
    position_rule: str
    method: str
    dataset: str
    dataset_hash: str
    n_pairs: int
    dtype: str
    versions: dict[str, str] = field(default_factory=package_versions)
    overrides: tuple[str, ...] = ()
    # ``weights_fingerprint`` of the model the vector was read from; "" in files that predate it.
    model_weights_hash: str = ""
    # Settings that change the values (batch size, system prompt, prompt style, model dtype, ActAdd's
    # BOS...), so two vectors that differ only through them can be told apart. {} in older files.
    settings: dict[str, object] = field(default_factory=dict)
    # Pairs per matching answer label of the data the vector was built from, e.g. {"A": 58, "B": 62}
    # (which of ``method``'s means could cancel the answer letter). {} for ActAdd, for vectors combined
    # from others, and in files that predate it.
    label_counts: dict[str, int] = field(default_factory=dict)
    # Per layer (keys: the layer numbers as strings, as JSON stores them): the share of the direction
    # that is the answer letter, its squared cosine with the letter axis (half the difference of the
    # per-label mean differences; ``caa_lens.stats.letter_share``). {} where it is unknown: older files,
    # combined or random vectors, data with one matching label or more than two.
    letter_share: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Stored as the JSON they round-trip through, so a loaded provenance equals the saved one.
        for name in ("settings", "label_counts", "letter_share"):
            value = getattr(self, name)
            try:
                canonical = json.loads(json.dumps(dict(value), sort_keys=True, allow_nan=False))
            except (TypeError, ValueError) as err:
                raise ValueError(
                    f"provenance {name} must be JSON values (str, number, bool, None, lists, dicts): "
                    f"{value!r} ({err})"
                ) from err
            object.__setattr__(self, name, canonical)

    def to_json(self) -> dict:
        return asdict(self) | {"overrides": list(self.overrides)}

    @classmethod
    def from_json(cls, record: dict) -> "Provenance":
        return cls(**(record | {"overrides": tuple(record.get("overrides", ()))}))


@dataclass(frozen=True, eq=False, init=False)
class SteeringVector:
    """Directions for a set of layers, with provenance.

    ``directions[i]`` belongs to ``layers[i]``: shape ``[d_model]`` for CAA/PCA vectors, or
    ``[pos, d_model]`` for an ActAdd prompt-pair difference. ``layers`` is stored as a tuple of
    non-negative ints; anything else (``10.9``, ``True``, ``"3"``, ``-1``) is refused with a ValueError.
    """

    directions: Float[Tensor, "layer *pos d_model"]
    layers: tuple[int, ...]
    provenance: Provenance

    # Written out so ``layers`` is annotated with what is accepted, not what is stored: the test
    # suite's runtime type checker would otherwise reject a float or a string with its own TypeError
    # (or, checking one element of a tuple at random, sometimes let it through) before the ValueError
    # that names the bad layer, and production code, which runs unchecked, would behave differently.
    def __init__(
        self,
        directions: Float[Tensor, "layer *pos d_model"],
        layers: Sequence[object],
        provenance: Provenance,
    ) -> None:
        object.__setattr__(self, "directions", directions)
        object.__setattr__(self, "layers", _checked_layers(layers))
        object.__setattr__(self, "provenance", provenance)
        self.__post_init__()

    def __post_init__(self) -> None:
        if self.directions.dim() not in (2, 3):
            raise ValueError(
                f"directions must be [layer, d_model] or [layer, pos, d_model], got shape "
                f"{tuple(self.directions.shape)}"
            )
        if not self.layers:
            raise ValueError("a steering vector needs at least one layer")
        if self.directions.shape[0] != len(self.layers):
            raise ValueError(
                f"{self.directions.shape[0]} directions for {len(self.layers)} layers {self.layers}"
            )
        if self.directions.shape[-1] != self.provenance.d_model:
            raise ValueError(
                f"directions have width {self.directions.shape[-1]}, provenance says {self.provenance.d_model}"
            )
        if len(set(self.layers)) != len(self.layers):
            raise ValueError(f"duplicate layers {self.layers}")
        if not torch.isfinite(self.directions).all():
            bad = [
                layer
                for layer, d in zip(self.layers, self.directions, strict=True)
                if not torch.isfinite(d).all()
            ]
            raise ValueError(f"steering vector has NaN or infinite values at layers {bad}")

    @property
    def is_positional(self) -> bool:
        """True for ActAdd vectors, which add a different vector at each front position."""
        return self.directions.dim() == 3

    def at(self, layer: int) -> Float[Tensor, "*pos d_model"]:
        if layer not in self.layers:
            raise KeyError(f"this vector has no direction for layer {layer}; it has layers {self.layers}")
        return self.directions[self.layers.index(layer)]

    def norms(self) -> Float[Tensor, " layer"]:
        return self.directions.flatten(1).norm(dim=-1)

    def select(self, layers: int | tuple[int, ...] | list[int]) -> "SteeringVector":
        chosen = (layers,) if isinstance(layers, int) else tuple(layers)
        return replace(self, directions=torch.stack([self.at(layer) for layer in chosen]), layers=chosen)

    def scaled(self, factor: float | int) -> "SteeringVector":
        if not math.isfinite(factor):
            raise ValueError(f"scale factor must be finite, got {factor}")
        return replace(
            self,
            directions=self.directions * factor,
            provenance=_noted(self.provenance, f"scaled x{factor:g}"),
        )

    def normalized(self, target_norm: float | Tensor = 1.0) -> "SteeringVector":
        """Each layer's direction rescaled to ``target_norm`` (a number, or one per layer)."""
        norms = self.norms()
        if (norms == 0).any():
            zero = [layer for layer, n in zip(self.layers, norms, strict=True) if n == 0]
            raise ValueError(f"cannot normalise a zero-norm direction (layers {zero})")
        target = torch.as_tensor(target_norm, dtype=self.directions.dtype)
        shape = (-1,) + (1,) * (self.directions.dim() - 1)
        scale = (
            (target.reshape(-1) / norms).reshape(shape) if target.dim() else (target / norms).reshape(shape)
        )
        return replace(
            self, directions=self.directions * scale, provenance=_noted(self.provenance, "normalized")
        )

    def _combine(self, other: "SteeringVector", sign: float, label: str) -> "SteeringVector":
        if self.layers != other.layers or self.directions.shape != other.directions.shape:
            raise VectorMismatchError(
                f"cannot {label} vectors over layers {self.layers} {tuple(self.directions.shape)} and "
                f"{other.layers} {tuple(other.directions.shape)}"
            )
        # Compare the other vector's site with this one's: passing its own site would never differ.
        check_compatible(other.provenance, _identity_of(self.provenance), self.provenance.site)
        p = self.provenance
        q = other.provenance
        combined = replace(
            p,
            method=f"({p.method}) {label} ({q.method})",
            dataset=f"{p.dataset} {label} {q.dataset}",
            dataset_hash=_hash_pair(p.dataset_hash, q.dataset_hash),
            n_pairs=p.n_pairs + q.n_pairs,
            model_weights_hash=p.model_weights_hash or q.model_weights_hash,
            settings=p.settings if p.settings == q.settings else {"terms": [p.settings, q.settings]},
            # A sum's letter share is not either term's; the terms' own records stay with them.
            label_counts={},
            letter_share={},
        )
        return SteeringVector(self.directions + sign * other.directions, self.layers, combined)

    def __add__(self, other: "SteeringVector") -> "SteeringVector":
        return self._combine(other, 1.0, "+")

    def __sub__(self, other: "SteeringVector") -> "SteeringVector":
        return self._combine(other, -1.0, "-")

    def __mul__(self, factor: float | int) -> "SteeringVector":
        return self.scaled(factor)

    __rmul__ = __mul__


def _checked_layers(layers: object) -> tuple[int, ...]:
    """``layers`` as a tuple of plain ints, refusing anything but non-negative integer indices.

    ``int(10.9)`` would silently steer layer 10 and ``True`` layer 1, so floats, bools and strings are
    refused rather than converted; NumPy integers are accepted as the integers they are.
    """
    if isinstance(layers, str | bytes) or not isinstance(layers, Sequence):
        raise ValueError(
            f"layers must be a sequence of layer indices, got {type(layers).__name__} {layers!r}"
        )
    checked = []
    for layer in layers:
        if isinstance(layer, bool) or not isinstance(layer, numbers.Integral):
            raise ValueError(
                f"layer {layer!r} ({type(layer).__name__}) in {tuple(layers)} is not an integer: "
                "layers are whole, non-negative block indices"
            )
        if layer < 0:
            raise ValueError(
                f"layer {layer} in {tuple(layers)} is negative: a steering vector stores absolute block "
                "indices (0 = first block); convert with caa_lens.hooks.check_layers(model, layers)"
            )
        checked.append(int(layer))
    return tuple(checked)


def _noted(provenance: Provenance, note: str) -> Provenance:
    return replace(provenance, method=f"{provenance.method}; {note}")


def _hash_pair(a: str, b: str) -> str:
    return hashlib.sha256(f"{a}|{b}".encode()).hexdigest()[:16]


def _identity_of(p: Provenance) -> ModelIdentity:
    return ModelIdentity(p.model_name, p.n_layers, p.d_model, p.model_config_hash, p.model_weights_hash)


def check_compatible(
    provenance: Provenance, identity: ModelIdentity, site: str, allow_mismatch: bool = False
) -> tuple[str, ...]:
    """Compare a vector's provenance with a model; raise VectorMismatchError listing every difference.

    With ``allow_mismatch`` the differences are returned instead (for deliberate transfer experiments;
    callers record them in the provenance) unless the widths differ, which no override can fix.
    The weights fingerprints are compared only when both are known (files saved before they were
    recorded have none; ``load_vector`` warns about those).
    """
    differences = []
    if provenance.d_model != identity.d_model:
        raise VectorMismatchError(
            f"vector width d_model={provenance.d_model}, model has d_model={identity.d_model}"
        )
    if provenance.model_name != identity.name:
        differences.append(f"model name: vector {provenance.model_name!r}, model {identity.name!r}")
    if provenance.model_config_hash != identity.config_hash:
        differences.append(
            f"model config hash: vector {provenance.model_config_hash}, model {identity.config_hash}"
        )
    if (
        provenance.model_weights_hash
        and identity.weights_hash
        and provenance.model_weights_hash != identity.weights_hash
    ):
        differences.append(
            f"model weights: vector made on weights {provenance.model_weights_hash}, model has "
            f"{identity.weights_hash} (same name and shape, other weights: another checkpoint, seed or fine-tune)"
        )
    if provenance.n_layers != identity.n_layers:
        differences.append(
            f"layer count: vector made on {provenance.n_layers}, model has {identity.n_layers}"
        )
    if provenance.site != site:
        differences.append(f"hook site: vector read at {provenance.site}, applied at {site}")
    if differences and not allow_mismatch:
        raise VectorMismatchError(
            "steering vector does not match the model: "
            + "; ".join(differences)
            + " (pass allow_mismatch=True for a deliberate transfer experiment)"
        )
    return tuple(differences)


def equalize_norms(vectors: dict[str, SteeringVector]) -> dict[str, SteeringVector]:
    """Rescale each behaviour's vector, per layer, to the mean norm of all behaviours at that layer.

    The CAA paper did this before comparing behaviours, so that a behaviour with a larger raw
    difference does not look stronger at the same multiplier.
    """
    if not vectors:
        raise ValueError("no vectors to equalise")
    first = next(iter(vectors.values()))
    for name, vector in vectors.items():
        if vector.layers != first.layers:
            raise VectorMismatchError(f"vector {name!r} has layers {vector.layers}, expected {first.layers}")
    mean_norms = torch.stack([v.norms() for v in vectors.values()]).mean(0)
    return {name: v.normalized(mean_norms) for name, v in vectors.items()}


def make_provenance(
    model,
    site: str,
    position_rule: str,
    method: str,
    dataset: str,
    dataset_hash: str,
    n_pairs: int,
    dtype: torch.dtype,
    settings: Mapping[str, object] | None = None,
) -> Provenance:
    """The provenance of a vector read from ``model`` now: its identity, weights fingerprint and versions.

    Args:
        settings: the extraction settings that change the values (batch size, system prompt...);
            the model's parameter dtype is added, since it changes every activation.
    """
    identity = model_identity(model)
    recorded: dict[str, object] = {"model_dtype": _model_dtype(model)}
    recorded.update(settings or {})
    return Provenance(
        identity.name,
        identity.config_hash,
        identity.d_model,
        identity.n_layers,
        site,
        position_rule,
        method,
        dataset,
        dataset_hash,
        n_pairs,
        str(dtype).removeprefix("torch."),
        model_weights_hash=identity.weights_hash,
        settings=recorded,
    )


def _model_dtype(model) -> str:
    dtype = getattr(getattr(model, "cfg", None), "dtype", None)
    if not isinstance(dtype, torch.dtype):
        dtype = next((p.dtype for p in model.parameters()), None)
    return str(dtype).removeprefix("torch.")


# ---------------------------------------------------------------------------------------------- files


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


def _write_fully(descriptor: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(descriptor, view)
        if written <= 0:  # os.write raises on a full disk; a zero-byte write would loop forever
            raise OSError(errno.EIO, "write wrote nothing")
        view = view[written:]


def _write_temporary(target: Path, data: bytes, temporaries: list[Path]) -> Path:
    """Write ``data`` to a new hidden file beside ``target`` and fsync it (listed before writing)."""
    # Mode 0666 with O_EXCL: a fresh name, and the user's umask decides the permissions (mkstemp's
    # 0600 would survive the rename and make saved vectors unreadable to others).
    temporary = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    temporaries.append(temporary)
    try:
        _write_fully(descriptor, data)
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    return temporary


def _replace_together(files: Sequence[tuple[Path, bytes]]) -> None:
    """Replace every target with its data, or, if anything fails, leave every target as it was.

    All data goes to fsynced temporary files first, so a full disk fails before any target changes.
    The renames then run in order; a target that existed is first hard-linked (copied where links
    are not supported) to a backup, and if a later rename fails the earlier ones are undone.
    """
    temporaries: list[Path] = []
    backups: list[Path] = []
    replaced: list[tuple[Path, Path | None]] = []
    try:
        for target, data in files:
            _write_temporary(target, data, temporaries)
        for (target, _), temporary in zip(files, temporaries, strict=True):
            backup = None
            if target.exists():
                backup = target.with_name(f".{target.name}.{uuid.uuid4().hex}.bak")
                try:
                    os.link(target, backup)
                except OSError:
                    shutil.copyfile(target, backup)
                backups.append(backup)
            os.replace(temporary, target)
            replaced.append((target, backup))
    except BaseException:
        for target, backup in reversed(replaced):
            try:
                if backup is None:
                    target.unlink(missing_ok=True)
                else:
                    os.replace(backup, target)
            except OSError as err:  # the original error matters more; say what could not be undone
                warnings.warn(f"could not restore {target} after a failed save: {err}", stacklevel=3)
        raise
    finally:
        for leftover in temporaries + backups:
            leftover.unlink(missing_ok=True)
    _fsync_directory(files[0][0].parent)


def _fsync_directory(directory: Path) -> None:
    """Make the renames durable (best effort: not every platform can open a directory)."""
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


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
    _replace_together(files)
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
    path: str | Path, model=None, site: str | None = None, allow_mismatch: bool = False
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
