"""Integration of the analyses on the real default model with a few CAA refusal pairs (slow)."""

import math

import pytest
import torch

from analysis.interference import interference_matrix
from analysis.norms import norm_profile
from analysis.pca import pca_projections, separability
from analysis.ratio_tradeoff import ratio_tradeoff
from analysis.reversal import ReversalConfig
from analysis.reversal_search import reversal_search
from analysis.scaling import sample_size_scaling
from analysis.similarity import layer_similarity, mean_vs_pca
from analysis.size_effect import steering_effect_by_size, subset_vectors
from analysis.transfer import layer_transfer
from caa_lens.data import load_behaviour_dataset
from caa_lens.extraction import extract_contrastive
from caa_lens.methods import contrastive_vector, mean_difference_vector

pytestmark = [pytest.mark.slow, pytest.mark.shared_data]
LAYERS = (2, 6, 10, 12, 14, 20, 27)


@pytest.fixture(scope="module")
def refusal(default_model, shared_data):
    generate = load_behaviour_dataset(shared_data / "caa" / "generate" / "refusal" / "generate_dataset.json")
    test = load_behaviour_dataset(shared_data / "caa" / "test" / "refusal" / "test_dataset_ab.json")
    train = generate.select(range(24), ":24")
    acts = extract_contrastive(default_model, train, layers=LAYERS, keep_examples=True, progress=False)
    return train, test, acts, mean_difference_vector(default_model, acts)


def test_similarity_pca_and_scaling(default_model, refusal):
    train, _, acts, vector = refusal
    similar = layer_similarity(vector)
    assert similar.matrix.shape == (7, 7)
    # Neighbouring layers' vectors are more alike than distant ones (CAA paper; holds on this model).
    assert similar.matrix[3, 4] > similar.matrix[0, 6]
    # The comparison is of the letter-balanced vector (not the plain mean) with the within-label PCA.
    methods = mean_vs_pca(default_model, acts).table
    balanced = contrastive_vector(default_model, acts, "letter_balanced").norms().double()
    assert torch.allclose(torch.tensor(methods.norm_letter_balanced.to_numpy()), balanced, rtol=1e-4)
    projections = pca_projections(acts.examples, acts.layers)
    assert projections.coordinates.shape == (7, 48, 2)
    table = separability(acts.examples, acts.layers, probe="mean_difference").table
    assert table.letter_accuracy.min() > 0.9  # the read token is the letter itself
    scaled = sample_size_scaling(acts, train, sizes=(1, 2, 3, 5, 8, 13, 21), balance_letters=True)
    assert scaled.table.cosine_to_heldout.between(-1, 1).all()
    assert (scaled.table.null_low <= scaled.table.null_high).all()


def test_norms_and_ratio(default_model, refusal, shared_data):
    _, test, _, vector = refusal
    items = test.select(range(4))
    profile = norm_profile(default_model, vector, items).table
    # From layer ~11 the first token is an attention sink whose norm lifts the all-position mean.
    sink = profile[profile.layer.between(12, 20)]
    assert (sink.resid_all > 1.5 * sink.resid_all_but_first).all()
    assert profile.ratio_read.between(0.005, 0.5).all()
    text = (shared_data / "text" / "wiki.test.raw").read_text()[:3000]
    trade = ratio_tradeoff(
        default_model, vector, 12, items, text, ratios=(0.1, 0.5), max_tokens=128, context=128
    )
    assert len(trade.table) == 4 and trade.baseline_perplexity > 1  # both signs of each ratio


def test_transfer_scaling_effect_and_interference(default_model, refusal):
    train, test, acts, vector = refusal
    items = test.select(range(4))
    transfer = layer_transfer(
        default_model, vector, items, read_layers=[10, 12], apply_layers=[12, 14], multiplier=6.0
    )
    assert transfer.effect.shape == (2, 2) and torch.isfinite(transfer.effect).all()
    vectors = subset_vectors(default_model, acts, train, (5, 21))
    effect = steering_effect_by_size(default_model, vectors, items, 12, 6.0)
    assert len(effect.table) == 2
    zero = vector.scaled(0.0)
    matrix = interference_matrix(
        default_model, {"refusal": vector, "zero": zero}, {"refusal": items}, 12, 6.0
    )
    assert matrix.effect.shape == (3, 1)
    assert abs(float(matrix.effect[1, 0])) < 1e-6


def test_reversal_search_runs(default_model, refusal):
    _, test, _, vector = refusal
    config = ReversalConfig(
        n_tokens=4,
        lambdas=(0.0, 0.05),
        children_per_member=4,
        top_k=16,
        iterations=2,
        progress=False,
        min_items=2,  # a smoke run of the search machinery: no reversal claim is made from it
    )
    result = reversal_search(
        default_model, vector, 12, 6.0, test.select(range(2)), test.select(range(2, 4)), config
    )
    assert result.iterations == 2 and len(result.best) == 3
    assert not math.isnan(result.best.reversal.iloc[-1])
    assert result.best.cross_entropy.gt(0).all()
