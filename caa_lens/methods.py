"""Ways to turn contrastive activations into steering vectors: mean differences, PCA, ActAdd.

At the answer-letter token each pair's difference is ``b + s * L``: the behaviour ``b`` plus the letter
axis ``L`` (half the difference between the mean differences of A-matching and B-matching pairs), with
``s = +1`` or ``-1`` by which label is matching. On the default model ``||L||`` is about 30 times
``||b||``, so the plain mean over pairs (the CAA paper's vector) keeps ``(f_A - f_B) * L`` and is mostly
letter whenever the matching labels are not exactly balanced. The defaults here cancel it:
``"letter_balanced"`` weighs each matching label's mean difference equally, and PCA centres the
differences within each matching label (which removes ``s * L`` exactly). Every vector records its
label counts and, per layer, its letter share (squared cosine with ``L``), and warns above
``LETTER_SHARE_LIMIT``.
"""

import hashlib
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import torch
from jaxtyping import Float
from torch import Tensor

from caa_lens import stats
from caa_lens.data import ContrastiveDataset, PromptPair
from caa_lens.extraction import (
    ContrastiveActivations,
    PositionRule,
    check_batch_size,
    extract_contrastive,
)
from caa_lens.hooks import check_layers
from caa_lens.letter_balance import label_means, labels_or_none, letter_record, one_label_note
from caa_lens.prompt_pair import extract_prompt_pair
from caa_lens.provenance import Provenance, make_provenance
from caa_lens.vectors import SteeringVector

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

__all__ = [
    "PcaCentring",
    "VectorMethod",
    "actadd_vector",
    "caa_vector",
    "contrastive_vector",
    "mean_difference_vector",
    "pca_directions",
    "pca_vector",
    "prompt_pair_hash",
]

VectorMethod = Literal["letter_balanced", "mean_difference"]
PcaCentring = Literal["within_label", "pooled"]


def _provenance(
    model: "TransformerBridge", activations: ContrastiveActivations, method: str, settings: dict[str, object]
) -> Provenance:
    """The provenance of a float32 vector built by ``method`` from ``activations``."""
    return make_provenance(
        model,
        activations.site,
        activations.position_rule,
        method,
        activations.dataset,
        activations.dataset_hash,
        activations.n_pairs,
        torch.float32,
        settings,
    )


def contrastive_vector(
    model: "TransformerBridge", activations: ContrastiveActivations, method: VectorMethod = "letter_balanced"
) -> SteeringVector:
    """A mean-difference steering vector from extracted activations.

    Args:
        method: ``"letter_balanced"`` (default): the mean over matching labels of each label's mean
            difference, so the answer letter cancels whatever the labels' balance; with one matching
            label it falls back to the plain mean, with a warning recorded in ``provenance.method``.
            ``"mean_difference"``: the plain mean over pairs, as the CAA paper (and
            ``mean_difference_vector``).

    The provenance records the method actually used, the pairs per matching label and each layer's
    letter share; a UserWarning names the layers whose share exceeds ``LETTER_SHARE_LIMIT``.

    Raises:
        ValueError: an unknown method, or ``"letter_balanced"`` on activations that carry no per-label
            sums or examples (see ``label_means``).
    """
    if method not in ("letter_balanced", "mean_difference"):
        raise ValueError(f"unknown method {method!r}: expected 'letter_balanced' or 'mean_difference'")
    groups = label_means(activations) if method == "letter_balanced" else labels_or_none(activations)
    name: str = method
    if method == "mean_difference":
        directions = activations.mean_difference
        advice = (
            "Build it with method='letter_balanced' (the default of caa_vector), which cancels the letter."
        )
    elif groups is not None and len(groups.labels) < 2:
        directions = activations.mean_difference
        name = f"mean_difference; {one_label_note(groups, activations.dataset)}"
        advice = "Add pairs whose matching answer is another label."
    else:
        assert groups is not None
        directions = groups.balanced.float()
        advice = (
            "Even the letter-balanced mean lies along the letter axis here: few pairs, or a behaviour that "
            "goes with the letter; check the per-letter effects (caa_lens.stats.effects_table)."
        )
    provenance = letter_record(
        _provenance(model, activations, name, activations.settings),
        directions,
        activations.layers,
        groups,
        advice,
    )
    return SteeringVector(directions, activations.layers, provenance)


def mean_difference_vector(model: "TransformerBridge", activations: ContrastiveActivations) -> SteeringVector:
    """CAA as published: v_L = mean over pairs of a_L(matching) - a_L(not matching). No normalisation.

    Keeps ``(f_A - f_B) * L`` of the letter axis when the matching labels are unbalanced (and warns when
    that makes it mostly letter); ``contrastive_vector`` (letter-balanced by default) cancels it.
    """
    return contrastive_vector(model, activations, "mean_difference")


