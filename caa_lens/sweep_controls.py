"""Random controls of a sweep: vectors of the same per-layer norm, named after the vector they control.

``with_controls`` adds, for every named vector, random vectors of the same per-layer norm
(``caa_lens.stats.random_like``) named ``random:<vector>:<seed>`` (``control_name``); swept beside the
vectors, their effects give each cell its null band (``caa_lens.sweep_effects.effects_summary``), and
``control_target`` reads back which vector a control controls.
"""

from collections.abc import Mapping

from caa_lens.stats import random_like
from caa_lens.vectors import SteeringVector

__all__ = ["NULL_PREFIX", "control_name", "control_target", "with_controls"]

NULL_PREFIX = "random"  # controls are named random:<vector>:<seed> (caa_lens.stats.with_null's rule)


def control_name(vector: str, seed: int) -> str:
    """The name of ``vector``'s random control of seed ``seed``: ``random:<vector>:<seed>``.

    ``caa_lens.stats.with_null`` reads this name to pair a control with the vector it controls.

    >>> control_name("refusal", 2)
    'random:refusal:2'
    """
    return f"{NULL_PREFIX}:{vector}:{seed}"


def _is_control_name(name: str) -> bool:
    """Whether ``name`` is a random control's (``random`` or ``random:...``), a name vectors may not take."""
    return name == NULL_PREFIX or name.startswith(f"{NULL_PREFIX}:")


def control_target(name: str) -> str | None:
    """The vector a control controls: ``random:<vector>:<seed>`` -> vector, ``random[:<seed>]`` -> "*"."""
    if name != NULL_PREFIX and not name.startswith(f"{NULL_PREFIX}:"):
        return None
    parts = name[len(NULL_PREFIX) + 1 :].rsplit(":", 1)
    return parts[0] if len(parts) == 2 else "*"


def _check_count(value: object, option: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{option} must be a whole number >= 0, got {value!r}")
    return value


def with_controls(
    vectors: Mapping[str, SteeringVector], controls: int, seed: int = 0
) -> dict[str, SteeringVector]:
    """``vectors`` followed by ``controls`` random vectors of the same per-layer norm for each of them.

    The control of ``name`` with seed ``s`` (``seed <= s < seed + controls``) is
    ``random_like(vectors[name], s)`` named ``control_name(name, s)``. Every vector gets the same seeds,
    so two vectors' controls share their random directions, each scaled to its own vector's norms: their
    null bands differ only through the norms, which keeps them comparable.

    Raises:
        ValueError: ``controls`` or ``seed`` is not a whole number >= 0, or (with controls) a given
            vector's name is one the controls use (``random`` or ``random:...``).
    """
    _check_count(controls, "controls")
    _check_count(seed, "control_seed")
    named = dict(vectors)
    if not controls:
        return named
    reserved = sorted(name for name in named if _is_control_name(name))
    if reserved:
        raise ValueError(
            f"vector names {reserved} are reserved for random controls ({NULL_PREFIX}:<vector>:<seed>); "
            f"rename those vectors, or sweep them with controls=0 if they are your own controls"
        )
    for name, vector in vectors.items():
        for s in range(seed, seed + controls):
            named[control_name(name, s)] = random_like(vector, s)
    return named
