"""Refusal sweep on the default model: CAA vectors from the shared refusal set (the plain mean difference
and the letter-balanced one), their paired effects on its 50 held-out A/B questions over layers x
multipliers, each beside the null band of random vectors of the same norm and split by matching letter;
and the prefix-reusing sweep's speed-up over recomputing every cell.

    python -m analysis.refusal_sweep --out results/refusal_sweep --shared-data ../shared/data

Writes ``vector.safetensors`` and ``vector_balanced.safetensors`` (+ their ``.json`` copies),
``results.jsonl`` (resumable: rerunning continues a killed run; the random controls are swept in it as
``random:<vector>:<seed>``), ``effects.csv`` (``caa_lens.sweep.effects_summary``: per vector x layer x
multiplier the paired effect against multiplier 0 with its 95% bootstrap interval and n, the null band,
and the per-letter split), ``letters.csv`` (``letter_split``: how much of each effect is a behaviour push
and how much a letter push, with intervals and null bands), ``summary.csv`` (mean p(matching) per cell),
``norms.csv`` (||v_L|| / mean ||resid_L||) and, with ``--timing``, ``timing.json``.
"""

import argparse
import inspect
import json
import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from analysis.pipeline import claim_results_dir
from caa_lens.data import ContrastiveDataset, load_behaviour_dataset
from caa_lens.evaluation import behaviour_probabilities
from caa_lens.extraction import extract_contrastive
from caa_lens.methods import caa_vector, mean_difference_vector
from caa_lens.models import load_model
from caa_lens.prompts import format_prompt
from caa_lens.stats import letter_balanced_mean, null_band, random_like
from caa_lens.steering import Injection, residual_norm
from caa_lens.sweep import effects_summary, format_effects, load_results, run_sweep, summarize, verdicts
from caa_lens.vectors import SteeringVector, load_vector, save_vector

# ``random_like`` is caa_lens.stats's (same norm at every layer, private seeded generator); it stays
# importable from here for notebook 02.
__all__ = ["build_vectors", "letter_split", "main", "random_like", "recompute_cells"]


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


def build_vectors(model, dataset: ContrastiveDataset, batch_size: int = 16) -> dict[str, SteeringVector]:
    """The plain CAA mean difference (``refusal``) and the letter-balanced one (``refusal_balanced``).

    The letter-balanced vector averages the mean differences of the A-matching and of the B-matching
    pairs, so the large "A minus B" direction of the answer token cancels whatever the letter counts
    (GUIDE section 6). Uses ``caa_vector(..., method="letter_balanced")`` where caa_lens has it, else
    ``caa_lens.stats.letter_balanced_mean`` on the same extraction's per-pair differences.
    """
    if "method" in inspect.signature(caa_vector).parameters:
        # Named explicitly: which of the two is caa_vector's default is not this script's business.
        plain = caa_vector(model, dataset, batch_size=batch_size, method="mean_difference")  # type: ignore[call-arg]
        balanced = caa_vector(model, dataset, batch_size=batch_size, method="letter_balanced")  # type: ignore[call-arg]
        return {"refusal": plain, "refusal_balanced": balanced}
    acts = extract_contrastive(model, dataset, batch_size=batch_size, keep_examples=True)
    assert acts.examples is not None
    plain = mean_difference_vector(model, acts)
    diffs = acts.examples.positive.float() - acts.examples.negative.float()
    directions = letter_balanced_mean(diffs, acts.examples.positive_labels).float()
    provenance = replace(plain.provenance, method="mean_difference; letter-balanced (letter_balanced_mean)")
    return {"refusal": plain, "refusal_balanced": SteeringVector(directions, plain.layers, provenance)}


def _interval(mean: float, low: float, high: float) -> str:
    return f"{mean:+.3f} [{low:+.3f}, {high:+.3f}]"


def _control_of(name: str) -> str | None:
    """``random:<vector>:<seed>`` -> ``<vector>`` (caa_lens.stats.with_null's naming rule), else None."""
    return name.split(":")[1] if name.startswith("random:") and name.count(":") >= 2 else None


