"""Issue 12: steering vectors must be the behaviour, not the answer letter.

Each pair's difference at the answer-letter token is ``b + s * L`` (``s = +1`` when the matching answer
is A). Planted activations with known ``b`` and ``L`` check that the letter-balanced mean recovers
``b`` whatever the label balance while the plain mean keeps ``(f_A - f_B) * L``, and that PCA centred
within each matching label is not the letter axis while pooled PCA is. The tiny model checks the same
on real items end to end; the slow test measures it on the default model (the issue's numbers).
"""

import warnings

import pytest
import torch

from caa_lens import stats
from caa_lens.data import ContrastiveDataset, load_behaviour_dataset, make_item
from caa_lens.extraction import ContrastiveActivations, PairActivations, extract_contrastive
from caa_lens.letter_balance import LETTER_SHARE_LIMIT, label_means
from caa_lens.methods import (
    caa_vector,
    contrastive_vector,
    mean_difference_vector,
    pca_directions,
    pca_vector,
)
from caa_lens.provenance import Provenance
from caa_lens.vector_files import load_vector, save_vector

D_MODEL = 64  # the tiny model's width: vectors are built with its provenance


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-layer cosine of ``[layer, d]`` tensors."""
    return torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=-1)


def planted(
    n_a: int,
    n_b: int,
    behaviour: float = 1.0,
    letter: float = 30.0,
    noise: float = 0.05,
    n_layers: int = 2,
    seed: int = 0,
    letter_free_noise: bool = False,
) -> tuple[ContrastiveActivations, torch.Tensor, torch.Tensor]:
    """Activations of ``n_a`` A-matching and ``n_b`` B-matching pairs with known parts.

    Both answers of pair i share a random question vector; the answer adds ``+-letter/2`` along the unit
    letter direction ``axis`` and ``+-scale_i * behaviour/2`` along the unit behaviour direction ``u``
    (orthogonal to ``axis``), ``scale_i`` uniform in [0.5, 1.5], so the difference is
    ``s_i * letter * axis + scale_i * behaviour * u + noise``: the letter axis is ``letter * axis``.
    ``letter_free_noise`` keeps the noise orthogonal to ``axis``, so a letter-free mean is exactly so.
    Returns the activations (with examples and per-label sums, as an extraction makes them), u and the letter axis.
    """
    generator = torch.Generator().manual_seed(seed)
    basis, _ = torch.linalg.qr(torch.randn(D_MODEL, 2, generator=generator, dtype=torch.float64))
    u, axis = basis[:, 0], basis[:, 1]
    n = n_a + n_b
    order = torch.randperm(n, generator=generator)
    labels = [("A" if int(k) < n_a else "B") for k in order]
    s = torch.tensor([1.0 if x == "A" else -1.0 for x in labels], dtype=torch.float64)
    scale = 0.5 + torch.rand(n, generator=generator, dtype=torch.float64)
    question = torch.randn(n, n_layers, D_MODEL, generator=generator, dtype=torch.float64)

    def jitter() -> torch.Tensor:
        e = noise * torch.randn(n, n_layers, D_MODEL, generator=generator, dtype=torch.float64)
        return e - (e @ axis)[..., None] * axis if letter_free_noise else e

    answer = (s * letter / 2)[:, None, None] * axis + (scale * behaviour / 2)[:, None, None] * u
    positive, negative = question + answer + jitter(), question - answer + jitter()
    present = [(label, sign, count) for label, sign, count in (("A", 1.0, n_a), ("B", -1.0, n_b)) if count]
    sums = torch.stack(
        [torch.stack([positive[s == sign].sum(0), negative[s == sign].sum(0)]) for _, sign, _ in present]
    )
    examples = PairActivations(
        positive.float(), negative.float(), tuple(labels), tuple("B" if x == "A" else "A" for x in labels)
    )
    activations = ContrastiveActivations(
        tuple(range(n_layers)), "resid_post", "answer", f"planted-{n_a}A-{n_b}B", "0", n,
        positive.sum(0).float(), negative.sum(0).float(), examples, {}, sums,
        tuple(label for label, _, _ in present), tuple(count for _, _, count in present),
    )  # fmt: skip
    return activations, u.float().expand(n_layers, -1), (letter * axis).float().expand(n_layers, -1)


def shares(vector) -> list[float]:
    return [vector.provenance.letter_share[str(layer)] for layer in vector.layers]


# ---------------------------------------------------------------------------------------------- planted


def test_letter_only_signal(tiny):
    """b = 0, ||L|| = 30, 58 A / 62 B: the plain mean is letter (share > 0.8, and it warns); the
    balanced mean holds no letter (share < 0.05) and does not warn."""
    acts, _, letter = planted(58, 62, behaviour=0.0, letter=30.0, letter_free_noise=True)
    with pytest.warns(
        UserWarning, match=r"mean_difference vector is mostly the answer letter at layers \[0, 1\]"
    ):
        plain = mean_difference_vector(tiny, acts)
    assert min(shares(plain)) > 0.8
    assert stats.letter_share(plain.directions, letter).min() > 0.8  # the record is the real share
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        balanced = contrastive_vector(tiny, acts)
    assert max(shares(balanced)) < 0.05
    assert balanced.provenance.method == "letter_balanced"
    assert balanced.provenance.label_counts == {"A": 58, "B": 62}


def test_behaviour_plus_letter_signal(tiny):
    """b and a 30x larger L: the balanced vector is b (cos > 0.99); within-label PCA is not the letter
    axis (|cos| < 0.1) while pooled PCA is (|cos| > 0.99)."""
    acts, u, letter = planted(58, 62, behaviour=1.0, letter=30.0)
    balanced = contrastive_vector(tiny, acts)
    assert (cosine(balanced.directions, u) > 0.99).all()
    with pytest.warns(UserWarning, match="mostly the answer letter"):
        plain = contrastive_vector(tiny, acts, "mean_difference")
    assert (cosine(plain.directions, u) < 0.9).all()  # the 4-pair imbalance tilts it to the letter
    within = pca_vector(tiny, acts)
    assert (cosine(within.directions, letter).abs() < 0.1).all()
    assert (cosine(within.directions, u) > 0.95).all()  # the within-label variance is along b
    assert within.provenance.method == "pca_of_differences; within_label"
    assert max(shares(within)) < 0.01
    with pytest.warns(UserWarning, match="centring='within_label'"):
        pooled = pca_vector(tiny, acts, centring="pooled")
    assert (cosine(pooled.directions, letter).abs() > 0.99).all()
    # Within-label PCA is signed and scaled by the balanced mean, so multipliers stay comparable.
    reference = balanced.directions
    unit = torch.nn.functional.normalize(within.directions, dim=-1)
    assert ((within.directions * reference).sum(-1) > 0).all()
    torch.testing.assert_close(within.directions.norm(dim=-1), (reference * unit).sum(-1), rtol=1e-4, atol=0)


def test_within_label_pca_ignores_the_letter_exactly():
    """Centring within labels removes s * L: the components with ||L|| = 30 and with no letter at all
    are the same (same questions, scales and noise)."""
    lettered, _, _ = planted(58, 62, letter=30.0, seed=3)
    letterless, _, _ = planted(58, 62, letter=0.0, seed=3)

    def within(acts):
        assert acts.examples is not None
        diffs = acts.examples.positive.double() - acts.examples.negative.double()
        return pca_directions(diffs, acts.examples.positive_labels)

    torch.testing.assert_close(within(lettered), within(letterless), rtol=1e-3, atol=1e-4)


def test_a_change_of_label_balance_moves_the_plain_mean_not_the_balanced_one(tiny):
    """70/30 and 30/70 subsets of the same pool (disjoint): the balanced vectors agree (cos > 0.95)
    and within-label PCA too; the plain means point opposite ways (cos < 0): they are the letter."""
    acts, u, _ = planted(100, 100, seed=1)
    assert acts.examples is not None
    labels = acts.examples.positive_labels
    a_rows = [i for i, x in enumerate(labels) if x == "A"]
    b_rows = [i for i, x in enumerate(labels) if x == "B"]
    mostly_a = sorted(a_rows[:70] + b_rows[:30])
    mostly_b = sorted(a_rows[70:] + b_rows[30:])
    vectors = {}
    for name, rows in (("70/30", mostly_a), ("30/70", mostly_b)):
        subset = subset_activations(acts, rows)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the plain means warn: they are mostly letter
            vectors[name] = {
                "balanced": contrastive_vector(tiny, subset).directions,
                "plain": contrastive_vector(tiny, subset, "mean_difference").directions,
                "pca": pca_vector(tiny, subset).directions,
            }
    first, second = vectors["70/30"], vectors["30/70"]
    assert (cosine(first["balanced"], second["balanced"]) > 0.95).all()
    assert (cosine(first["pca"], second["pca"]) > 0.95).all()
    assert (cosine(first["plain"], second["plain"]) < 0).all()
    assert (cosine(first["balanced"], u) > 0.99).all()


def subset_activations(acts: ContrastiveActivations, rows: list[int]) -> ContrastiveActivations:
    """The activations of some pairs, with examples only (no per-label sums): the examples path."""
    assert acts.examples is not None
    index = torch.tensor(rows)
    e = acts.examples
    examples = PairActivations(
        e.positive[index],
        e.negative[index],
        tuple(e.positive_labels[i] for i in rows),
        tuple(e.negative_labels[i] for i in rows),
    )
    return ContrastiveActivations(
        acts.layers, acts.site, acts.position_rule, acts.dataset, acts.dataset_hash, len(rows),
        examples.positive.sum(0), examples.negative.sum(0), examples,
    )  # fmt: skip


def test_one_matching_label_falls_back_to_the_plain_mean(tiny):
    acts, _, _ = planted(10, 0, letter=5.0)
    with pytest.warns(UserWarning, match="letter balancing impossible: every pair's matching answer is 'A'"):
        vector = contrastive_vector(tiny, acts)
    torch.testing.assert_close(vector.directions, acts.mean_difference)
    p = vector.provenance
    assert p.method.startswith("mean_difference; letter balancing impossible")
    assert (p.label_counts, p.letter_share) == ({"A": 10}, {})
    with pytest.warns(UserWarning, match="letter balancing impossible"):
        assert pca_vector(tiny, acts).provenance.method.startswith("pca_of_differences; letter balancing")


def test_activations_without_labels(tiny):
    """Activations assembled by hand without per-label sums or examples: the plain mean still works,
    recording nothing about letters; balancing says what to do."""
    acts, _, _ = planted(6, 4)
    bare = ContrastiveActivations(
        acts.layers, acts.site, acts.position_rule, acts.dataset, acts.dataset_hash, acts.n_pairs,
        acts.positive_sum, acts.negative_sum, None,
    )  # fmt: skip
    plain = mean_difference_vector(tiny, bare)
    assert (plain.provenance.label_counts, plain.provenance.letter_share) == ({}, {})
    with pytest.raises(ValueError, match=r"no per-label sums and no examples.*method='mean_difference'"):
        contrastive_vector(tiny, bare)


def test_label_means_from_sums_and_from_examples_agree():
    acts, _, _ = planted(7, 5)
    from_sums = label_means(acts)
    from_examples = label_means(subset_activations(acts, list(range(12))))
    assert from_sums.labels == from_examples.labels == ("A", "B")
    assert from_sums.counts == from_examples.counts == (7, 5)
    torch.testing.assert_close(from_sums.means, from_examples.means, rtol=1e-5, atol=1e-5)


def test_letter_record_survives_saving_and_older_files_load(tiny, tmp_path):
    acts, _, _ = planted(58, 62)
    vector = contrastive_vector(tiny, acts)
    loaded = load_vector(save_vector(vector, tmp_path / "v"), tiny)
    assert loaded.provenance == vector.provenance
    assert loaded.provenance.letter_share.keys() == {"0", "1"}
    record = vector.provenance.to_json()
    del record["label_counts"], record["letter_share"]  # a file written before these fields
    older = Provenance.from_json(record)
    assert (older.label_counts, older.letter_share) == ({}, {})
    # A sum of vectors, or a random control, no longer has the terms' letter share.
    assert (vector + vector).provenance.letter_share == {}
    assert stats.random_like(vector, seed=0).provenance.letter_share == {}
    assert vector.scaled(-2.0).provenance.letter_share == vector.provenance.letter_share


def test_no_warning_where_the_letter_axis_is_noise(tiny):
    """No planted letter, a behaviour that varies between pairs: the "letter axis" (a difference of two
    label means) is sampling noise, much of it along b, so the share is recorded but not warned about."""
    acts, _, _ = planted(58, 62, behaviour=3.0, letter=0.0, noise=0.1, seed=0)
    groups = label_means(acts)
    assert groups.axis is not None and (groups.axis.norm(dim=-1) < groups.balanced.norm(dim=-1)).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plain = mean_difference_vector(tiny, acts)
        within = pca_vector(tiny, acts)
    # Shares above the limit (0.73, 0.62 and 0.71, 0.61 measured): only the norm condition keeps quiet.
    assert min(shares(plain) + shares(within)) > LETTER_SHARE_LIMIT
    assert LETTER_SHARE_LIMIT == 0.25


# ---------------------------------------------------------------------------------------------- tiny model


def tiny_items(n_a: int, n_b: int, offset: int = 0) -> ContrastiveDataset:
    """Real items; the "behaviour" answer ("yes") is option A for the A-matching ones, B otherwise."""
    questions = ("Is it sunny?", "Do you like rain?", "Shall we go out?", "Is the sky blue?", "Is tea hot?")
    items = []
    for k in range(n_a + n_b):
        i = k + offset
        a_first = k < n_a
        options = ("yes", "no") if a_first else ("no", "yes")
        text = f"{questions[i % len(questions)]} ({i})\n\nChoices:\n (A) {options[0]}\n (B) {options[1]}"
        items.append(make_item(text, *(("(A)", "(B)") if a_first else ("(B)", "(A)"))))
    return ContrastiveDataset(f"tiny-{n_a}A-{n_b}B", tuple(items))


def test_tiny_model_balanced_vector_equals_the_balanced_mean_of_its_examples(tiny):
    """On real items (14 A, 6 B), caa_vector's default equals caa_lens.stats' letter-balanced mean of
    the per-example differences, its letter share record equals stats' letter share, the plain mean
    is letter (share > 0.8, warns), the balanced one is not (< 0.1), and within-label PCA neither."""
    data = tiny_items(14, 6)
    acts = extract_contrastive(tiny, data, batch_size=4, keep_examples=True, progress=False)
    assert acts.examples is not None
    diffs = acts.examples.positive.double() - acts.examples.negative.double()
    labels = acts.examples.positive_labels
    expected = stats.letter_balanced_mean(diffs, labels)
    axis = stats.letter_axis(diffs, labels)
    vector = caa_vector(tiny, data, batch_size=4, progress=False)  # no examples: per-label sums only
    assert (vector.directions.double() - expected).norm(dim=-1).max() < 1e-5 * expected.norm(dim=-1).min()
    assert vector.provenance.label_counts == {"A": 14, "B": 6}
    assert shares(vector) == pytest.approx(stats.letter_share(vector.directions, axis).tolist(), abs=1e-9)
    assert max(shares(vector)) < 0.1
    with pytest.warns(UserWarning, match="mostly the answer letter"):
        plain = caa_vector(tiny, data, batch_size=4, progress=False, method="mean_difference")
    assert min(shares(plain)) > 0.8
    assert max(shares(pca_vector(tiny, acts))) < 0.1


def test_tiny_model_label_balance_change(tiny):
    """14 A / 6 B and 6 A / 14 B items (disjoint questions): the balanced vectors roughly agree
    (measured cos 0.65-0.86 on this random model, where b is 1000 times smaller than L and mostly
    question-to-question noise), the plain means point opposite ways (they are the letter)."""
    data = tiny_items(20, 20)
    acts = extract_contrastive(tiny, data, batch_size=8, keep_examples=True, progress=False)
    first, second = list(range(14)) + list(range(20, 26)), list(range(14, 20)) + list(range(26, 40))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        built = [
            (contrastive_vector(tiny, part).directions, mean_difference_vector(tiny, part).directions)
            for part in (subset_activations(acts, first), subset_activations(acts, second))
        ]
    (balanced_1, plain_1), (balanced_2, plain_2) = built
    assert (cosine(balanced_1, balanced_2) > 0.5).all()
    assert (cosine(plain_1, plain_2) < -0.9).all()


# ---------------------------------------------------------------------------------------------- default model


@pytest.mark.slow
@pytest.mark.shared_data
def test_default_model_vector_is_behaviour_not_letter(default_model, shared_data):
    """Issue 12 on SmolLM2, layer 13, the first 120 refusal pairs (58 A, 62 B), one extraction.

    Measured (CPU, batch 16): ||L|| 99.1, ||b|| 3.07; cos with the letter axis: default vector +0.23
    (share 0.05), plain mean -0.66 (share 0.43), within-label PCA +0.12, pooled PCA -0.999999;
    cos(within-label PCA, balanced mean) +0.23; 40A/20B vs 20A/40B subsets: balanced vectors +0.60
    (split halves of the same pairs give 0.34-0.69: sampling noise), plain means -0.98.
    """
    path = shared_data / "caa" / "generate" / "refusal" / "generate_dataset.json"
    data = load_behaviour_dataset(path).select(range(120), ":first120")
    acts = extract_contrastive(
        default_model, data, layers=[13], batch_size=16, keep_examples=True, progress=False
    )
    assert acts.examples is not None and acts.label_counts == (58, 62)
    diffs = acts.examples.positive.double() - acts.examples.negative.double()
    labels = acts.examples.positive_labels
    axis = stats.letter_axis(diffs, labels)
    balanced = stats.letter_balanced_mean(diffs, labels)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        default = contrastive_vector(default_model, acts)  # caa_vector's default, from these activations
        within = pca_vector(default_model, acts)
    with pytest.warns(UserWarning, match="mostly the answer letter"):
        plain = mean_difference_vector(default_model, acts)
    with pytest.warns(UserWarning, match="mostly the answer letter"):
        pooled = pca_vector(default_model, acts, centring="pooled")

    def cos(a, b) -> float:
        return float(cosine(a, b)[0])

    measured = {
        "letter_norm": float(axis.norm()),
        "balanced_norm": float(balanced.norm()),
        "cos_default_letter": cos(default.directions, axis),
        "cos_plain_letter": cos(plain.directions, axis),
        "cos_within_pca_letter": cos(within.directions, axis),
        "cos_pooled_pca_letter": cos(pooled.directions, axis),
        "cos_within_pca_balanced": cos(within.directions, balanced),
        "share_default": default.provenance.letter_share["13"],
        "share_plain": plain.provenance.letter_share["13"],
    }
    a_rows = [i for i, x in enumerate(labels) if x == "A"]
    b_rows = [i for i, x in enumerate(labels) if x == "B"]
    mostly_a, mostly_b = a_rows[:40] + b_rows[:20], a_rows[-20:] + b_rows[-40:]

    def means(rows):
        part = diffs[rows]
        return stats.letter_balanced_mean(part, [labels[i] for i in rows]), part.mean(0)

    (balanced_a, plain_a), (balanced_b, plain_b) = means(mostly_a), means(mostly_b)
    measured |= {
        "subsets_cos_balanced": cos(balanced_a, balanced_b),
        "subsets_cos_plain": cos(plain_a, plain_b),
        "subset_balanced_vs_full": min(cos(balanced_a, balanced), cos(balanced_b, balanced)),
    }
    print({name: round(value, 4) for name, value in measured.items()})

    torch.testing.assert_close(
        default.directions.double(), balanced, rtol=0, atol=1e-4 * float(balanced.norm())
    )
    assert measured["share_default"] == pytest.approx(measured["cos_default_letter"] ** 2, abs=1e-6)
    assert 80 < measured["letter_norm"] < 120 and 2 < measured["balanced_norm"] < 5  # the issue: 99, 3.1
    assert measured["cos_plain_letter"] < -0.55  # the issue's -0.66: the confound is there
    assert abs(measured["cos_default_letter"]) < 0.4  # the default vector is not it
    assert abs(measured["cos_pooled_pca_letter"]) > 0.999  # the issue's -0.99999
    assert abs(measured["cos_within_pca_letter"]) < 0.3
    # Within-label PC1 is signed by the balanced mean but is mostly question-to-question variation,
    # not the behaviour mean: positive, and far from 1.
    assert 0 < measured["cos_within_pca_balanced"] < 0.5
    assert measured["subsets_cos_plain"] < -0.9  # the plain mean flips with the letter balance
    assert measured["subsets_cos_balanced"] > 0.4  # the balanced one does not (60-pair sampling noise)
    assert measured["subset_balanced_vs_full"] > 0.75
