"""Sweep result tables: append-only JSONL files (a header line, then one JSON object per row).

Crash safety rests on three rules: every append is one ``write`` of whole lines followed by flush and
fsync; a kill can therefore only leave the *last* line incomplete (no trailing newline), which a
resume cuts off; any other line that does not parse is corruption and an error naming the file, the
line and the field, never silently skipped.

Ownership: a results file is recognised by its first line, a header whose ``format`` is a caa_lens
sweep format (``is_sweep_file``). A file without one is not caa_lens's and is never changed: every
check of it runs before any byte is cut, appended or replaced. No number written is ever NaN or
infinite (``encode_line`` refuses them), since strict JSON readers reject such files.
"""

import json
import math
import os
import uuid
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from caa_lens.outputs import check_output_file
from caa_lens.stats import effects_table, with_null

FORMAT = "caa_lens.sweep/1"
FORMAT_FAMILY = "caa_lens.sweep/"  # any version of the format: a file caa_lens wrote
KEY_COLUMNS = ("vector", "layer", "multiplier", "item_index")
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
    "effect",
    "effect_low",
    "effect_high",
    "null_low",
    "null_high",
    "n_null",
    "vs_null",
)
LETTER_COLUMNS = ("effect_{}", "effect_{}_low", "effect_{}_high", "n_{}")
# The metrics a sweep can score (``caa_lens.sweep.run_sweep``); a header without ``metric`` was written
# before the likelihood metric existed, so it is ``letter``.
METRICS = ("letter", "likelihood")
DEFAULT_METRIC = "letter"
NULL_PREFIX = "random"  # controls are named random:<vector>:<seed> (caa_lens.stats.with_null's rule)
NO_CONTROLS = "no controls"  # vs_null of a cell without random controls to compare with
CONFIG_FIELDS = ("vectors", "layers", "multipliers", "n_items")  # what merging and row counts read
# A header is a few kB; a first "line" longer than this is not one, and reading it whole (a large
# file with no newline) would only cost memory.
_HEADER_LIMIT = 1 << 22

REQUIRED_FIELDS: dict[str, tuple[type, ...]] = {
    "vector": (str,),
    "layer": (int,),
    "multiplier": (int, float),
    "item_index": (int,),
    "item_hash": (str,),
    "p_matching": (int, float),
    "p_letters_sum": (int, float),
}


def normalise_config(config: dict) -> dict:
    """A header's configuration with ``metric`` filled in where an older caa_lens left it out
    (``letter``, the only metric then), so old and new headers of the same sweep compare equal.

    >>> normalise_config({"layers": [1]})
    {'layers': [1], 'metric': 'letter'}
    """
    return config if "metric" in config else {**config, "metric": DEFAULT_METRIC}


class SweepFileError(ValueError):
    """A results file is malformed, locked by another writer, or conflicts with another file."""


class SweepConfigError(ValueError):
    """A results file belongs to a different sweep configuration (or shard) than the one asked for."""


@dataclass(frozen=True)
class SweepTable:
    """A parsed results file: its header, its complete rows, and where the complete lines end."""

    header: dict
    rows: tuple[dict, ...]
    complete_bytes: int  # length of the header and the complete rows
    size: int  # file size; more than complete_bytes when a kill left the last line incomplete

    @property
    def tail_bytes(self) -> int:
        return self.size - self.complete_bytes


def row_key(row: dict) -> tuple[str, int, float, int]:
    """The identity of a row: (vector, layer, multiplier, item_index)."""
    return (row["vector"], int(row["layer"]), float(row["multiplier"]), int(row["item_index"]))


def _json_default(value: object) -> object:
    if hasattr(value, "item"):  # numpy and torch scalars from DataFrames and tensors
        return value.item()  # type: ignore[attr-defined]
    raise TypeError(f"cannot write {type(value).__name__} {value!r} to a results file")


def _non_finite_fields(record: dict) -> list[str]:
    bad = []
    for field, value in record.items():
        # Python and numpy floats, and 0-d numpy or torch values (ints and strings cannot be NaN).
        if isinstance(value, float) or (hasattr(value, "item") and hasattr(value, "dtype")):
            try:
                number = float(value)
            except (TypeError, ValueError):
                continue
            if not math.isfinite(number):
                bad.append(f"{field}={number}")
    return bad


def encode_line(record: dict) -> bytes:
    """One JSON line; a NaN or infinite number is an error, never written (strict JSON has none)."""
    bad = _non_finite_fields(record)
    if bad:
        raise ValueError(f"refusing to write a non-finite number to a table ({', '.join(bad)} in {record})")
    try:
        text = json.dumps(record, ensure_ascii=False, default=_json_default, allow_nan=False)
    except ValueError as err:  # a non-finite number nested deeper than the top level
        raise ValueError(f"refusing to write a non-finite number to a table ({err}): {record}") from err
    return (text + "\n").encode()


