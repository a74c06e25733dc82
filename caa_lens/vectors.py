"""Steering vectors: per-layer directions with their provenance, algebra, and safe save/load.

A ``SteeringVector`` holds one direction per layer (``[layer, d_model]``) or, for ActAdd, one
per-position difference per layer (``[layer, pos, d_model]``), plus a ``Provenance`` record saying
exactly how it was made. Files are safetensors (no pickle) with a JSON sidecar holding the provenance
and the safetensors file's size and SHA-256, written atomically, so a truncated or edited file is
refused on load instead of steering with garbage.
"""

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field, replace
from importlib import metadata
from pathlib import Path

import torch
from jaxtyping import Float
from torch import Tensor

from caa_lens.files import atomic_write_bytes, safetensors_bytes
from caa_lens.models import ModelIdentity, model_identity

FORMAT_VERSION = 1


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

    def to_json(self) -> dict:
        return asdict(self) | {"overrides": list(self.overrides)}

    @classmethod
    def from_json(cls, record: dict) -> "Provenance":
        return cls(**(record | {"overrides": tuple(record.get("overrides", ()))}))


@dataclass(frozen=True, eq=False)
class SteeringVector:
    """Directions for a set of layers, with provenance.

    ``directions[i]`` belongs to ``layers[i]``: shape ``[d_model]`` for CAA/PCA vectors, or
    ``[pos, d_model]`` for an ActAdd prompt-pair difference.
    """

    directions: Float[Tensor, "layer *pos d_model"]
    layers: tuple[int, ...]
    provenance: Provenance

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
        combined = replace(
            p,
            method=f"({p.method}) {label} ({other.provenance.method})",
            dataset=f"{p.dataset} {label} {other.provenance.dataset}",
            dataset_hash=_hash_pair(p.dataset_hash, other.provenance.dataset_hash),
            n_pairs=p.n_pairs + other.provenance.n_pairs,
        )
        return SteeringVector(self.directions + sign * other.directions, self.layers, combined)

    def __add__(self, other: "SteeringVector") -> "SteeringVector":
        return self._combine(other, 1.0, "+")

    def __sub__(self, other: "SteeringVector") -> "SteeringVector":
        return self._combine(other, -1.0, "-")

    def __mul__(self, factor: float | int) -> "SteeringVector":
        return self.scaled(factor)

    __rmul__ = __mul__


def _noted(provenance: Provenance, note: str) -> Provenance:
    return replace(provenance, method=f"{provenance.method}; {note}")


def _hash_pair(a: str, b: str) -> str:
    return hashlib.sha256(f"{a}|{b}".encode()).hexdigest()[:16]


def _identity_of(p: Provenance) -> ModelIdentity:
    return ModelIdentity(p.model_name, p.n_layers, p.d_model, p.model_config_hash)


def check_compatible(
    provenance: Provenance, identity: ModelIdentity, site: str, allow_mismatch: bool = False
) -> tuple[str, ...]:
    """Compare a vector's provenance with a model; raise VectorMismatchError listing every difference.

    With ``allow_mismatch`` the differences are returned instead (for deliberate transfer experiments;
    callers record them in the provenance) unless the widths differ, which no override can fix.
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
) -> Provenance:
    identity = model_identity(model)
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
    )


def sidecar_path(path: Path) -> Path:
    return path.with_suffix(".json")


def save_vector(vector: SteeringVector, path: str | Path) -> Path:
    """Write ``path`` (.safetensors) and its JSON sidecar, both atomically."""
    path = Path(path)
    if path.suffix != ".safetensors":
        path = path.with_suffix(".safetensors")
    payload = safetensors_bytes(
        {"directions": vector.directions.detach().cpu().contiguous()},
        metadata={"format": "caa_lens", "format_version": str(FORMAT_VERSION)},
    )
    sidecar = {
        "format_version": FORMAT_VERSION,
        "layers": list(vector.layers),
        "shape": list(vector.directions.shape),
        "provenance": vector.provenance.to_json(),
        "file": {"name": path.name, "bytes": len(payload), "sha256": hashlib.sha256(payload).hexdigest()},
    }
    atomic_write_bytes(path, payload)
    atomic_write_bytes(sidecar_path(path), json.dumps(sidecar, indent=1).encode())
    return path


def load_vector(
    path: str | Path, model=None, site: str | None = None, allow_mismatch: bool = False
) -> SteeringVector:
    """Load a saved vector, verifying its file against the sidecar and, given a model, its identity.

    Args:
        model: when given, the vector must have been made on this model (name, config, width, layers).
        site: the hook site it will be applied at (defaults to the one it was read at).
        allow_mismatch: accept a different model/site for transfer experiments; the differences are
            appended to ``provenance.overrides`` so results record them.
    """
    from safetensors.torch import load

    path = Path(path)
    meta_path = sidecar_path(path)
    if not path.exists():
        raise FileNotFoundError(f"vector file {path} does not exist")
    if not meta_path.exists():
        raise CorruptVectorError(f"{path} has no metadata file {meta_path.name} beside it")
    try:
        meta = json.loads(meta_path.read_text())
        expected = meta["file"]
        provenance = Provenance.from_json(meta["provenance"])
        layers = tuple(int(x) for x in meta["layers"])
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise CorruptVectorError(f"{meta_path}: malformed vector metadata ({err!r})") from err
    payload = path.read_bytes()
    if len(payload) != expected["bytes"]:
        raise CorruptVectorError(
            f"{path} has {len(payload)} bytes, its metadata says {expected['bytes']} (truncated?)"
        )
    if hashlib.sha256(payload).hexdigest() != expected["sha256"]:
        raise CorruptVectorError(
            f"{path} does not match the SHA-256 in {meta_path.name} (modified after saving?)"
        )
    directions = load(payload)["directions"]
    vector = SteeringVector(directions, layers, provenance)
    if model is not None:
        identity = model_identity(model)
        if max(layers) >= identity.n_layers:
            raise VectorMismatchError(
                f"vector has layers up to {max(layers)}, the model has {identity.n_layers} layers"
            )
        notes = check_compatible(provenance, identity, site or provenance.site, allow_mismatch)
        if notes:
            vector = replace(vector, provenance=replace(provenance, overrides=provenance.overrides + notes))
    return vector
