"""Shards of a sweep: its (item, layer) work units cut into contiguous chunks, one file per chunk.

``shard=(i, n)`` takes the i-th of n contiguous chunks (SLURM: ``shard=(SLURM_ARRAY_TASK_ID,
SLURM_ARRAY_TASK_COUNT)``, ``default_shard``); ``caa_lens.sweep_io.merge_results`` joins the files.
"""

import os
from collections.abc import Sequence

__all__ = ["check_shard", "default_shard", "parse_shard", "shard_unit_count", "shard_units"]


def check_shard(shard: tuple[int, int]) -> tuple[int, int]:
    """``shard`` as ``(i, n)`` ints, or a ValueError unless ``0 <= i < n``."""
    index, count = (int(x) for x in shard)
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"shard must be (i, n) with 0 <= i < n, got {shard}")
    return index, count


def parse_shard(text: str) -> tuple[int, int]:
    """``"2/8"`` -> ``(2, 8)`` (the command line's ``--shard i/n``)."""
    try:
        index, count = text.split("/")
        return check_shard((int(index), int(count)))
    except ValueError as err:
        raise ValueError(f"shard must look like i/n with 0 <= i < n, got {text!r}") from err


def shard_units(n_items: int, layers: Sequence[int], shard: tuple[int, int]) -> list[tuple[int, int]]:
    """The (item, layer) units of one shard: a contiguous chunk of all units ordered by item then layer.

    Contiguous chunks keep an item's layers together, so each shard encodes each prefix once.
    """
    index, count = check_shard(shard)
    units = [(item, layer) for item in range(n_items) for layer in layers]
    return units[index * len(units) // count : (index + 1) * len(units) // count]


def shard_unit_count(header: dict) -> int:
    """How many (item, layer) units the shard of a header owns (``sweep.shard_units``'s chunk size)."""
    config = header["config"]
    total = int(config["n_items"]) * len(config["layers"])
    index, count = header["shard"]
    return (index + 1) * total // count - index * total // count


def default_shard() -> tuple[int, int]:
    """The shard of a SLURM array task (its index from ``SLURM_ARRAY_TASK_MIN``), else ``(0, 1)``."""
    env = os.environ
    if "SLURM_ARRAY_TASK_ID" in env and "SLURM_ARRAY_TASK_COUNT" in env:
        index = int(env["SLURM_ARRAY_TASK_ID"]) - int(env.get("SLURM_ARRAY_TASK_MIN", "0"))
        return check_shard((index, int(env["SLURM_ARRAY_TASK_COUNT"])))
    return (0, 1)