def _first_line(path: Path) -> bytes | None:
    """The first line of ``path`` with its newline, or None when there is no complete one."""
    with open(path, "rb") as handle:
        line = handle.readline(_HEADER_LIMIT)
    return line if line.endswith(b"\n") else None


def _is_header(record: object) -> bool:
    return (
        isinstance(record, dict)
        and isinstance(record.get("format"), str)
        and record["format"].startswith(FORMAT_FAMILY)
    )


def is_sweep_file(path: str | Path) -> bool:
    """Whether ``path`` is a results table caa_lens wrote: its first line is a sweep header.

    Reads only the first line, so it answers at once for any file (a dataset, a model, notes).
    An empty file, or one whose first line is anything else, is not one.
    """
    path = Path(path)
    if not path.is_file():
        return False
    try:
        line = _first_line(path)
        return line is not None and _is_header(json.loads(line))
    except (OSError, ValueError):  # ValueError covers JSON and UTF-8 decoding errors
        return False


def check_sweep_output(path: str | Path) -> Path:
    """Check, before any work, that ``path`` can receive a sweep's results table.

    ``path`` may be new, or a results table caa_lens wrote (resumed by ``run_sweep``, replaced by
    ``merge_results``); any other file there is refused untouched.

    Raises:
        OutputError: naming the path and what to do.
    """
    return check_output_file(path, "sweep results table", is_sweep_file)


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
        line = _first_line(path)
        text = line.decode() if line is not None else None
    except (OSError, UnicodeDecodeError):
        return False
    if text is None:
        return False
    names = text.rstrip("\r\n").split(",")
    return names == list(SUMMARY_COLUMNS) or _is_effects_header(names)


def _check_row(path: Path, number: int, row: object) -> dict:
    if not isinstance(row, dict):
        raise SweepFileError(f"{path}: line {number} is a JSON {type(row).__name__}, expected an object")
    for field, types in REQUIRED_FIELDS.items():
        if field not in row:
            raise SweepFileError(f"{path}: line {number} lacks the field {field!r}")
        value = row[field]
        if isinstance(value, bool) or not isinstance(value, types):
            raise SweepFileError(f"{path}: line {number}: field {field!r} has the wrong type ({value!r})")
        if isinstance(value, float) and not math.isfinite(value):
            raise SweepFileError(
                f"{path}: line {number}: field {field!r} is {value} (an older caa_lens wrote rows of an "
                f"overflowing multiplier); delete those rows or rerun the sweep into a new file"
            )
    return row


def _check_header(path: Path, line: bytes) -> dict:
    try:
        header = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        header = None
    if not _is_header(header):
        raise SweepFileError(
            f"{path} is not a caa_lens sweep results table (line 1 is not a results header); "
            f"give the results file a sweep wrote"
        )
    assert isinstance(header, dict)
    if header["format"] != FORMAT:
        raise SweepFileError(
            f"{path}: written in the format {header['format']!r}, this caa_lens reads {FORMAT!r}; "
            f"use the caa_lens version that wrote it, or rerun the sweep into a new file"
        )
    shard = header.get("shard")
    if not (
        isinstance(shard, list)
        and len(shard) == 2
        and all(isinstance(x, int) and not isinstance(x, bool) for x in shard)
        and 0 <= shard[0] < shard[1]
    ):
        raise SweepFileError(
            f"{path}: line 1 (the header) has no valid 'shard' [i, n] ({shard!r}); the file is corrupt"
        )
    config = header.get("config")
    lacking = [f for f in CONFIG_FIELDS if f not in config] if isinstance(config, dict) else ["config"]
    if lacking:
        raise SweepFileError(f"{path}: line 1 (the header) lacks the field(s) {lacking}; the file is corrupt")
    return header


def parse_table(path: str | Path) -> SweepTable | None:
    """Read and check a results file without changing it (None if it is missing or empty).

    The header is checked first, so a file that is not a sweep table is refused as such (not as
    corrupt), and nothing about it is ever reported as repairable.
    """
    path = Path(path)
    if not path.exists():
        return None
    data = path.read_bytes()
    if not data:
        return None
    lines = data.split(b"\n")
    tail = lines.pop()  # b"" when the file ends with a newline, as every complete write does
    if not lines:
        raise SweepFileError(
            f"{path} is not a caa_lens sweep results table (it has no complete first line); "
            f"give the results file a sweep wrote"
        )
    header = _check_header(path, lines[0])
    records = []
    for number, line in enumerate(lines[1:], start=2):
        try:
            records.append(json.loads(line))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise SweepFileError(
                f"{path}: line {number} is not valid JSON ({err}); only a truncated last line can be "
                f"dropped, so this file is corrupt"
            ) from err
    rows = [_check_row(path, number, row) for number, row in enumerate(records, start=2)]
    first: dict[tuple, int] = {}
    for number, row in enumerate(rows, start=2):
        key = row_key(row)
        if key in first:
            raise SweepFileError(f"{path}: line {number} repeats the row {key} of line {first[key]}")
        first[key] = number
    return SweepTable(header, tuple(rows), len(data) - len(tail), len(data))


