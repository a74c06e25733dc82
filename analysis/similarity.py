"""Cosine similarity between steering vectors: across layers, behaviours and methods.

The CAA paper found that vectors of neighbouring layers are more similar than those of distant
layers. ``layer_similarity`` measures it on any model: the layer x layer cosine matrix and its mean by
layer distance beside a baseline (sign-shuffled pair differences, or random directions). Whether the
vector of one layer still steers at another is ``analysis.transfer.layer_transfer``.
"""

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from caa_lens.extraction import ContrastiveActivations
from caa_lens.methods import contrastive_vector, pca_vector
from caa_lens.vectors import SteeringVector

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

__all__ = [
    "BehaviourSimilarity",
    "LayerSimilarity",
    "MethodSimilarity",
    "behaviour_similarity",
    "cosine_matrix",
    "expected_abs_cosine",
    "layer_similarity",
    "mean_vs_pca",
    "method_similarity",
]


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


BaselineKind = Literal["sign_shuffled", "random_direction", "none"]
BaselineVerdict = Literal["above baseline", "below baseline", "inside baseline"]


@dataclass(frozen=True, eq=False)
class LayerSimilarity:
    """Cosine similarity between one behaviour's vectors at every pair of layers, beside a baseline.

    ``by_distance`` has one row per layer distance |i - j| >= 1: the mean, standard deviation and
    number of layer pairs (what "neighbours are more similar" is a statement about), and the same
    mean computed on ``n_baseline`` baseline draws: ``baseline_mean`` (their average),
    ``baseline_low``/``baseline_high`` (their central ``coverage`` range) and ``vs_baseline``.

    ``baseline`` says which draws: ``"sign_shuffled"`` (the per-pair differences with half the pairs'
    signs flipped, the same flip at every layer: what the mean difference's cross-layer cosine is when
    no direction is shared by the pairs, only each pair's own activations carried from layer to
    layer) or ``"random_direction"`` (independent random directions per layer, when only the vector
    was given: the cosine of unrelated directions). ``random_abs_cosine`` is the expected |cos| of two
    random directions in the vector's dimension, the scale of "unrelated".
    """

    layers: tuple[int, ...]
    matrix: Float[Tensor, "layer layer"]
    by_distance: pd.DataFrame
    # Defaults keep results saved before the baseline existed loadable (they read as no baseline).
    baseline: BaselineKind = "none"
    n_baseline: int = 0
    random_abs_cosine: float = math.nan

    def mean_at(self, distances: Sequence[int]) -> float:
        """Mean cosine over layer pairs whose distance is in ``distances``; NaN when there are none
        (a model with fewer layers than the distance asks for)."""
        return self._weighted("mean", distances)

    def baseline_at(self, distances: Sequence[int]) -> float:
        """The baseline's mean cosine over the same layer pairs as ``mean_at`` (NaN without one)."""
        if "baseline_mean" not in self.by_distance:
            return math.nan
        return self._weighted("baseline_mean", distances)

    def _weighted(self, column: str, distances: Sequence[int]) -> float:
        rows = self.by_distance[self.by_distance.distance.isin(list(distances))]
        if rows["n"].sum() == 0:
            return math.nan
        return float((rows[column] * rows["n"]).sum() / rows["n"].sum())


def expected_abs_cosine(dimension: int) -> float:
    """E|cos| between two independent uniformly random directions in ``dimension`` dimensions.

    E|x_1| on the unit sphere: Gamma(d/2) / (sqrt(pi) Gamma((d+1)/2)), about sqrt(2 / (pi d)).

    >>> round(expected_abs_cosine(2) * math.pi, 6), round(expected_abs_cosine(3), 6)
    (2.0, 0.5)
    """
    if dimension < 2:
        raise ValueError(f"a cosine between random directions needs dimension >= 2, got {dimension}")
    d = dimension
    return math.exp(math.lgamma(d / 2) - math.lgamma((d + 1) / 2)) / math.sqrt(math.pi)


def _distances(layers: Sequence[int]) -> Tensor:
    index = torch.tensor(list(layers))
    return (index[:, None] - index[None, :]).abs()


def _by_distance_means(
    matrices: Float[Tensor, "draw layer layer"], distance: Tensor
) -> dict[int, Float[Tensor, " draw"]]:
    """Each draw's mean cosine over the layer pairs at each distance >= 1."""
    return {
        d: matrices[:, distance == d].double().mean(-1)
        for d in sorted(set(distance.flatten().tolist()) - {0})
    }


def _batched_cosines(directions: Float[Tensor, "draw layer d"]) -> Float[Tensor, "draw layer layer"]:
    unit = directions.double() / directions.double().norm(dim=-1, keepdim=True)
    return unit @ unit.transpose(1, 2)


