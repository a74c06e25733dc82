"""Cosine similarity between steering vectors (across layers, behaviours, methods) and layer transfer.

The CAA paper found that vectors of neighbouring layers are more similar than those of distant
layers, and that a vector read at one layer still steers when applied at nearby ones. These
functions measure both on any model: ``layer_similarity`` gives the layer x layer cosine matrix and
its mean by layer distance, ``layer_transfer`` applies the vector read at layer i at layer j.
"""

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from analysis._scoring import layer_scores, prefix_batches
from caa_lens.data import ContrastiveDataset
from caa_lens.extraction import ContrastiveActivations
from caa_lens.methods import mean_difference_vector, pca_vector
from caa_lens.vectors import SteeringVector


def cosine_matrix(a: Float[Tensor, "n d"], b: Float[Tensor, "m d"]) -> Float[Tensor, "n m"]:
    """Cosine similarity of every row of ``a`` with every row of ``b`` (NaN where a row is zero).

    >>> cosine_matrix(torch.eye(2), torch.tensor([[1.0, 1.0]])).flatten().tolist()
    [0.7071067690849304, 0.7071067690849304]
    """
    a64, b64 = a.double(), b.double()
    norms = a64.norm(dim=-1)[:, None] * b64.norm(dim=-1)[None, :]
    # A zero vector has no direction: NaN says so instead of a misleading 0.
    out = (a64 @ b64.T) / norms
    return out.masked_fill(norms == 0, float("nan")).float()


def _flat(vector: SteeringVector) -> Float[Tensor, "layer d"]:
    return vector.directions.reshape(len(vector.layers), -1)


@dataclass(frozen=True, eq=False)
class LayerSimilarity:
    """Cosine similarity between one behaviour's vectors at every pair of layers.

    ``by_distance`` has one row per layer distance |i - j| >= 1: the mean, standard deviation and
    number of layer pairs, which is what "neighbours are more similar" is a statement about.
    """

    layers: tuple[int, ...]
    matrix: Float[Tensor, "layer layer"]
    by_distance: pd.DataFrame

    def mean_at(self, distances: Sequence[int]) -> float:
        """Mean cosine over layer pairs whose distance is in ``distances``; NaN when there are none
        (a model with fewer layers than the distance asks for)."""
        rows = self.by_distance[self.by_distance.distance.isin(list(distances))]
        if rows["n"].sum() == 0:
            return math.nan
        return float((rows["mean"] * rows["n"]).sum() / rows["n"].sum())