def _split_cells(results: pd.DataFrame, n_resamples: int, seed: int) -> pd.DataFrame:
    labels = sorted(results["matching_label"].unique())
    if len(labels) != 2:
        raise ValueError(f"the letter split needs two matching labels, got {labels}")
    rows = []
    for (name, layer), group in results.groupby(["vector", "layer"], sort=True):
        base = group[group["multiplier"] == 0].set_index("item_index")["p_matching"]
        for multiplier, cell in group[group["multiplier"] != 0].groupby("multiplier", sort=True):
            change = cell["p_matching"].to_numpy() - base.loc[cell["item_index"]].to_numpy()
            first = (cell["matching_label"] == labels[0]).to_numpy()
            parts = change[first], change[~first]
            if not all(len(part) for part in parts):
                continue
            # Items of each letter resampled apart, with one private generator per cell (same seed).
            rng = np.random.default_rng(seed)
            means = [part[rng.integers(0, len(part), (n_resamples, len(part)))].mean(1) for part in parts]
            behaviour, letter = (means[0] + means[1]) / 2, (means[0] - means[1]) / 2
            point_b, point_l = (
                (parts[0].mean() + parts[1].mean()) / 2,
                (parts[0].mean() - parts[1].mean()) / 2,
            )
            row = {"vector": name, "layer": layer, "multiplier": multiplier}
            row |= {f"n_{labels[0]}": len(parts[0]), f"n_{labels[1]}": len(parts[1])}
            for key, point, draws in (("behaviour", point_b, behaviour), ("letter", point_l, letter)):
                low, high = np.quantile(draws, [0.025, 0.975])
                row |= {key: point, f"{key}_low": min(low, point), f"{key}_high": max(high, point)}
            # The effect is behaviour + (f_first - f_second) * letter: the letter's part of it.
            row["letter_part_of_effect"] = point_l * (len(parts[0]) - len(parts[1])) / len(change)
            rows.append(row)
    return pd.DataFrame(rows)


