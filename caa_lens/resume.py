"""Checkpoints for long extractions: killed at any point, a rerun continues where it stopped.

The state after each completed batch (running sums, and kept per-example activations when asked
for) is written atomically with a key describing the run. A rerun with the same key continues with
the next batch, so it adds the same batch sums in the same order and its result is bit-identical to
an uninterrupted run; a rerun with a different key is refused rather than mixing two experiments.
"""

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from jaxtyping import Float
from torch import Tensor

from caa_lens.files import atomic_write_bytes, safetensors_bytes

__all__ = [
    "CheckpointMismatchError",
    "ExtractionState",
    "load_state",
    "run_key",
    "save_state",
]


class CheckpointMismatchError(ValueError):
    """A checkpoint exists but was written by a run with different settings."""


@dataclass(frozen=True, eq=False)
class ExtractionState:
    """Progress of an extraction: batches done, float64 sums per side, and kept examples."""

    batches_done: int
    sums: Float[Tensor, "2 layer d_model"]
    kept_indices: tuple[int, ...]
    kept: Float[Tensor, "example 2 layer d_model"] | None


def run_key(settings: dict) -> str:
    """A digest of everything that determines an extraction's result."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:24]


def save_state(path: Path, key: str, settings: dict, state: ExtractionState) -> None:
    tensors = {"sums": state.sums.contiguous()}
    if state.kept is not None:
        tensors["kept"] = state.kept.contiguous()
    metadata = {
        "key": key,
        "settings": json.dumps(settings, sort_keys=True, default=str),
        "batches_done": str(state.batches_done),
        "kept_indices": json.dumps(list(state.kept_indices)),
    }
    atomic_write_bytes(path, safetensors_bytes(tensors, metadata))


def load_state(path: Path, key: str) -> ExtractionState | None:
    """The saved state, or None when there is no checkpoint yet; refuses another run's checkpoint."""
    from safetensors import safe_open

    if not path.exists():
        return None
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    except Exception as err:  # safetensors raises its own error types for damaged headers
        raise CheckpointMismatchError(f"{path} is not a readable extraction checkpoint: {err}") from err
    if metadata.get("key") != key:
        raise CheckpointMismatchError(
            f"{path} was written by an extraction with different settings ({metadata.get('settings')}); "
            "delete it or choose another checkpoint path"
        )
    return ExtractionState(
        int(metadata["batches_done"]),
        tensors["sums"],
        tuple(json.loads(metadata["kept_indices"])),
        tensors.get("kept"),
    )
