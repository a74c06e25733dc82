"""Analyses of steering vectors built on caa_lens's public API: similarity, layer transfer, norms and
the ratio/perplexity trade-off, PCA and probes, the answer-letter confound, sample-size scaling,
multi-behaviour interference, adversarial reversal search, open-ended behaviour studies and ActAdd's
experiments.

Each analysis module computes one kind of result and returns a frozen result dataclass (tensors and
pandas tables); ``analysis.store`` saves and loads them, ``analysis.plots`` draws them (one style, a
typed figure registry), ``analysis.jobs`` runs them as multi-stage jobs on ``caa_lens.jobs``, and
``analysis.cli`` is the ``caa-lens`` command. This namespace exports the analyses themselves.
"""

from analysis.interference import Interference, default_combinations, interference_matrix
from analysis.letters import (
    LetterDecomposition,
    balanced_indices,
    balanced_mean_difference,
    letter_balanced_vector,
    letter_counts,
    letter_decomposition,
)
from analysis.norms import NormProfile, norm_profile
from analysis.pca import (
    PcaProjections,
    Separability,
    cell_weights,
    logistic_probe_accuracy,
    mean_difference_probe_accuracy,
    pair_accuracy,
    pca_projections,
    principal_components,
    separability,
)
from analysis.ratio_tradeoff import RatioTradeoff, most_efficient_ratio, ratio_tradeoff
from analysis.reversal import ReversalConfig, ReversalResult, pareto_front
from analysis.reversal_search import allowed_tokens, reversal_search
from analysis.scaling import (
    SampleSizeScaling,
    bootstrap_interval,
    pair_differences,
    sample_size_scaling,
    split_half_cosine,
    subset_indices,
    subset_mean_differences,
)
from analysis.similarity import (
    BehaviourSimilarity,
    LayerSimilarity,
    MethodSimilarity,
    behaviour_similarity,
    cosine_matrix,
    layer_similarity,
    mean_vs_pca,
    method_similarity,
)
from analysis.size_effect import SizeEffect, steering_effect_by_size, subset_vectors
from analysis.transfer import LayerTransfer, layer_transfer, rehomed

__all__ = [
    "BehaviourSimilarity",
    "Interference",
    "LayerSimilarity",
    "LayerTransfer",
    "LetterDecomposition",
    "MethodSimilarity",
    "NormProfile",
    "PcaProjections",
    "RatioTradeoff",
    "ReversalConfig",
    "ReversalResult",
    "SampleSizeScaling",
    "Separability",
    "SizeEffect",
    "allowed_tokens",
    "balanced_indices",
    "balanced_mean_difference",
    "behaviour_similarity",
    "bootstrap_interval",
    "cell_weights",
    "cosine_matrix",
    "default_combinations",
    "interference_matrix",
    "layer_similarity",
    "layer_transfer",
    "letter_balanced_vector",
    "letter_counts",
    "letter_decomposition",
    "logistic_probe_accuracy",
    "mean_difference_probe_accuracy",
    "mean_vs_pca",
    "method_similarity",
    "most_efficient_ratio",
    "norm_profile",
    "pair_accuracy",
    "pair_differences",
    "pareto_front",
    "pca_projections",
    "principal_components",
    "ratio_tradeoff",
    "rehomed",
    "reversal_search",
    "sample_size_scaling",
    "separability",
    "split_half_cosine",
    "steering_effect_by_size",
    "subset_indices",
    "subset_mean_differences",
    "subset_vectors",
]
