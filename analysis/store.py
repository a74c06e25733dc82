"""Saving analysis results to disk and reading them back, so figures are redrawn from files alone.

A result dataclass is stored as ``NAME.json`` (scalars, strings, tuples, dicts, nested dataclasses,
and the result's type), ``NAME.safetensors`` (its tensors) and ``NAME.FIELD.csv`` (its pandas
tables). Loading rebuilds the same dataclass, so ``analysis.plots`` draws a saved result exactly as
it drew the live one. No pickle anywhere: every file is plain data.
"""

import dataclasses
import importlib
import json
import typing
from pathlib import Path
from typing import Any

import pandas as pd
from torch import Tensor

from caa_lens.files import atomic_write_bytes, safetensors_bytes

FORMAT = "caa_lens.analysis-result/1"


def _encode(value: object) -> object:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            "__dataclass__": f"{type(value).__module__}.{type(value).__qualname__}",
            "fields": {f.name: _encode(getattr(value, f.name)) for f in dataclasses.fields(value)},
        }
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v) for v in value]}
    if isinstance(value, list):
        return [_encode(v) for v in value]
    if isinstance(value, dict):
        return {"__dict__": [[_encode(k), _encode(v)] for k, v in value.items()]}
    if isinstance(value, float | int | str | bool) or value is None:
        return value
    raise TypeError(f"cannot store a {type(value).__name__} inside an analysis result")


def _decode(value: object) -> object:
    if isinstance(value, list):
        return [_decode(v) for v in value]
    if isinstance(value, dict):
        if "__tuple__" in value:
            return tuple(_decode(v) for v in value["__tuple__"])
        if "__dict__" in value:
            return {_decode(k): _decode(v) for k, v in value["__dict__"]}
        if "__dataclass__" in value:
            cls = _resolve(value["__dataclass__"])
            return cls(**{k: _decode(v) for k, v in value["fields"].items()})
    return value


def _resolve(qualified: str) -> type:
    module, _, name = qualified.rpartition(".")
    if not (module == "analysis" or module.startswith(("analysis.", "caa_lens."))):
        raise ValueError(
            f"refusing to load type {qualified!r}: only analysis/caa_lens result types are stored"
        )
    return getattr(importlib.import_module(module), name)


def save_result(result: object, directory: str | Path, name: str) -> Path:
    """Write ``result`` (a frozen result dataclass) as ``directory/name.*``; returns the JSON path."""
    if not dataclasses.is_dataclass(result) or isinstance(result, type):
        raise TypeError(f"save_result takes a result dataclass, got {type(result).__name__}")
    directory = Path(directory)
    tensors: dict[str, Tensor] = {}
    tables: list[str] = []
    scalars: dict[str, object] = {}
    for field in dataclasses.fields(result):
        value = getattr(result, field.name)
        if isinstance(value, Tensor):
            tensors[field.name] = value.detach().cpu().contiguous()
        elif isinstance(value, pd.DataFrame):
            atomic_write_bytes(directory / f"{name}.{field.name}.csv", value.to_csv(index=False).encode())
            tables.append(field.name)
        else:
            scalars[field.name] = _encode(value)
    if tensors:
        atomic_write_bytes(directory / f"{name}.safetensors", safetensors_bytes(tensors))
    record = {
        "format": FORMAT,
        "type": f"{type(result).__module__}.{type(result).__qualname__}",
        "fields": scalars,
        "tensors": sorted(tensors),
        "tables": tables,
    }
    path = directory / f"{name}.json"
    atomic_write_bytes(path, json.dumps(record, indent=1).encode())
    return path


def load_result(directory: str | Path, name: str) -> Any:
    """Rebuild a result saved by ``save_result``; a missing or foreign file is a clear error."""
    from safetensors.torch import load_file

    directory = Path(directory)
    path = directory / f"{name}.json"
    if not path.exists():
        raise FileNotFoundError(f"no saved result {name!r} in {directory} (expected {path.name})")
    record = json.loads(path.read_text())
    if record.get("format") != FORMAT:
        raise ValueError(f"{path} is not a caa_lens analysis result (format {record.get('format')!r})")
    cls = _resolve(record["type"])
    values = {k: _decode(v) for k, v in record["fields"].items()}
    if record["tensors"]:
        values |= load_file(str(directory / f"{name}.safetensors"))
    for field in record["tables"]:
        values[field] = pd.read_csv(directory / f"{name}.{field}.csv")
    hints = typing.get_type_hints(cls)
    for key, value in values.items():
        # JSON has no tuples of ints as dict keys etc.; tensors keep their stored dtype.
        if isinstance(value, list) and typing.get_origin(hints.get(key)) is tuple:
            values[key] = tuple(value)
    return cls(**values)
