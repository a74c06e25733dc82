"""Output paths: checked before any work, and never a file caa_lens did not write.

The rule every writer follows: **a command never modifies or deletes a file it did not create.** An
output path may be new, or an existing file that a recogniser identifies as caa_lens's own output of
the same kind (a vector file, a sweep table, a generations table...): that one may be replaced
atomically or resumed. Anything else there (the user's dataset, notes, an unrelated file that happens
to share the name) is refused with an ``OutputError`` naming the path and what to do, before a model
is loaded or anything is computed, so a user never waits for a computation whose result cannot be
saved.

Each kind of output owns its recogniser (``caa_lens.vector_files.is_vector_file``,
``caa_lens.sweep_io.is_sweep_file``, ...); this module holds only the checks they share.
"""

import os
from collections.abc import Callable
from pathlib import Path

__all__ = ["OutputError", "check_output_dir", "check_output_file", "check_writable_parent"]

Recogniser = Callable[[Path], bool]


class OutputError(ValueError):
    """An output path cannot be written without touching a file caa_lens did not create."""


def check_writable_parent(path: Path, shown: Path | None = None) -> None:
    """The nearest existing ancestor of ``path`` must be a directory this process can write into.

    ``shown`` is the path the message names (the output directory itself when ``path`` is a file
    that would go inside it)."""
    ancestor = path.parent
    while not ancestor.exists():
        if ancestor.parent == ancestor:
            break
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise OutputError(
            f"{shown or path}: {ancestor} is a file, not a directory; choose another output path"
        )
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise OutputError(
            f"{shown or path}: the directory {ancestor} is not writable; choose another output path"
        )


def check_output_file(path: str | Path, kind: str, is_ours: Recogniser | None = None) -> Path:
    """Check that ``path`` can receive an output of ``kind`` without touching anyone else's file.

    Args:
        path: where the output will be written.
        kind: what will be written there, for the message (``"steering vector"``).
        is_ours: recognises an existing file as caa_lens's own output of this kind, which may be
            replaced (or resumed). ``None``: any existing file is refused.

    Returns:
        ``path`` as a ``Path``.

    Raises:
        OutputError: the path is a directory, its parent cannot be created or written, or a file is
            there that ``is_ours`` does not recognise.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path} is a directory; give a file path for the {kind}")
    check_writable_parent(path)
    if path.exists() or path.is_symlink():
        if path.is_symlink() or not path.is_file():
            raise OutputError(f"{path} exists and is not a regular file; refusing to replace it")
        if is_ours is None or not _recognised(is_ours, path):
            raise OutputError(
                f"{path} exists and is not a {kind} written by caa_lens; refusing to overwrite it "
                f"(choose another output path, or move that file away)"
            )
        if not os.access(path, os.W_OK):
            raise OutputError(f"{path} exists and is not writable; choose another output path")
    return path


def check_output_dir(path: str | Path, kind: str, is_ours: Recogniser) -> Path:
    """Check that directory ``path`` is new, empty, or a results directory caa_lens wrote (``is_ours``)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{path} exists and is not a directory; give a directory for the {kind}")
    check_writable_parent(path / "x", shown=path)
    if path.is_dir() and any(path.iterdir()) and not _recognised(is_ours, path):
        raise OutputError(
            f"{path} is a non-empty directory that caa_lens did not write (no {kind} manifest); "
            f"refusing to write into it (choose a new or empty directory)"
        )
    return path


def _recognised(is_ours: Recogniser, path: Path) -> bool:
    try:
        return bool(is_ours(path))
    except (OSError, ValueError, UnicodeDecodeError):
        return False
