"""Interrupted work: a checkpointed extraction killed with SIGKILL resumes to the identical result."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from caa_lens.data import ContrastiveDataset, make_item
from caa_lens.extraction import extract_contrastive
from caa_lens.resume import CheckpointMismatchError

WORKER = Path(__file__).parent / "helpers" / "extraction_worker.py"
N_PAIRS = 40


def batches_done(path: Path) -> int:
    try:
        with safe_open(str(path), framework="pt") as handle:
            return int((handle.metadata() or {})["batches_done"])
    except Exception:  # not written yet, or being replaced this instant
        return 0


def run_worker(out: Path, checkpoint: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(WORKER), str(out), checkpoint, str(N_PAIRS)])


@pytest.mark.slow
def test_killed_extraction_resumes_identically(tmp_path):
    reference = tmp_path / "reference.safetensors"
    assert run_worker(reference, "-").wait(timeout=600) == 0

    checkpoint = tmp_path / "progress.safetensors"
    resumed = tmp_path / "resumed.safetensors"
    worker = run_worker(resumed, str(checkpoint))
    deadline = time.monotonic() + 300
    while batches_done(checkpoint) < 5 and time.monotonic() < deadline and worker.poll() is None:
        time.sleep(0.02)
    worker.kill()  # SIGKILL: no cleanup code runs
    worker.wait()
    interrupted_at = batches_done(checkpoint)
    assert 5 <= interrupted_at < N_PAIRS, f"worker was not killed midway (batch {interrupted_at})"
    assert not resumed.exists()

    assert run_worker(resumed, str(checkpoint)).wait(timeout=600) == 0
    assert not checkpoint.exists(), "a completed extraction removes its checkpoint"
    expected, got = load_file(str(reference)), load_file(str(resumed))
    assert torch.equal(expected["sums"], got["sums"])
    assert torch.equal(expected["positive"], got["positive"])


def _data(n: int) -> ContrastiveDataset:
    q = "Is it warm?\n\nChoices:\n (A) Yes\n (B) No"
    return ContrastiveDataset("resume", tuple(make_item(f"{i}. {q}", "(A)", "(B)") for i in range(n)))


def test_checkpoint_of_other_run_is_refused(tiny, tmp_path):
    checkpoint = tmp_path / "state.safetensors"
    data = _data(4)
    from caa_lens.resume import ExtractionState, run_key, save_state

    save_state(
        checkpoint,
        run_key({"other": 1}),
        {"other": 1},
        ExtractionState(1, torch.zeros(2, 4, 64, dtype=torch.float64), (), None),
    )
    with pytest.raises(CheckpointMismatchError, match="different settings"):
        extract_contrastive(tiny, data, progress=False, checkpoint=checkpoint)
    checkpoint.write_bytes(b"garbage")
    with pytest.raises(CheckpointMismatchError, match="not a readable"):
        extract_contrastive(tiny, data, progress=False, checkpoint=checkpoint)


def test_checkpointed_run_equals_plain_run(tiny, tmp_path):
    data = _data(5)
    plain = extract_contrastive(tiny, data, batch_size=2, progress=False)
    checked = extract_contrastive(
        tiny, data, batch_size=2, progress=False, checkpoint=tmp_path / "c.safetensors"
    )
    assert torch.equal(plain.positive_sum, checked.positive_sum)
    assert torch.equal(plain.negative_sum, checked.negative_sum)
    assert json.dumps(plain.layers) == json.dumps(checked.layers)
