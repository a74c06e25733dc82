"""The refusal study's A/B sweep (part of ``caa-lens refusal``): CAA vectors from the training pairs (the
plain mean difference and the letter-balanced one), their paired effects on the held-out A/B questions
over layers x multipliers, each beside the null band of random vectors of the same norm and split by
matching letter; and (``timing``) the prefix-reusing sweep's speed-up over recomputing every cell.

Writes under ``ab_sweep/``: ``vector.safetensors`` and ``vector_balanced.safetensors`` (+ their ``.json``
copies), ``results.jsonl`` (resumable; the random controls are swept in it as
``random:<vector>:<seed>``), ``effects.csv`` (``caa_lens.sweep`` effects: per vector x layer x multiplier
the paired effect against multiplier 0 with its 95% bootstrap interval and n, the null band, and the
per-letter split), ``letters.csv`` (``letter_split``: how much of each effect is a behaviour push and how
much a letter push, with intervals and null bands), ``summary.csv`` (mean p(matching) per cell),
``norms.csv`` (||v_L|| / mean ||resid_L||) and, with timing, ``timing.json``.
"""

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import torch

from analysis.letters import letter_split
from caa_lens.data import ContrastiveDataset
from caa_lens.evaluation import behaviour_probabilities
from caa_lens.extraction import extract_contrastive
from caa_lens.methods import contrastive_vector
from caa_lens.prompts import format_prompt
from caa_lens.residuals import residual_norm
from caa_lens.steering import Injection
from caa_lens.sweep import run_sweep
from caa_lens.sweep_effects import effects_summary, format_effects, summarize, verdicts
from caa_lens.sweep_io import load_results
from caa_lens.vector_files import save_vector
from caa_lens.vectors import SteeringVector

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

__all__ = [
    "AbSweepConfig",
    "ab_sweep",
    "ab_vectors",
    "build_vectors",
    "letter_split",
    "recompute_cells",
    "timing",
]


def recompute_cells(model: "TransformerBridge", dataset, vector, cells, batch_size):
    """The baseline: every (layer, multiplier) cell its own full forward passes, steered from steer_start."""
    rows = {}
    for layer, multiplier in cells:
        scores = behaviour_probabilities(
            model, dataset, Injection(vector, layer, multiplier), batch_size=batch_size, progress=False
        )
        for item in scores.items:
            rows[(layer, multiplier, item.index)] = item.p_matching
    return rows


def build_vectors(
    model: "TransformerBridge",
    dataset: ContrastiveDataset,
    checkpoint: Path | None = None,
    batch_size: int = 16,
) -> dict[str, SteeringVector]:
    """The plain CAA mean difference (``refusal``) and the letter-balanced one (``refusal_balanced``), from
    one extraction (``checkpoint``: caa_lens's resumable extraction file).

    The letter-balanced vector averages the mean differences of the A-matching and of the B-matching
    pairs, so the large "A minus B" direction of the answer token cancels whatever the letter counts
    (GUIDE section 6). Both equal ``caa_vector(model, dataset, batch_size=batch_size, method=...)``.
    """
    acts = extract_contrastive(model, dataset, batch_size=batch_size, checkpoint=checkpoint)
    return {
        "refusal": contrastive_vector(model, acts, "mean_difference"),
        "refusal_balanced": contrastive_vector(model, acts, "letter_balanced"),
    }


def _interval(mean: float, low: float, high: float) -> str:
    return f"{mean:+.3f} [{low:+.3f}, {high:+.3f}]"


