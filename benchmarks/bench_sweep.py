"""A/B behaviour sweep (layers x multipliers x test questions): caa_lens's sweep against recompute-per-cell.

- ``caa_lens_sweep``: ``caa_lens.sweep.run_sweep`` (public API, writing its resumable JSONL table to a
  fresh temporary file each round, then ``load_results``): each question's unsteered prefix runs
  once into a KV cache; per layer, only the few suffix tokens run, every multiplier a batch row.
- ``recompute_per_cell``: the way the peers do it: every (layer, multiplier) cell is its own steered
  full forward pass over all the questions (``caa_lens.evaluation.behaviour_probabilities`` with one
  ``Injection``, batched). Every cell costs the same (same questions, same tokens), so in the full
  run it is timed on a few cells spread over the grid and scaled by cells / cells timed; the record
  says so. The results are compared on every cell it computed.

The CAA refusal vector is extracted once, before timing, from the refusal generate set.
"""

import tempfile
import time
from pathlib import Path

import common
import torch
from common import Contender, log


def caa_lens_sweep(model, test, vector, layers, multipliers, batch_size: int, directory: Path) -> dict:
    from caa_lens.sweep import run_sweep
    from caa_lens.sweep_io import load_results

    path = directory / "sweep.jsonl"
    path.unlink(missing_ok=True)  # a fresh sweep each round, never a resumed one
    run_sweep(
        model, test, {"refusal": vector}, layers, multipliers, path, batch_size=batch_size, progress=False
    )
    frame = load_results(path)
    return {
        (int(r.layer), float(r.multiplier), int(r.item_index)): float(r.p_matching)
        for r in frame.itertuples(index=False)
    }


def recompute_per_cell(model, test, vector, cells, batch_size: int) -> dict:
    from caa_lens.evaluation import behaviour_probabilities
    from caa_lens.steering import Injection

    rows = {}
    for layer, multiplier in cells:
        scores = behaviour_probabilities(
            model, test, Injection(vector, layer, multiplier), batch_size=batch_size, progress=False
        )
        for item in scores.items:
            rows[(layer, float(multiplier), item.index)] = item.p_matching
    return rows


def spread_cells(layers, multipliers, k: int) -> list[tuple[int, float]]:
    """``k`` cells spread over the grid (a diagonal: each layer once, the multipliers cycling)."""
    diagonal = [(layer, multipliers[i % len(multipliers)]) for i, layer in enumerate(layers)]
    rest = [(layer, m) for layer in layers for m in multipliers if (layer, m) not in diagonal]
    cells = diagonal + rest
    if k >= len(cells):
        return cells
    if k <= len(diagonal):
        return [diagonal[int(i * len(diagonal) / k)] for i in range(k)]
    return cells[:k]


