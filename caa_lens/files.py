"""Writing files: atomically, so a crash never leaves a half-written one, and byte-reproducibly."""

import json
import os
import struct
import uuid
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor


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
