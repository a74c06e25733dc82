"""Shared pieces of the ActAdd tests (``tests/test_analysis_actadd_*.py``, ``test_jobs_actadd.py``):
planted front vectors on the tiny model, prompts of equal length, and the saved-results check."""

import itertools
import json

import pandas as pd
import pytest
import torch

from analysis.actadd_setup import prompt_windows
from analysis.actadd_store import ACTADD_MARKER, load_actadd, save_actadd
from analysis.plots import is_caa_lens_png
from analysis.plots import save_actadd_figure as save_figure
from caa_lens.ood import OODPrompt
from caa_lens.provenance import make_provenance
from caa_lens.vectors import SteeringVector

SINGLE_TOKEN_WORDS = ("the", "question", "about", "language", "and", "The")


@pytest.fixture(autouse=True)
def no_shared_env(monkeypatch):
    """No shared data unless a test passes it, so the bundled fallbacks are what runs (autouse in every
    test module that imports it)."""
    monkeypatch.delenv("CAA_LENS_SHARED_DATA", raising=False)


def planted(model, token: str, rows: int, layer: int = 3, norm: float = 1.0) -> SteeringVector:
    """A front vector of ``rows`` positions, each along the unembedding of ``token`` (one token)."""
    ids = model.tokenizer(token, add_special_tokens=False).input_ids
    assert len(ids) == 1, f"{token!r} is {len(ids)} tokens in the tiny vocabulary"
    direction = model.W_U[:, ids[0]].detach().float()
    direction = direction / direction.norm() * norm
    provenance = make_provenance(model, "resid_pre", "all", "planted", token, "0", 1, torch.float32)
    return SteeringVector(direction.repeat(rows, 1)[None], (layer,), provenance)


def equal_prompts(model, count: int = 8) -> tuple[list[OODPrompt], int]:
    """``count`` different prompts of the same token length, and the window reaching their last token."""
    texts = [" ".join(words) for words in itertools.permutations(SINGLE_TOKEN_WORDS[:5], 4)][:count]
    prompts = [OODPrompt(f"q{i}", text, "test") for i, text in enumerate(texts)]
    table = prompt_windows(model, prompts, 1, "prompt")
    reach = table.user_tokens + table.tail_tokens
    assert reach.nunique() == 1, table
    return prompts, int(reach.iloc[0])


def check_saved(result, out, experiment: str, tables: tuple[str, ...]) -> None:
    paths = save_actadd(result, out)
    figure = save_figure(result, out)
    assert (out / ACTADD_MARKER).is_file()
    for table in tables:
        assert (out / f"{experiment}_{table}.csv") in paths
        assert not pd.read_csv(out / f"{experiment}_{table}.csv").empty
    assert json.loads((out / f"{experiment}.json").read_text())["experiment"] == experiment
    assert figure == out / f"{experiment}.png" and is_caa_lens_png(figure)
    again = load_actadd(out, experiment)
    assert type(again) is type(result)
    save_figure(again, out)  # redrawn from the files alone, over its own figure