def layer_similarity(vector: SteeringVector) -> LayerSimilarity:
    """Cosine similarity between the vector's directions at all pairs of its layers."""
    matrix = cosine_matrix(_flat(vector), _flat(vector))
    layers = torch.tensor(vector.layers)
    distance = (layers[:, None] - layers[None, :]).abs()
    rows = []
    for d in sorted(set(distance.flatten().tolist()) - {0}):
        values = matrix[distance == d].double()
        std = float(values.std()) if values.numel() > 1 else 0.0
        rows.append({"distance": d, "mean": float(values.mean()), "std": std, "n": values.numel() // 2})
    table = pd.DataFrame(rows, columns=["distance", "mean", "std", "n"])
    return LayerSimilarity(tuple(vector.layers), matrix, table)


@dataclass(frozen=True, eq=False)
class BehaviourSimilarity:
    """Cosine similarity between behaviours' vectors, one behaviour x behaviour matrix per layer."""

    names: tuple[str, ...]
    layers: tuple[int, ...]
    matrix: Float[Tensor, "layer behaviour behaviour"]


def behaviour_similarity(
    vectors: Mapping[str, SteeringVector], layers: Sequence[int] | None = None
) -> BehaviourSimilarity:
    """Cosine similarity between behaviours at each layer (all layers the vectors share by default).

    Cosine ignores scale, so the CAA paper's per-layer norm equalisation changes nothing here.
    """
    if len(vectors) < 2:
        raise ValueError("behaviour similarity needs at least two behaviours")
    shared = set.intersection(*(set(v.layers) for v in vectors.values()))
    chosen = tuple(sorted(shared)) if layers is None else tuple(layers)
    missing = [layer for layer in chosen if layer not in shared]
    if missing or not chosen:
        raise ValueError(
            f"layers {missing or chosen} are not shared by every behaviour (shared: {sorted(shared)})"
        )
    stacks = [torch.stack([vector.at(layer).reshape(-1) for vector in vectors.values()]) for layer in chosen]
    matrix = torch.stack([cosine_matrix(s, s) for s in stacks])
    return BehaviourSimilarity(tuple(vectors), chosen, matrix)


@dataclass(frozen=True, eq=False)
class MethodSimilarity:
    """Per-layer cosine between two methods' vectors of the same behaviour, and their norms."""

    names: tuple[str, str]
    table: pd.DataFrame  # layer, cosine, norm_<a>, norm_<b>


def method_similarity(
    a: SteeringVector, b: SteeringVector, names: tuple[str, str] = ("a", "b")
) -> MethodSimilarity:
    """Cosine between two vectors layer by layer (e.g. mean difference vs PCA direction)."""
    if a.layers != b.layers:
        raise ValueError(f"the vectors cover different layers: {a.layers} and {b.layers}")
    cosine = torch.nn.functional.cosine_similarity(_flat(a).double(), _flat(b).double(), dim=-1)
    table = pd.DataFrame(
        {
            "layer": list(a.layers),
            "cosine": cosine.tolist(),
            f"norm_{names[0]}": a.norms().tolist(),
            f"norm_{names[1]}": b.norms().tolist(),
        }
    )
    return MethodSimilarity(names, table)


def mean_vs_pca(model, activations: ContrastiveActivations) -> MethodSimilarity:
    """Mean-difference (CAA) vs PCA-of-differences direction, from one extraction with examples."""
    return method_similarity(
        mean_difference_vector(model, activations),
        pca_vector(model, activations),
        ("mean_difference", "pca"),
    )


def rehomed(vector: SteeringVector, read_layer: int, apply_layer: int) -> SteeringVector:
    """A one-layer vector holding the direction read at ``read_layer``, filed under ``apply_layer``."""
    provenance = replace(vector.provenance, method=f"{vector.provenance.method}; read at layer {read_layer}")
    return SteeringVector(vector.at(read_layer)[None].clone(), (apply_layer,), provenance)


@dataclass(frozen=True, eq=False)
class LayerTransfer:
    """Behaviour probability when the vector read at layer i is applied at layer j.

    ``plus``/``minus`` are the mean p(matching) at multipliers +m and -m; ``effect = plus - minus``
    is the swing the vector causes (0 when it does nothing), comparable across cells.
    """

    read_layers: tuple[int, ...]
    apply_layers: tuple[int, ...]
    multiplier: float
    match_norm: bool
    plus: Float[Tensor, "read apply"]
    minus: Float[Tensor, "read apply"]
    baseline: float
    effect: Float[Tensor, "read apply"]


def layer_transfer(
    model,
    vector: SteeringVector,
    dataset: ContrastiveDataset,
    read_layers: Sequence[int] | None = None,
    apply_layers: Sequence[int] | None = None,
    multiplier: float = 1.0,
    match_norm: bool = False,
    max_rows: int = 96,
) -> LayerTransfer:
    """Apply each read layer's direction at each apply layer and score the behaviour on ``dataset``.

    Args:
        vector: a CAA vector covering every read layer.
        read_layers / apply_layers: default to all of ``vector.layers``; apply layers need not be
            among them.
        multiplier: applied as +m and -m.
        match_norm: rescale the direction to the norm of ``vector`` at the apply layer (when the
            apply layer is one of its layers), separating direction from scale; the CAA paper used
            the same multiplier everywhere (``False``).
    """
    reads = tuple(vector.layers) if read_layers is None else tuple(read_layers)
    applies = tuple(vector.layers) if apply_layers is None else tuple(apply_layers)
    batches = prefix_batches(model, dataset)
    plus = torch.empty(len(reads), len(applies))
    minus = torch.empty(len(reads), len(applies))
    baseline = float(
        layer_scores(model, batches, [rehomed(vector, reads[0], applies[0])], applies[0], [0.0]).mean()
    )
    for j, apply_layer in enumerate(applies):
        moved = [rehomed(vector, read, apply_layer) for read in reads]
        if match_norm and apply_layer in vector.layers:
            target = float(vector.at(apply_layer).norm())
            moved = [v.normalized(target) for v in moved]
        scores = layer_scores(model, batches, moved, apply_layer, [multiplier, -multiplier], max_rows)
        plus[:, j], minus[:, j] = scores.mean(0).unbind(-1)
    return LayerTransfer(reads, applies, float(multiplier), match_norm, plus, minus, baseline, plus - minus)
