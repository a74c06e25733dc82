"""Steering multipliers that cannot overflow, checked before any model runs.

A multiplier such as ``1e38`` is a finite float, but ``m * v`` overflows float32 in the residual
stream and every score it yields is NaN: a table of NaN rows, not an error. Every entry point that
takes multipliers (scoring, sweeps, generation, OOD runs, the command line) checks them here first.
"""

import math
from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import Tensor

from caa_lens.steering import Injection
from caa_lens.vectors import SteeringVector

__all__ = ["FLOAT32_MAX", "check_injection_multipliers", "check_multipliers", "scoring_injections"]

FLOAT32_MAX = float(torch.finfo(torch.float32).max)


def _largest_norm(
    vectors: SteeringVector | Mapping[str, SteeringVector] | Sequence[SteeringVector] | None,
) -> tuple[float, str]:
    """The largest norm of any direction (any layer, any ActAdd position) and where it is."""
    if vectors is None:
        return 0.0, ""
    if isinstance(vectors, SteeringVector):
        named: dict[str, SteeringVector] = {"the vector": vectors}
    elif isinstance(vectors, Mapping):
        named = {f"vector {name!r}": v for name, v in vectors.items()}
    else:
        named = {f"vector {i}": v for i, v in enumerate(vectors)}
    best, where = 0.0, ""
    for name, vector in named.items():
        norms = vector.directions.double().norm(dim=-1).reshape(len(vector.layers), -1).amax(dim=1)
        at = int(norms.argmax())
        if float(norms[at]) > best:
            best, where = float(norms[at]), f"{name} at layer {vector.layers[at]}"
    return best, where


def check_multipliers(
    values: Iterable[float | int],
    vectors: SteeringVector | Mapping[str, SteeringVector] | Sequence[SteeringVector] | None = None,
    distinct: bool = True,
) -> tuple[float, ...]:
    """Steering multipliers that cannot overflow: non-empty, finite, distinct, ``|m| * norm`` in float32.

    A multiplier such as ``1e38`` is a finite float, but ``m * v`` overflows float32 in the residual
    stream, and every score it yields is NaN: a table of NaN rows, not an error. Checking here, before a
    model runs or a file is written, turns that into a message. (A product that fits can still
    overflow inside the model, e.g. in a norm's sum of squares; scorers check their outputs too.)

    Args:
        values: the multipliers.
        vectors: the vectors they scale (one, several by name, or a list); ``None`` checks the values
            alone (finite and within float32).
        distinct: refuse repeated values (a sweep's multipliers are a set; per-row multipliers of a
            batch may repeat).

    Returns:
        The multipliers as floats, in the order given.

    >>> check_multipliers([-2, 0, 2.5])
    (-2.0, 0.0, 2.5)
    """
    try:
        floats = tuple(float(m) for m in values)
    except (TypeError, ValueError) as err:
        raise ValueError(f"multipliers must be numbers, got {values!r}") from err
    if not floats:
        raise ValueError("no multipliers given; give at least one (0 is the unsteered baseline)")
    bad = [m for m in floats if not math.isfinite(m)]
    if bad:
        raise ValueError(f"multipliers must be finite numbers, got {bad}")
    if distinct and len(set(floats)) != len(floats):
        repeated = sorted({m for m in floats if floats.count(m) > 1})
        raise ValueError(f"multipliers must be distinct; {repeated} appear more than once in {list(floats)}")
    huge = [m for m in floats if abs(m) > FLOAT32_MAX]
    if huge:
        raise ValueError(
            f"multiplier(s) {huge} exceed the largest float32 ({FLOAT32_MAX:.4g}); steering computes in "
            f"float32 or less, so they would become infinite. Use a smaller multiplier"
        )
    norm, where = _largest_norm(vectors)
    over = [m for m in floats if abs(m) * norm > FLOAT32_MAX]
    if over:
        raise ValueError(
            f"multiplier(s) {over} times the norm {norm:.4g} of {where} exceed the largest float32 "
            f"({FLOAT32_MAX:.4g}): the steered activations would be infinite and every score NaN. "
            f"Use |multiplier| < {FLOAT32_MAX / norm:.4g}"
        )
    return floats


def check_injection_multipliers(injections: Sequence[Injection]) -> None:
    """``check_multipliers`` on each injection's multiplier(s) against its own vector (repeats allowed)."""
    for injection in injections:
        multiplier = injection.multiplier
        values = multiplier.tolist() if isinstance(multiplier, Tensor) else [multiplier]
        check_multipliers(values, injection.vector, distinct=False)


def scoring_injections(
    injections: "Injection | Sequence[Injection]", batch_size: int, caller: str
) -> tuple[Injection, ...]:
    """The injections of a whole-dataset scorer (``behaviour_probabilities``, ``likelihood_scores``), checked.

    Those scorers steer every item alike, so per-row (tensor) multipliers belong to ``run_sweep``;
    every multiplier is checked against overflow before the first forward pass.
    """
    injections = (injections,) if isinstance(injections, Injection) else tuple(injections)
    if any(isinstance(i.multiplier, Tensor) for i in injections):
        raise ValueError(f"{caller} takes float multipliers; use run_sweep for per-row ones")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    check_injection_multipliers(injections)
    return injections