def timing(
    model: "TransformerBridge",
    test: ContrastiveDataset,
    vector: SteeringVector,
    layers: Sequence[int],
    multipliers: Sequence[float],
    out: Path,
    sweep_batch: int = 8,
    naive_cells: int = 6,
) -> dict:
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
        batch_size=sweep_batch,
        progress=False,
    )
    sweep_seconds = time.perf_counter() - started
    swept = load_results(path).set_index(["layer", "multiplier", "item_index"]).p_matching

    started = time.perf_counter()
    batched = recompute_cells(model, test, vector, cells, batch_size=16)
    batched_seconds = time.perf_counter() - started

    # Batch-1 recompute (the CAA reference's loop) on a subset of cells, extrapolated per cell.
    subset = cells[:: max(1, len(cells) // naive_cells)][:naive_cells]
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


@dataclass(frozen=True)
class AbSweepConfig:
    """The A/B sweep's settings (``caa-lens refusal``'s ``--sweep-*`` options)."""

    layers: tuple[int, ...]
    multipliers: tuple[float, ...] = (-8.0, -4.0, -2.0, 0.0, 2.0, 4.0, 8.0)
    controls: int = 5  # random vectors of the same per-layer norm swept beside each vector
    control_seed: int = 0
    bootstrap: int = 4000  # resamples per cell
    batch_size: int = 8  # questions per prefix pass
    timing: bool = False  # also time the sweep against recomputing every cell
    naive_cells: int = 6  # cells timed with batch-1 recompute


def ab_vectors(
    model: "TransformerBridge",
    pairs: ContrastiveDataset,
    test: ContrastiveDataset,
    config: AbSweepConfig,
    out: Path,
) -> None:
    """Stage ``ab_vectors``: both vectors saved, and their norms against the residual stream's."""
    started = time.perf_counter()
    vectors = build_vectors(model, pairs, out / "stages" / "extract-ab.partial")
    print(f"vectors from {len(pairs)} pairs at all layers in {time.perf_counter() - started:.1f} s")
    folder = out / "ab_sweep"
    save_vector(vectors["refusal_balanced"], folder / "vector_balanced.safetensors")
    vector = vectors["refusal"]
    save_vector(vector, folder / "vector.safetensors")
    reference = [format_prompt(model.tokenizer, item.question, item.matching).token_ids for item in test][:16]
    with open(folder / "norms.csv", "w") as handle:
        handle.write("layer,vector_norm,resid_norm,ratio\n")
        for layer in config.layers:
            resid = residual_norm(model, layer, reference)
            norm = float(vector.at(layer).norm())
            handle.write(f"{layer},{norm:.4f},{resid:.4f},{norm / resid:.5f}\n")


def ab_sweep(model: "TransformerBridge", test: ContrastiveDataset, config: AbSweepConfig, out: Path) -> None:
    """Stage ``ab_sweep``: the sweep of both saved vectors with random controls, and its tables."""
    from caa_lens.vector_files import load_vector

    folder = out / "ab_sweep"
    vectors = {
        "refusal": load_vector(folder / "vector.safetensors", model),
        "refusal_balanced": load_vector(folder / "vector_balanced.safetensors", model),
    }
    started = time.perf_counter()
    run = run_sweep(
        model,
        test,
        vectors,
        config.layers,
        config.multipliers,
        folder / "results.jsonl",
        batch_size=config.batch_size,
        controls=config.controls,
        control_seed=config.control_seed,
    )
    print(
        f"sweep: {run.units_computed}/{run.units_total} units computed in {time.perf_counter() - started:.1f} s "
        f"({len(run.config['vectors'])} vectors: {len(vectors)} tested, {config.controls} random controls each)"
    )
    results = load_results(run.path)
    summary = summarize(results)
    summary.to_csv(folder / "summary.csv", index=False)
    effects = effects_summary(results, n_resamples=config.bootstrap)
    effects.to_csv(folder / "effects.csv", index=False)
    letters = letter_split(results, n_resamples=config.bootstrap)
    letters.to_csv(folder / "letters.csv", index=False)
    _print_tables(vectors, summary, effects, letters)
    if config.timing:
        report = timing(
            model, test, vectors["refusal"], config.layers, config.multipliers, folder, config.batch_size,
            config.naive_cells,
        )  # fmt: skip
        (folder / "timing.json").write_text(json.dumps(report, indent=1))
        print(json.dumps(report, indent=1))


def _print_tables(vectors, summary: pd.DataFrame, effects: pd.DataFrame, letters: pd.DataFrame) -> None:
    for name in vectors:
        table = summary[summary.vector == name].pivot(
            index="layer", columns="multiplier", values="p_matching"
        )
        print(f"\n{name} vector: mean p(refusal answer) by layer (rows) x multiplier (columns):")
        print(table.to_string(float_format=lambda x: f"{x:.3f}"))
    print("\nPaired effects against multiplier 0 (95% bootstrap intervals), null band, per-letter split:")
    print(format_effects(effects))
    print("\n".join(verdicts(effects)))
    if letters.empty:
        return
    print("\nBehaviour push vs letter push (toward the first letter), with intervals and null bands:")
    shown = letters.assign(
        multiplier=letters["multiplier"].map(lambda m: f"{m:+g}"),
        behaviour=[_interval(r.behaviour, r.behaviour_low, r.behaviour_high) for r in letters.itertuples()],
        letter=[_interval(r.letter, r.letter_low, r.letter_high) for r in letters.itertuples()],
    )
    columns = ["vector", "layer", "multiplier", "behaviour", "behaviour_vs_null", "letter", "letter_vs_null"]
    print(
        shown[[*columns, "letter_part_of_effect"]].to_string(index=False, float_format=lambda x: f"{x:+.4f}")
    )
