"""Export steering vectors as llama.cpp control vectors (GGUF), and read such files back.

A CAA/PCA ``SteeringVector`` (one direction per layer) found with caa_lens can steer the same model
served by llama.cpp: ``llama-cli -m model.gguf --control-vector vector.gguf`` (strength 1) or
``--control-vector-scaled vector.gguf 0.5``.

The file format (llama.cpp ``common_control_vector_load_one``; repeng's ``ControlVector.export_gguf``):
``general.architecture = "controlvector"``, ``controlvector.model_hint`` (informational, e.g. the
model's GGUF architecture ``"llama"``), ``controlvector.layer_count`` (the number of direction tensors;
llama.cpp does not read it) and one 1-D float32 tensor ``direction.{i}`` of ``n_embd`` values per
steered layer, ``i >= 1``. llama.cpp refuses a file whose tensors are anything else (another name,
``direction.0``, another dtype or shape), so provenance travels as a metadata string only.

Layer mapping (checked against llama.cpp's source, not its documentation):

- the loader stores ``direction.{i}`` at row ``i - 1`` of its buffer ("layer 1 at [0]"), and
  ``llama_adapter_cvec::apply`` copies row ``i - 1`` into ``tensors[i]``;
- every model graph ends block ``il`` (0-based) with ``cur = build_cvec(cur, il)``, which adds
  ``tensors[il]`` to that block's output (``l_out-{il}``, the input of block ``il + 1``).

So ``direction.{i}`` is added to the output of block ``i`` (0-based), which is exactly caa_lens's
``blocks.{i}.hook_resid_post`` (HF ``hidden_states[i + 1]``). This module therefore writes

- ``resid_post[L]`` as ``direction.{L}``, for ``1 <= L < n_layers``;
- ``resid_pre[L]`` (the same tensor as ``resid_post[L - 1]``) as ``direction.{L - 1}``, for ``L >= 2``.

``resid_post[0]`` and ``resid_pre[0..1]`` cannot be expressed: llama.cpp never steers layer 0 (it
allocates no tensor for it, and rejects ``direction.0``), and has no hook before block 0. ``resid_mid``
(between attention and MLP) has no llama.cpp counterpart. Positional (ActAdd) vectors are refused
because a control vector is added identically at every position. repeng uses the same convention
(it reads ``hidden_states[L + 1]`` and exports it as ``direction.{L}``). llama.cpp's own
``cvector-generator`` instead reads ``l_out-{i-1}`` and names it ``direction.{i}``, so its vectors are
applied one block after where they were read; caa_lens files reproduce the intervention caa_lens
measured, not that convention.

Differences that remain and that users must know about:

- llama.cpp adds the vector at *every* position, system prompt and user turn included, while CAA in
  caa_lens steers from the end of the user turn onward; the effects are close but not identical.
- The multiplier is baked into the values; llama.cpp multiplies them again by the strength given on
  its command line (1.0 for ``--control-vector``). Files passed together are summed.
- The llama.cpp model is usually quantised, so its residual stream differs slightly from the
  float32 model the vector was read from.
"""

import json
import math
import os
import re
import uuid
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from caa_lens.outputs import check_output_file
from caa_lens.vectors import SteeringVector

__all__ = [
    "ARCHITECTURE",
    "KEY_LAYER_COUNT",
    "KEY_MODEL_HINT",
    "KEY_PROVENANCE",
    "ControlVectorError",
    "control_vector_metadata",
    "export_control_vector_gguf",
    "is_control_vector_file",
    "llama_cpp_layer",
    "load_control_vector_gguf",
]

ARCHITECTURE = "controlvector"
KEY_MODEL_HINT = f"{ARCHITECTURE}.model_hint"
KEY_LAYER_COUNT = f"{ARCHITECTURE}.layer_count"
KEY_PROVENANCE = "caa_lens.provenance"
_DIRECTION = re.compile(r"^direction\.(\d+)$")


class ControlVectorError(ValueError):
    """A vector cannot be expressed as a llama.cpp control vector, or a control-vector file is malformed."""


