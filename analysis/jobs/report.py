"""The main job's manifest and Markdown report, written from the saved results directory.

The manifest is ``caa_lens.jobs``'s one format; the main job adds its focus layer and selection record.
"""

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from analysis.plots import draw
from analysis.store import load_result
from caa_lens.jobs import build_manifest, dataset_hashes, invoked_command, write_manifest

__all__ = ["behaviour_headline", "effects_headline", "write_report"]


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


def _interval(effect: float, low: float, high: float) -> str:
    return f"{effect:+.3f} [{low:+.3f}, {high:+.3f}]"


def _intervals(table: pd.DataFrame, column: str, sign: str = "+") -> list[str]:
    """``value [low, high]`` per row, from the columns COLUMN, COLUMN_low and COLUMN_high."""
    columns = (table[column], table[f"{column}_low"], table[f"{column}_high"])
    return [f"{v:{sign}.3f} [{lo:{sign}.3f}, {hi:{sign}.3f}]" for v, lo, hi in zip(*columns, strict=True)]


def _null_bands(table: pd.DataFrame, sign: str = "+") -> list[str]:
    """The random-vector null band per row, from the columns null_low and null_high."""
    return [
        f"[{lo:{sign}.3f}, {hi:{sign}.3f}]"
        for lo, hi in zip(table["null_low"], table["null_high"], strict=True)
    ]


def effects_headline(effects: pd.DataFrame, layer: int) -> tuple[pd.DataFrame, list[str]]:
    """The report split's paired effects at ``layer``: a table, and one plain sentence per behaviour.

    Each sentence states the effect at the largest multiplier with its interval and n, the null band
    beside it, whether the two are distinguishable, and what the per-letter split says.
    """
    rows = effects[(effects["layer"] == layer) & (effects["multiplier"] != 0)]
    has_null = "vs_null" in rows
    table = pd.DataFrame(
        {
            "behaviour": rows["vector"],
            "m": rows["multiplier"].map(lambda m: f"{m:+g}"),
            "n": rows["n_items"],
            "p(matching)": rows["p_matching"],
            "effect [95% CI]": _intervals(rows, "effect"),
            "null band": _null_bands(rows) if has_null else "not measured",
            "vs null": rows["vs_null"] if has_null else "not measured",
            "letters": rows["letter_pattern"],
        }
    )
    sentences = []
    for name, cells in rows.groupby("vector", sort=True):
        # The strongest push in the steering direction (the most negative one if none is positive).
        top = cells.loc[
            cells["multiplier"].idxmax() if (cells["multiplier"] > 0).any() else cells["multiplier"].idxmin()
        ]
        text = (
            f"- {name}, m={top['multiplier']:+g} at layer {layer}: effect on p(matching) "
            f"{_interval(top['effect'], top['effect_low'], top['effect_high'])} over {int(top['n_items'])} "
            f"held-out items"
        )
        if has_null:
            verdict = top["vs_null"]
            band = f"[{top['null_low']:+.3f}, {top['null_high']:+.3f}]"
            text += f"; random vectors of the same norm give {band}: " + (
                "the effect is **inside the null**, indistinguishable from a random push of that size"
                if verdict == "inside null"
                else f"the effect is {verdict}"
            )
        if top["letter_pattern"] == "opposite directions":
            text += "; A- and B-matching items move in opposite directions: a letter push, not a behaviour"
        elif top["letter_pattern"] == "same direction":
            text += "; A- and B-matching items move the same way (a behaviour push)"
        sentences.append(text + ".")
    return table, sentences


