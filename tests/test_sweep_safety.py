"""Sweep tables never touch a file caa_lens did not write, never hold a NaN, and fail before any work.

Issue #11: a foreign file lost its last line before being refused; a 1e38 multiplier wrote NaN rows; a
prompt longer than the context ran for minutes (or asked for terabytes) after the header was written;
a header-only file crashed the summary and blocked a corrected rerun.
"""

import json
import re
import warnings

import pandas as pd
import pytest
import torch

import caa_lens.sweep as sweep_module
from caa_lens.data import ContrastiveDataset, make_item
from caa_lens.outputs import OutputError
from caa_lens.provenance import make_provenance
from caa_lens.sweep import run_sweep
from caa_lens.sweep_effects import is_summary_csv, summarize
from caa_lens.sweep_io import (
    SweepConfigError,
    SweepFileError,
    append_rows,
    atomic_write_lines,
    check_sweep_output,
    encode_line,
    is_sweep_file,
    load_results,
    merge_results,
    read_table,
)
from caa_lens.vectors import SteeringVector

LAYERS = (1, 3)
MULTIPLIERS = (-2.0, 0.0, 2.0)
QUESTION = "{}\n\nChoices:\n (A) Yes\n (B) No"
# Far more tokens than the tiny model's context of 512.
LONG = "Please consider the following words carefully. " + "word " * 300


@pytest.fixture(scope="module")
def setting(tiny):
    items = tuple(
        make_item(QUESTION.format(q), *(("(A)", "(B)") if i % 2 else ("(B)", "(A)")))
        for i, q in enumerate(["Is it sunny?", "Hi", "Rain?"])
    )
    provenance = make_provenance(tiny, "resid_post", "answer", "random", "test", "0", 1, torch.float32)
    generator = torch.Generator().manual_seed(0)
    vectors = {
        name: SteeringVector(torch.randn(4, 64, generator=generator), (0, 1, 2, 3), provenance)
        for name in ("first", "second")
    }
    return ContrastiveDataset("safety", items, source="safety.json"), vectors


def sweep(tiny, setting, path, multipliers=MULTIPLIERS, layers=LAYERS, dataset=None, **options):
    data, vectors = setting
    return run_sweep(tiny, dataset or data, vectors, layers, multipliers, path, progress=False, **options)


# A dataset file a user might point --out at by mistake: JSONL without a final newline, 3682 bytes
# in the issue; any file whose last line is incomplete was cut before the refusal.
FOREIGN = {
    "dataset_jsonl": b"".join(
        json.dumps({"question": f"q{i}", "answer_matching_behavior": " Yes"}).encode() + b"\n"
        for i in range(40)
    )
    + b'{"question": "last", "answer_matching_behavior": " No"}',
    "json_array": json.dumps([{"question": "q", "answer_matching_behavior": "(A)"}] * 20).encode(),
    "notes": b"my notes\nsecond line without newline",
    "object_without_format": b'{"vector": "x"}\n{"partial',
    "empty": b"",
    "binary": bytes(range(256)) * 4,
}


@pytest.mark.parametrize("name", sorted(FOREIGN))
def test_run_sweep_refuses_a_foreign_file_byte_identical(tiny, setting, tmp_path, name):
    path = tmp_path / "out.jsonl"
    path.write_bytes(FOREIGN[name])
    with pytest.raises(OutputError, match="not a sweep results table written by caa_lens"):
        sweep(tiny, setting, path)
    assert path.read_bytes() == FOREIGN[name]