def llama_cpp_layer(site: str, layer: int) -> int:
    """The llama.cpp ``direction.{i}`` index that adds a vector where caa_lens adds it at ``site[layer]``.

    llama.cpp adds ``direction.{i}`` to the output of block ``i`` (0-based), i.e. ``resid_post[i]``;
    ``resid_pre[L]`` is the same tensor as ``resid_post[L - 1]``.

    >>> llama_cpp_layer("resid_post", 13), llama_cpp_layer("resid_pre", 13)
    (13, 12)
    """
    if site == "resid_post":
        index = layer
    elif site == "resid_pre":
        index = layer - 1
    elif site == "resid_mid":
        raise ControlVectorError(
            f"a vector read at resid_mid[{layer}] (between attention and MLP) has no llama.cpp counterpart: "
            "llama.cpp adds control vectors to block outputs only; re-extract at resid_post"
        )
    else:
        raise ControlVectorError(f"unknown hook site {site!r}: expected resid_post or resid_pre")
    if index < 1:
        where = "the token embeddings" if index < 0 else "the output of block 0"
        raise ControlVectorError(
            f"{site}[{layer}] is {where}: llama.cpp never steers there (it has no control-vector tensor "
            "for layer 0 and rejects direction.0); drop this layer or use a later one"
        )
    return index