def pca_directions(
    differences: Float[Tensor, "pair layer d_model"],
    labels: Sequence[str] | None = None,
    centring: PcaCentring = "within_label",
) -> Float[Tensor, "layer d_model"]:
    """First principal component of the paired differences, per layer, signed and scaled by their mean.

    ``centring="within_label"`` (default) centres each pair's difference on the mean of the pairs with
    the same matching label (``labels``, one per pair) before the SVD: with ``d_i = b + s_i L`` this
    removes ``s_i L`` exactly, so the component is the axis along which the pairs vary *within* a
    label, not the letter axis (which pooled centring returns whenever ``||L||`` dominates, as on the
    default model: cosine -0.99999). The reference mean is then the letter-balanced mean.
    ``centring="pooled"`` (or ``labels=None``, one group) centres on the plain mean, as sklearn's PCA
    and repeng's ``pca_diff``, with the plain mean as the reference.

    The component is signed to agree with the reference mean (a principal component has no sign) and
    has the reference mean's projection onto it as its norm, so multipliers stay comparable with the
    mean-difference vector.

    Raises:
        ValueError: fewer than 2 pairs; labels that do not match the pairs; an unknown centring; or
            within-label centring with no label holding two pairs (nothing would vary).
    """
    if differences.shape[0] < 2:
        raise ValueError("PCA of paired differences needs at least 2 pairs")
    if centring not in ("within_label", "pooled"):
        raise ValueError(f"unknown centring {centring!r}: expected 'within_label' or 'pooled'")
    diffs = differences.double()
    if labels is None or centring == "pooled":
        groups = torch.zeros(diffs.shape[0], dtype=torch.long)
        names: list[str] = ["all"]
    else:
        if len(labels) != diffs.shape[0]:
            raise ValueError(
                f"{len(labels)} labels for {diffs.shape[0]} pairs: give one matching label per pair"
            )
        names = sorted(set(labels))
        groups = torch.tensor([names.index(label) for label in labels])
    counts = torch.bincount(groups, minlength=len(names))
    if len(names) > 1 and counts.max() < 2:
        raise ValueError(
            f"within-label PCA needs a matching label with at least 2 pairs, got counts {counts.tolist()}: "
            "add pairs, or use centring='pooled'"
        )
    group_means = torch.stack([diffs[groups == g].mean(0) for g in range(len(names))])  # [group, layer, d]
    centred = diffs - group_means[groups]
    reference = (
        diffs.mean(0) if len(names) == 1 else stats.letter_balanced_mean(diffs, [names[g] for g in groups])
    )
    out = []
    for layer in range(diffs.shape[1]):
        _, _, vh = torch.linalg.svd(centred[:, layer], full_matrices=False)
        direction = vh[0]
        projection = torch.dot(reference[layer], direction)
        if projection < 0:
            direction, projection = -direction, -projection
        out.append(direction * projection)
    return torch.stack(out).float()


def pca_vector(
    model: "TransformerBridge", activations: ContrastiveActivations, centring: PcaCentring = "within_label"
) -> SteeringVector:
    """The PCA-of-differences vector (``pca_directions``) from activations extracted with examples.

    ``centring="within_label"`` (default) is not the letter axis; ``"pooled"`` is the older, pooled
    PCA (on A/B data at the answer token, mostly the letter axis). The provenance records the centring
    in ``method`` plus the label counts and letter shares; data with one matching label is centred on
    its plain mean, with a warning.

    Raises:
        ValueError: no per-example activations (extract with ``keep_examples=True``), or see
            ``pca_directions``.
    """
    if activations.examples is None:
        raise ValueError("pca_vector needs per-example activations: extract with keep_examples=True")
    examples = activations.examples
    diffs = examples.positive.float() - examples.negative.float()
    groups = label_means(activations)
    name = "pca_of_differences"
    if centring == "within_label":
        name += (
            "; within_label" if len(groups.labels) > 1 else f"; {one_label_note(groups, activations.dataset)}"
        )
    directions = pca_directions(diffs, examples.positive_labels, centring)
    # The examples' storage dtype changes the PCA (float16 examples round every difference).
    settings = activations.settings | {"example_dtype": str(examples.positive.dtype).removeprefix("torch.")}
    provenance = _provenance(model, activations, name, settings)
    advice = (
        "Use centring='within_label' (the default), which removes the letter axis before the SVD."
        if centring == "pooled"
        else "Even within-label PCA lies along the letter axis here: too few pairs per label?"
    )
    provenance = letter_record(provenance, directions, activations.layers, groups, advice)
    return SteeringVector(directions, activations.layers, provenance)


def caa_vector(
    model: "TransformerBridge",
    dataset: ContrastiveDataset,
    layers: int | Sequence[int] | None = None,
    site: str = "resid_post",
    position_rule: PositionRule = "answer",
    batch_size: int = 16,
    progress: bool = True,
    *,
    method: VectorMethod = "letter_balanced",
) -> SteeringVector:
    """Extract and build CAA mean-difference vectors in one call (``contrastive_vector``).

    ``method="letter_balanced"`` (default) weighs each matching answer label's mean difference equally,
    so the vector is the behaviour rather than "A minus B"; ``method="mean_difference"`` is the plain
    mean of the CAA paper. Memory does not grow with the number of pairs either way.

    >>> from caa_lens.tiny import tiny_model
    >>> from caa_lens.data import make_item, ContrastiveDataset
    >>> q = "Sunny?\\n\\nChoices:\\n (A) yes\\n (B) no"
    >>> data = ContrastiveDataset("demo", (make_item(q, "(A)", "(B)"), make_item(q, "(B)", "(A)")))
    >>> vector = caa_vector(tiny_model(), data, layers=[1, 2], progress=False)
    >>> vector.directions.shape, vector.provenance.method, vector.provenance.label_counts
    (torch.Size([2, 64]), 'letter_balanced', {'A': 1, 'B': 1})

    Raises:
        ValueError: ``batch_size`` is not a positive integer, a layer, site, position rule or method is
            invalid; checked before any forward pass.
    """
    check_batch_size(batch_size)
    if method not in ("letter_balanced", "mean_difference"):
        raise ValueError(f"unknown method {method!r}: expected 'letter_balanced' or 'mean_difference'")
    acts = extract_contrastive(model, dataset, layers, site, position_rule, batch_size, progress=progress)
    return contrastive_vector(model, acts, method)


def prompt_pair_hash(pair: PromptPair) -> str:
    """SHA-256 (first 16 hex digits) of a prompt pair's two texts, like a dataset's content hash."""
    return hashlib.sha256(json.dumps([pair.positive, pair.negative]).encode()).hexdigest()[:16]


def actadd_vector(
    model: "TransformerBridge",
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
