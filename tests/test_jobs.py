"""The job runner (``caa_lens.jobs``): the results-directory claim, stages run once and skipped on rerun,
a failed stage left unmarked, and the one manifest format."""

import json

import pytest

from caa_lens.jobs import (
    RESULTS_MARKER,
    Job,
    Stage,
    build_manifest,
    claim_results_dir,
    dataset_hashes,
    is_results_dir,
    write_manifest,
)
from caa_lens.outputs import OutputError


def quiet(out, lines=None):
    return Job(out, log=(lines.append if lines is not None else lambda line: None))


def test_claim_marks_a_new_directory_and_refuses_a_users_one(tmp_path):
    out = claim_results_dir(tmp_path / "new")
    assert (out / RESULTS_MARKER).is_file() and is_results_dir(out)
    claim_results_dir(out)  # a results directory may be continued
    users = tmp_path / "users"
    users.mkdir()
    (users / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="did not write"):
        claim_results_dir(users)
    assert sorted(p.name for p in users.iterdir()) == ["notes.txt"]  # nothing written into it
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError):
        claim_results_dir(tmp_path / "file")


def test_directories_from_before_the_marker_are_still_results_directories(tmp_path):
    stages = tmp_path / "old" / "stages"
    stages.mkdir(parents=True)
    (stages / "answer.done").write_text('{"seconds": 1.0}')
    assert is_results_dir(tmp_path / "old")
    manifest = tmp_path / "manifest-only"
    manifest.mkdir()
    (manifest / "manifest.json").write_text(json.dumps({"versions": {"caa-lens": "0.1"}}))
    assert is_results_dir(manifest)
    users = tmp_path / "users-manifest"
    users.mkdir()
    (users / "manifest.json").write_text(json.dumps({"versions": {"numpy": "2"}}))
    assert not is_results_dir(users)
    (users / "manifest.json").write_text("not json")
    assert not is_results_dir(users)


def test_stages_run_in_order_once_and_are_skipped_on_rerun(tmp_path):
    calls: list[str] = []
    stages = [Stage(name, lambda name=name: calls.append(name)) for name in ("one", "two")]
    lines: list[str] = []
    job = quiet(tmp_path / "run", lines)
    job.run(stages)
    assert calls == ["one", "two"] and set(job.timings) == {"one", "two"}
    assert json.loads((tmp_path / "run" / "stages" / "one.done").read_text())["seconds"] >= 0
    assert lines[0] == "[one] ..." and lines[1].startswith("[one] done in ")
    lines.clear()
    rerun = quiet(tmp_path / "run", lines)
    rerun.run(stages)
    assert calls == ["one", "two"] and rerun.timings == {}
    assert lines == ["[one] already done, skipping", "[two] already done, skipping"]


def test_a_failed_stage_is_not_marked_and_runs_again(tmp_path):
    def fail() -> None:
        raise RuntimeError("boom")

    job = quiet(tmp_path / "run")
    with pytest.raises(RuntimeError):
        job.run([Stage("ok", lambda: None), Stage("bad", fail)])
    assert job.is_done("ok") and not job.is_done("bad")
    ran: list[str] = []
    assert quiet(tmp_path / "run").run_stage("bad", lambda: ran.append("bad")) is True
    assert ran == ["bad"]


def test_manifest_has_the_one_format(tmp_path):
    from caa_lens.identity import model_identity
    from caa_lens.tiny import tiny_model

    identity = model_identity(tiny_model())
    datasets = dataset_hashes([("optimism", "optimism", "optimism:test")])
    assert set(datasets["optimism"]) == {"train", "train_hash", "test", "test_hash"}
    assert len(datasets["optimism"]["train_hash"]) == 16
    manifest = build_manifest(
        "caa-lens demo",
        identity,
        {"path": tmp_path, "n": 3},
        datasets,
        {"splits": 0},
        1.5,
        {"answer": 0.5},
        extra={"focus_layer": 2},
    )
    assert list(manifest) == [
        "command", "model", "model_config_hash", "config", "focus_layer", "datasets", "seeds", "versions",
        "seconds", "stage_seconds",
    ]  # fmt: skip
    assert manifest["config"] == {"path": str(tmp_path), "n": 3}  # JSON-ready
    assert "caa-lens" in manifest["versions"]
    out = claim_results_dir(tmp_path / "run")
    path = write_manifest(out, manifest)
    assert json.loads(path.read_text()) == manifest and is_results_dir(out)
