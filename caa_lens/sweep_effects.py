"""Reading a sweep's results: the summary, the effects against multiplier 0 with their null band, and verdicts.

``effects_summary`` is the report of a sweep (``caa_lens.stats.effects_table`` and ``with_null`` on the
rows of ``caa_lens.sweep_io.load_results``); ``format_effects`` and ``verdicts`` render it as text, and
``is_summary_csv`` recognises the CSV files the command line writes from it.
"""

from pathlib import Path

import numpy as np
import pandas as pd

from caa_lens.stats import EFFECT_NULL_COLUMNS, effects_table, with_null
from caa_lens.sweep_controls import NULL_PREFIX, control_target
from caa_lens.sweep_io import KEY_COLUMNS, first_line

__all__ = [
    "EFFECT_COLUMNS",
    "LETTER_COLUMNS",
    "NO_CONTROLS",
    "SUMMARY_COLUMNS",
    "effects_summary",
    "format_effects",
    "is_summary_csv",
    "summarize",
    "verdicts",
]

# ``summarize``'s columns (the summary CSV of caa_lens before effects had intervals).
SUMMARY_COLUMNS = ("vector", "layer", "multiplier", "p_matching", "sem", "p_letters_sum", "n_items")
# ``effects_summary``'s columns: these, then four per matching label X (``LETTER_COLUMNS``), then
# ``letter_pattern``.
EFFECT_COLUMNS = (
    "vector",
    "layer",
    "multiplier",
    "p_matching",
    "p_letters_sum",
    "n_items",
    *EFFECT_NULL_COLUMNS,
)
LETTER_COLUMNS = ("effect_{}", "effect_{}_low", "effect_{}_high", "n_{}")
NO_CONTROLS = "no controls"  # vs_null of a cell without random controls to compare with


def _is_effects_header(names: list[str]) -> bool:
    """``EFFECT_COLUMNS``, then whole groups of ``LETTER_COLUMNS`` for one label each, then letter_pattern."""
    base, letters = len(EFFECT_COLUMNS), names[len(EFFECT_COLUMNS) : -1]
    if tuple(names[:base]) != EFFECT_COLUMNS or names[-1:] != ["letter_pattern"] or len(letters) % 4:
        return False
    for start in range(0, len(letters), 4):
        group = letters[start : start + 4]
        label = group[0].removeprefix("effect_")
        if not label or [c.format(label) for c in LETTER_COLUMNS] != group:
            return False
    return True


def is_summary_csv(path: str | Path) -> bool:
    """Whether ``path`` is a summary CSV caa_lens wrote: its first line is exactly the header of
    ``effects_summary`` (any matching labels) or of the older ``summarize``.

    Decides whether ``sweep summary --csv`` may replace an existing file, so it is strict: one column
    more, less or renamed, and the file is not ours.
    """
    path = Path(path)
    if not path.is_file():
        return False
    try:
        line = first_line(path)
        text = line.decode() if line is not None else None
    except (OSError, UnicodeDecodeError):
        return False
    if text is None:
        return False
    names = text.rstrip("\r\n").split(",")
    return names == list(SUMMARY_COLUMNS) or _is_effects_header(names)


def _require_rows(results: pd.DataFrame, columns: tuple[str, ...]) -> None:
    """A ValueError unless ``results`` has rows and every one of ``columns``."""
    lacking = [c for c in columns if c not in results.columns]
    if results.empty or lacking:
        raise ValueError(
            f"nothing to summarize: the results table has {len(results)} rows"
            + (f" and lacks the columns {lacking}" if lacking else "")
            + " (load it with load_results, which names a results file with no rows yet)"
        )


def summarize(results: pd.DataFrame) -> pd.DataFrame:
    """Mean behaviour probability (and its standard error) per vector x layer x multiplier."""
    _require_rows(results, ("vector", "layer", "multiplier", "item_index", "p_matching", "p_letters_sum"))
    grouped = results.groupby(["vector", "layer", "multiplier"], sort=True)
    summary = grouped.agg(
        p_matching=("p_matching", "mean"),
        sem=("p_matching", "sem"),
        p_letters_sum=("p_letters_sum", "mean"),
        n_items=("item_index", "count"),
    )
    return summary.reset_index()[list(SUMMARY_COLUMNS)]


