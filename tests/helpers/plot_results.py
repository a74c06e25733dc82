"""Small analysis results for the plot tests: one of each result type the figures draw."""

import pandas as pd
import torch
from helpers.analysis_toy import planted_examples

from analysis.interference import Interference
from analysis.norms import NormProfile
from analysis.pca import pca_projections, separability
from analysis.ratio_tradeoff import RatioTradeoff
from analysis.reversal import ReversalConfig, ReversalResult
from analysis.scaling import SampleSizeScaling
from analysis.similarity import BehaviourSimilarity, layer_similarity
from analysis.size_effect import SizeEffect
from analysis.transfer import LayerTransfer
from caa_lens.provenance import Provenance
from caa_lens.vectors import SteeringVector


def small_results() -> dict:
    provenance = Provenance("m", "h", 8, 4, "resid_post", "answer", "test", "d", "0", 1, "float32")
    vector = SteeringVector(
        torch.randn(4, 8, generator=torch.Generator().manual_seed(0)), (0, 1, 2, 3), provenance
    )
    examples, _, _ = planted_examples(20, d=8, n_layers=4)
    ratio_table = pd.DataFrame(
        {
            "ratio": [0.1, 0.5, 1.0, -0.1, -0.5, -1.0],
            "multiplier": [1.0, 5.0, 10.0, -1.0, -5.0, -10.0],
            "p_matching": [0.6, 0.7, 0.8, 0.5, 0.4, 0.3],
            "behaviour_change": [0.05, 0.15, 0.25, 0.05, 0.15, 0.25],
            "behaviour_change_low": [0.0, 0.1, 0.15, -0.01, 0.1, 0.2],
            "behaviour_change_high": [0.1, 0.2, 0.35, 0.1, 0.2, 0.3],
            "perplexity": [10.0, 11.0, 14.0, 10.1, 10.8, 13.0],
            "perplexity_increase": [0.0, 0.1, 0.4, 0.01, 0.08, 0.3],
            "perplexity_increase_low": [-0.01, 0.05, 0.3, 0.0, 0.04, 0.2],
            "perplexity_increase_high": [0.01, 0.15, 0.5, 0.02, 0.12, 0.4],
        }
    )
    history = pd.DataFrame(
        {
            "iteration": [1, 1, 2, 2],
            "lambda": [0.0, 0.1, 0.0, 0.1],
            "reversal": [0.1, 0.05, 0.2, 0.1],
            "cross_entropy": [5.0, 4.0, 5.0, 3.5],
            "fitness": [0.1, -0.35, 0.2, -0.25],
            "best_reversal": [0.1, 0.1, 0.2, 0.2],
            "n_evaluated": [10, 10, 20, 20],
            "elapsed_s": [1.0, 1.0, 2.0, 2.0],
        }
    )
    pareto = pd.DataFrame(
        {"text": ["a", "b"], "token_ids": [(1,), (2,)], "reversal": [0.2, 0.1], "cross_entropy": [5.0, 3.5]}
    )
    scaling_rows = [
        {
            "n": n,
            "layer": layer,
            "cosine_to_heldout": c,
            "ci_low": c - 0.1,
            "ci_high": min(1.0, c + 0.1),
            "null_mean": 0.0,
            "null_low": -0.3,
            "null_high": 0.3,
            "vs_null": "above null",
            "split_half": c - 0.05,
            "norm": 1.0,
            "share_first_letter": 0.5,
        }
        for n, c in ((1, 0.5), (2, 0.7), (5, 0.9), (8, 1.0))
        for layer in (0, 1)
    ]
    effect_table = pd.DataFrame(
        {
            "n": [1, 2, 5],
            "plus": [0.6, 0.7, 0.8],
            "minus": [0.4, 0.3, 0.2],
            "effect": [0.2, 0.4, 0.6],
            "plus_effect": [0.1, 0.2, 0.3],
            "plus_low": [0.0, 0.1, 0.2],
            "plus_high": [0.2, 0.3, 0.4],
            "minus_effect": [-0.1, -0.2, -0.3],
            "minus_low": [-0.2, -0.3, -0.4],
            "minus_high": [0.0, -0.1, -0.2],
            "null_plus_low": [-0.05] * 3,
            "null_plus_high": [0.05] * 3,
            "null_minus_low": [-0.05] * 3,
            "null_minus_high": [0.05] * 3,
        }
    )
    return {
        "layer_similarity": layer_similarity(vector),
        "behaviour": BehaviourSimilarity(("a", "b"), (0, 1), torch.eye(2).repeat(2, 1, 1)),
        "pca": pca_projections(examples, (0, 1, 2, 3)),
        "separability": separability(examples, (0, 1, 2, 3), probe="mean_difference"),
        "norms": NormProfile(
            pd.DataFrame(
                {
                    "layer": [0, 1],
                    "vector_norm": [1.0, 2.0],
                    "resid_read": [10.0, 20.0],
                    "ratio_read": [0.1, 0.1],
                }
            )
        ),
        "ratio": RatioTradeoff(
            1, 10.0, 0.55, 10.0, 0.1, ratio_table, 0.5, "ratio 0.5: largest effect within budget"
        ),
        "scaling": SampleSizeScaling((1, 2, 5, 8), (0, 1), 8, 0.95, pd.DataFrame(scaling_rows), 5, 20),
        "effect": SizeEffect(1, 4.0, 0.5, effect_table, 3),
        "reversal": ReversalResult(
            2,
            4.0,
            ReversalConfig(),
            1.0,
            0.5,
            0.7,
            0.5,
            0.7,
            pd.DataFrame(),
            pareto,
            history,
            2,
            2.0,
            "iterations",
            20,
        ),
        "interference": Interference(
            ("a", "b"),
            ("a", "b"),
            (("a",), ("b",), ("a", "b")),
            {"a": 1, "b": 1},
            {"a": 1.0, "b": 1.0},
            torch.zeros(2),
            torch.rand(3, 2),
            torch.rand(3, 2) - 0.5,
            torch.rand(3, 2),
        ),
        "transfer": LayerTransfer(
            (0, 1), (0, 1, 2), 4.0, False, torch.rand(2, 3), torch.rand(2, 3), 0.5, torch.rand(2, 3)
        ),
    }


def check_draws_and_saves(draw, path) -> None:
    """``draw(results, save)`` returns a Figure with axes, and writes a PNG when ``save`` is a path."""
    from matplotlib.figure import Figure

    results = small_results()
    figure = draw(results, None)
    assert isinstance(figure, Figure) and figure.axes
    draw(results, path)
    assert path.stat().st_size > 1000
