"""Small steering vectors and models for the vector tests (test_vectors, test_vector_files, test_provenance)."""

import torch

from caa_lens.provenance import Provenance, make_provenance
from caa_lens.tiny import tiny_model
from caa_lens.vectors import SteeringVector


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


def other_tiny_models() -> dict:
    """Tiny models that differ from the session's one in width, depth, or only in name."""
    renamed = tiny_model()
    renamed.cfg.model_name = "another-model"
    return {"narrow": tiny_model(d_model=32, d_mlp=64), "shallow": tiny_model(n_layers=2), "renamed": renamed}