def _attach_null(effects: pd.DataFrame, coverage: float) -> pd.DataFrame:
    """The tested rows of an effects table with their null band, or ``NO_CONTROLS`` where none exists.

    ``with_null`` needs null rows at every cell it is given; a sweep without controls, a vector swept
    without them, or an unfinished sweep has cells without, which are reported as such, not refused.
    """
    targets = effects["vector"].astype(str).map(control_target)
    nulls, tested = effects[targets.notna()], effects[targets.isna()]
    if tested.empty:
        raise ValueError(
            f"the results hold only random controls ({NULL_PREFIX}:...), no vector to compare with them"
        )
    covered = set(zip(targets[nulls.index], nulls["layer"], nulls["multiplier"], strict=True))
    has = [
        (v, layer, m) in covered or ("*", layer, m) in covered
        for v, layer, m in zip(tested["vector"], tested["layer"], tested["multiplier"], strict=True)
    ]
    compared, rest = tested[has], tested[[not h for h in has]]
    parts = [rest.assign(null_low=np.nan, null_high=np.nan, n_null=0, vs_null=NO_CONTROLS)]
    if not compared.empty:
        relevant = nulls[targets[nulls.index].isin({*compared["vector"], "*"})]
        parts.append(with_null(pd.concat([compared, relevant]), NULL_PREFIX, coverage))
    table = pd.concat([p for p in parts if not p.empty], ignore_index=True)
    return table.astype({"n_null": int})


def effects_summary(
    results: pd.DataFrame, n_resamples: int = 4000, seed: int = 0, coverage: float = 0.95
) -> pd.DataFrame:
    """The report of a sweep: per (vector, layer, multiplier), the paired effect against multiplier 0
    with its bootstrap interval and n, the null band of the random controls, and the per-letter split.

    Columns (``EFFECT_COLUMNS``): vector, layer, multiplier, p_matching and p_letters_sum (means),
    n_items, effect, effect_low, effect_high (``caa_lens.stats.effects_table``: mean over items of
    p_steered - p_unsteered, 95% percentile bootstrap over items, seeded), null_low, null_high, n_null,
    vs_null (``caa_lens.stats.with_null``: the central ``coverage`` range of the controls' effects at
    the same layer and multiplier; ``"above null"``, ``"below null"``, ``"inside null"``, or
    ``"no controls"`` where the sweep has none); then for each matching label X: effect_X,
    effect_X_low, effect_X_high, n_X; and letter_pattern (``"opposite directions"``: a letter push).
    The controls' own rows are left out: they are the band.

    Raises:
        ValueError: the table is empty, lacks a column, or a cell has no multiplier-0 rows to pair with
            (sweep multiplier 0: ``run_sweep`` adds it).
    """
    _require_rows(results, (*KEY_COLUMNS, "matching_label", "p_matching", "p_letters_sum"))
    effects = effects_table(results, n_resamples=n_resamples, seed=seed)
    sums = results.groupby(["vector", "layer", "multiplier"], sort=True)["p_letters_sum"].mean()
    effects = effects.merge(sums.reset_index(), on=["vector", "layer", "multiplier"], how="left")
    table = _attach_null(effects, coverage)
    labels = sorted(str(label) for label in results["matching_label"].unique())
    letters = [column.format(label) for label in labels for column in LETTER_COLUMNS]
    for column in letters:
        if column not in table:  # a label absent from every tested cell (only in the controls' rows)
            table[column] = 0 if column.startswith("n_") else np.nan
    table = table[[*EFFECT_COLUMNS, *letters, "letter_pattern"]]
    return table.sort_values(["vector", "layer", "multiplier"], kind="stable").reset_index(drop=True)


