"""Refusal sweep on the default model: CAA vectors from the shared refusal set, behaviour probability
on its 50 held-out A/B questions over layers x multipliers, and the prefix-reusing sweep's speed-up
over recomputing every cell.

    python -m analysis.refusal_sweep --out results/refusal_sweep --shared-data ../shared/data

Writes ``vector.safetensors`` (+ ``vector.safetensors.json``), ``results.jsonl`` (resumable: rerunning
continues a killed run), ``summary.csv`` (mean p(matching) per layer x multiplier), ``norms.csv`` (||v_L|| / mean
||resid_L||) and, with ``--timing``, ``timing.json``.
"""

import argparse
import json
import os
import time
from pathlib import Path

import torch

from analysis.pipeline import claim_results_dir
from caa_lens.data import load_behaviour_dataset
from caa_lens.evaluation import behaviour_probabilities
from caa_lens.methods import caa_vector
from caa_lens.models import load_model
from caa_lens.prompts import format_prompt
from caa_lens.steering import Injection, residual_norm
from caa_lens.sweep import load_results, run_sweep, summarize
from caa_lens.vectors import SteeringVector, load_vector, save_vector


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",")]


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",")]


def recompute_cells(model, dataset, vector, cells, batch_size):
    """The baseline: every (layer, multiplier) cell its own full forward passes, steered from steer_start."""
    rows = {}
    for layer, multiplier in cells:
        scores = behaviour_probabilities(
            model, dataset, Injection(vector, layer, multiplier), batch_size=batch_size, progress=False
        )
        for item in scores.items:
            rows[(layer, multiplier, item.index)] = item.p_matching
    return rows


def random_like(vector: SteeringVector, seed: int = 0) -> SteeringVector:
    """A seeded random direction per layer with the vector's norm at that layer (a control)."""
    noise = torch.randn(vector.directions.shape, generator=torch.Generator().manual_seed(seed))
    scale = vector.norms() / noise.flatten(1).norm(dim=-1)
    return SteeringVector(noise * scale[:, None], vector.layers, vector.provenance)


