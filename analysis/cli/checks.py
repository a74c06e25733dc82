"""Argument checks of the ``caa-lens`` command line, shared by every command.

Every command runs in two phases. **Checking**: every argument, input file, vector file, layer and
output path is validated before a model is loaded or anything is computed; a problem there is a
``UsageError`` (exit code 2) naming the option or file and what to do. **Running**: the model is
loaded and the work done; a failure there exits with code 1. Either way the user sees one line
(``caa-lens: error: ...``); ``--debug`` shows the traceback. Outputs go only to new paths or to files
caa_lens itself wrote (``caa_lens.outputs``): a command never modifies a file it did not create.
"""

import json
import math
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from caa_lens.models import DEFAULT_MODEL

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

__all__ = [
    "METRIC_HELP",
    "MODEL_HELP",
    "SITES",
    "UsageError",
    "check_layers_fit",
    "check_metric_option",
    "check_model",
    "checking",
    "existing_file",
    "finite",
    "for_model",
    "layer_count",
    "load_model_arg",
    "model_option",
    "parse_layers",
    "parse_multipliers",
    "positive",
    "read_dataset",
    "vector_files",
]

MODEL_HELP = (
    f"Model: {DEFAULT_MODEL!r} (default, offline), 'tiny' (a random 4-layer model for smoke runs), a "
    "checkpoint dir, a .gguf file or a Hub name."
)


def model_option() -> Any:
    """The ``--model`` option every model-running command takes: one default, one help text."""
    return typer.Option(DEFAULT_MODEL, "--model", help=MODEL_HELP)


SITES = ("resid_pre", "resid_mid", "resid_post")
METRIC_HELP = (
    "'letter' (CAA: p of the matching answer letter after '(') or 'likelihood' (letter-free: the mean "
    "per-token log-probability of the matching minus the other answer's text as the reply to the question "
    "without its choices; p(matching) = sigmoid of that difference)."
)
_INTEGER = re.compile(r"[+-]?\d+")


class UsageError(ValueError):
    """A bad argument, input file or output path, found before any work was done (exit code 2)."""