def _interval(mean: float, low: float, high: float) -> str:
    return f"{mean:+.3f} [{low:+.3f}, {high:+.3f}]" if np.isfinite(low) else f"{mean:+.3f}"


def format_effects(summary: pd.DataFrame) -> str:
    """``effects_summary`` as a compact text table: steered cells only (multiplier 0 is the baseline
    each effect is paired with; its mean p(matching) heads each vector's rows)."""
    labels = [c.removeprefix("n_") for c in summary.columns[len(EFFECT_COLUMNS) : -1] if c.startswith("n_")]
    blocks = []
    for name, rows in summary.groupby("vector", sort=True):
        base = rows[rows["multiplier"] == 0]
        head = f"{name}: unsteered p(matching) {base['p_matching'].mean():.3f}" if len(base) else f"{name}:"
        steered = rows[rows["multiplier"] != 0]
        if steered.empty:
            blocks.append(head + " (no steered cells)")
            continue
        shown = {
            "layer": steered["layer"].astype(int),
            "m": steered["multiplier"].map(lambda m: f"{m:+g}"),
            "p": steered["p_matching"].map(lambda p: f"{p:.3f}"),
            "n": steered["n_items"].astype(int),
            "effect [95% CI]": [
                _interval(*values)
                for values in steered[["effect", "effect_low", "effect_high"]].itertuples(index=False)
            ],
            "null band": [
                f"[{low:+.3f}, {high:+.3f}]" if np.isfinite(low) else "-"
                for low, high in steered[["null_low", "null_high"]].itertuples(index=False)
            ],
            "vs null": steered["vs_null"],
        }
        for label in labels:
            columns = [f"effect_{label}", f"effect_{label}_low", f"effect_{label}_high"]
            shown[f"{label}-matching"] = [
                _interval(*values) if np.isfinite(values[0]) else "-"
                for values in steered[columns].itertuples(index=False)
            ]
        shown["letters"] = steered["letter_pattern"]
        blocks.append(head + "\n" + pd.DataFrame(shown).to_string(index=False))
    return "\n\n".join(blocks)


def verdicts(summary: pd.DataFrame) -> list[str]:
    """One line per vector of an ``effects_summary``: the steered cells whose interval excludes zero and
    lies outside the null band, or that no cell is distinguishable from the null."""
    lines = []
    for name, rows in summary.groupby("vector", sort=True):
        steered = rows[rows["multiplier"] != 0]
        excludes = (steered["effect_low"] > 0) | (steered["effect_high"] < 0)
        controlled = steered["vs_null"] != NO_CONTROLS
        if not controlled.any():
            lines.append(
                f"{name}: no random controls in these results, so no null band; {int(excludes.sum())} of "
                f"{len(steered)} steered cells have an interval excluding 0, which a random push of the same "
                f"size might match (rerun the sweep with controls, e.g. --controls 3)"
            )
            continue
        found = steered[excludes & steered["vs_null"].isin(["above null", "below null"])]
        if found.empty:
            lines.append(
                f"{name}: no cell is distinguishable from the null (every steered cell's interval includes "
                f"0 or overlaps the band of random vectors of the same norm)"
            )
            continue
        found = found.reindex(found["effect"].abs().sort_values(ascending=False).index)
        cells = [
            f"layer {int(r.layer)} m={r.multiplier:+g} {_interval(r.effect, r.effect_low, r.effect_high)} "
            f"{r.vs_null}" + (" (letter push)" if r.letter_pattern == "opposite directions" else "")
            for r in found.head(6).itertuples()
        ]
        more = f"; and {len(found) - 6} more" if len(found) > 6 else ""
        letter = int((found["letter_pattern"] == "opposite directions").sum())
        note = (
            f" ({letter} of them move items of different matching letters in opposite directions: a letter push)"
            if letter
            else ""
        )
        missing = int((~controlled).sum())
        unchecked = f"; {missing} cells have no controls" if missing else ""
        lines.append(
            f"{name}: {len(found)} of {len(steered)} steered cells are distinguishable from the null"
            f"{note}: " + "; ".join(cells) + more + unchecked
        )
    return lines
