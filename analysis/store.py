"""Saving analysis results to disk and reading them back, so figures are redrawn from files alone.

A result dataclass is stored as ``NAME.json`` (scalars, strings, tuples, dicts, nested dataclasses,
and the result's type), ``NAME.safetensors`` (its tensors) and ``NAME.FIELD.csv`` (its pandas
tables). Loading rebuilds the same dataclass, so ``analysis.plots`` draws a saved result exactly as
it drew the live one. No pickle anywhere: every file is plain data.

Loading runs no code a file names: the only types it constructs are the result dataclasses listed in
``RESULT_TYPES`` (and a new result type must be added there before it can be saved).
"""

import dataclasses
import json
import typing
from pathlib import Path
from typing import Any

import pandas as pd
from torch import Tensor

from analysis.behaviour_study import BehaviourStudy
from analysis.interference import Interference
from analysis.norms import NormProfile
from analysis.pca import PcaProjections, Separability
from analysis.ratio_tradeoff import RatioTradeoff
from analysis.reversal import ReversalConfig, ReversalResult
from analysis.scaling import SampleSizeScaling
from analysis.similarity import BehaviourSimilarity, LayerSimilarity, MethodSimilarity
from analysis.size_effect import SizeEffect
from analysis.transfer import LayerTransfer
from caa_lens.files import atomic_write_bytes, safetensors_bytes
from caa_lens.outputs import check_output_file
from caa_lens.views import TokenProjection

__all__ = ["FORMAT", "ResultFileError", "is_result_file", "load_result", "save_result"]

FORMAT = "caa_lens.analysis-result/1"


# The names files store for result types that have since moved to another module: a type keeps the name
# it was first saved under, so results saved before the move still load and results saved after it are
# byte-identical to them.
_STORED_NAMES: dict[type, str] = {
    LayerTransfer: "analysis.similarity.LayerTransfer",
    RatioTradeoff: "analysis.norms.RatioTradeoff",
    SizeEffect: "analysis.scaling.SizeEffect",
}


def _type_name(cls: type) -> str:
    return _STORED_NAMES.get(cls, f"{cls.__module__}.{cls.__qualname__}")


# The result types the main job saves (analysis.jobs.main) and the dataclasses nested inside them
# (ReversalResult.config), under the names the files store. A whitelist, not an import of whatever
# module a file names: a crafted results JSON naming any other callable must not run it on load.
RESULT_TYPES: dict[str, type] = {
    _type_name(cls): cls
    for cls in (
        BehaviourSimilarity,
        BehaviourStudy,
        Interference,
        LayerSimilarity,
        LayerTransfer,
        MethodSimilarity,
        NormProfile,
        PcaProjections,
        RatioTradeoff,
        ReversalConfig,
        ReversalResult,
        SampleSizeScaling,
        Separability,
        SizeEffect,
        TokenProjection,
    )
}


class ResultFileError(ValueError):
    """A saved result file is malformed or names a type the store does not rebuild."""


def _encode(value: object) -> object:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            "__dataclass__": _registered_name(type(value)),
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


def _registered_name(cls: type) -> str:
    """The stored name of a result type; refusing here means no file is written that cannot be loaded."""
    name = _type_name(cls)
    if RESULT_TYPES.get(name) is not cls:
        raise TypeError(
            f"cannot store a {name}: it is not a registered result type; add it to "
            "analysis.store.RESULT_TYPES so that load_result may rebuild it"
        )
    return name


def _result_type(name: object, path: Path) -> type:
    """The whitelisted class a file names; never imports or calls anything the file names."""
    cls = RESULT_TYPES.get(name) if isinstance(name, str) else None
    if cls is None:
        raise ResultFileError(
            f"{path}: type {name!r} is not a stored result type, so it is not loaded; "
            f"the store rebuilds only {sorted(RESULT_TYPES)}"
        )
    return cls