def _sign_shuffled(
    differences: Float[Tensor, "pair layer d"], n_draws: int, generator: torch.Generator
) -> Float[Tensor, "draw layer d"]:
    """Mean differences with a random half of the pairs' signs flipped, per draw.

    Balanced flips cancel any direction shared by all pairs exactly (with an even number of pairs),
    and the same flip at every layer keeps what each pair carries from layer to layer.
    """
    n_pairs = differences.shape[0]
    base = torch.ones(n_pairs, dtype=torch.float64)
    base[n_pairs // 2 :] = -1.0  # ceil(n/2) flipped, floor(n/2) kept: balanced up to one pair
    signs = torch.stack([base[torch.randperm(n_pairs, generator=generator)] for _ in range(n_draws)])
    return torch.einsum("sp,pld->sld", signs, differences.double()) / n_pairs


def _pair_differences(vector: SteeringVector, activations: ContrastiveActivations) -> Tensor:
    """Per-pair differences at the vector's layers, after checking they are the vector's own data."""
    if activations.examples is None:
        raise ValueError(
            "the sign-shuffled baseline needs every pair's activations: extract with keep_examples=True, "
            "or call layer_similarity(vector) for the random-direction baseline"
        )
    if vector.is_positional:
        raise ValueError(
            "the sign-shuffled baseline is for one-position (CAA) vectors; pass the vector alone"
        )
    if vector.provenance.dataset_hash != activations.dataset_hash:
        raise ValueError(
            f"the activations (dataset {activations.dataset!r}, hash {activations.dataset_hash}) are not the "
            f"data the vector was built from (dataset {vector.provenance.dataset!r}, hash "
            f"{vector.provenance.dataset_hash}); pass the activations the vector came from"
        )
    missing = [layer for layer in vector.layers if layer not in activations.layers]
    if missing:
        raise ValueError(
            f"the activations lack the vector's layers {missing} (they hold {activations.layers})"
        )
    if activations.examples.positive.shape[0] < 2:
        raise ValueError("the sign-shuffled baseline needs at least two pairs")
    picked = activations.examples.at_layer_indices(
        [activations.layers.index(layer) for layer in vector.layers]
    )
    return picked.positive.double() - picked.negative.double()


def layer_similarity(
    vector: SteeringVector,
    activations: ContrastiveActivations | None = None,
    *,
    n_baseline: int = 200,
    coverage: float = 0.95,
    seed: int = 0,
) -> LayerSimilarity:
    """Cosine similarity between the vector's directions at all pairs of its layers, with a baseline.

    Args:
        vector: the steering vector (one direction per layer).
        activations: the extraction the vector was built from, with per-pair examples
            (``keep_examples=True``): the baseline is then sign-shuffled (see ``LayerSimilarity``).
            Without it the baseline is random directions, which only says the layers are not
            unrelated: the residual stream carries every pair's activations from layer to layer, so
            even directions no pair shares look alike between neighbours; pass the activations to
            read "neighbours are more similar" against that.
        n_baseline: baseline draws (from one generator seeded with ``seed``).
        coverage: the central share of the draws' means reported as ``baseline_low``/``baseline_high``.
    """
    if n_baseline < 1:
        raise ValueError(f"n_baseline must be at least 1 (a hundred or more for reporting), got {n_baseline}")
    if not 0 < coverage <= 1:
        raise ValueError(f"coverage must be in (0, 1], got {coverage}")
    flat = _flat(vector)
    matrix = cosine_matrix(flat, flat)
    distance = _distances(vector.layers)
    generator = torch.Generator().manual_seed(seed)
    if activations is not None:
        kind: BaselineKind = "sign_shuffled"
        draws = _sign_shuffled(_pair_differences(vector, activations), n_baseline, generator)
    else:
        kind = "random_direction"
        draws = torch.randn((n_baseline, *flat.shape), generator=generator, dtype=torch.float64)
    baseline = _by_distance_means(_batched_cosines(draws), distance)
    tail = (1 - coverage) / 2
    rows = []
    for d, means in baseline.items():
        values = matrix[distance == d].double()
        mean = float(values.mean())
        low, high = (
            float(q) for q in torch.quantile(means, torch.tensor([tail, 1 - tail], dtype=means.dtype))
        )
        verdict: BaselineVerdict = (
            "above baseline" if mean > high else "below baseline" if mean < low else "inside baseline"
        )
        rows.append(
            {
                "distance": d,
                "mean": mean,
                "std": float(values.std()) if values.numel() > 1 else 0.0,
                "n": values.numel() // 2,
                "baseline_mean": float(means.mean()),
                "baseline_low": low,
                "baseline_high": high,
                "vs_baseline": verdict,
            }
        )
    columns = [
        "distance",
        "mean",
        "std",
        "n",
        "baseline_mean",
        "baseline_low",
        "baseline_high",
        "vs_baseline",
    ]
    table = pd.DataFrame(rows, columns=columns)
    return LayerSimilarity(
        tuple(vector.layers), matrix, table, kind, n_baseline, expected_abs_cosine(flat.shape[-1])
    )


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


def mean_vs_pca(model: "TransformerBridge", activations: ContrastiveActivations) -> MethodSimilarity:
    """The letter-balanced mean difference (CAA, the default) vs the within-label PCA direction.

    Both are free of the answer letter by construction (the pooled PCA of A/B differences is the
    letter axis), so the comparison is of two behaviour estimates, from one extraction with examples.
    """
    return method_similarity(
        contrastive_vector(model, activations),
        pca_vector(model, activations),
        ("letter_balanced", "pca_within_label"),
    )
