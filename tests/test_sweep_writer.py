"""Writing a sweep's results file: a truncated tail is cut and recomputed, another configuration is
refused, and a SIGKILL midway resumes to the uninterrupted table."""

import contextlib
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pandas as pd
import pytest
import torch
from helpers.sweep_setting import LAYERS, MULTIPLIERS, mixed_setting, sweep

from caa_lens.sweep import run_sweep
from caa_lens.sweep_io import SweepConfigError, load_results


@pytest.fixture(scope="module")
def setting(tiny):
    return mixed_setting(tiny)


WORKER = Path(__file__).parent / "helpers" / "sweep_worker.py"


def test_truncated_last_line_is_dropped_and_recomputed(tiny, setting, tmp_path):
    full = tmp_path / "full.jsonl"
    sweep(tiny, setting, full, batch_size=2)
    lines = full.read_bytes().split(b"\n")[:-1]
    partial = tmp_path / "partial.jsonl"
    # Keep the header and 13 rows (a group cut in its middle), then half of the next line.
    partial.write_bytes(b"\n".join(lines[:14]) + b"\n" + lines[14][: len(lines[14]) // 2])
    with pytest.warns(UserWarning, match="last line is incomplete"):
        run = sweep(tiny, setting, partial, batch_size=2)
    assert 0 < run.units_computed < run.units_total
    pd.testing.assert_frame_equal(load_results(partial), load_results(full))
    assert len(partial.read_bytes().split(b"\n")) == len(lines) + 1  # no duplicate rows


def test_resume_with_another_configuration_is_refused(tiny, setting, tmp_path):
    path = tmp_path / "r.jsonl"
    sweep(tiny, setting, path)
    dataset, vectors = setting
    with pytest.raises(SweepConfigError, match=r"multipliers: file has \[-3.0, 0.0, 2.5\]"):
        run_sweep(tiny, dataset, vectors, LAYERS, (-3.0, 0.0), path, progress=False)
    with pytest.raises(SweepConfigError, match="shard"):
        sweep(tiny, setting, path, shard=(0, 2))
    other = {"first": vectors["first"].scaled(2.0), "second": vectors["second"]}
    with pytest.raises(SweepConfigError, match="vectors"):
        run_sweep(tiny, dataset, other, LAYERS, MULTIPLIERS, path, progress=False)


def _rows(path: Path) -> int:
    return max(0, path.read_bytes().count(b"\n") - 1) if path.exists() else 0


def _worker(out: Path, delay: float = 0.0) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(WORKER), str(out), str(delay)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=os.environ | {"OMP_NUM_THREADS": "1"},  # same threads in every run: bit-identical results
    )


@contextlib.contextmanager
def one_thread():
    """Compute as the worker does (OMP_NUM_THREADS=1): reductions then add up in the same order."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def test_sigkill_midway_then_resume_gives_the_uninterrupted_table(tmp_path):
    killed, clean = tmp_path / "killed.jsonl", tmp_path / "clean.jsonl"
    process = _worker(killed, delay=0.3)
    deadline = time.monotonic() + 120
    while _rows(killed) < 40:  # 12 rows per group: killed after a few of the 18 groups
        assert process.poll() is None, process.stderr.read().decode() if process.stderr else ""
        assert time.monotonic() < deadline, "the worker wrote no rows in time"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    written_before = _rows(killed)
    assert 40 <= written_before < 216

    sys.path.insert(0, str(WORKER.parent))
    try:
        import sweep_worker
    finally:
        sys.path.remove(str(WORKER.parent))
    model, dataset, vectors = sweep_worker.build()
    options = dict(batch_size=sweep_worker.BATCH_SIZE, progress=False)
    with one_thread(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the kill may have cut the last line: resume warns and drops it
        resumed = run_sweep(
            model, dataset, vectors, sweep_worker.LAYERS, sweep_worker.MULTIPLIERS, killed, **options
        )
        run_sweep(model, dataset, vectors, sweep_worker.LAYERS, sweep_worker.MULTIPLIERS, clean, **options)
    assert resumed.units_computed < resumed.units_total == 36  # finished units were not recomputed
    assert written_before + resumed.rows_written == 216
    table = load_results(killed)
    assert not table.duplicated(["vector", "layer", "multiplier", "item_index"]).any()
    pd.testing.assert_frame_equal(table, load_results(clean))
