"""PCA projections of contrastive activations and per-layer linear separability.

The CAA paper's PCA figure shows, layer by layer, the activations of the matching and non-matching
answers: early layers cluster by the answer letter (the token being read), and behaviour clusters
appear abruptly about a third of the way in. ``separability`` turns the picture into numbers: the
held-out accuracy of a linear probe for the behaviour side and for the answer letter at each layer.

These are PCAs of the activations themselves (the paper's figure), not a steering direction. The PCA
steering direction is ``caa_lens.methods.pca_vector``, which centres the paired differences within
each matching label so that it is not the letter axis. ``pca_projections(..., centring="within_letter")``
does the same for the picture: it removes each answer letter's mean activation first, so the
components show what varies apart from the token being read.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor

from analysis.letters import first_letter_flags, letter_codes, within_letter_centred
from caa_lens.data import shuffled_indices
from caa_lens.extraction import PairActivations

__all__ = [
    "Centring",
    "PcaProjections",
    "Probe",
    "Separability",
    "cell_weights",
    "logistic_probe_accuracy",
    "mean_difference_probe_accuracy",
    "pair_accuracy",
    "pca_projections",
    "principal_components",
    "separability",
]

Probe = Literal["logistic", "mean_difference"]
Centring = Literal["pooled", "within_letter"]
# A probe's data: features and integer labels of the training and of the held-out examples.
_TrainX = Float[Tensor, "train d"]
_TrainY = Int[Tensor, " train"]
_TestX = Float[Tensor, "test d"]
_TestY = Int[Tensor, " test"]


@dataclass(frozen=True, eq=False)
class PcaProjections:
    """Per-layer PCA coordinates of every example, positives first then negatives.

    ``side`` is 1 for the matching (behaviour) answer and 0 for the other; ``letters`` is each
    example's answer label (``A``/``B``); ``explained`` is each component's share of the variance
    (of the centred activations); ``centring`` is how they were centred (``pca_projections``).
    """

    layers: tuple[int, ...]
    coordinates: Float[Tensor, "layer example component"]
    explained: Float[Tensor, "layer component"]
    side: Int[Tensor, " example"]
    letters: tuple[str, ...]
    centring: str = "pooled"


def principal_components(
    x: Float[Tensor, "example d"], n_components: int = 2
) -> tuple[Float[Tensor, "component d"], Float[Tensor, " component"]]:
    """Top principal axes of ``x`` (centred) and their explained-variance ratios.

    Each axis is signed so that its largest-magnitude loading is positive: a principal axis has no
    sign of its own, and a fixed convention keeps figures from flipping between runs.
    """
    centred = x.double() - x.double().mean(0)
    _, singular, vh = torch.linalg.svd(centred, full_matrices=False)
    axes = vh[:n_components]
    flip = torch.sign(axes.gather(1, axes.abs().argmax(1, keepdim=True)))
    variance = singular**2
    return (axes * flip).float(), (variance[:n_components] / variance.sum()).float()


def _pooled(examples: PairActivations) -> tuple[Tensor, Tensor, tuple[str, ...]]:
    x = torch.cat([examples.positive.float(), examples.negative.float()], dim=0)
    n = examples.positive.shape[0]
    side = torch.cat([torch.ones(n, dtype=torch.long), torch.zeros(n, dtype=torch.long)])
    return x, side, examples.positive_labels + examples.negative_labels


def pca_projections(
    examples: PairActivations, layers: Sequence[int], n_components: int = 2, centring: Centring = "pooled"
) -> PcaProjections:
    """Project each layer's pooled positive and negative activations on their top components.

    ``layers`` names the layer axis of ``examples`` (``ContrastiveActivations.layers``).
    ``centring="pooled"`` (the CAA paper's figure) centres on the mean of all examples, so where the
    answer letter dominates the residual stream the first component separates the letters;
    ``"within_letter"`` centres each example on the mean of the examples with its answer letter, which
    takes the letter clusters out and leaves what varies within a letter (the behaviour side, the
    question).
    """
    x, side, letters = _pooled(examples)
    if x.shape[1] != len(layers):
        raise ValueError(f"examples have {x.shape[1]} layers but {len(layers)} layer names were given")
    if centring not in ("pooled", "within_letter"):
        raise ValueError(f"unknown centring {centring!r}: expected 'pooled' or 'within_letter'")
    if centring == "within_letter":
        x = within_letter_centred(x, letters)
    coordinates, explained = [], []
    for index in range(len(layers)):
        layer_x = x[:, index]
        axes, ratio = principal_components(layer_x, n_components)
        coordinates.append((layer_x - layer_x.mean(0)) @ axes.T)
        explained.append(ratio)
    return PcaProjections(
        tuple(layers), torch.stack(coordinates), torch.stack(explained), side, letters, centring
    )


def _standardise(train: Tensor, test: Tensor) -> tuple[Tensor, Tensor]:
    mean, std = train.mean(0), train.std(0).clamp_min(1e-6)
    return (train - mean) / std, (test - mean) / std


def cell_weights(labels: Int[Tensor, " n"], groups: Int[Tensor, " n"] | None) -> Float[Tensor, " n"]:
    """Example weights (summing to 1) giving every (label, group) cell the same total weight.

    Why: at the answer-letter token the letter dominates the residual stream, and a training split
    with 55% matching-A pairs would let a behaviour probe score by reading the letter. Equal cell
    weights make the letter carry no information about the behaviour label in training.
    """
    cells = labels if groups is None else labels * (int(groups.max()) + 1) + groups
    counts = torch.bincount(cells).double()
    weights = 1.0 / counts[cells]
    return weights / weights.sum()


def logistic_probe_accuracy(
    train_x: _TrainX,
    train_y: _TrainY,
    test_x: _TestX,
    test_y: _TestY,
    groups: _TrainY | None = None,
    l2: float = 1e-2,
    steps: int = 100,
) -> float:
    """Held-out accuracy of an L2-regularised (multinomial) logistic regression, fit by L-BFGS.

    Features are standardised on the training set (residual streams have a few huge dimensions that
    would otherwise dominate the fit). Starting from zero weights makes the fit deterministic.
    ``groups`` (a nuisance label, e.g. the answer letter when probing the behaviour) weights the
    training examples so every (class, group) cell counts equally (see ``cell_weights``).
    """
    sample_weight = cell_weights(train_y, groups)
    train_x, test_x = _standardise(train_x.double(), test_x.double())
    n_classes = int(max(train_y.max(), test_y.max())) + 1
    weight = torch.zeros(train_x.shape[1], n_classes, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(n_classes, dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS([weight, bias], max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        optimiser.zero_grad()
        logits = train_x @ weight + bias
        losses = torch.nn.functional.cross_entropy(logits, train_y, reduction="none")
        loss = (losses * sample_weight).sum() + l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimiser.step(closure)
    with torch.no_grad():
        predicted = (test_x @ weight + bias).argmax(-1)
    return float((predicted == test_y).double().mean())


def mean_difference_probe_accuracy(
    train_x: _TrainX, train_y: _TrainY, test_x: _TestX, test_y: _TestY, groups: _TrainY | None = None
) -> float:
    """Held-out accuracy of the nearest-class-mean classifier.

    For two classes this is projecting on the difference of the class means and thresholding at the
    midpoint: the classifier a CAA vector itself defines. With ``groups``, each class mean is the
    mean of its groups' means, so an imbalance of the nuisance label in the training split cannot
    tilt the mean difference towards it.
    """
    classes = sorted(set(train_y.tolist()))
    weights = cell_weights(train_y, groups)
    x = train_x.double()
    means = torch.stack(
        [
            (weights[train_y == c, None] * x[train_y == c]).sum(0) / weights[train_y == c].sum()
            for c in classes
        ]
    )
    predicted = torch.tensor(classes)[torch.cdist(test_x.double(), means).argmin(-1)]
    return float((predicted == test_y).double().mean())


def pair_accuracy(examples: PairActivations, layer_index: int, train: Tensor, test: Tensor) -> float:
    """Fraction of held-out pairs whose difference projects positively on the training mean difference.

    The CAA direction as a pairwise ranker: does it score a question's matching answer above its
    other answer? Training pairs are weighted so that matching-A and matching-B pairs count equally,
    which cancels the letter from the direction.
    """
    diffs = (examples.positive[:, layer_index] - examples.negative[:, layer_index]).double()
    letters = first_letter_flags(examples.positive_labels).long()
    weights = cell_weights(letters[train], None)
    direction = (weights[:, None] * diffs[train]).sum(0)
    return float((diffs[test] @ direction > 0).double().mean())


@dataclass(frozen=True, eq=False)
class Separability:
    """Per-layer held-out probe accuracy for the behaviour side and for the answer letter."""

    probe: str
    table: pd.DataFrame  # layer, behaviour_accuracy, letter_accuracy, pair_accuracy, n_train, n_test


def separability(
    examples: PairActivations,
    layers: Sequence[int],
    probe: Probe = "logistic",
    test_fraction: float = 0.3,
    seed: int = 0,
) -> Separability:
    """Held-out accuracy of a linear probe for behaviour side and for answer letter, per layer.

    The split is by pair, not by example: the two answers of one question share almost all of their
    context, so splitting them across train and test would leak the question into the test set.
    Each probe weights its training cells (label x the other label) equally, so neither label can be
    read off the other (``cell_weights``). Chance is 0.5 for both labels.
    """
    x, side, letters = _pooled(examples)
    if x.shape[1] != len(layers):
        raise ValueError(f"examples have {x.shape[1]} layers but {len(layers)} layer names were given")
    n_pairs = examples.positive.shape[0]
    n_test = max(1, round(n_pairs * test_fraction))
    if not 0 < test_fraction < 1 or n_test >= n_pairs:
        raise ValueError(f"cannot split {n_pairs} pairs with test_fraction={test_fraction}")
    order = shuffled_indices(n_pairs, seed)
    test_pairs = torch.tensor(order[:n_test])
    test_rows = torch.cat([test_pairs, test_pairs + n_pairs])
    train_pairs = torch.tensor(sorted(set(range(n_pairs)) - set(test_pairs.tolist())))
    train_rows = torch.cat([train_pairs, train_pairs + n_pairs])
    letter_y = letter_codes(letters)
    if probe not in ("logistic", "mean_difference"):
        raise ValueError(f"unknown probe {probe!r}: expected 'logistic' or 'mean_difference'")
    fit = logistic_probe_accuracy if probe == "logistic" else mean_difference_probe_accuracy
    rows = []
    for index, layer in enumerate(layers):
        layer_x = x[:, index]
        accuracy = {
            name: fit(
                layer_x[train_rows], y[train_rows], layer_x[test_rows], y[test_rows], nuisance[train_rows]
            )
            for name, y, nuisance in (("behaviour", side, letter_y), ("letter", letter_y, side))
        }
        rows.append(
            {
                "layer": layer,
                "behaviour_accuracy": accuracy["behaviour"],
                "letter_accuracy": accuracy["letter"],
                "pair_accuracy": pair_accuracy(examples, index, train_pairs, test_pairs),
                "n_train": len(train_rows),
                "n_test": len(test_rows),
            }
        )
    return Separability(probe, pd.DataFrame(rows))
