"""Shards of a sweep: contiguous chunks of the (item, layer) units that partition the work."""

import pytest
from helpers.sweep_setting import LAYERS

from caa_lens.sweep_shards import default_shard, parse_shard, shard_unit_count, shard_units


def test_shards_partition_the_work():
    units = [(item, layer) for item in range(7) for layer in LAYERS]
    for count in (1, 2, 3, 5, 40):
        chunks = [shard_units(7, LAYERS, (i, count)) for i in range(count)]
        assert [u for chunk in chunks for u in chunk] == units


def test_shard_unit_count_matches_the_units_of_each_shard():
    for count in (1, 2, 3, 5, 40):
        for index in range(count):
            header = {"config": {"n_items": 7, "layers": list(LAYERS)}, "shard": [index, count]}
            assert shard_unit_count(header) == len(shard_units(7, LAYERS, (index, count)))


def test_parse_shard_and_the_slurm_default(monkeypatch):
    assert parse_shard("0/1") == (0, 1)
    for bad in ("3/3", "-1/2", "1", "a/b", "1/0"):
        with pytest.raises(ValueError, match="i/n"):
            parse_shard(bad)
    for name in ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_MIN"):
        monkeypatch.delenv(name, raising=False)
    assert default_shard() == (0, 1)
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "5")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "4")
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "3")
    assert default_shard() == (2, 4)