def test_read_table_checks_the_header_before_cutting_anything(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_bytes(FOREIGN["dataset_jsonl"])
    with pytest.raises(SweepFileError, match="not a caa_lens sweep results table"):
        read_table(path, repair=True)
    assert path.read_bytes() == FOREIGN["dataset_jsonl"]
    with pytest.raises(SweepFileError, match="not a caa_lens sweep results table"):
        load_results(path)


def test_is_sweep_file_and_check_sweep_output(tiny, setting, tmp_path):
    path = tmp_path / "r.jsonl"
    sweep(tiny, setting, path)
    merged = tmp_path / "merged.jsonl"
    merge_results([path], out=merged)
    assert is_sweep_file(path) and is_sweep_file(merged)
    for name, content in FOREIGN.items():
        other = tmp_path / f"{name}.jsonl"
        other.write_bytes(content)
        assert not is_sweep_file(other), name
        with pytest.raises(OutputError, match=re.escape(other.name)):
            check_sweep_output(other)
    header_without_newline = tmp_path / "partial.jsonl"
    header_without_newline.write_bytes(path.read_bytes().split(b"\n")[0])
    assert not is_sweep_file(header_without_newline)
    assert not is_sweep_file(tmp_path / "missing.jsonl") and not is_sweep_file(tmp_path)
    assert check_sweep_output(tmp_path / "new" / "r.jsonl") == tmp_path / "new" / "r.jsonl"
    assert check_sweep_output(str(path)) == path
    with pytest.raises(OutputError, match="is a directory"):
        check_sweep_output(tmp_path)


def test_merge_refuses_a_foreign_out_before_reading_the_shards(tiny, setting, tmp_path):
    shard = sweep(tiny, setting, tmp_path / "r.jsonl").path
    out = tmp_path / "notes.jsonl"
    out.write_bytes(FOREIGN["notes"])
    with pytest.raises(OutputError, match=r"notes\.jsonl exists and is not a sweep results table"):
        merge_results([shard], out=out)
    # out is checked first: the shards are not even read (a missing one would be another error).
    with pytest.raises(OutputError):
        merge_results([tmp_path / "missing.jsonl"], out=out)
    assert out.read_bytes() == FOREIGN["notes"]
    merged = tmp_path / "merged.jsonl"
    merge_results([shard], out=merged)
    merge_results([shard], out=merged)  # caa_lens's own table: replaced
    assert len(load_results(merged)) == len(load_results(shard))


def test_overflowing_multipliers_are_refused_before_the_file_is_written(tiny, setting, tmp_path):
    path = tmp_path / "r.jsonl"
    # 1e38 is a finite float, but 1e38 * |v| (about 8) overflows float32: every score was NaN.
    with pytest.raises(ValueError, match=r"1e\+38.*float32"):
        sweep(tiny, setting, path, multipliers=(0.0, 1e38))
    with pytest.raises(ValueError, match="float32"):
        sweep(tiny, setting, path, multipliers=(0.0, 1e300))
    with pytest.raises(ValueError, match="no multipliers"):
        sweep(tiny, setting, path, multipliers=())
    with pytest.raises(ValueError, match="finite"):
        sweep(tiny, setting, path, multipliers=(0.0, float("nan")))
    assert not path.exists()


def test_non_finite_score_stops_the_sweep_and_writes_no_row(tiny, setting, tmp_path, monkeypatch):
    real = sweep_module.suffix_scores

    def overflowing(model, batch, vectors, layer, multipliers):
        scores = real(model, batch, vectors, layer, multipliers)
        if layer == LAYERS[-1]:
            scores[:, 1, 2] = float("nan")  # vector 'second', multiplier 2.0
        return scores

    monkeypatch.setattr(sweep_module, "suffix_scores", overflowing)
    path = tmp_path / "r.jsonl"
    with pytest.raises(ValueError, match=r"vector 'second', layer 3, multiplier 2: .*not finite"):
        sweep(tiny, setting, path, batch_size=8)
    # The first layer's group was written; the failing one was not, and no NaN reached the file.
    table = load_results(path)
    assert set(table.layer) == {LAYERS[0]} and table.p_matching.notna().all()
    assert b"NaN" not in path.read_bytes()


def test_no_table_writer_writes_a_non_finite_number(tmp_path):
    with pytest.raises(ValueError, match="p_matching=nan"):
        encode_line({"vector": "v", "p_matching": float("nan")})
    with pytest.raises(ValueError, match="non-finite"):
        encode_line({"config": {"multipliers": [float("inf")]}})
    path = tmp_path / "t.jsonl"
    with pytest.raises(ValueError, match="non-finite"):
        atomic_write_lines(path, [{"a": 1.0}, {"a": float("-inf")}])
    assert not path.exists()
    path.write_bytes(b"kept\n")
    with pytest.raises(ValueError, match="non-finite"):
        append_rows(path, [{"a": 1.0}, {"a": torch.tensor(float("nan"))}])
    assert path.read_bytes() == b"kept\n"
    assert encode_line({"a": 1e38, "b": None, "c": "nan"}) == b'{"a": 1e+38, "b": null, "c": "nan"}\n'


def test_a_nan_row_in_an_old_file_is_an_error(tiny, setting, tmp_path):
    path = tmp_path / "r.jsonl"
    sweep(tiny, setting, path)
    lines = path.read_text().split("\n")
    row = json.loads(lines[2])
    row["p_matching"] = float("nan")
    lines[2] = json.dumps(row)
    path.write_text("\n".join(lines))
    with pytest.raises(SweepFileError, match="line 3: field 'p_matching' is nan"):
        load_results(path)


def long_dataset(position: int = 1) -> ContrastiveDataset:
    items = [make_item(QUESTION.format(q), "(A)", "(B)") for q in ("Is it sunny?", "Hi", "Rain?")]
    items[position] = make_item(QUESTION.format(LONG), "(A)", "(B)")
    return ContrastiveDataset("long", tuple(items), source="long.json")


def test_a_prompt_longer_than_the_context_is_refused_before_any_pass(tiny, setting, tmp_path, monkeypatch):
    def no_pass(*args, **kwargs):
        raise AssertionError("a forward pass ran before every prompt was checked")

    monkeypatch.setattr(sweep_module, "encode_prefixes", no_pass)
    path = tmp_path / "r.jsonl"
    message = r"long\.json: item 2: \d+ tokens exceed the model's context of 512 tokens"
    with pytest.raises(ValueError, match=message):
        sweep(tiny, setting, path, dataset=long_dataset(2))
    assert not path.exists()


def test_a_long_prompt_leaves_an_existing_table_byte_identical(tiny, setting, tmp_path):
    path = tmp_path / "r.jsonl"
    sweep(tiny, setting, path, dataset=long_dataset(0).select([1, 2]))
    content = path.read_bytes()
    with pytest.raises(ValueError, match=r"long\.json: item 0: \d+ tokens exceed"):
        sweep(tiny, setting, path, dataset=long_dataset(0))
    assert path.read_bytes() == content


def header_only(tiny, setting, tmp_path, name="header.jsonl", **options):
    full = sweep(tiny, setting, tmp_path / f"full-{name}", **options).path
    path = tmp_path / name
    path.write_bytes(full.read_bytes().split(b"\n")[0] + b"\n")
    return path


def test_header_only_file_gives_a_clear_error(tiny, setting, tmp_path):
    path = header_only(tiny, setting, tmp_path)
    with pytest.raises(SweepFileError, match=r"no rows yet.*rerun"):
        load_results(path)
    partial_row = tmp_path / "partial.jsonl"
    partial_row.write_bytes(path.read_bytes() + b'{"vector": "first", "la')
    with pytest.warns(UserWarning, match="incomplete"), pytest.raises(SweepFileError, match="no rows yet"):
        load_results(partial_row)
    with pytest.raises(ValueError, match="nothing to summarize"):
        summarize(pd.DataFrame())


def test_header_only_file_of_another_configuration_is_replaced_with_a_warning(tiny, setting, tmp_path):
    path = header_only(tiny, setting, tmp_path, multipliers=(0.0, 5.0))
    with pytest.warns(UserWarning, match=r"only the header of a different sweep.*multipliers"):
        run = sweep(tiny, setting, path)
    assert run.rows_written == len(load_results(path)) == 3 * 2 * 3 * 2
    assert json.loads(path.read_bytes().split(b"\n")[0])["config"]["multipliers"] == list(MULTIPLIERS)
    reference = sweep(tiny, setting, tmp_path / "reference.jsonl").path
    assert path.read_bytes() == reference.read_bytes()
    # A file with rows is still refused: its results would be lost.
    with pytest.raises(SweepConfigError, match="different sweep"):
        sweep(tiny, setting, path, multipliers=(0.0,))


def failing(monkeypatch):
    def fail(*args, **kwargs):
        raise RuntimeError("out of memory (simulated)")

    monkeypatch.setattr(sweep_module, "suffix_scores", fail)


def test_a_failed_run_leaves_no_file_it_created(tiny, setting, tmp_path, monkeypatch):
    failing(monkeypatch)
    path = tmp_path / "deep" / "r.jsonl"
    with pytest.raises(RuntimeError, match="simulated"):
        sweep(tiny, setting, path)
    assert not path.exists()
    assert not list(tmp_path.iterdir())  # no temporary file, not even the directory


def test_a_failed_run_leaves_pre_existing_files_byte_identical(tiny, setting, tmp_path, monkeypatch):
    other = header_only(tiny, setting, tmp_path, "other.jsonl", multipliers=(0.0,))
    truncated = tmp_path / "truncated.jsonl"
    full = sweep(tiny, setting, tmp_path / "full.jsonl").path.read_bytes()
    lines = full.split(b"\n")
    truncated.write_bytes(b"\n".join(lines[:4]) + b"\n" + lines[4][:30])
    before = {path: path.read_bytes() for path in (other, truncated)}
    failing(monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in before:
            with pytest.raises(RuntimeError, match="simulated"):
                sweep(tiny, setting, path)
    assert {path: path.read_bytes() for path in before} == before
    monkeypatch.undo()
    with pytest.warns(UserWarning, match="last line is incomplete"):
        sweep(tiny, setting, truncated)
    assert truncated.read_bytes() == full


def test_a_shard_without_work_writes_its_header_and_says_so(tiny, setting, tmp_path):
    units = 3 * len(LAYERS)  # 3 items x 2 layers
    paths = [
        sweep(tiny, setting, tmp_path / f"s{i}.jsonl", shard=(i, units + 2)).path for i in range(units + 2)
    ]
    empty = [p for p in paths if p.read_bytes().count(b"\n") == 1]
    assert len(empty) == 2 and all(is_sweep_file(p) for p in empty)
    with pytest.raises(SweepFileError, match="no \\(item, layer\\) units"):
        load_results(empty[0])
    assert len(merge_results(paths)) == units * 2 * 3
    assert sweep(tiny, setting, empty[0], shard=(paths.index(empty[0]), units + 2)).rows_written == 0


def test_is_summary_csv(tiny, setting, tmp_path):
    path = sweep(tiny, setting, tmp_path / "r.jsonl").path
    csv = tmp_path / "summary.csv"
    summarize(load_results(path)).to_csv(csv, index=False)
    assert is_summary_csv(csv)
    other = tmp_path / "other.csv"
    other.write_text("a,b\n1,2\n")
    assert not is_summary_csv(other) and not is_summary_csv(path) and not is_summary_csv(tmp_path / "x.csv")
