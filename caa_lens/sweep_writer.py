"""Writing one sweep's results file: locked against other writers, and untouched until rows are ready.

The format is ``caa_lens.sweep_io``'s; this module holds the advisory lock (``_lock_descriptor``), the
one-step creation of a locked file (``_place_locked``) and ``ResultsFile``, which defers every write to
the first computed group so that a run that fails early leaves the file as it found it.
"""

import json
import os
import uuid
import warnings
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from caa_lens import sweep_io
from caa_lens.sweep_io import (
    SweepConfigError,
    SweepFileError,
    SweepTable,
    encode_line,
    normalise_config,
    parse_table,
    row_key,
    warn_incomplete,
)

__all__ = ["ResultsFile"]


def _lock_descriptor(handle: int, path: Path) -> None:
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


def _place_locked(path: Path, payload: bytes, replace: bool) -> int:
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
        _lock_descriptor(handle, temporary)
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
                _lock_descriptor(handle, path)
                _write_all(handle, payload)
    except BaseException:
        os.close(handle)
        raise
    finally:
        temporary.unlink(missing_ok=True)  # after os.link the data lives on at path
    return handle


def _differences(header: dict, config: dict, shard: tuple[int, int]) -> list[str]:
    """How a file's header differs from this sweep's configuration and shard (empty: the same sweep)."""
    old = normalise_config(header.get("config", {}))
    config = normalise_config(config)
    differences = [
        f"{key}: file has {old.get(key)!r}, this sweep has {config.get(key)!r}"
        for key in sorted(set(old) | set(config))
        if old.get(key) != config.get(key)
    ]
    if tuple(header.get("shard", ())) != shard:
        differences.append(f"shard: file has {header.get('shard')}, this sweep has {list(shard)}")
    return differences


class ResultsFile:
    """The results file of one ``run_sweep`` call; nothing is written to it until rows are ready.

    Deferring every write to the first computed group means a call that fails before it (a bad
    prompt, an out-of-memory error, a Ctrl-C) leaves the file exactly as it found it, or absent if it
    was absent: no header-only file, no cut tail, no replaced header. Then:

    - a new file is created holding the header and the first rows in one step (``_place_locked``);
    - a resumed file has its truncated last line cut, then rows appended;
    - a header-only file of another configuration (no results to lose, and caa_lens's own) is
      replaced in one step by the new header and the first rows.

    The file is locked from the moment it is read (or created) until the call ends.
    """

    def __init__(self, path: Path, header: dict, done: set) -> None:
        self.path, self.header, self.done = path, encode_line(header), done
        self.handle: int | None = None  # the descriptor holding the lock
        self.cut: int | None = None  # length to cut the file to before the first append
        self.replace = False  # a header-only file of another sweep: replaced at the first write

    def __enter__(self) -> "ResultsFile":
        if not self.path.exists():
            return self
        self.handle = os.open(self.path, os.O_RDWR)
        try:
            _lock_descriptor(self.handle, self.path)
            table = parse_table(self.path)  # checked whole before anything is changed
            if table is None:
                raise SweepFileError(
                    f"{self.path} is empty, not a results table caa_lens wrote; refusing to write into it "
                    f"(choose another output path, or remove the empty file)"
                )
            self._adopt(table)
        except BaseException:
            self.close()
            raise
        return self

    def _adopt(self, table: SweepTable) -> None:
        header = json.loads(self.header)
        differences = _differences(table.header, header["config"], tuple(header["shard"]))
        if differences and table.rows:
            raise SweepConfigError(
                f"{self.path} holds results of a different sweep; refusing to resume it ("
                + "; ".join(differences)
                + "). Use another output file, or delete this one to start over."
            )
        if differences:
            warnings.warn(
                f"{self.path} holds only the header of a different sweep (no results); its header will be "
                f"replaced by this sweep's (" + "; ".join(differences) + ")",
                stacklevel=4,
            )
            self.replace = True
            return
        self.done.update(row_key(row) for row in table.rows)
        if table.tail_bytes:
            warn_incomplete(self.path, table, "it is cut off before new rows are appended")
            self.cut = table.complete_bytes

    def append(self, rows: Sequence[dict]) -> None:
        payload = b"".join(encode_line(row) for row in rows)  # encoded (and checked) before any write
        if self.handle is None:
            try:
                self.handle = _place_locked(self.path, self.header + payload, replace=False)
            except FileExistsError as err:
                raise SweepFileError(
                    f"{self.path} was created by another process while this sweep computed; rerun to "
                    f"resume that file"
                ) from err
        elif self.replace:
            old = self.handle
            self.handle = _place_locked(self.path, self.header + payload, replace=True)
            os.close(old)  # the lock moves to the new file, which was locked before it appeared
            self.replace = False
        else:
            if self.cut is not None:
                os.ftruncate(self.handle, self.cut)
                os.fsync(self.handle)
                self.cut = None
            sweep_io.append_rows(
                self.path, rows
            )  # looked up there, so tests/helpers/sweep_worker.py can slow it
        self.done.update(row_key(row) for row in rows)

    def finish(self) -> None:
        """After a successful run: the file exists with this sweep's header even if no row was due."""
        if self.handle is None or self.replace or self.cut is not None:
            self.append([])

    def close(self) -> None:
        if self.handle is not None:
            os.close(self.handle)  # releases the lock
            self.handle = None

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()
