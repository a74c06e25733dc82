"""Sweep result tables: append-only JSONL files (a header line, then one JSON object per row).

Crash safety rests on three rules: every append is one ``write`` of whole lines followed by flush and
fsync; a kill can therefore only leave the *last* line incomplete (no trailing newline), which a
resume cuts off (``repair=True``); any other line that does not parse is corruption and an error
naming the file, the line and the field, never silently skipped.
"""

import json
import os
import uuid
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

FORMAT = "caa_lens.sweep/1"
KEY_COLUMNS = ("vector", "layer", "multiplier", "item_index")

REQUIRED_FIELDS: dict[str, tuple[type, ...]] = {
    "vector": (str,),
    "layer": (int,),
    "multiplier": (int, float),
    "item_index": (int,),
    "item_hash": (str,),
    "p_matching": (int, float),
    "p_letters_sum": (int, float),
}


class SweepFileError(ValueError):
    """A results file is malformed, locked by another writer, or conflicts with another file."""


class SweepConfigError(ValueError):
    """A results file belongs to a different sweep configuration (or shard) than the one asked for."""


def row_key(row: dict) -> tuple[str, int, float, int]:
    """The identity of a row: (vector, layer, multiplier, item_index)."""
    return (row["vector"], int(row["layer"]), float(row["multiplier"]), int(row["item_index"]))


def _json_default(value: object) -> object:
    if hasattr(value, "item"):  # numpy and torch scalars from DataFrames and tensors
        return value.item()  # type: ignore[attr-defined]
    raise TypeError(f"cannot write {type(value).__name__} {value!r} to a results file")


def encode_line(record: dict) -> bytes:
    return (json.dumps(record, ensure_ascii=False, default=_json_default) + "\n").encode()


def _check_row(path: Path, number: int, row: object) -> dict:
    if not isinstance(row, dict):
        raise SweepFileError(f"{path}: line {number} is a JSON {type(row).__name__}, expected an object")
    for field, types in REQUIRED_FIELDS.items():
        if field not in row:
            raise SweepFileError(f"{path}: line {number} lacks the field {field!r}")
        value = row[field]
        if isinstance(value, bool) or not isinstance(value, types):
            raise SweepFileError(f"{path}: line {number}: field {field!r} has the wrong type ({value!r})")
    return row


def read_table(path: Path, repair: bool = False) -> tuple[dict | None, list[dict]]:
    """The header and rows of a results file (``(None, [])`` if it is missing or empty).

    Args:
        repair: cut a truncated last line off the file (resume); otherwise leave it out with a warning.
    """
    if not path.exists():
        return None, []
    data = path.read_bytes()
    lines = data.split(b"\n")
    tail = lines.pop()  # b"" when the file ends with a newline, as every complete write does
    if tail:
        warnings.warn(
            f"{path}: the last line is incomplete ({len(tail)} bytes, an interrupted write); "
            + ("cutting it off" if repair else "ignoring it"),
            stacklevel=3,
        )
        if repair:
            with open(path, "r+b") as handle:
                handle.truncate(len(data) - len(tail))
                handle.flush()
                os.fsync(handle.fileno())
    if not lines:
        return None, []
    records = []
    for number, line in enumerate(lines, start=1):
        try:
            records.append(json.loads(line))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise SweepFileError(
                f"{path}: line {number} is not valid JSON ({err}); only a truncated last line can be "
                f"dropped, so this file is corrupt"
            ) from err
    header = records[0]
    if not isinstance(header, dict) or "format" not in header:
        raise SweepFileError(f"{path}: line 1 is not a results header (no 'format' field)")
    rows = [_check_row(path, number, row) for number, row in enumerate(records[1:], start=2)]
    first: dict[tuple, int] = {}
    for number, row in enumerate(rows, start=2):
        key = row_key(row)
        if key in first:
            raise SweepFileError(f"{path}: line {number} repeats the row {key} of line {first[key]}")
        first[key] = number
    return header, rows


def _append(path: Path, payload: bytes) -> None:
    with open(path, "ab") as handle:
        handle.write(payload)  # one write of whole lines: a kill can only truncate the last one
        handle.flush()
        os.fsync(handle.fileno())


def write_header(path: Path, header: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    _append(path, encode_line(header))


def append_rows(path: Path, rows: Sequence[dict]) -> None:
    if rows:
        _append(path, b"".join(encode_line(row) for row in rows))


def atomic_write_lines(path: Path, records: Sequence[dict]) -> None:
    """Write a whole table at once: to a temporary file, fsynced, then renamed over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(temporary, "wb") as handle:
            handle.write(b"".join(encode_line(record) for record in records))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``path`` (created if missing): two writers are an error.

    The kernel drops the lock when the process dies, so a killed sweep never leaves a stale lock.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            import fcntl
        except ImportError:  # not POSIX: no locking, documented limitation
            fcntl = None  # type: ignore[assignment]
        if fcntl is not None:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as err:
                raise SweepFileError(
                    f"{path} is being written by another process (it holds the lock)"
                ) from err
        yield
    finally:
        os.close(handle)  # closing the descriptor releases the lock


def _frame(rows: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    return frame.sort_values(list(KEY_COLUMNS), kind="stable").reset_index(drop=True)


def load_results(path: str | Path) -> pd.DataFrame:
    """The rows of a results file as a DataFrame sorted by vector, layer, multiplier, item.

    A truncated last line (a sweep still running, or killed mid-write) is left out with a warning; any
    other malformed line is an error naming the file and line.
    """
    header, rows = read_table(Path(path), repair=False)
    if header is None:
        raise SweepFileError(f"{path}: empty results file (no header)")
    return _frame(rows)


def merge_results(
    paths: Sequence[str | Path], out: str | Path | None = None, allow_incomplete: bool = False
) -> pd.DataFrame:
    """Join the shard files of one sweep; optionally write the merged table (as shard 0/1) to ``out``.

    Raises SweepConfigError if the files' configurations differ, SweepFileError if a row appears in
    two files or (unless ``allow_incomplete``) cells of the sweep are missing from all of them.
    """
    if not paths:
        raise ValueError("no results files to merge")
    first_path, config = None, None
    seen: dict[tuple, Path] = {}
    merged: list[dict] = []
    for path in map(Path, paths):
        header, rows = read_table(path, repair=False)
        if header is None:
            raise SweepFileError(f"{path}: empty results file (no header)")
        if config is None:
            first_path, config = path, header.get("config")
        elif header.get("config") != config:
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
    if out is not None:
        header = {"format": FORMAT, "config": config, "shard": [0, 1]}
        atomic_write_lines(Path(out), [header, *frame.to_dict("records")])
    return frame


def summarize(results: pd.DataFrame) -> pd.DataFrame:
    """Mean behaviour probability (and its standard error) per vector x layer x multiplier."""
    grouped = results.groupby(["vector", "layer", "multiplier"], sort=True)
    summary = grouped.agg(
        p_matching=("p_matching", "mean"),
        sem=("p_matching", "sem"),
        p_letters_sum=("p_letters_sum", "mean"),
        n_items=("item_index", "count"),
    )
    return summary.reset_index()
