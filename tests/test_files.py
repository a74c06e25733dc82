"""The canonical safetensors writer: readable by the safetensors library, identical to its output up to
header key order, and byte-identical across processes (the library's own metadata order is not)."""

import json
import struct
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load, save

from caa_lens.files import safetensors_bytes


def _split(payload: bytes) -> tuple[dict, bytes]:
    (length,) = struct.unpack("<Q", payload[:8])
    return json.loads(payload[8 : 8 + length]), payload[8 + length :]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64])
def test_roundtrip_through_the_safetensors_library(dtype):
    generator = torch.Generator().manual_seed(0)
    tensors = {
        "b": (torch.randn(3, 5, generator=generator) * 7).to(dtype),
        "a": torch.randn(4, generator=generator).to(dtype),
        "empty": torch.zeros(0, 2, dtype=dtype),
    }
    loaded = load(safetensors_bytes(tensors, {"z": "1", "format": "x"}))
    assert set(loaded) == set(tensors)
    for name, tensor in tensors.items():
        assert loaded[name].dtype == dtype
        assert torch.equal(loaded[name], tensor)


def test_same_header_and_data_as_the_library():
    tensors = {"directions": torch.randn(4, 8), "other": torch.arange(6, dtype=torch.float32)}
    metadata = {"format": "caa_lens", "format_version": "1"}
    ours_header, ours_data = _split(safetensors_bytes(tensors, metadata))
    theirs_header, theirs_data = _split(save(tensors, metadata=metadata))
    assert ours_header == theirs_header
    assert ours_data == theirs_data
    assert (8 + len(json.dumps(ours_header, separators=(",", ":")))) <= len(
        safetensors_bytes(tensors, metadata)
    )


def test_header_is_aligned_to_eight_bytes():
    for n in range(1, 12):
        payload = safetensors_bytes({"x" * n: torch.ones(n)}, {"k" * n: "v"})
        (length,) = struct.unpack("<Q", payload[:8])
        assert length % 8 == 0


def test_bytes_do_not_depend_on_the_process():
    script = (
        "import sys, torch; from caa_lens.files import safetensors_bytes;"
        "sys.stdout.buffer.write(safetensors_bytes({'d': torch.arange(8.0)},"
        " {'a': '1', 'b': '2', 'c': '3', 'd': '4'}))"
    )
    outputs = {
        subprocess.run([sys.executable, "-c", script], capture_output=True, check=True).stdout
        for _ in range(4)
    }
    assert len(outputs) == 1


def test_unsupported_dtype_is_named():
    with pytest.raises(TypeError, match=r"'q'.*complex"):
        safetensors_bytes({"q": torch.zeros(2, dtype=torch.complex64)})
