"""Steering vectors: per-layer directions with their provenance, and their algebra.

A ``SteeringVector`` holds one direction per layer (``[layer, d_model]``) or, for ActAdd, one
per-position difference per layer (``[layer, pos, d_model]``), plus a ``Provenance`` record saying
exactly how it was made (``caa_lens.provenance``). Saving and loading are ``caa_lens.vector_files``.
"""

import hashlib
import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from jaxtyping import Float
from torch import Tensor

from caa_lens.provenance import Provenance, VectorMismatchError, check_compatible, identity_of

__all__ = ["SteeringVector", "equalize_norms"]


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
        check_compatible(other.provenance, identity_of(self.provenance), self.provenance.site)
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