def _checked_fields(cls: type, names: typing.Iterable[str], path: Path, where: str) -> None:
    fields = dataclasses.fields(cls)
    given = set(names)
    unknown = sorted(given - {f.name for f in fields})
    missing = sorted(
        f.name
        for f in fields
        if f.name not in given
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    )
    if unknown or missing:
        problems = [f"unknown fields {unknown}"] * bool(unknown) + [f"no fields {missing}"] * bool(missing)
        raise ResultFileError(
            f"{path}: {where} ({_type_name(cls)}) has {' and '.join(problems)}; it was not written by "
            "this version of the result type, so rerun the stage that saves it"
        )


def _decode(value: object, path: Path) -> object:
    if isinstance(value, list):
        return [_decode(v, path) for v in value]
    if isinstance(value, dict):
        if "__tuple__" in value:
            return tuple(_decode(v, path) for v in value["__tuple__"])
        if "__dict__" in value:
            return {_decode(k, path): _decode(v, path) for k, v in value["__dict__"]}
        if "__dataclass__" in value:
            cls = _result_type(value["__dataclass__"], path)
            fields = value.get("fields")
            if not isinstance(fields, dict):
                raise ResultFileError(f"{path}: nested {_type_name(cls)} has no 'fields' object")
            _checked_fields(cls, fields, path, "a nested value")
            return cls(**{k: _decode(v, path) for k, v in fields.items()})
    return value


def save_result(result: object, directory: str | Path, name: str) -> Path:
    """Write ``result`` (a frozen result dataclass) as ``directory/name.*``; returns the JSON path."""
    if not dataclasses.is_dataclass(result) or isinstance(result, type):
        raise TypeError(f"save_result takes a result dataclass, got {type(result).__name__}")
    type_name = _registered_name(type(result))
    directory = Path(directory)
    # Every file this writes replaces only a result of caa_lens's (its JSON record says so).
    record_path = check_output_file(directory / f"{name}.json", "analysis result", is_result_file)
    companions = [directory / f"{name}.safetensors"] + [
        directory / f"{name}.{field.name}.csv" for field in dataclasses.fields(result)
    ]
    for companion in companions:
        check_output_file(companion, "analysis result table", lambda _: is_result_file(record_path))
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
        "type": type_name,
        "fields": scalars,
        "tensors": sorted(tensors),
        "tables": tables,
    }
    path = directory / f"{name}.json"
    atomic_write_bytes(path, json.dumps(record, indent=1).encode())
    return path


def is_result_file(path: str | Path) -> bool:
    """True for a result record ``save_result`` wrote."""
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and record.get("format") == FORMAT


def load_result(directory: str | Path, name: str) -> Any:
    """Rebuild a result saved by ``save_result``; a missing or foreign file is a clear error."""
    from safetensors.torch import load_file

    directory = Path(directory)
    path = directory / f"{name}.json"
    if not path.exists():
        raise FileNotFoundError(f"no saved result {name!r} in {directory} (expected {path.name})")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ResultFileError(f"{path}: not a JSON result file ({err})") from err
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        found = record.get("format") if isinstance(record, dict) else type(record).__name__
        raise ResultFileError(f"{path} is not a caa_lens analysis result (format {found!r})")
    cls = _result_type(record.get("type"), path)
    scalars, tensors, tables = (record.get(key) for key in ("fields", "tensors", "tables"))
    if not (isinstance(scalars, dict) and isinstance(tensors, list) and isinstance(tables, list)):
        raise ResultFileError(f"{path}: 'fields' must be an object and 'tensors', 'tables' lists")
    # Checked before any file is opened: table and tensor names become file names below.
    _checked_fields(cls, [*scalars, *tensors, *tables], path, "the result")
    values = {k: _decode(v, path) for k, v in scalars.items()}
    if tensors:
        stored = load_file(str(directory / f"{name}.safetensors"))
        if sorted(stored) != sorted(tensors):
            raise ResultFileError(
                f"{path}: {name}.safetensors holds tensors {sorted(stored)}, the JSON lists {sorted(tensors)}"
            )
        values |= stored
    for field in tables:
        values[field] = pd.read_csv(directory / f"{name}.{field}.csv")
    hints = typing.get_type_hints(cls)
    for key, value in values.items():
        # JSON has no tuples of ints as dict keys etc.; tensors keep their stored dtype.
        if isinstance(value, list) and typing.get_origin(hints.get(key)) is tuple:
            values[key] = tuple(value)
    return cls(**values)
