"""Peak memory of mean-difference vector extraction at two sizes (default 100 and 1000 pairs).

One fresh subprocess (``--worker``) loads the model and builds each size's pairs by cycling a fixed
pool of CAA refusal items (default the 48 with the shortest questions, so every size has the same
prompt lengths and the same largest batch: the transient peak of the longest batch must not pass for
growth). It extracts from the pool once as a warm-up (the allocator's one-off growth to its working
set: lazy imports, thread arenas, heap pages for each batch shape), then extracts all-layer CAA
vectors with ``caa_lens.extraction.extract_contrastive`` at the small size, the large size and the
small size again, resetting the kernel's peak-RSS mark before each (``/proc/self/clear_refs``) and
reading it after (``VmHWM``). Peak RSS sees torch's CPU allocator, which Python's tracemalloc does not.

Growth = peak(large) - peak(first small). Both runs are in one process after the same warm-up: in
separate processes the resident memory before extracting differed by up to 190 MB from one process to
the next (what the allocator had handed back to the kernel), which swamped any growth. The second small
run shows whether anything was retained. Keeping every pair's activations would add
``n_layers * d_model * 2 sides * 4 bytes`` per pair, printed as ``sensitivity``.

``--model tiny`` (the quick mode's choice) uses the tiny random model: seconds instead of minutes,
but its activations are so small that only per-batch leaks would show.
"""

import json
import os
import re
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


def _extract_once(model, dataset, batch_size: int) -> dict:
    """One measured extraction: resident memory before, peak during, seconds."""
    import gc

    import torch

    from caa_lens.extraction import extract_contrastive

    gc.collect()
    before_kb = _status_kb("VmRSS")
    reset = _reset_peak()
    started = time.perf_counter()
    with torch.inference_mode():
        acts = extract_contrastive(model, dataset, layers=None, batch_size=batch_size, progress=False)
    seconds = time.perf_counter() - started
    peak_kb = _status_kb("VmHWM") if reset else None
    return {
        "pairs": len(dataset),
        "rss_before_mb": None if before_kb is None else round(before_kb / 1024, 1),
        "peak_rss_mb": None if peak_kb is None else round(peak_kb / 1024, 1),
        "peak_reset": reset,
        "seconds": round(seconds, 1),
        "n_layers": len(acts.layers),
        "d_model": int(acts.positive_sum.shape[-1]),
    }


def worker(sizes: list[int], pool: int, model_name: str, shared: Path, batch_size: int) -> None:
    """Runs in a fresh process: print one JSON list, one object per measured extraction."""
    from caa_lens.data import ContrastiveDataset

    if model_name == "tiny":
        from caa_lens.tiny import tiny_model

        model = tiny_model()
    else:
        model = common.load_bridge("cpu")
    # The shortest questions: this measures memory, not speed, and 1100 pairs of long prompts on the
    # default model took a third of the 15-minute budget.
    every = common.refusal_dataset(shared).items
    items = tuple(sorted(every, key=lambda item: len(item.question))[:pool])

    def cycled(n: int) -> ContrastiveDataset:
        return ContrastiveDataset(f"refusal-pool{pool}:{n}", tuple(items[i % len(items)] for i in range(n)))

    # The whole pool once first, unmeasured: the allocator's one-off growth to its working set.
    _extract_once(model, ContrastiveDataset(f"refusal-pool{pool}", items), batch_size)
    runs = [_extract_once(model, cycled(n), batch_size) for n in sizes]
    print(json.dumps(runs), flush=True)


def run_worker(sizes: list[int], args, shared: Path) -> list[dict]:
    command = [sys.executable, str(HERE / "bench_memory.py"), "--worker", ",".join(map(str, sizes))]
    command += ["--model", args.model, "--pool", str(args.pool)]
    command += ["--shared-data", str(shared), "--batch-size", str(args.batch_size)]
    if args.threads:
        command += ["--threads", str(args.threads)]
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"memory worker for {sizes} pairs failed: {done.stderr.strip()[-1500:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--sizes", default=None, help="two pair counts (default 100,1000; quick 50,500)")
    p.add_argument("--model", choices=("default", "tiny"), default=None, help="default; quick: tiny")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--worker", default=None, help=argparse_hidden())
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
        worker([int(n) for n in args.worker.split(",")], args.pool, args.model, shared, args.batch_size)
        return

    started, load_start = time.perf_counter(), common.cpu_snapshot()
    log(
        f"memory: extraction of {small}, {large}, then {small} pairs on the {args.model} model, one fresh process"
    )
    first, big, again = run_worker([small, large, small], args, shared)
    for run in (first, big, again):
        log(f"  {run}")
    if not (first["peak_reset"] and big["peak_reset"]):
        raise SystemExit(
            "the kernel's peak-RSS mark could not be reset (/proc/self/clear_refs): no measurement"
        )
    growth = round(big["peak_rss_mb"] - first["peak_rss_mb"], 1)
    retained = round(again["peak_rss_mb"] - first["peak_rss_mb"], 1)
    sensitivity = round(big["n_layers"] * big["d_model"] * 2 * 4 * (large - small) / 2**20, 1)
    threshold = 50.0
    common.emit(
        "memory_extraction",
        common.mode_of(args),
        {
            "pairs": [small, large],
            "model": "SmolLM2-135M-Instruct (default)" if args.model == "default" else "tiny random model",
            "layers": big["n_layers"],
            "batch_size": args.batch_size,
            "data": f"the {args.pool} CAA refusal generate items with the shortest questions, cycled",
        },
        {},
        runs={"small": first, "large": big, "small_again": again},
        growth_mb=growth,
        retained_mb=retained,
        measure="peak RSS (VmHWM after a reset), same process, after a warm-up",
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
