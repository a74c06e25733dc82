"""Peak memory of mean-difference vector extraction at two sizes (default 100 and 1000 pairs).

Each size runs in a fresh subprocess (``--worker N``), which loads the model and builds N pairs by
cycling a fixed pool of CAA refusal items (default the first 48, so both sizes have the same prompt
lengths and the same largest batch: the transient peak of the longest batch must not pass for
growth). It extracts from the pool once as a warm-up (the allocator's one-off growth to its working
set: lazy imports, thread arenas, heap pages for each batch shape), resets
the kernel's peak-RSS mark (``/proc/self/clear_refs``, so neither model loading nor the warm-up can
hide what extraction does; ``ru_maxrss`` follows it), extracts all-layer CAA vectors with
``caa_lens.extraction.extract_contrastive`` and reports the peak resident memory above the resident
memory just before extracting. Peak RSS sees torch's CPU allocator, which
Python's tracemalloc does not. Growth = peak(large) - peak(small); keeping every pair's activations
would add ``n_layers * d_model * 2 sides * 4 bytes`` per pair, printed as ``sensitivity``.

``--model tiny`` (the quick mode's choice) uses the tiny random model: seconds instead of minutes,
but its activations are so small that only per-batch leaks would show.
"""

import json
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

import common
from common import log

HERE = Path(__file__).resolve().parent


def _status_kb(key: str) -> int | None:
    try:
        match = re.search(rf"^{key}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) if match else None


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def worker(n_pairs: int, pool: int, model_name: str, shared: Path, batch_size: int) -> None:
    """Runs in a fresh process: print one JSON object with the memory figures of one extraction."""
    import gc

    import torch

    from caa_lens.extraction import extract_contrastive

    if model_name == "tiny":
        from caa_lens.tiny import tiny_model

        model = tiny_model()
    else:
        model = common.load_bridge("cpu")
    from caa_lens.data import ContrastiveDataset

    items = common.refusal_dataset(shared).items[:pool]
    dataset = ContrastiveDataset(
        f"refusal-pool{pool}:{n_pairs}", tuple(items[i % len(items)] for i in range(n_pairs))
    )
    # The whole pool once first: the allocator's one-off growth to its working set (lazy imports,
    # thread arenas, heap pages for each batch shape) is then not counted as growth with pairs.
    warmup = ContrastiveDataset(f"refusal-pool{pool}", tuple(items))
    with torch.inference_mode():
        extract_contrastive(model, warmup, layers=None, batch_size=batch_size, progress=False)
    gc.collect()
    before_kb = _status_kb("VmRSS")
    reset = _reset_peak()
    started = time.perf_counter()
    with torch.inference_mode():
        acts = extract_contrastive(model, dataset, layers=None, batch_size=batch_size, progress=False)
    seconds = time.perf_counter() - started
    peak_kb = _status_kb("VmHWM")
    maxrss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {
                "pairs": n_pairs,
                "rss_before_extraction_mb": None if before_kb is None else round(before_kb / 1024, 1),
                "peak_rss_mb": round((peak_kb or maxrss_kb) / 1024, 1),
                "ru_maxrss_mb": round(maxrss_kb / 1024, 1),
                "peak_reset": reset,
                "extraction_peak_above_start_mb": None
                if before_kb is None or peak_kb is None
                else round((peak_kb - before_kb) / 1024, 1),
                "seconds": round(seconds, 1),
                "n_layers": len(acts.layers),
                "d_model": int(acts.positive_sum.shape[-1]),
            }
        ),
        flush=True,
    )


def run_worker(n_pairs: int, args, shared: Path) -> dict:
    command = [sys.executable, str(HERE / "bench_memory.py"), "--worker", str(n_pairs), "--model", args.model]
    command += ["--pool", str(args.pool)]
    command += ["--shared-data", str(shared), "--batch-size", str(args.batch_size)]
    if args.threads:
        command += ["--threads", str(args.threads)]
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"memory worker for {n_pairs} pairs failed: {done.stderr.strip()[-1500:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--sizes", default=None, help="two pair counts (default 100,1000; quick 50,500)")
    p.add_argument("--model", choices=("default", "tiny"), default=None, help="default; quick: tiny")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--worker", type=int, default=None, help=argparse_hidden())
    p.add_argument("--pool", type=int, default=None, help="refusal items cycled (default 48)")
    args = p.parse_args()
    common.setup(args)
    shared = common.shared_data_dir(args.shared_data)
    if args.model is None:
        args.model = "tiny" if args.quick else "default"
    small, large = (int(x) for x in (args.sizes or ("50,500" if args.quick else "100,1000")).split(","))
    if args.pool is None:
        args.pool = min(small, 48)
    if args.worker is not None:
        worker(args.worker, args.pool, args.model, shared, args.batch_size)
        return

    started, load_start = time.perf_counter(), common.cpu_snapshot()
    log(f"memory: extraction of {small} and {large} pairs on the {args.model} model, fresh processes")
    runs = {}
    for n in (small, large):
        runs[n] = run_worker(n, args, shared)
        log(f"  {n} pairs: {runs[n]}")
    a, b = runs[small], runs[large]
    key = (
        "extraction_peak_above_start_mb" if a["extraction_peak_above_start_mb"] is not None else "peak_rss_mb"
    )
    growth = round(b[key] - a[key], 1)
    sensitivity = round(b["n_layers"] * b["d_model"] * 2 * 4 * (large - small) / 2**20, 1)
    threshold = 50.0
    common.emit(
        "memory_extraction",
        common.mode_of(args),
        {
            "pairs": [small, large],
            "model": "SmolLM2-135M-Instruct (default)" if args.model == "default" else "tiny random model",
            "layers": b["n_layers"],
            "batch_size": args.batch_size,
            "data": f"the first {args.pool} CAA refusal generate items, cycled",
        },
        {},
        runs={str(n): r for n, r in runs.items()},
        growth_mb=growth,
        measure=key,
        sensitivity_mb=sensitivity,
        sensitivity_note=(
            f"keeping every pair's activations would add {sensitivity} MB between {small} and {large} pairs"
        ),
        targets=[
            common.target(
                f"memory growth from {small} to {large} pairs under {threshold:g} MB (mean-difference vectors)",
                growth,
                threshold,
                at_least=False,
                strict=True,
            )
        ],
        device="cpu",
        load_start=load_start,
        started=started,
    )


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
