"""The main job's manifest and Markdown report, written from the saved results directory."""

import dataclasses
import json
import math
import sys
from pathlib import Path
from typing import Any

import pandas as pd

import caa_lens as cl
from analysis.figures import draw
from analysis.store import load_result
from caa_lens.vectors import package_versions


def _table(frame: pd.DataFrame, digits: int = 3) -> str:
    """A Markdown table without the optional ``tabulate`` dependency."""

    def cell(value: object) -> str:
        return (
            f"{value:.{digits}f}"
            if isinstance(value, float)
            else str(value).replace("|", "\\|").replace("\n", " ")
        )

    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "---|" * len(frame.columns)
    rows = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *rows])


def focus_table(summary: pd.DataFrame, layer: int) -> pd.DataFrame:
    """p(matching) per behaviour (rows) and multiplier (columns) at one layer."""
    rows = summary[summary["layer"] == layer]
    wide = rows.pivot_table(index="vector", columns="multiplier", values="p_matching")
    wide.columns = [f"m={m:+g}" for m in wide.columns]
    return wide.reset_index().rename(columns={"vector": "behaviour"})


def _findings(results: Path) -> list[str]:
    saved = {p.name.removesuffix(".json") for p in results.glob("*.json")}
    lines = []
    for name in sorted(n for n in saved if n.startswith("layer_similarity-")):
        sim = load_result(results, name)
        near, far = sim.mean_at([1]), sim.mean_at(range(10, 100))  # type: ignore[attr-defined]
        far_text = "no layers are 10+ apart" if math.isnan(far) else f"between layers 10+ apart {far:.2f}"
        lines.append(
            f"- {name.split('-', 1)[1]}: cosine between adjacent layers' vectors {near:.2f}, {far_text}."
        )
    for name in sorted(n for n in saved if n.startswith("separability-")):
        table = load_result(results, name).table  # type: ignore[attr-defined]
        best = table.loc[table["behaviour"].idxmax()] if "behaviour" in table else None
        if best is not None:
            lines.append(
                f"- {name.split('-', 1)[1]}: behaviour separability peaks at layer {int(best['layer'])} "
                f"({best['behaviour']:.2f} held-out probe accuracy)."
            )
    if "ratio_tradeoff" in saved:
        tradeoff = load_result(results, "ratio_tradeoff")
        lines.append(
            f"- most behaviour change per unit of perplexity increase at ||m v|| / ||resid|| = "
            f"{tradeoff.best_ratio:g} (layer {tradeoff.layer})."
        )  # type: ignore[attr-defined]
    if "reversal" in saved:
        rev: Any = load_result(results, "reversal")
        effect = rev.steered - rev.unsteered
        summary = (
            f"- reversal search ({rev.iterations} iterations, {rev.elapsed_s:.0f} s, stopped by {rev.stopped_by}): "
            f"p(matching) unsteered {rev.unsteered:.3f}, steered {rev.steered:.3f}"
        )
        if len(rev.best):
            top = rev.best.loc[rev.best.reversal.idxmax()]
            summary += (
                f"; the best insertion {top['text']!r} moved the steered model to {top['p_steered']:.3f} "
                f"(it undid {top['reversal_fraction']:.2f}x the steering effect; the unsteered model with it: "
                f"{top['p_unsteered']:.3f}; on held-out items it undid {top['heldout_reversal_fraction']:.2f}x)"
            )
        if abs(effect) < 0.02:
            # A reversal of a steering effect this small is within what any insertion does to the question.
            summary += (
                f". The steering effect here ({effect:+.3f}) is too small for a reversal to mean anything: "
                "steer harder or at another layer before reading this"
            )
        lines.append(summary + ".")
    return lines


def write_report(out: Path, config, identity, seconds: float, timings: dict[str, float]) -> Path:
    manifest = {
        "command": " ".join(["caa-lens", *sys.argv[1:]])
        if sys.argv and "caa-lens" in sys.argv[0]
        else "caa-lens demo",
        "model": identity.name,
        "model_config_hash": identity.config_hash,
        "config": json.loads(json.dumps(dataclasses.asdict(config), default=str)),
        "focus_layer": config.focus_layer,
        "datasets": {
            name: {
                "train": train,
                "train_hash": cl.resolve_dataset(train).content_hash,
                "test": test,
                "test_hash": cl.resolve_dataset(test).content_hash,
            }
            for name, train, test in config.datasets
        },
        "seeds": {"splits": 0, "sampling": 0, "reversal": 0, "bootstrap": 0},
        "versions": package_versions(),
        "seconds": seconds,
        "stage_seconds": timings,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    figures = draw(out)
    summary = pd.read_csv(out / "sweep_summary.csv")
    table = focus_table(summary, config.focus_layer)
    answer = json.loads((out / "answer.json").read_text())
    generations = pd.read_csv(out / "generations.csv")
    parts = [
        f"# caa_lens report: {identity.name}",
        f"Regenerate with `caa-lens demo --out {out}`; redraw figures with `caa-lens figures {out}`.",
        f"**Q:** {answer['question']}  \n**A:** {answer['answer']}",
        f"## Behaviour probability at layer {config.focus_layer}",
        _table(table),
        "## Findings",
        *_findings(out / "results"),
        "## Steered generations",
        _table(generations),
        "## Figures",
        *[f"![{p.stem}]({p.relative_to(out)})" for p in figures],
        "Token-level view (open in a browser, works offline): [token_view.html](token_view.html)",
    ]
    report = out / "report.md"
    report.write_text("\n\n".join(parts).replace(".\n\n- ", ".\n- ") + "\n")
    print("\nBehaviour probability p(matching) at layer", config.focus_layer)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    return report