def behaviour_headline(headline: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """The open-ended headline (``analysis.behaviour_study.headline_table``): a table, one sentence each."""
    table = pd.DataFrame(
        {
            "behaviour": headline["behaviour"],
            "metric": headline["metric"],
            "layer": headline["layer"],
            "vector": headline["vector"] if "vector" in headline else headline["behaviour"],
            "ratio": headline["ratio"].map(lambda r: f"{r:+g}") if "ratio" in headline else "",
            "m": headline["multiplier"].map(lambda m: f"{m:+.3g}"),
            "n": headline["n_report"],
            "unsteered -> steered": [
                f"{a:.3f} -> {b:.3f}" for a, b in zip(headline["unsteered"], headline["steered"], strict=True)
            ],
            "effect [95% CI]": _intervals(headline, "effect"),
            "null band": _null_bands(headline),
            "vs null": headline["vs_null"],
            "fluency cost (nats/token)": _intervals(headline, "fluency_cost"),
            "verdict": headline["verdict"],
        }
    )
    sentences = []
    for row in headline.itertuples():
        verdict = (
            "it **passes**: the interval excludes zero and lies outside the null"
            if row.verdict == "passes"
            else "it **fails**: "
            + (
                "the effect is inside the null"
                if row.vs_null == "inside null"
                else "the effect is not in the expected direction"
            )
        )
        sentences.append(
            f"- {row.behaviour}: {row.metric} {_interval(row.effect, row.effect_low, row.effect_high)} at layer "
            f"{row.layer}, m={row.multiplier:+.3g} over {row.n_report} held-out prompts (random same-norm vectors: "
            f"[{row.null_low:+.3f}, {row.null_high:+.3f}]); fluency cost "
            f"{_interval(row.fluency_cost, row.fluency_cost_low, row.fluency_cost_high)} nats/token"
            + (
                ""
                if getattr(row, "within_budget", True)
                else " (no cell of the grid was within the fluency budget)"
            )
            + f"; {verdict}."
        )
    return table, sentences


def _example_lines(results: Path, headline: pd.DataFrame) -> list[str]:
    lines = []
    for behaviour in headline["behaviour"]:
        study: Any = load_result(results, f"behaviour-{behaviour}")
        lines.append(f"**{behaviour}** (layer {study.layer}, m={study.multiplier:+g}):")
        lines.append(_table(study.examples[["prompt", "unsteered", "steered"]]))
    return lines


def _actadd_lines(folder: Path) -> list[str]:
    """ActAdd's three experiments in short form, from the tables ``analysis.actadd_store`` saved."""
    if not folder.is_dir():
        return ["Not run."]
    lines = []
    for experiment, metric, what in (
        ("weddings", "wedding_any", "share of completions with a wedding word"),
        ("sentiment", "positive", "VADER positive share of replies to negative SST-2 sentences"),
    ):
        path = folder / f"{experiment}_effects.csv"
        if not path.is_file():
            continue
        effects = pd.read_csv(path)
        best = effects[effects["best"] & (effects["metric"] == metric)]
        for row in best.itertuples():
            lines.append(
                f"- {experiment} ({what}): best cell layer {row.layer}, coefficient {row.multiplier:g} "
                f"(picked on the same prompts, so optimistic): {row.unsteered:.3f} -> {row.steered:.3f}, effect "
                f"{_interval(row.effect, row.effect_low, row.effect_high)} over {row.n_prompts} prompts; "
                f"random same-norm vectors [{row.null_low:+.3f}, {row.null_high:+.3f}] ({row.vs_null})."
            )
    path = folder / "perplexity_ratios.csv"
    if path.is_file():
        ratios = pd.read_csv(path)
        ratios = ratios[~ratios["is_control"]]
        table = pd.DataFrame(
            {
                "text": ratios["text"],
                "coefficient": ratios["coefficient"],
                "perplexity ratio [95% CI]": _intervals(ratios, "ratio", sign=""),
                "null band": _null_bands(ratios, sign=""),
                "vs null": ratios["vs_null"],
            }
        )
        lines += [
            "- Perplexity of each text steered / unsteered under the weddings vector (ActAdd: the wedding "
            "text gets easier, the others do not):",
            _table(table),
        ]
    return lines or ["Not run."]


def _similarity_lines(results: Path, saved: set[str]) -> list[str]:
    lines = []
    for name in sorted(n for n in saved if n.startswith("layer_similarity-")):
        sim: Any = load_result(results, name)
        near, far = sim.mean_at([1]), sim.mean_at(range(10, 100))
        base_near = sim.baseline_at([1])
        far_text = "no layers are 10+ apart" if math.isnan(far) else f"{far:.2f} between layers 10+ apart"
        baseline = (
            f" (a {sim.baseline.replace('_', '-')} baseline gives {base_near:.2f} for neighbours)"
            if not math.isnan(base_near)
            else ""
        )
        lines.append(
            f"- {name.split('-', 1)[1]}: cosine between adjacent layers' vectors {near:.2f}{baseline}, {far_text}."
        )
    for name in sorted(n for n in saved if n.startswith("separability-")):
        table = load_result(results, name).table  # type: ignore[attr-defined]
        if "behaviour_accuracy" in table and len(table):
            best = table.loc[table["behaviour_accuracy"].idxmax()]
            lines.append(
                f"- {name.split('-', 1)[1]}: behaviour separability peaks at layer {int(best['layer'])} "
                f"({best['behaviour_accuracy']:.2f} held-out probe accuracy, letter "
                f"{best['letter_accuracy']:.2f}, {int(best['n_test'])} test examples)."
            )
    return lines


def _ratio_lines(results: Path, saved: set[str]) -> list[str]:
    if "ratio_tradeoff" not in saved:
        return []
    tradeoff: Any = load_result(results, "ratio_tradeoff")
    line = f"- ratio study (layer {tradeoff.layer}, on the selection items): {tradeoff.selection}"
    if "ratio_report" in saved:
        reported = load_result(results, "ratio_report").table.iloc[0]  # type: ignore[attr-defined]
        line += (
            f"; on the report items that ratio moves p(matching) by "
            f"{_interval(reported.behaviour_change, reported.behaviour_change_low, reported.behaviour_change_high)}"
            f" at a perplexity increase of {reported.perplexity_increase:+.1%} "
            f"[{reported.perplexity_increase_low:+.1%}, {reported.perplexity_increase_high:+.1%}]"
        )
    return [line + "."]


def _scaling_lines(results: Path, saved: set[str]) -> list[str]:
    lines = []
    if "sample_size" in saved:
        table = load_result(results, "sample_size").table  # type: ignore[attr-defined]
        largest = table[table["n"] == table["n"].max()]
        above = int((largest["vs_null"] == "above null").sum())
        lines.append(
            f"- sample size: at n = {int(table['n'].max())} pairs the vector's cosine with one from disjoint "
            f"held-out pairs is above the sign-shuffled null at {above} of {len(largest)} layers (median "
            f"{largest['cosine_to_heldout'].median():.2f}, null band median "
            f"[{largest['null_low'].median():.2f}, {largest['null_high'].median():.2f}])."
        )
    if "sample_size_effect" in saved:
        effect: Any = load_result(results, "sample_size_effect")
        rows = effect.table
        outside = rows[rows["plus_vs_null"] != "inside null"] if "plus_vs_null" in rows else rows.iloc[0:0]
        lines.append(
            f"- steering effect by sample size (layer {effect.layer}, m=+{effect.multiplier:g}, report items): "
            + (
                f"outside the random-vector null for n in {sorted(int(n) for n in outside['n'])}"
                if len(outside)
                else "inside the random-vector null at every size"
            )
            + "."
        )
    return lines


def _reversal_lines(results: Path, saved: set[str]) -> list[str]:
    if "reversal" not in saved:
        return []
    rev: Any = load_result(results, "reversal")
    line = f"- reversal search ({rev.iterations} iterations, {rev.elapsed_s:.0f} s, stopped by {rev.stopped_by}): {rev.verdict}"
    if rev.effects is not None and len(rev.effects):
        held = rev.effects[rev.effects["split"] == "heldout"]
        parts = [
            f"{row.quantity} {_interval(row.mean, row.low, row.high)} (n={int(row.n)})"
            for row in held.itertuples()
        ]
        line = line.rstrip(".") + ". Held-out: " + "; ".join(parts)
    return [line.rstrip(".") + "."]


def _findings(results: Path) -> list[str]:
    saved = {p.name.removesuffix(".json") for p in results.glob("*.json")}
    return [
        *_similarity_lines(results, saved),
        *_ratio_lines(results, saved),
        *_scaling_lines(results, saved),
        *_reversal_lines(results, saved),
    ]


def write_report(out: Path, config, identity, seconds: float, timings: dict[str, float]) -> Path:
    """Write ``manifest.json``, every figure and ``report.md`` into the main job's directory ``out``."""
    manifest = build_manifest(
        invoked_command("caa-lens demo"),
        identity,
        dataclasses.asdict(config),
        dataset_hashes(config.datasets),
        {"splits": config.split_seed, "sampling": 0, "reversal": 0, "bootstrap": 0},
        seconds,
        timings,
        extra={
            "focus_layer": config.focus_layer,
            "selection": json.loads((out / "selection.json").read_text()),
        },
    )
    write_manifest(out, manifest)
    figures = draw(out)
    selection = json.loads((out / "selection.json").read_text())
    effects = pd.read_csv(out / "sweep_effects.csv")
    table, sentences = effects_headline(effects, config.focus_layer)
    pick = selection.get("focus_layer_pick")
    how = (
        f"picked on the selection items ({pick['criterion']})" if pick else "set by the user (--focus-layer)"
    )
    answer = json.loads((out / "answer.json").read_text())
    headline_path = out / "behaviour_headline.csv"
    headline = pd.read_csv(headline_path) if headline_path.exists() else pd.DataFrame()
    behaviour_part: list[str] = ["Not run (no behaviour had bundled open-ended prompts)."]
    if not headline.empty:
        behaviour_table, behaviour_sentences = behaviour_headline(headline)
        behaviour_part = [
            "Each behaviour is read off open-ended completions by a scorer (refusal phrases, VADER sentiment, "
            "casual words, agreement phrases, topic words). Its layer and multiplier were picked on a third of "
            "its prompts (largest effect within a fluency budget of 0.5 nats/token) and every number here is on "
            "the other two thirds: effect = mean over prompts of the score steered minus unsteered, 95% "
            "bootstrap interval over prompts; null band = the same effect for random vectors of the same norm "
            "at the same cell; fluency cost = increase of the completion's NLL under the unsteered model.",
            *behaviour_sentences,
            _table(behaviour_table),
            "Steered examples (held-out prompts, greedy):",
            *_example_lines(out / "results", headline),
        ]
    generations = pd.read_csv(out / "generations.csv")
    parts = [
        f"# caa_lens report: {identity.name}",
        f"Regenerate with `caa-lens demo --out {out}`; redraw figures with `caa-lens figures {out}`.",
        f"**Q:** {answer['question']}  \n**A:** {answer['answer']}",
        "## Headline: behaviours the model expresses, on held-out prompts",
        *behaviour_part,
        "## ActAdd's quantitative experiments (short form)",
        "Full size and figures: `caa-lens actadd weddings|perplexity|sentiment --out DIR`. Here, from "
        f"`{out / 'actadd'}`:",
        *_actadd_lines(out / "actadd"),
        f"## The CAA paper's A/B metric: effects at layer {config.focus_layer}, on held-out items",
        f"Layer {config.focus_layer} was {how}; every number below is on the report items, which no "
        "choice was made on. Effect = mean over items of p(matching) steered minus unsteered on the same "
        "item, 95% bootstrap interval over items; null band = effects of random vectors of the same norm "
        "at the same cells; letters = whether A- and B-matching items move the same way.",
        *sentences,
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
    print(f"\nSteering effects at layer {config.focus_layer} (held-out items):")
    print("\n".join(sentences))
    return report
