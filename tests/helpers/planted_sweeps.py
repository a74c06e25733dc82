"""The planted letter effect of the controls and effects tests (see test_sweep_controls's docstring)."""

import numpy as np
import pandas as pd
import pytest
import torch

from caa_lens.data import ContrastiveDataset, make_item
from caa_lens.evaluation import scoring_prompts
from caa_lens.provenance import make_provenance
from caa_lens.sweep import run_sweep
from caa_lens.sweep_io import load_results
from caa_lens.vectors import SteeringVector

LAYERS = (1, 3)


# The unit letter direction saturates p(A) near m = 0.5 on the tiny model; these stay in its linear range.
MULTIPLIERS = (-0.03, -0.003, 0.0, 0.003, 0.03)


QUESTIONS = [
    "Is it sunny?",
    "Hi",
    "Rain?",
    "Do you like the ocean?",
    "Is Paris the capital of France?",
    "Should we practice every day?",
    "Will it rain tomorrow?",
    "Are you a helpful assistant?",
    "Is the fox lazy?",
    "Do you read books?",
    "Is the weather warm?",
    "Do you talk to people?",
]


def planted_dataset(name: str, all_a: bool) -> ContrastiveDataset:
    items = tuple(
        make_item(
            f"{q}\n\nChoices:\n (A) Yes\n (B) No",
            *(("(A)", "(B)") if all_a or i % 2 == 0 else ("(B)", "(A)")),
        )
        for i, q in enumerate(QUESTIONS)
    )
    return ContrastiveDataset(name, items)


@pytest.fixture(scope="module")
def all_a() -> ContrastiveDataset:
    return planted_dataset("all_a", all_a=True)


@pytest.fixture(scope="module")
def balanced() -> ContrastiveDataset:
    return planted_dataset("balanced", all_a=False)


@pytest.fixture(scope="module")
def letter(tiny, all_a) -> SteeringVector:
    """A unit vector along W_U[:, A] - W_U[:, B] at every layer: it raises p(A) for every item."""
    token_a, token_b = scoring_prompts(tiny.tokenizer, all_a)[0].label_token_ids
    direction = (tiny.W_U[:, token_a] - tiny.W_U[:, token_b]).detach().float()
    provenance = make_provenance(tiny, "resid_post", "answer", "letter", "test", "0", 1, torch.float32)
    return SteeringVector(torch.stack([direction / direction.norm()] * 4), (0, 1, 2, 3), provenance)


def sweep_into(tiny, dataset, vector, path, **options):
    return run_sweep(tiny, dataset, {"letter": vector}, LAYERS, MULTIPLIERS, path, progress=False, **options)


@pytest.fixture(scope="module")
def planted(tiny, all_a, letter, tmp_path_factory) -> pd.DataFrame:
    path = tmp_path_factory.mktemp("planted") / "r.jsonl"
    sweep_into(tiny, all_a, letter, path, controls=3)
    return load_results(path)


@pytest.fixture(scope="module")
def letter_push(tiny, balanced, letter, tmp_path_factory) -> pd.DataFrame:
    path = tmp_path_factory.mktemp("letter") / "r.jsonl"
    sweep_into(tiny, balanced, letter, path, controls=4)
    return load_results(path)


def one_cell(summary: pd.DataFrame, layer: int, multiplier: float, vector: str = "letter") -> pd.Series:
    rows = summary[
        (summary.vector == vector) & (summary.layer == layer) & np.isclose(summary.multiplier, multiplier)
    ]
    assert len(rows) == 1
    return rows.iloc[0]
