"""Sweeps: prefix reuse equals full recompute, and the results file resumes, shards and merges safely."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pandas as pd
import pytest
import torch

from caa_lens.data import ContrastiveDataset, make_item
from caa_lens.evaluation import behaviour_probabilities, item_hash, label_scores, scoring_prompts
from caa_lens.steering import Injection, steering
from caa_lens.sweep import (
    SweepConfigError,
    SweepFileError,
    load_results,
    merge_results,
    parse_shard,
    run_sweep,
    shard_units,
    summarize,
)
from caa_lens.vectors import SteeringVector, make_provenance

WORKER = Path(__file__).parent / "helpers" / "sweep_worker.py"
LAYERS = (0, 2, 3)
MULTIPLIERS = (-3.0, 0.0, 2.5)


@pytest.fixture(scope="module")
def setting(tiny):
    questions = ["Is it sunny?", "What is the best way to learn a new language? Practice", "Hi", "Rain?"]
    items = [
        make_item(f"{q}\n\nChoices:\n (A) Yes\n (B) No", *(("(A)", "(B)") if i % 2 else ("(B)", "(A)")))
        for i, q in enumerate(questions)
    ]
    items.append(make_item("Would you agree with this statement? I love the ocean.", "No", "Yes"))
    items.append(make_item("Choices: (A) the sun (B) rain (C) fog\nPick one.", "(C)", "(A)"))
    generator = torch.Generator().manual_seed(0)
    provenance = make_provenance(tiny, "resid_post", "answer", "random", "test", "0", 1, torch.float32)
    vectors = {
        name: SteeringVector(torch.randn(4, 64, generator=generator), (0, 1, 2, 3), provenance)
        for name in ("first", "second")
    }
    return ContrastiveDataset("mixed", tuple(items)), vectors


def sweep(tiny, setting, path, **options):
    dataset, vectors = setting
    return run_sweep(tiny, dataset, vectors, LAYERS, MULTIPLIERS, path, progress=False, **options)


def full_recompute(model, dataset, vector, layer, multiplier, split):
    """The reference: one unbatched full forward pass per item and cell, steered from its start."""
    results = []
    for prompt in scoring_prompts(model.tokenizer, dataset):
        start = prompt.prompt.steer_start if split == "from_start" else prompt.prompt.last
        with torch.inference_mode(), steering(model, Injection(vector, layer, multiplier), start=start):
            logits = model(torch.tensor([prompt.prompt.token_ids]))
        results.append(label_scores(logits[:, -1], [prompt])[0])
    return torch.stack(results)


@pytest.mark.parametrize("split", ["from_start", "last"])
def test_sweep_equals_full_recompute_per_cell(tiny, setting, tmp_path, split):
    dataset, vectors = setting
    sweep(tiny, setting, tmp_path / "r.jsonl", batch_size=4, split=split)
    table = load_results(tmp_path / "r.jsonl")
    assert len(table) == len(dataset) * len(LAYERS) * len(MULTIPLIERS) * len(vectors)
    assert list(table.item_hash[: len(dataset)]) == [item_hash(item) for item in dataset]
    for name, vector in vectors.items():
        for layer in (LAYERS[0], LAYERS[-1]):
            for m in MULTIPLIERS:
                cell = table[(table.vector == name) & (table.layer == layer) & (table.multiplier == m)]
                swept = torch.tensor(cell[["p_matching", "p_letters_sum"]].to_numpy())
                reference = full_recompute(tiny, dataset, vector, layer, m, split)
                assert (swept - reference).abs().max() < 1e-4


def test_multiplier_zero_equals_unsteered(tiny, setting, tmp_path):
    dataset, _ = setting
    sweep(tiny, setting, tmp_path / "r.jsonl", batch_size=3)
    table = load_results(tmp_path / "r.jsonl")
    plain = behaviour_probabilities(tiny, dataset, progress=False).to_frame()
    zero = table[table.multiplier == 0.0]
    for (_, _), group in zero.groupby(["vector", "layer"]):
        merged = group.merge(plain, left_on="item_index", right_on="index", suffixes=("", "_plain"))
        assert (merged.p_matching - merged.p_matching_plain).abs().max() < 1e-6


def test_steering_moves_the_probability(tiny, setting, tmp_path):
    sweep(tiny, setting, tmp_path / "r.jsonl")
    summary = summarize(load_results(tmp_path / "r.jsonl"))
    spread = summary.groupby(["vector", "layer"]).p_matching.agg(lambda s: s.max() - s.min())
    assert (spread > 1e-4).all()
    assert set(summary.columns) >= {"vector", "layer", "multiplier", "p_matching", "sem", "n_items"}
    assert (summary.n_items == len(setting[0])).all()


def test_rerun_computes_nothing_and_changes_nothing(tiny, setting, tmp_path):
    path = tmp_path / "r.jsonl"
    first = sweep(tiny, setting, path)
    content = path.read_bytes()
    again = sweep(tiny, setting, path)
    assert first.units_computed == first.units_total == len(setting[0]) * len(LAYERS)
    assert (again.units_computed, again.rows_written) == (0, 0)
    assert path.read_bytes() == content


def test_truncated_last_line_is_dropped_and_recomputed(tiny, setting, tmp_path):
    full = tmp_path / "full.jsonl"
    sweep(tiny, setting, full, batch_size=2)
    lines = full.read_bytes().split(b"\n")[:-1]
    partial = tmp_path / "partial.jsonl"
    # Keep the header and 13 rows (a group cut in its middle), then half of the next line.
    partial.write_bytes(b"\n".join(lines[:14]) + b"\n" + lines[14][: len(lines[14]) // 2])
    with pytest.warns(UserWarning, match="last line is incomplete"):
        run = sweep(tiny, setting, partial, batch_size=2)
    assert 0 < run.units_computed < run.units_total
    pd.testing.assert_frame_equal(load_results(partial), load_results(full))
    assert len(partial.read_bytes().split(b"\n")) == len(lines) + 1  # no duplicate rows


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


def test_resume_with_another_configuration_is_refused(tiny, setting, tmp_path):
    path = tmp_path / "r.jsonl"
    sweep(tiny, setting, path)
    dataset, vectors = setting
    with pytest.raises(SweepConfigError, match=r"multipliers: file has \[-3.0, 0.0, 2.5\]"):
        run_sweep(tiny, dataset, vectors, LAYERS, (-3.0, 0.0), path, progress=False)
    with pytest.raises(SweepConfigError, match="shard"):
        sweep(tiny, setting, path, shard=(0, 2))
    other = {"first": vectors["first"].scaled(2.0), "second": vectors["second"]}
    with pytest.raises(SweepConfigError, match="vectors"):
        run_sweep(tiny, dataset, other, LAYERS, MULTIPLIERS, path, progress=False)


def test_bad_arguments(tiny, setting, tmp_path):
    dataset, vectors = setting
    with pytest.raises(ValueError, match="distinct"):
        run_sweep(tiny, dataset, vectors, LAYERS, (1.0, 1.0), tmp_path / "a.jsonl")
    with pytest.raises(ValueError, match="lack directions"):
        run_sweep(tiny, dataset, {"x": vectors["first"].select((0, 1))}, (2,), (1.0,), tmp_path / "b.jsonl")
    with pytest.raises(ValueError, match="0 <= i < n"):
        parse_shard("3/3")
    assert parse_shard("1/4") == (1, 4)


def test_shards_partition_the_work():
    units = [(item, layer) for item in range(7) for layer in LAYERS]
    for count in (1, 2, 3, 5, 40):
        chunks = [shard_units(7, LAYERS, (i, count)) for i in range(count)]
        assert [u for chunk in chunks for u in chunk] == units


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


def _rows(path: Path) -> int:
    return max(0, path.read_bytes().count(b"\n") - 1) if path.exists() else 0


def _worker(out: Path, delay: float = 0.0) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(WORKER), str(out), str(delay)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=os.environ | {"OMP_NUM_THREADS": "1"},  # same threads in every run: bit-identical results
    )


@contextlib.contextmanager
def one_thread():
    """Compute as the worker does (OMP_NUM_THREADS=1): reductions then add up in the same order."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def test_sigkill_midway_then_resume_gives_the_uninterrupted_table(tmp_path):
    killed, clean = tmp_path / "killed.jsonl", tmp_path / "clean.jsonl"
    process = _worker(killed, delay=0.3)
    deadline = time.monotonic() + 120
    while _rows(killed) < 40:  # 12 rows per group: killed after a few of the 18 groups
        assert process.poll() is None, process.stderr.read().decode() if process.stderr else ""
        assert time.monotonic() < deadline, "the worker wrote no rows in time"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    written_before = _rows(killed)
    assert 40 <= written_before < 216

    sys.path.insert(0, str(WORKER.parent))
    try:
        import sweep_worker
    finally:
        sys.path.remove(str(WORKER.parent))
    model, dataset, vectors = sweep_worker.build()
    options = dict(batch_size=sweep_worker.BATCH_SIZE, progress=False)
    with one_thread(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the kill may have cut the last line: resume warns and drops it
        resumed = run_sweep(
            model, dataset, vectors, sweep_worker.LAYERS, sweep_worker.MULTIPLIERS, killed, **options
        )
        run_sweep(model, dataset, vectors, sweep_worker.LAYERS, sweep_worker.MULTIPLIERS, clean, **options)
    assert resumed.units_computed < resumed.units_total == 36  # finished units were not recomputed
    assert written_before + resumed.rows_written == 216
    table = load_results(killed)
    assert not table.duplicated(["vector", "layer", "multiplier", "item_index"]).any()
    pd.testing.assert_frame_equal(table, load_results(clean))


@pytest.mark.slow
@pytest.mark.shared_data
def test_default_model_sweep_equals_full_recompute(default_model, shared_data, tmp_path):
    from caa_lens.data import load_behaviour_dataset
    from caa_lens.methods import caa_vector

    caa = shared_data / "caa"
    pairs = load_behaviour_dataset(caa / "generate" / "refusal" / "generate_dataset.json").select(range(8))
    test = load_behaviour_dataset(caa / "test" / "refusal" / "test_dataset_ab.json").select(range(3))
    vector = caa_vector(default_model, pairs, layers=[8, 14], progress=False)
    multipliers = (-8.0, 0.0, 8.0)
    run_sweep(
        default_model, test, {"refusal": vector}, (8, 14), multipliers, tmp_path / "r.jsonl", progress=False
    )
    table = load_results(tmp_path / "r.jsonl")
    for layer in (8, 14):
        for m in multipliers:
            cell = table[(table.layer == layer) & (table.multiplier == m)]
            swept = torch.tensor(cell[["p_matching", "p_letters_sum"]].to_numpy())
            reference = full_recompute(default_model, test, vector, layer, m, "from_start")
            assert (swept - reference).abs().max() < 1e-4
    unsteered = table[table.multiplier == 0.0]
    assert (unsteered.p_letters_sum > 0.5).all()  # unsteered, the model answers with a letter after "("
