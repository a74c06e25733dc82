"""A model's identity: what a steering vector records about the model it was read from, and is checked against.

Name, shape, a hash of the config and a cheap fingerprint of the weights, so a vector is never applied
to another model, another checkpoint of the same shape, or another seed (``caa_lens.provenance``).
"""

import hashlib
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

__all__ = ["WEIGHTS_SAMPLE", "ModelIdentity", "model_identity", "weights_fingerprint"]

# Elements sampled from each fingerprinted weight matrix.
WEIGHTS_SAMPLE = 4096


@dataclass(frozen=True)
class ModelIdentity:
    """What a steering vector must match to be applied to a model.

    ``weights_hash`` fingerprints the weights themselves (``weights_fingerprint``), so two models of
    the same name and shape but other weights (another seed, a fine-tune) are told apart; ``""``
    means unknown (an identity rebuilt from a legacy file, or weights that cannot be read).
    """

    name: str
    n_layers: int
    d_model: int
    config_hash: str
    weights_hash: str = ""


def weights_fingerprint(model: "TransformerBridge") -> str:
    """A cheap fingerprint of a model's weights: 16 hex digits of SHA-256, or ``""`` if unreadable.

    It hashes the signs of ``WEIGHTS_SAMPLE`` evenly strided elements of the first, a middle and the
    last weight matrix (parameters with two or more dimensions: norm weights start as all ones), so it
    costs a few thousand element reads whatever the model's size. Signs, not values: rounding to any
    float format never flips a sign, so the same checkpoint loaded in float32, bfloat16 or float16,
    on any device, gets the same fingerprint, while another seed or another checkpoint of the same
    shape differs in about half of them. A fine-tune that flips no sampled sign is not detected.
    """
    import numpy as np

    matrices = [p for p in model.parameters() if p.dim() >= 2]
    if not matrices:
        return ""
    digest = hashlib.sha256()
    for index in sorted({0, len(matrices) // 2, len(matrices) - 1}):
        weight = matrices[index].detach()
        if weight.is_meta:  # offloaded to disk or never materialised: nothing to read
            return ""
        flat = weight.reshape(-1)  # a view of a contiguous parameter: nothing is copied
        sample = flat[:: max(1, flat.numel() // WEIGHTS_SAMPLE)][:WEIGHTS_SAMPLE]
        signs = torch.signbit(sample.to(device="cpu", dtype=torch.float32)).numpy()
        digest.update(f"{index}:{tuple(weight.shape)}:".encode())
        digest.update(np.packbits(signs).tobytes())
    return digest.hexdigest()[:16]


def model_identity(model: "TransformerBridge") -> ModelIdentity:
    """Name, shape, a hash of the config and a fingerprint of the weights: what a vector is checked against."""
    cfg = model.cfg
    name = str(getattr(cfg, "model_name", None) or type(model).__name__)
    shape: dict[str, int | None] = {
        "n_layers": int(cfg.n_layers),
        "d_model": int(cfg.d_model),
        "d_vocab": int(cfg.d_vocab),
    }
    for key in ("n_heads", "d_head", "d_mlp", "n_ctx"):
        value = getattr(cfg, key, None)
        shape[key] = int(value) if value is not None else None
    config_hash = hashlib.sha256(json.dumps([name, shape], sort_keys=True).encode()).hexdigest()[:16]
    return ModelIdentity(
        name=name,
        n_layers=int(cfg.n_layers),
        d_model=int(cfg.d_model),
        config_hash=config_hash,
        weights_hash=weights_fingerprint(model),
    )
