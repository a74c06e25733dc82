"""Ways to turn contrastive activations into steering vectors: mean difference, PCA, ActAdd."""

import hashlib
import json
from collections.abc import Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from caa_lens.data import ContrastiveDataset, PromptPair
from caa_lens.extraction import (
    ContrastiveActivations,
    PositionRule,
    check_batch_size,
    extract_contrastive,
    extract_prompt_pair,
)
from caa_lens.hooks import check_layers
from caa_lens.vectors import SteeringVector, make_provenance


def mean_difference_vector(model, activations: ContrastiveActivations) -> SteeringVector:
    """CAA: v_L = mean over pairs of a_L(matching) - a_L(not matching). No normalisation."""
    provenance = make_provenance(
        model,
        activations.site,
        activations.position_rule,
        "mean_difference",
        activations.dataset,
        activations.dataset_hash,
        activations.n_pairs,
        torch.float32,
        activations.settings,
    )
    return SteeringVector(activations.mean_difference, activations.layers, provenance)


def pca_directions(differences: Float[Tensor, "pair layer d_model"]) -> Float[Tensor, "layer d_model"]:
    """First principal component of the paired differences, per layer, signed to agree with their mean.

    The differences are centred on their mean before the SVD (as sklearn's PCA, and repeng's
    ``pca_diff``, do), so the component is the axis along which the pairs' differences vary most;
    the sign is fixed so the direction points the same way as the mean difference (a principal
    component has no sign). The result has the mean difference's projection onto it as its norm, so
    multipliers stay comparable with the mean-difference vector.
    """
    diffs = differences.double()
    mean = diffs.mean(0)  # [layer, d]
    centred = diffs - mean
    out = []
    for layer in range(diffs.shape[1]):
        if diffs.shape[0] < 2:
            raise ValueError("PCA of paired differences needs at least 2 pairs")
        _, _, vh = torch.linalg.svd(centred[:, layer], full_matrices=False)
        direction = vh[0]
        projection = torch.dot(mean[layer], direction)
        if projection < 0:
            direction, projection = -direction, -projection
        out.append(direction * projection)
    return torch.stack(out).float()


def pca_vector(model, activations: ContrastiveActivations) -> SteeringVector:
    if activations.examples is None:
        raise ValueError("pca_vector needs per-example activations: extract with keep_examples=True")
    diffs = activations.examples.positive.float() - activations.examples.negative.float()
    provenance = make_provenance(
        model,
        activations.site,
        activations.position_rule,
        "pca_of_differences",
        activations.dataset,
        activations.dataset_hash,
        activations.n_pairs,
        torch.float32,
        # The examples' storage dtype changes the PCA (float16 examples round every difference).
        activations.settings
        | {"example_dtype": str(activations.examples.positive.dtype).removeprefix("torch.")},
    )
    return SteeringVector(pca_directions(diffs), activations.layers, provenance)


def caa_vector(
    model,
    dataset: ContrastiveDataset,
    layers: int | Sequence[int] | None = None,
    site: str = "resid_post",
    position_rule: PositionRule = "answer",
    batch_size: int = 16,
    progress: bool = True,
) -> SteeringVector:
    """Extract and build CAA mean-difference vectors in one call.

    >>> from caa_lens.tiny import tiny_model
    >>> from caa_lens.data import make_item, ContrastiveDataset
    >>> q = "Sunny?\\n\\nChoices:\\n (A) yes\\n (B) no"
    >>> data = ContrastiveDataset("demo", (make_item(q, "(A)", "(B)"), make_item(q, "(B)", "(A)")))
    >>> caa_vector(tiny_model(), data, layers=[1, 2], progress=False).directions.shape
    torch.Size([2, 64])

    Raises:
        ValueError: ``batch_size`` is not a positive integer, or a layer, site or position rule is
            invalid; checked before any forward pass.
    """
    check_batch_size(batch_size)
    acts = extract_contrastive(model, dataset, layers, site, position_rule, batch_size, progress=progress)
    return mean_difference_vector(model, acts)


def prompt_pair_hash(pair: PromptPair) -> str:
    """SHA-256 (first 16 hex digits) of a prompt pair's two texts, like a dataset's content hash."""
    return hashlib.sha256(json.dumps([pair.positive, pair.negative]).encode()).hexdigest()[:16]


def actadd_vector(
    model,
    pair: PromptPair,
    layers: int | Sequence[int] | None = None,
    site: str = "resid_pre",
    prepend_bos: bool = True,
) -> SteeringVector:
    """ActAdd: the padded prompt-pair difference ``[layer, pos, d_model]`` for front-position injection.

    Raises:
        ValueError: the two prompts are the same text, or give the same activations at a requested
            layer (they tokenise alike once padded, e.g. ``"Love"`` and ``"Love "``): the vector would
            be all zeros there and steering with it a silent no-op.
    """
    if pair.positive == pair.negative:
        raise ValueError(
            f"prompt pair {pair.name!r}: positive and negative are the same text {pair.positive!r}; "
            "their difference is an all-zero vector: give two different prompts"
        )
    chosen = check_layers(model, layers)
    directions = extract_prompt_pair(model, pair, chosen, site, prepend_bos)
    zero = [layer for layer, d in zip(chosen, directions, strict=True) if not d.any()]
    if zero:
        raise ValueError(
            f"prompt pair {pair.name!r} ({pair.positive!r} / {pair.negative!r}) gives an all-zero "
            f"difference at {site} of layers {zero}: the two prompts are identical once tokenised and "
            "space-padded; give prompts that differ in their tokens"
        )
    provenance = make_provenance(
        model,
        site,
        "all",
        "actadd",
        f"prompt-pair:{pair.name}",
        prompt_pair_hash(pair),
        1,
        torch.float32,
        {"prepend_bos": prepend_bos},
    )
    return SteeringVector(directions, chosen, provenance)
