"""Provenance: how a steering vector was made, and whether it fits a given model and hook site.

Every saved vector carries one (GUIDE section 5.11): the model's identity and weights fingerprint, the
hook site, the read position rule, the method, the dataset and its hash, the number of pairs, the
package versions and the settings that change the values. ``check_compatible`` compares it with a
model before a vector is applied or loaded.
"""

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import torch

from caa_lens.identity import ModelIdentity, model_identity
from caa_lens.versions import package_versions

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

__all__ = ["Provenance", "VectorMismatchError", "check_compatible", "identity_of", "make_provenance"]


class VectorMismatchError(ValueError):
    """A vector was made for a different model, width, layer range or hook site."""


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


def identity_of(p: Provenance) -> ModelIdentity:
    """The identity of the model ``p`` was made on, as ``check_compatible`` compares it."""
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


def make_provenance(
    model: "TransformerBridge",
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


def _model_dtype(model: "TransformerBridge") -> str:
    dtype = getattr(getattr(model, "cfg", None), "dtype", None)
    if not isinstance(dtype, torch.dtype):
        dtype = next((p.dtype for p in model.parameters()), None)
    return str(dtype).removeprefix("torch.")