def main() -> None:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument(
        "--layers", default=None, help="comma-separated (default 8,10,12,14,16,18; quick 10,14,18)"
    )
    p.add_argument("--multipliers", default=None, help="comma-separated (default -8,-4,-2,0,2,4,8)")
    p.add_argument("--questions", type=int, default=None, help="test questions (default 50; quick 8)")
    p.add_argument("--sweep-batch", type=int, default=8, help="questions per prefix pass of run_sweep")
    p.add_argument("--recompute-batch", type=int, default=16, help="questions per recompute forward pass")
    p.add_argument(
        "--recompute-cells",
        type=int,
        default=None,
        help="cells the recompute baseline is timed on, then scaled (default 3; quick 2)",
    )
    p.add_argument(
        "--vector-pairs",
        type=int,
        default=None,
        help="refusal pairs for the steering vector (default 32; quick 16)",
    )
    args = p.parse_args()
    common.setup(args)
    started, load_start = time.perf_counter(), common.cpu_snapshot()
    quick = args.quick
    vector_pairs = args.vector_pairs or (16 if quick else 32)
    layers = [int(x) for x in (args.layers or ("10,14,18" if quick else "8,10,12,14,16,18")).split(",")]
    multipliers = [float(x) for x in (args.multipliers or "-8,-4,-2,0,2,4,8").split(",")]
    n_questions = args.questions or (8 if quick else 50)
    repeats = args.repeats or 2
    all_cells = [(layer, m) for layer in layers for m in multipliers]
    k = min(args.recompute_cells or (2 if quick else 3), len(all_cells))
    timed_cells = all_cells if k == len(all_cells) else spread_cells(layers, multipliers, k)
    scale = len(all_cells) / len(timed_cells)

    shared = common.shared_data_dir(args.shared_data)
    from caa_lens.data import load_behaviour_dataset
    from caa_lens.methods import caa_vector

    test = load_behaviour_dataset(shared / common.REFUSAL_TEST_AB, name="refusal-test")
    test = test.select(range(min(n_questions, len(test))), f":first{n_questions}")
    log("loading the default model")
    model = common.load_bridge(args.device)
    log(f"extracting the refusal vector from {vector_pairs} pairs at layers {layers}")
    vector = caa_vector(model, common.refusal_dataset(shared, vector_pairs), layers=layers, progress=False)
    warm_test = test.select(range(min(2, len(test))), ":warmup")

    with tempfile.TemporaryDirectory(prefix="caa-bench-sweep-") as tmp:
        directory = Path(tmp)
        note = ""
        if scale != 1.0:
            note = (
                f"timed on {len(timed_cells)} of {len(all_cells)} cells {timed_cells} and scaled x{scale:g}: "
                "each cell is the same full forward over the same questions"
            )
        contenders = [
            Contender(
                "caa_lens_sweep",
                lambda: caa_lens_sweep(model, test, vector, layers, multipliers, args.sweep_batch, directory),
                lambda: caa_lens_sweep(
                    model, warm_test, vector, layers[:1], multipliers, args.sweep_batch, directory
                ),
            ),
            Contender(
                "recompute_per_cell",
                lambda: recompute_per_cell(model, test, vector, timed_cells, args.recompute_batch),
                lambda: recompute_per_cell(model, warm_test, vector, timed_cells[:1], args.recompute_batch),
                repeats=common.peer_repeats(args),
                scale=scale,
                note=note,
            ),
        ]
        log(f"sweep: {len(layers)} layers x {len(multipliers)} multipliers x {len(test)} questions")
        measured = common.measure(contenders, repeats)

    swept, recomputed = measured["caa_lens_sweep"].result, measured["recompute_per_cell"].result
    difference = None
    if swept is not None and recomputed is not None:
        difference = max(abs(swept[key] - value) for key, value in recomputed.items())
    speedup = common.ratio(measured, "recompute_per_cell", "caa_lens_sweep")
    common.emit(
        "sweep_ab",
        common.mode_of(args),
        {
            "layers": layers,
            "multipliers": multipliers,
            "questions": len(test),
            "cells": len(all_cells),
            "recompute_cells_timed": len(timed_cells),
            "sweep_batch": args.sweep_batch,
            "recompute_batch": args.recompute_batch,
            "repeats": repeats,
            "threads": torch.get_num_threads(),
        },
        measured,
        ratios={"recompute_per_cell/caa_lens_sweep": speedup},
        targets=[
            common.target("caa_lens sweep at least 5x faster than recompute-per-cell", speedup, 5.0),
            common.target(
                "identical results (max |p_matching difference| on the recomputed cells)",
                difference,
                1e-5,
                at_least=False,
            ),
        ],
        checks={
            "max_abs_p_matching_diff": None if difference is None else float(f"{difference:.3g}"),
            "cells_compared": len(timed_cells),
            "rows_compared": None if recomputed is None else len(recomputed),
        },
        device=args.device,
        load_start=load_start,
        started=started,
    )


if __name__ == "__main__":
    main()