def warn_incomplete(path: Path, table: SweepTable, action: str) -> None:
    warnings.warn(
        f"{path}: the last line is incomplete ({table.tail_bytes} bytes, an interrupted write); {action}",
        stacklevel=3,
    )


def read_table(path: Path, repair: bool = False) -> tuple[dict | None, list[dict]]:
    """The header and rows of a results file (``(None, [])`` if it is missing or empty).

    Args:
        repair: cut a truncated last line off the file, once the whole file has been checked (so a
            file that is not a sweep table, or is corrupt, is never changed); otherwise leave it out
            with a warning.
    """
    table = parse_table(path)
    if table is None:
        return None, []
    if table.tail_bytes:
        warn_incomplete(path, table, "cutting it off" if repair else "ignoring it")
        if repair:
            truncate(path, table.complete_bytes)
    return table.header, list(table.rows)


def truncate(path: Path, size: int) -> None:
    with open(path, "r+b") as handle:
        handle.truncate(size)
        handle.flush()
        os.fsync(handle.fileno())


def append_bytes(path: Path, payload: bytes) -> None:
    """Append whole encoded lines in one write, flushed and fsynced: a kill can only cut the last one."""
    with open(path, "ab") as handle:
        handle.write(payload)
        handle.flush()
        os.fsync(handle.fileno())


def append_rows(path: Path, rows: Sequence[dict]) -> None:
    if rows:
        append_bytes(path, b"".join(encode_line(row) for row in rows))  # encoded before the file is touched


def atomic_write_lines(path: Path, records: Sequence[dict]) -> None:
    """Write a whole table at once: to a temporary file, fsynced, then renamed over ``path``."""
    from caa_lens.files import atomic_write_bytes

    atomic_write_bytes(Path(path), b"".join(encode_line(record) for record in records))


def lock_descriptor(handle: int, path: Path) -> None:
    """Take the exclusive advisory lock on an open file, or raise if another process holds it."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no locking, documented limitation
        return
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as err:
        raise SweepFileError(f"{path} is being written by another process (it holds the lock)") from err


def _write_all(handle: int, payload: bytes) -> None:
    view = memoryview(payload)
    while view:
        view = view[os.write(handle, view) :]
    os.fsync(handle)


def place_locked(path: Path, payload: bytes, replace: bool) -> int:
    """Put a file holding ``payload`` at ``path`` in one step, already locked; return the locked descriptor.

    The content goes to a temporary file that is fsynced and locked *before* it appears at ``path``,
    so no reader ever sees a partial header and no other writer can lock the new file first. Closing
    the returned descriptor releases the lock (the kernel does so if the process dies).

    Args:
        replace: replace the file at ``path`` (``os.replace``); otherwise ``path`` must not exist
            (``os.link`` fails if it does: a file that appeared meanwhile is never overwritten).

    Raises:
        FileExistsError: ``replace`` is false and ``path`` exists.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    handle = os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        _write_all(handle, payload)
        lock_descriptor(handle, temporary)
        if replace:
            os.replace(temporary, path)
        else:
            try:
                os.link(temporary, path)
            except FileExistsError:
                raise
            except OSError:  # a filesystem without hard links: exclusive create, then one write
                fallback = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
                os.close(handle)
                handle = fallback
                lock_descriptor(handle, path)
                _write_all(handle, payload)
    except BaseException:
        os.close(handle)
        raise
    finally:
        temporary.unlink(missing_ok=True)  # after os.link the data lives on at path
    return handle