def timing(model, test, vector, layers, multipliers, out: Path, args) -> dict:
    """Wall time of the same cells three ways, and the largest difference between their results."""
    cells = [(layer, m) for layer in layers for m in multipliers]
    print(f"timing {len(cells)} cells; load average {os.getloadavg()}", flush=True)
    path = out / "timing_sweep.jsonl"
    path.unlink(missing_ok=True)
    started = time.perf_counter()
    run_sweep(
        model,
        test,
        {"refusal": vector},
        layers,
        multipliers,
        path,
        batch_size=args.sweep_batch,
        progress=False,
    )
    sweep_seconds = time.perf_counter() - started
    swept = load_results(path).set_index(["layer", "multiplier", "item_index"]).p_matching

    started = time.perf_counter()
    batched = recompute_cells(model, test, vector, cells, batch_size=16)
    batched_seconds = time.perf_counter() - started

    # Batch-1 recompute (the CAA reference's loop) on a subset of cells, extrapolated per cell.
    subset = cells[:: max(1, len(cells) // args.naive_cells)][: args.naive_cells]
    started = time.perf_counter()
    naive = recompute_cells(model, test, vector, subset, batch_size=1)
    naive_per_cell = (time.perf_counter() - started) / len(subset)

    diff_batched = max(abs(swept[key] - value) for key, value in batched.items())
    diff_naive = max(abs(swept[key] - value) for key, value in naive.items())
    return {
        "load_average_at_end": os.getloadavg(),
        "cells": len(cells),
        "items": len(test),
        "threads": torch.get_num_threads(),
        "sweep_seconds": sweep_seconds,
        "recompute_batched_seconds": batched_seconds,
        "recompute_batch1_seconds_per_cell": naive_per_cell,
        "recompute_batch1_cells_timed": len(subset),
        "recompute_batch1_seconds_extrapolated": naive_per_cell * len(cells),
        "speedup_vs_batched_recompute": batched_seconds / sweep_seconds,
        "speedup_vs_batch1_recompute": naive_per_cell * len(cells) / sweep_seconds,
        "max_abs_diff_vs_batched_recompute": diff_batched,
        "max_abs_diff_vs_batch1_recompute": diff_naive,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("results/refusal_sweep"))
    parser.add_argument("--shared-data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--pairs", type=int, default=200, help="contrastive pairs for the vector")
    parser.add_argument("--layers", type=_ints, default=_ints("4,8,10,12,14,16,18,20,24"))
    parser.add_argument("--multipliers", type=_floats, default=_floats("-8,-4,-2,0,2,4,8"))
    parser.add_argument(
        "--balance",
        action="store_true",
        help="take pairs/2 A-matching and pairs/2 B-matching pairs, so the letter cancels exactly",
    )
    parser.add_argument(
        "--vector", type=Path, default=None, help="reuse a saved vector instead of extracting"
    )
    parser.add_argument(
        "--random-control",
        action="store_true",
        help="also sweep a seeded random vector with the same norm at each layer (a control direction)",
    )
    parser.add_argument("--sweep-batch", type=int, default=8, help="questions per prefix pass")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--timing", action="store_true", help="also time the sweep against recompute")
    parser.add_argument("--naive-cells", type=int, default=6, help="cells timed with batch-1 recompute")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    claim_results_dir(args.out)  # never writes into a directory of someone else's files
    caa = args.shared_data / "caa"
    model = load_model(args.model)
    generate_set = load_behaviour_dataset(caa / "generate" / "refusal" / "generate_dataset.json")
    if args.balance:
        # An unequal letter count leaves (n_B - n_A) / n of the large A-vs-B difference of the read token
        # in the mean difference: 106 B vs 94 A in the first 200 refusal pairs.
        by_letter = {
            letter: [i for i, item in enumerate(generate_set) if item.matching == f"({letter})"]
            for letter in "AB"
        }
        half = args.pairs // 2
        chosen = sorted(by_letter["A"][:half] + by_letter["B"][:half])
        generate_set = generate_set.select(chosen, f":balanced{2 * half}")
    else:
        generate_set = generate_set.select(range(min(args.pairs, len(generate_set))), f":first{args.pairs}")
    test = load_behaviour_dataset(caa / "test" / "refusal" / "test_dataset_ab.json")

    if args.vector is not None:
        vector = load_vector(args.vector, model)
    else:
        started = time.perf_counter()
        vector = caa_vector(model, generate_set, batch_size=16)
        print(f"vector from {len(generate_set)} pairs at all layers in {time.perf_counter() - started:.1f} s")
    save_vector(vector, args.out / "vector.safetensors")
    reference = [format_prompt(model.tokenizer, item.question, item.matching).token_ids for item in test][:16]
    with open(args.out / "norms.csv", "w") as handle:
        handle.write("layer,vector_norm,resid_norm,ratio\n")
        for layer in args.layers:
            resid = residual_norm(model, layer, reference)
            norm = float(vector.at(layer).norm())
            handle.write(f"{layer},{norm:.4f},{resid:.4f},{norm / resid:.5f}\n")

    vectors = {"refusal": vector}
    if args.random_control:
        vectors["random"] = random_like(vector)
    started = time.perf_counter()
    run = run_sweep(
        model,
        test,
        vectors,
        args.layers,
        args.multipliers,
        args.out / "results.jsonl",
        batch_size=args.sweep_batch,
    )
    print(
        f"sweep: {run.units_computed}/{run.units_total} units computed in {time.perf_counter() - started:.1f} s"
    )
    summary = summarize(load_results(run.path))
    summary.to_csv(args.out / "summary.csv", index=False)
    for name in vectors:
        table = summary[summary.vector == name].pivot(
            index="layer", columns="multiplier", values="p_matching"
        )
        print(f"{name} vector: mean p(refusal answer) by layer (rows) x multiplier (columns):")
        print(table.to_string(float_format=lambda x: f"{x:.3f}"))

    if args.timing:
        report = timing(model, test, vector, args.layers, args.multipliers, args.out, args)
        (args.out / "timing.json").write_text(json.dumps(report, indent=1))
        print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