@contextmanager
def checking(what: str = "") -> Iterator[None]:
    """Turn the validation errors raised inside into ``UsageError`` (prefixed with ``what``)."""
    try:
        yield
    except UsageError:
        raise
    except (ValueError, OSError, KeyError, TypeError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        raise UsageError(f"{what}: {message}" if what else str(message)) from err


def positive(value: int, option: str) -> int:
    if value < 1:
        raise UsageError(f"{option} must be a positive integer, got {value}")
    return value


def parse_layers(text: str, option: str = "--layers", allow_all: bool = True) -> list[int] | None:
    """``"10,14"`` -> ``[10, 14]``; ``"all"`` -> ``None``. Every entry a non-negative integer, no repeats."""
    if allow_all and text.strip() == "all":
        return None
    entries = [entry.strip() for entry in text.split(",")]
    if not text.strip() or any(not entry for entry in entries):
        raise UsageError(f"{option} {text!r} has an empty entry; write layer indices like 10,14")
    layers = []
    for entry in entries:
        if not _INTEGER.fullmatch(entry):
            raise UsageError(f"{option} {text!r}: {entry!r} is not a layer index (a whole number)")
        if int(entry) < 0:
            raise UsageError(f"{option} {text!r}: layer {entry} is negative; layers count from 0")
        layers.append(int(entry))
    if len(set(layers)) != len(layers):
        raise UsageError(f"{option} {text!r} repeats a layer")
    return layers


def parse_multipliers(text: str, option: str = "--multipliers") -> list[float]:
    """``"-2,0,2"`` -> ``[-2.0, 0.0, 2.0]``: non-empty, every entry a finite number, no repeats."""
    entries = [entry.strip() for entry in text.split(",")]
    if not text.strip():
        raise UsageError(f"{option} is empty; give at least one multiplier, e.g. {option}=-4,0,4")
    if any(not entry for entry in entries):
        raise UsageError(f"{option} {text!r} has an empty entry; write multipliers like -4,0,4")
    values = []
    for entry in entries:
        try:
            value = float(entry)
        except ValueError:
            raise UsageError(f"{option} {text!r}: {entry!r} is not a number") from None
        if not math.isfinite(value):
            raise UsageError(f"{option} {text!r}: {entry!r} is not a finite number")
        values.append(value)
    if len(set(values)) != len(values):
        raise UsageError(f"{option} {text!r} repeats a multiplier")
    return values


def finite(value: float, option: str) -> float:
    if not math.isfinite(value):
        raise UsageError(f"{option} must be a finite number, got {value}")
    return value


def existing_file(path: Path, what: str) -> Path:
    if not path.exists():
        raise UsageError(f"{what} {path} does not exist")
    if not path.is_file():
        raise UsageError(f"{what} {path} is not a file")
    return path


def layer_count(model: str) -> int | None:
    """The model's layer count read from its config without loading weights, when that is cheap."""
    from caa_lens.models import TINY_MODEL, cache_dir

    if model == TINY_MODEL:
        return 4  # caa_lens.tiny's default shape (tiny_hf_model's n_layers)
    # The default model's checkpoint, once built, is an ordinary HF directory in the cache.
    directory = cache_dir() / "checkpoints" / DEFAULT_MODEL if model == DEFAULT_MODEL else Path(model)
    config = directory / "config.json"
    if not config.is_file():
        return None
    try:
        record = json.loads(config.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        if isinstance(record.get(key), int):
            return int(record[key])
    return None


def check_layers_fit(layers: Sequence[int] | None, n_layers: int | None, option: str) -> None:
    if layers is None or n_layers is None:
        return
    outside = [layer for layer in layers if layer >= n_layers]
    if outside:
        raise UsageError(f"{option}: layers {outside} do not exist; the model has layers 0..{n_layers - 1}")


def check_model(model: str) -> int | None:
    from caa_lens.models import ModelFetchError, check_model_spec

    try:
        check_model_spec(model)
    except (ModelFetchError, ValueError, OSError) as err:  # a missing model is the user's input to fix
        raise UsageError(f"--model: {err}") from err
    return layer_count(model)


def load_model_arg(model: str):
    from caa_lens.models import load_model

    return load_model(model)


def read_dataset(spec: str, limit: int = 0):
    from caa_lens.data import resolve_dataset

    if limit < 0:
        raise UsageError(f"--limit must be >= 0 (0: all items), got {limit}")
    with checking():
        data = resolve_dataset(spec)
    if limit:
        data = data.select(range(min(limit, len(data))), f":first{limit}")
    return data


def check_metric_option(metric: str, data=None) -> str:
    """Check ``--metric``; for ``likelihood``, also that every item's answer texts can be located."""
    from caa_lens.sweep import check_metric

    with checking("--metric"):
        check_metric(metric)
    if metric == "likelihood" and data is not None:
        from caa_lens.answer_texts import dataset_option_texts

        with checking("--metric likelihood"):
            dataset_option_texts(data)
    return metric


def vector_files(paths: Sequence[Path], layers: Sequence[int] | None) -> dict:
    """Load and verify saved vectors (integrity only; the model check follows the model's load)."""
    from caa_lens.vector_files import load_vector

    named = {}
    for path in paths:
        existing_file(path, "vector file")
        with checking(str(path)):
            vector = load_vector(path)
        if path.stem in named:
            raise UsageError(f"two vector files are named {path.stem!r}; the vector column must be unique")
        missing = [layer for layer in layers or () if layer not in vector.layers]
        if missing:
            raise UsageError(
                f"{path} has no direction for layers {missing}; it has layers {list(vector.layers)}"
            )
        named[path.stem] = vector
    return named


def for_model(named: dict, paths: Sequence[Path], bridge: "TransformerBridge") -> dict:
    """Reload each vector against the loaded model: refuses one made on another model or weights."""
    from caa_lens.vector_files import load_vector

    checked = {}
    for path in paths:
        with checking(str(path)):
            checked[path.stem] = load_vector(path, bridge)
    return checked
