"""A small mixed sweep on the tiny model (A/B items, a Yes/No item, a three-choice item) for the sweep tests."""

import torch

from caa_lens.data import ContrastiveDataset, make_item
from caa_lens.provenance import make_provenance
from caa_lens.sweep import run_sweep
from caa_lens.vectors import SteeringVector

LAYERS = (0, 2, 3)
MULTIPLIERS = (-3.0, 0.0, 2.5)


def mixed_setting(tiny):
    """A dataset of six mixed items and two random vectors over four layers, deterministic."""
    questions = ["Is it sunny?", "What is the best way to learn a new language? Practice", "Hi", "Rain?"]
    items = [
        make_item(f"{q}\n\nChoices:\n (A) Yes\n (B) No", *(("(A)", "(B)") if i % 2 else ("(B)", "(A)")))
        for i, q in enumerate(questions)
    ]
    items.append(make_item("Would you agree with this statement? I love the ocean.", "No", "Yes"))
    items.append(make_item("Choices: (A) the sun (B) rain (C) fog\nPick one.", "(C)", "(A)"))
    generator = torch.Generator().manual_seed(0)
    provenance = make_provenance(tiny, "resid_post", "answer", "random", "test", "0", 1, torch.float32)
    vectors = {
        name: SteeringVector(torch.randn(4, 64, generator=generator), (0, 1, 2, 3), provenance)
        for name in ("first", "second")
    }
    return ContrastiveDataset("mixed", tuple(items)), vectors


def sweep(tiny, setting, path, **options):
    dataset, vectors = setting
    return run_sweep(tiny, dataset, vectors, LAYERS, MULTIPLIERS, path, progress=False, **options)