def letter_split(
    results: pd.DataFrame, n_resamples: int = 4000, seed: int = 0, coverage: float = 0.95
) -> pd.DataFrame:
    """How much of each cell's effect is a behaviour push and how much a letter push.

    With e_A, e_B the mean paired effects on A- and B-matching items (A the first label), a behaviour
    push moves both by ``behaviour = (e_A + e_B) / 2`` and a push toward letter A moves them by
    ``+letter`` and ``-letter``, ``letter = (e_A - e_B) / 2``; the overall effect is
    ``behaviour + (f_A - f_B) * letter`` (``letter_part_of_effect`` is the second term). Each has a
    95% bootstrap interval (items of each letter resampled apart) and a null band: the same numbers for
    the random controls ``random:<vector>:<seed>`` at the cell (``coverage`` quantile range), with
    ``behaviour_vs_null`` / ``letter_vs_null`` saying where the interval lies.
    """
    cells = _split_cells(results, n_resamples, seed)
    if cells.empty:
        return cells
    targets = cells["vector"].map(_control_of)
    tested, controls = cells[targets.isna()].copy(), cells[targets.notna()]
    for key in ("behaviour", "letter"):
        lows, highs, verdict = [], [], []
        for row in tested.itertuples():
            chosen = controls[
                (targets[controls.index] == row.vector)
                & (controls["layer"] == row.layer)
                & (controls["multiplier"] == row.multiplier)
            ]
            if chosen.empty:
                lows.append(np.nan)
                highs.append(np.nan)
                verdict.append("no controls")
                continue
            band = null_band(chosen[key].tolist(), coverage)
            low, high = getattr(row, f"{key}_low"), getattr(row, f"{key}_high")
            lows.append(band.low)
            highs.append(band.high)
            where = "above null" if low > band.high else "below null" if high < band.low else "inside null"
            verdict.append(where)
        tested[f"{key}_null_low"], tested[f"{key}_null_high"], tested[f"{key}_vs_null"] = lows, highs, verdict
    return tested.reset_index(drop=True)


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
        "--vector",
        type=Path,
        default=None,
        help="reuse a saved vector instead of extracting (then only it is swept, without the balanced one)",
    )
    parser.add_argument(
        "--controls",
        type=int,
        default=5,
        help="random vectors of the same per-layer norm swept beside each vector (the null band; 0: none)",
    )
    parser.add_argument("--control-seed", type=int, default=0, help="seed of the first random control")
    parser.add_argument("--bootstrap", type=int, default=4000, help="bootstrap resamples per cell")
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
        vectors = {"refusal": load_vector(args.vector, model)}
    else:
        started = time.perf_counter()
        vectors = build_vectors(model, generate_set)
        print(
            f"vectors from {len(generate_set)} pairs at all layers in {time.perf_counter() - started:.1f} s"
        )
        save_vector(vectors["refusal_balanced"], args.out / "vector_balanced.safetensors")
    vector = vectors["refusal"]
    save_vector(vector, args.out / "vector.safetensors")
    reference = [format_prompt(model.tokenizer, item.question, item.matching).token_ids for item in test][:16]
    with open(args.out / "norms.csv", "w") as handle:
        handle.write("layer,vector_norm,resid_norm,ratio\n")
        for layer in args.layers:
            resid = residual_norm(model, layer, reference)
            norm = float(vector.at(layer).norm())
            handle.write(f"{layer},{norm:.4f},{resid:.4f},{norm / resid:.5f}\n")

    started = time.perf_counter()
    run = run_sweep(
        model,
        test,
        vectors,
        args.layers,
        args.multipliers,
        args.out / "results.jsonl",
        batch_size=args.sweep_batch,
        controls=args.controls,
        control_seed=args.control_seed,
    )
    print(
        f"sweep: {run.units_computed}/{run.units_total} units computed in {time.perf_counter() - started:.1f} s "
        f"({len(run.config['vectors'])} vectors: {len(vectors)} tested, {args.controls} random controls each)"
    )
    results = load_results(run.path)
    summary = summarize(results)
    summary.to_csv(args.out / "summary.csv", index=False)
    effects = effects_summary(results, n_resamples=args.bootstrap)
    effects.to_csv(args.out / "effects.csv", index=False)
    letters = letter_split(results, n_resamples=args.bootstrap)
    letters.to_csv(args.out / "letters.csv", index=False)
    for name in vectors:
        table = summary[summary.vector == name].pivot(
            index="layer", columns="multiplier", values="p_matching"
        )
        print(f"\n{name} vector: mean p(refusal answer) by layer (rows) x multiplier (columns):")
        print(table.to_string(float_format=lambda x: f"{x:.3f}"))
    print("\nPaired effects against multiplier 0 (95% bootstrap intervals), null band, per-letter split:")
    print(format_effects(effects))
    print("\n".join(verdicts(effects)))
    if not letters.empty:
        print("\nBehaviour push vs letter push (toward the first letter), with intervals and null bands:")
        shown = letters.assign(
            multiplier=letters["multiplier"].map(lambda m: f"{m:+g}"),
            behaviour=[
                _interval(r.behaviour, r.behaviour_low, r.behaviour_high) for r in letters.itertuples()
            ],
            letter=[_interval(r.letter, r.letter_low, r.letter_high) for r in letters.itertuples()],
        )
        columns = [
            "vector",
            "layer",
            "multiplier",
            "behaviour",
            "behaviour_vs_null",
            "letter",
            "letter_vs_null",
        ]
        print(
            shown[[*columns, "letter_part_of_effect"]].to_string(
                index=False, float_format=lambda x: f"{x:+.4f}"
            )
        )

    if args.timing:
        report = timing(model, test, vector, args.layers, args.multipliers, args.out, args)
        (args.out / "timing.json").write_text(json.dumps(report, indent=1))
        print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
