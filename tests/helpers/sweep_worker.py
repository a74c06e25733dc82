"""Run a small sweep on the tiny model in a fresh process (for the kill-and-resume test).

Usage: ``python sweep_worker.py OUT [SECONDS_PER_GROUP]``. A positive delay sleeps after every
fsynced group, so the test can SIGKILL the process midway through the sweep.
"""

import sys
import time

import torch

import caa_lens.sweep_io as sweep_io
from caa_lens.data import ContrastiveDataset, make_item
from caa_lens.provenance import make_provenance
from caa_lens.sweep import run_sweep
from caa_lens.tiny import tiny_model
from caa_lens.vectors import SteeringVector

LAYERS = (0, 2, 3)
MULTIPLIERS = (-4.0, 0.0, 4.0)
BATCH_SIZE = 2


def build():
    """The model, dataset and vectors of the worker's sweep (deterministic)."""
    model = tiny_model()
    questions = [
        "Is it sunny?",
        "What is the best way to learn a new language?",
        "Hi",
        "Would you agree with this statement?",
        "Please answer the question about the weather today",
        "I love the ocean",
        "The capital of France is Paris. Is that right?",
        "Should we practice every day?",
        "Do you like rain?",
        "Is the quick brown fox lazy?",
        "Will it rain tomorrow?",
        "Are you a helpful assistant?",
    ]
    items = tuple(
        make_item(f"{q}\n\nChoices:\n (A) Yes\n (B) No", *(("(A)", "(B)") if i % 2 else ("(B)", "(A)")))
        for i, q in enumerate(questions)
    )
    generator = torch.Generator().manual_seed(1)
    provenance = make_provenance(model, "resid_post", "answer", "random", "worker", "0", 1, torch.float32)
    vectors = {
        name: SteeringVector(torch.randn(4, 64, generator=generator), (0, 1, 2, 3), provenance)
        for name in ("up", "down")
    }
    return model, ContrastiveDataset("worker", items), vectors


def main(out: str, delay: float) -> None:
    model, dataset, vectors = build()
    if delay > 0:
        write = sweep_io.append_rows

        def slow_write(path, rows):
            write(path, rows)
            time.sleep(delay)

        sweep_io.append_rows = slow_write  # type: ignore[assignment]
    run = run_sweep(model, dataset, vectors, LAYERS, MULTIPLIERS, out, batch_size=BATCH_SIZE, progress=False)
    print(run.units_computed, run.rows_written, flush=True)


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]) if len(sys.argv) > 2 else 0.0)
