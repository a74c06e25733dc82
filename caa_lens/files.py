"""Writing files: atomically (one file, or several together), so a crash never leaves a half-written one, and byte-reproducibly."""

import errno
import json
import os
import shutil
import struct
import uuid
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["atomic_write_bytes", "replace_together", "safetensors_bytes"]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, fsync it, then rename it over ``path``.

    A reader sees the old file or the new one, never a mixture.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Not tempfile.mkstemp: its files are mode 0600 and os.replace keeps that, so saved files were
    # unreadable by anyone else. O_EXCL with mode 0666 gets a fresh name and the user's umask.
    temporary = str(path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp"))
    handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


# The safetensors dtype codes for the dtypes this package saves.
_SAFETENSORS_DTYPES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.bool: "BOOL",
}


def safetensors_bytes(tensors: Mapping[str, Tensor], metadata: Mapping[str, str] | None = None) -> bytes:
    """Serialise ``tensors`` in the safetensors format with a canonical header (keys sorted).

    ``safetensors.torch.save`` keeps the metadata in a Rust ``HashMap``, whose order changes from one
    process to the next, so the same vector saved twice gave different bytes and different SHA-256s.
    The file this writes is read by any safetensors reader; only the header's key order is fixed.
    """
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = {str(key): str(value) for key, value in sorted(metadata.items())}
    chunks, offset = [], 0
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        if tensor.dtype not in _SAFETENSORS_DTYPES:
            raise TypeError(f"cannot save tensor {name!r} of dtype {tensor.dtype} as safetensors")
        data = tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b""
        header[name] = {
            "dtype": _SAFETENSORS_DTYPES[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        chunks.append(data)
        offset += len(data)
    encoded = json.dumps(header, separators=(",", ":"), sort_keys=True).encode()
    encoded += b" " * (-len(encoded) % 8)  # the format aligns the data section to 8 bytes
    return struct.pack("<Q", len(encoded)) + encoded + b"".join(chunks)


def _write_fully(descriptor: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(descriptor, view)
        if written <= 0:  # os.write raises on a full disk; a zero-byte write would loop forever
            raise OSError(errno.EIO, "write wrote nothing")
        view = view[written:]


def _write_temporary(target: Path, data: bytes, temporaries: list[Path]) -> Path:
    """Write ``data`` to a new hidden file beside ``target`` and fsync it (listed before writing)."""
    # Mode 0666 with O_EXCL: a fresh name, and the user's umask decides the permissions (mkstemp's
    # 0600 would survive the rename and make saved vectors unreadable to others).
    temporary = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    temporaries.append(temporary)
    try:
        _write_fully(descriptor, data)
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    return temporary


def replace_together(files: Sequence[tuple[Path, bytes]]) -> None:
    """Replace every target with its data, or, if anything fails, leave every target as it was.

    All data goes to fsynced temporary files first, so a full disk fails before any target changes.
    The renames then run in order; a target that existed is first hard-linked (copied where links
    are not supported) to a backup, and if a later rename fails the earlier ones are undone.
    """
    temporaries: list[Path] = []
    backups: list[Path] = []
    replaced: list[tuple[Path, Path | None]] = []
    try:
        for target, data in files:
            _write_temporary(target, data, temporaries)
        for (target, _), temporary in zip(files, temporaries, strict=True):
            backup = None
            if target.exists():
                backup = target.with_name(f".{target.name}.{uuid.uuid4().hex}.bak")
                try:
                    os.link(target, backup)
                except OSError:
                    shutil.copyfile(target, backup)
                backups.append(backup)
            os.replace(temporary, target)
            replaced.append((target, backup))
    except BaseException:
        for target, backup in reversed(replaced):
            try:
                if backup is None:
                    target.unlink(missing_ok=True)
                else:
                    os.replace(backup, target)
            except OSError as err:  # the original error matters more; say what could not be undone
                warnings.warn(f"could not restore {target} after a failed save: {err}", stacklevel=3)
        raise
    finally:
        for leftover in temporaries + backups:
            leftover.unlink(missing_ok=True)
    _fsync_directory(files[0][0].parent)


def _fsync_directory(directory: Path) -> None:
    """Make the renames durable (best effort: not every platform can open a directory)."""
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)
