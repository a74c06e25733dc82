"""The sweep results file: malformed lines are errors naming the line, and shards merge to the full sweep."""

import json

import pandas as pd
import pytest
from helpers.sweep_setting import MULTIPLIERS, mixed_setting, sweep

from caa_lens.sweep import run_sweep
from caa_lens.sweep_io import SweepConfigError, SweepFileError, load_results, merge_results


@pytest.fixture(scope="module")
def setting(tiny):
    return mixed_setting(tiny)


def test_malformed_middle_line_is_an_error(tiny, setting, tmp_path):
    path = tmp_path / "r.jsonl"
    sweep(tiny, setting, path)
    lines = path.read_text().split("\n")
    lines[5] = lines[5][:20]
    path.write_text("\n".join(lines))
    with pytest.raises(SweepFileError, match=r"r\.jsonl: line 6 is not valid JSON"):
        load_results(path)
    with pytest.raises(SweepFileError, match="line 6"):
        sweep(tiny, setting, path)


def test_wrong_row_field_is_an_error(tiny, setting, tmp_path):
    path = tmp_path / "r.jsonl"
    sweep(tiny, setting, path)
    lines = path.read_text().split("\n")
    row = json.loads(lines[3])
    row["layer"] = "two"
    lines[3] = json.dumps(row)
    path.write_text("\n".join(lines))
    with pytest.raises(SweepFileError, match="line 4: field 'layer'"):
        load_results(path)


def test_shards_merge_to_the_full_sweep(tiny, setting, tmp_path):
    full = sweep(tiny, setting, tmp_path / "full.jsonl", batch_size=2).path
    paths = [
        sweep(tiny, setting, tmp_path / f"s{i}.jsonl", batch_size=2, shard=(i, 3)).path for i in range(3)
    ]
    merged = merge_results(paths, out=tmp_path / "merged.jsonl")
    expected = load_results(full)
    # Shards batch different questions together: equal up to padding round-off.
    pd.testing.assert_frame_equal(merged, expected, rtol=0, atol=1e-6)
    pd.testing.assert_frame_equal(load_results(tmp_path / "merged.jsonl"), merged)
    assert sweep(tiny, setting, tmp_path / "merged.jsonl", batch_size=2).units_computed == 0
    with pytest.raises(SweepFileError, match="appears in both"):
        merge_results([paths[0], paths[0], paths[1], paths[2]])
    with pytest.raises(SweepFileError, match="missing or unfinished"):
        merge_results(paths[:2])
    assert len(merge_results(paths[:2], allow_incomplete=True)) < len(expected)
    dataset, vectors = setting
    other = run_sweep(tiny, dataset, vectors, (1,), MULTIPLIERS, tmp_path / "o.jsonl", progress=False).path
    with pytest.raises(SweepConfigError, match="different sweep configurations"):
        merge_results([paths[0], other])