def _frame(rows: Sequence[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(list(rows))
    if frame.empty:
        return frame
    return frame.sort_values(list(KEY_COLUMNS), kind="stable").reset_index(drop=True)


def shard_unit_count(header: dict) -> int:
    """How many (item, layer) units the shard of a header owns (``sweep.shard_units``'s chunk size)."""
    config = header["config"]
    total = int(config["n_items"]) * len(config["layers"])
    index, count = header["shard"]
    return (index + 1) * total // count - index * total // count


def _no_rows(path: Path, header: dict) -> SweepFileError:
    index, count = header["shard"]
    if shard_unit_count(header) == 0:
        return SweepFileError(
            f"{path} holds no rows: shard {index}/{count} of its sweep has no (item, layer) units (more "
            f"shards than units); merge it with the other shards (caa-lens sweep merge)"
        )
    return SweepFileError(
        f"{path}: no rows yet (only the header: the sweep was stopped or failed before its first row "
        f"was written); rerun `caa-lens sweep run` (run_sweep) with the same options to compute them"
    )


def load_results(path: str | Path) -> pd.DataFrame:
    """The rows of a results file as a DataFrame sorted by vector, layer, multiplier, item.

    A truncated last line (a sweep still running, or killed mid-write) is left out with a warning; any
    other malformed line is an error naming the file and line, and so is a file with no rows yet.
    """
    path = Path(path)
    header, rows = read_table(path, repair=False)
    if header is None:
        raise SweepFileError(f"{path}: empty results file (no header); it is not a sweep's results table")
    if not rows:
        raise _no_rows(path, header)
    return _frame(rows)


def merge_results(
    paths: Sequence[str | Path], out: str | Path | None = None, allow_incomplete: bool = False
) -> pd.DataFrame:
    """Join the shard files of one sweep; optionally write the merged table (as shard 0/1) to ``out``.

    ``out`` is checked first (``check_sweep_output``): an existing file there that is not a sweep
    table is refused before any shard is read. The merged table replaces ``out`` atomically.

    Raises SweepConfigError if the files' configurations differ, SweepFileError if a row appears in
    two files or (unless ``allow_incomplete``) cells of the sweep are missing from all of them,
    OutputError if ``out`` is someone else's file.
    """
    if not paths:
        raise ValueError("no results files to merge")
    target = check_sweep_output(out) if out is not None else None
    first_path, config = None, None
    seen: dict[tuple, Path] = {}
    merged: list[dict] = []
    for path in map(Path, paths):
        header, rows = read_table(path, repair=False)
        if header is None:
            raise SweepFileError(f"{path}: empty results file (no header); it is not a sweep's results table")
        if config is None:
            first_path, config = path, normalise_config(header["config"])
        elif normalise_config(header["config"]) != config:
            raise SweepConfigError(f"{path} and {first_path} come from different sweep configurations")
        for row in rows:
            key = row_key(row)
            if key in seen:
                raise SweepFileError(f"row {key} appears in both {seen[key]} and {path}")
            seen[key] = path
            merged.append(row)
    assert config is not None
    expected = len(config["vectors"]) * len(config["layers"]) * len(config["multipliers"]) * config["n_items"]
    if len(merged) != expected and not allow_incomplete:
        raise SweepFileError(
            f"the merged files hold {len(merged)} of the sweep's {expected} rows (a shard missing or "
            f"unfinished?); pass allow_incomplete=True to merge anyway"
        )
    frame = _frame(merged)
    if target is not None:
        header = {"format": FORMAT, "config": config, "shard": [0, 1]}
        atomic_write_lines(target, [header, *frame.to_dict("records")])
    return frame


def summarize(results: pd.DataFrame) -> pd.DataFrame:
    """Mean behaviour probability (and its standard error) per vector x layer x multiplier."""
    lacking = [
        c
        for c in ("vector", "layer", "multiplier", "item_index", "p_matching", "p_letters_sum")
        if c not in results.columns
    ]
    if results.empty or lacking:
        raise ValueError(
            f"nothing to summarize: the results table has {len(results)} rows"
            + (f" and lacks the columns {lacking}" if lacking else "")
            + " (load it with load_results, which names a results file with no rows yet)"
        )
    grouped = results.groupby(["vector", "layer", "multiplier"], sort=True)
    summary = grouped.agg(
        p_matching=("p_matching", "mean"),
        sem=("p_matching", "sem"),
        p_letters_sum=("p_letters_sum", "mean"),
        n_items=("item_index", "count"),
    )
    return summary.reset_index()[list(SUMMARY_COLUMNS)]


def _null_target(name: str) -> str | None:
    """The vector a control controls: ``random:<vector>:<seed>`` -> vector, ``random[:<seed>]`` -> "*"."""
    if name != NULL_PREFIX and not name.startswith(f"{NULL_PREFIX}:"):
        return None
    parts = name[len(NULL_PREFIX) + 1 :].rsplit(":", 1)
    return parts[0] if len(parts) == 2 else "*"


def _attach_null(effects: pd.DataFrame, coverage: float) -> pd.DataFrame:
    """The tested rows of an effects table with their null band, or ``NO_CONTROLS`` where none exists.

    ``with_null`` needs null rows at every cell it is given; a sweep without controls, a vector swept
    without them, or an unfinished sweep has cells without, which are reported as such, not refused.
    """
    targets = effects["vector"].astype(str).map(_null_target)
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
    lacking = [
        c for c in (*KEY_COLUMNS, "matching_label", "p_matching", "p_letters_sum") if c not in results.columns
    ]
    if results.empty or lacking:
        raise ValueError(
            f"nothing to summarize: the results table has {len(results)} rows"
            + (f" and lacks the columns {lacking}" if lacking else "")
            + " (load it with load_results, which names a results file with no rows yet)"
        )
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
