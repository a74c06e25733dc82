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
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from caa_lens.files import atomic_write_bytes
from caa_lens.outputs import check_output_file
from caa_lens.sweep_shards import shard_unit_count

__all__ = [
    "CONFIG_FIELDS",
    "DEFAULT_METRIC",
    "FORMAT",
    "FORMAT_FAMILY",
    "KEY_COLUMNS",
    "METRICS",
    "REQUIRED_FIELDS",
    "SweepConfigError",
    "SweepFileError",
    "SweepTable",
    "append_rows",
    "atomic_write_lines",
    "check_sweep_output",
    "encode_line",
    "first_line",
    "is_sweep_file",
    "load_results",
    "merge_results",
    "normalise_config",
    "parse_table",
    "read_table",
    "row_key",
    "warn_incomplete",
]

FORMAT = "caa_lens.sweep/1"
FORMAT_FAMILY = "caa_lens.sweep/"  # any version of the format: a file caa_lens wrote
KEY_COLUMNS = ("vector", "layer", "multiplier", "item_index")
# The metrics a sweep can score (``caa_lens.sweep.run_sweep``); a header without ``metric`` was written
# before the likelihood metric existed, so it is ``letter``.
METRICS = ("letter", "likelihood")
DEFAULT_METRIC = "letter"
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


def first_line(path: Path) -> bytes | None:
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
        line = first_line(path)
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
            _truncate(path, table.complete_bytes)
    return table.header, list(table.rows)


def _truncate(path: Path, size: int) -> None:
    with open(path, "r+b") as handle:
        handle.truncate(size)
        handle.flush()
        os.fsync(handle.fileno())


def _append_bytes(path: Path, payload: bytes) -> None:
    """Append whole encoded lines in one write, flushed and fsynced: a kill can only cut the last one."""
    with open(path, "ab") as handle:
        handle.write(payload)
        handle.flush()
        os.fsync(handle.fileno())


def append_rows(path: Path, rows: Sequence[dict]) -> None:
    if rows:
        _append_bytes(path, b"".join(encode_line(row) for row in rows))  # encoded before the file is touched


def atomic_write_lines(path: Path, records: Sequence[dict]) -> None:
    """Write a whole table at once: to a temporary file, fsynced, then renamed over ``path``."""
    atomic_write_bytes(Path(path), b"".join(encode_line(record) for record in records))


def _frame(rows: Sequence[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(list(rows))
    if frame.empty:
        return frame
    return frame.sort_values(list(KEY_COLUMNS), kind="stable").reset_index(drop=True)


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