def export_control_vector_gguf(
    vector: SteeringVector,
    path: str | Path,
    multiplier: float = 1.0,
    model_hint: str = "llama",
) -> Path:
    """Write ``multiplier * vector`` as a llama.cpp control-vector GGUF file (atomically).

    Args:
        vector: a non-positional vector (``[layer, d_model]``) read at ``resid_post`` (or ``resid_pre``).
            Every layer must be expressible in llama.cpp (see the module docstring): select the layers
            to export first, e.g. ``vector.select(13)``.
        path: the output file (conventionally ``*.gguf``).
        multiplier: baked into the stored values; llama.cpp then scales them by its own strength.
        model_hint: stored as ``controlvector.model_hint``; llama.cpp does not check it. Use the
            model's GGUF ``general.architecture`` (``"llama"`` for Llama, SmolLM2, Mistral...).

    Returns:
        The path written.

    Raises:
        ControlVectorError: positional vector, an unsupported site or layer, or a non-finite value.

    >>> import tempfile, torch
    >>> from caa_lens.tiny import tiny_model
    >>> from caa_lens.vectors import SteeringVector
    >>> from caa_lens.provenance import make_provenance
    >>> model = tiny_model()
    >>> p = make_provenance(model, "resid_post", "answer", "demo", "demo", "0", 1, torch.float32)
    >>> v = SteeringVector(torch.ones(2, 64), (1, 2), p)
    >>> out = export_control_vector_gguf(v, tempfile.mkdtemp() + "/v.gguf", multiplier=2.0)
    >>> sorted(load_control_vector_gguf(out)), float(load_control_vector_gguf(out)[2][0])
    ([1, 2], 2.0)
    """
    import gguf

    if vector.is_positional:
        raise ControlVectorError(
            "positional (ActAdd) vectors cannot be exported: a llama.cpp control vector is one vector per "
            "layer added identically at every position; ActAdd adds a different vector at each front position"
        )
    if not math.isfinite(multiplier):
        raise ControlVectorError(f"multiplier must be finite, got {multiplier}")
    site = vector.provenance.site
    indices = [llama_cpp_layer(site, layer) for layer in vector.layers]
    values = vector.directions.detach().to(device="cpu", dtype=torch.float32) * float(multiplier)
    if not torch.isfinite(values).all():
        raise ControlVectorError(f"multiplier {multiplier} overflows float32 for this vector")
    provenance = vector.provenance.to_json() | {
        "multiplier": float(multiplier),
        "layers": {
            f"direction.{i}": f"{site}[{layer}]" for i, layer in zip(indices, vector.layers, strict=True)
        },
    }
    # Replace only a control vector caa_lens exported, never another file at that path.
    path = check_output_file(path, "llama.cpp control vector", is_control_vector_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    # GGUFWriter opens the file itself (normal permissions); a unique hidden name makes the write atomic.
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        writer = gguf.GGUFWriter(temporary, ARCHITECTURE)
        writer.add_string(KEY_MODEL_HINT, model_hint)
        writer.add_int32(KEY_LAYER_COUNT, len(indices))
        writer.add_string(KEY_PROVENANCE, json.dumps(provenance, sort_keys=True))
        for index, row in sorted(zip(indices, values, strict=True), key=lambda pair: pair[0]):
            writer.add_tensor(f"direction.{index}", np.ascontiguousarray(row.numpy(), dtype=np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


def is_control_vector_file(path: str | Path) -> bool:
    """True for a GGUF control-vector file that caa_lens exported (it carries caa_lens's provenance)."""
    import gguf

    try:
        reader = gguf.GGUFReader(Path(path))
    except (OSError, ValueError, IndexError, KeyError, TypeError, OverflowError):
        return False
    return KEY_PROVENANCE in reader.fields


def _reader(path: Path):
    import gguf

    if not path.exists():
        raise FileNotFoundError(f"control-vector file {path} does not exist")
    try:
        return gguf.GGUFReader(path)
    except (ValueError, IndexError, KeyError, TypeError, OverflowError) as err:
        raise ControlVectorError(f"{path}: not a readable GGUF file ({err})") from err


def load_control_vector_gguf(path: str | Path) -> dict[int, Float[Tensor, " d_model"]]:
    """Read a llama.cpp control-vector file, checking it the way llama.cpp's loader does.

    Returns:
        ``{resid_post layer index: vector}`` (``direction.{i}`` is added to ``resid_post[i]``), with
        any multiplier baked in at export. Several tensors for one layer are summed, as llama.cpp does.

    Raises:
        ControlVectorError: not a GGUF file, not a control vector, or a tensor llama.cpp would refuse.
    """
    import gguf

    path = Path(path)
    reader = _reader(path)
    arch = reader.get_field("general.architecture")
    found = arch.contents() if arch is not None else None
    if found != ARCHITECTURE:
        raise ControlVectorError(f"{path}: general.architecture is {found!r}, expected {ARCHITECTURE!r}")
    out: dict[int, Tensor] = {}
    width = None
    for tensor in reader.tensors:
        match = _DIRECTION.match(tensor.name)
        if match is None or int(match.group(1)) == 0:
            raise ControlVectorError(
                f"{path}: tensor {tensor.name!r} is not a direction.N with N >= 1 (llama.cpp refuses the file)"
            )
        if tensor.tensor_type != gguf.GGMLQuantizationType.F32 or len(tensor.shape) != 1:
            raise ControlVectorError(
                f"{path}: tensor {tensor.name!r} must be 1-D float32, got {tensor.tensor_type.name} "
                f"of shape {list(tensor.shape)}"
            )
        if width is not None and tensor.n_elements != width:
            raise ControlVectorError(
                f"{path}: tensor {tensor.name!r} has {tensor.n_elements} values, earlier ones {width}"
            )
        width = int(tensor.n_elements)
        values = torch.from_numpy(np.array(tensor.data, dtype=np.float32).reshape(-1))
        index = int(match.group(1))
        out[index] = out[index] + values if index in out else values
    if not out:
        raise ControlVectorError(f"{path}: no direction tensors")
    return dict(sorted(out.items()))


def control_vector_metadata(path: str | Path) -> dict[str, object]:
    """The metadata of a control-vector file: model hint, layer count and (when written here) provenance."""
    path = Path(path)
    reader = _reader(path)
    meta: dict[str, object] = {}
    for key, name in ((KEY_MODEL_HINT, "model_hint"), (KEY_LAYER_COUNT, "layer_count")):
        field = reader.get_field(key)
        meta[name] = field.contents() if field is not None else None
    field = reader.get_field(KEY_PROVENANCE)
    meta["provenance"] = json.loads(field.contents()) if field is not None else None
    return meta
