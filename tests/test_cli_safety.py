"""The data-safety rule, over every command: a command never modifies or deletes a file it did not create.

For each command and each path it writes (and the input's stem, where the old sidecar went), a file of
the user's is put there first; the command must refuse with exit code 2 and one line naming the path,
and every file that existed before must be byte-identical afterwards. Runs that succeed beside the
user's files, and runs that fail midway, must leave them byte-identical too.
"""

import json
from pathlib import Path

import pytest

from analysis.cli import main

USER_BYTES = b'my own notes, not caa_lens output\n{"question": "keep me"}\nan unfinished last line'


def snapshot(root: Path) -> dict[Path, bytes]:
    return {path: path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


def assert_untouched(before: dict[Path, bytes]) -> None:
    changed = [str(path) for path, data in before.items() if not path.exists() or path.read_bytes() != data]
    assert not changed, f"pre-existing files modified or deleted: {changed}"


def run_cli(capsys, *args) -> tuple[int, str]:
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> dict[str, Path]:
    """caa_lens's own outputs, made once: a vector, a sweep table and its summary, generations, results."""
    root = tmp_path_factory.mktemp("made")
    vector = root / "optimism.safetensors"
    assert main(["vectors", "optimism", "--out", str(vector), "--model", "tiny", "--limit", "4"]) == 0
    sweep = root / "sweep.jsonl"
    common = ["--vector", str(vector), "--layers", "1", "--multipliers=0,2", "--model", "tiny"]
    assert main(["sweep", "run", "optimism:test", "--out", str(sweep), *common, "--limit", "2"]) == 0
    prompts = root / "prompts.json"
    prompts.write_text(json.dumps([{"id": "a", "prompt": "Is it sunny?"}]))
    generations = root / "generations.jsonl"
    args = ["--out", str(generations), "--model", "tiny", "--max-new-tokens", "2"]
    assert main(["generate", str(prompts), *args]) == 0
    return {"vector": vector, "sweep": sweep, "prompts": prompts, "generations": generations}


def _commands(tmp: Path, made: dict[str, Path]) -> dict[str, tuple[list, list[Path]]]:
    """Each command with valid inputs, and every output path it writes (to be occupied by a user file)."""
    vector, sweep = made["vector"], made["sweep"]
    out = tmp / "out"
    steer = ["--vector", vector, "--layers", "1", "--multipliers=0,2", "--model", "tiny", "--limit", "2"]
    return {
        "vectors": (
            ["vectors", "optimism", "--out", out / "v.safetensors", "--model", "tiny", "--limit", "2"],
            [out / "v.safetensors", out / "v.safetensors.json"],
        ),
        "sweep run": (["sweep", "run", "optimism:test", "--out", out / "s.jsonl", *steer], [out / "s.jsonl"]),
        "sweep merge": (["sweep", "merge", sweep, "--out", out / "m.jsonl"], [out / "m.jsonl"]),
        "sweep summary": (["sweep", "summary", sweep, "--csv", out / "summary.csv"], [out / "summary.csv"]),
        "generate": (
            [
                "generate",
                made["prompts"],
                "--out",
                out / "g.jsonl",
                "--model",
                "tiny",
                "--max-new-tokens",
                "2",
            ],
            [out / "g.jsonl"],
        ),
        "demo": (["demo", "--model", "tiny", "--quick", "--out", out / "demo"], [out / "demo" / "report.md"]),
        "analyse": (
            [
                "analyse",
                "--dataset",
                "o=optimism,optimism:test",
                "--model",
                "tiny",
                "--quick",
                "--out",
                out / "analyse",
            ],
            [out / "analyse" / "manifest.json"],
        ),
        "figures": (
            ["figures", made["sweep"].parent / "results-dir", "--out", out / "figures"],
            [out / "figures" / "sweep_layers.png"],
        ),
    }


COMMANDS = ["vectors", "sweep run", "sweep merge", "sweep summary", "generate", "demo", "analyse", "figures"]


@pytest.fixture(scope="module")
def results_dir(made) -> Path:
    """A results directory for `figures` (marked as caa_lens's, with no results: draws nothing)."""
    from caa_lens.jobs import RESULTS_MARKER

    directory = made["sweep"].parent / "results-dir"
    directory.mkdir(exist_ok=True)
    (directory / RESULTS_MARKER).write_text("{}")
    return directory


@pytest.mark.parametrize("command", COMMANDS)
def test_a_user_file_at_any_output_path_is_refused_and_left_byte_identical(
    command, tmp_path, capsys, made, results_dir
):
    args, outputs = _commands(tmp_path, made)[command]
    for occupied in outputs:
        for path in outputs:
            path.unlink(missing_ok=True)
        occupied.parent.mkdir(parents=True, exist_ok=True)
        occupied.write_bytes(USER_BYTES)
        before = snapshot(tmp_path) | snapshot(made["vector"].parent)
        code, err = run_cli(capsys, *args)
        assert code == 2, (command, occupied, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and "caa-lens: error:" in lines[0] and "Traceback" not in err
        assert occupied.parent.name in lines[0] or str(occupied.parent) in lines[0], lines[0]
        assert_untouched(before)
        assert snapshot(tmp_path).keys() == {p for p in before if p.is_relative_to(tmp_path)}


def test_saving_a_vector_beside_its_dataset_leaves_the_dataset_alone(tmp_path, capsys):
    """Finding 1: `vectors refusal.json --out refusal.safetensors` replaced refusal.json with metadata."""
    from caa_lens.data import bundled_path

    dataset = tmp_path / "refusal.json"
    dataset.write_bytes(bundled_path("optimism").read_bytes())
    notes = tmp_path / "refusal.safetensors.txt"
    notes.write_bytes(USER_BYTES)
    before = snapshot(tmp_path)
    code, err = run_cli(
        capsys,
        "vectors",
        dataset,
        "--out",
        tmp_path / "refusal.safetensors",
        "--model",
        "tiny",
        "--limit",
        "2",
    )
    assert code == 0, err
    assert_untouched(before)
    assert {p.name for p in tmp_path.iterdir()} == {
        "refusal.json",
        "refusal.safetensors.txt",
        "refusal.safetensors",
        "refusal.safetensors.json",
    }


def test_evaluate_writes_nothing(tmp_path, capsys, made):
    before = snapshot(made["vector"].parent)
    code, err = run_cli(
        capsys,
        "evaluate",
        "optimism:test",
        "--model",
        "tiny",
        "--vector",
        made["vector"],
        "--layer",
        "1",
        "--multiplier",
        "2",
    )
    assert code == 0, err
    assert snapshot(made["vector"].parent) == before


def test_rerunning_replaces_only_its_own_outputs(tmp_path, capsys, made):
    """caa_lens's own vector, table and generations may be replaced (or resumed); that is not a refusal."""
    vector = tmp_path / "v.safetensors"
    for _ in range(2):
        code, err = run_cli(capsys, "vectors", "optimism", "--out", vector, "--model", "tiny", "--limit", "2")
        assert code == 0, err
    generations = tmp_path / "g.jsonl"
    for _ in range(2):
        code, err = run_cli(
            capsys,
            "generate",
            made["prompts"],
            "--out",
            generations,
            "--model",
            "tiny",
            "--max-new-tokens",
            "2",
        )
        assert code == 0, err


def test_empty_multipliers_leave_earlier_generations_intact(tmp_path, capsys, made):
    """Finding 4: `generate --multipliers ""` exited 0 and replaced earlier output with an empty file."""
    generations = tmp_path / "g.jsonl"
    generations.write_bytes(made["generations"].read_bytes())
    before = snapshot(tmp_path)
    code, err = run_cli(
        capsys, "generate", made["prompts"], "--out", generations, "--model", "tiny", "--multipliers", ""
    )
    assert code == 2 and "multipliers" in err
    assert_untouched(before)


def test_a_run_that_fails_midway_leaves_the_earlier_vector_intact(tmp_path, capsys, monkeypatch):
    vector = tmp_path / "v.safetensors"
    code, _ = run_cli(capsys, "vectors", "optimism", "--out", vector, "--model", "tiny", "--limit", "2")
    assert code == 0
    before = snapshot(tmp_path)

    def broken(*args, **kwargs):
        raise RuntimeError("simulated failure during extraction")

    monkeypatch.setattr("caa_lens.methods.caa_vector", broken)
    code, err = run_cli(capsys, "vectors", "optimism", "--out", vector, "--model", "tiny", "--limit", "3")
    assert code == 1 and "simulated failure" in err
    assert_untouched(before)
    assert snapshot(tmp_path).keys() == before.keys()


def test_a_non_sweep_file_is_not_truncated_by_sweep_run(tmp_path, capsys, made):
    """Finding 2: the repair step cut the last line of a non-sweep file before refusing it."""
    target = tmp_path / "notes.jsonl"
    target.write_bytes(USER_BYTES)  # ends without a newline, as a truncated table would
    before = snapshot(tmp_path)
    code, err = run_cli(
        capsys,
        "sweep",
        "run",
        "optimism:test",
        "--vector",
        made["vector"],
        "--out",
        target,
        "--layers",
        "1",
        "--model",
        "tiny",
        "--limit",
        "2",
    )
    assert code == 2 and "notes.jsonl" in err
    assert_untouched(before)


def _api_writers(tiny, vector) -> dict:
    """Every writer of the Python API, as ``name -> (write(path), file name)``."""
    from analysis.similarity import layer_similarity
    from analysis.store import save_result
    from caa_lens.export import export_control_vector_gguf
    from caa_lens.prompts import format_prompt
    from caa_lens.vector_files import save_vector
    from caa_lens.views import save_html, token_projections

    projection = token_projections(tiny, format_prompt(tiny.tokenizer, "Hi"), vector, 1, max_new_tokens=2)
    return {
        "save_vector": (lambda path: save_vector(vector, path), "v.safetensors"),
        "save_vector sidecar": (lambda path: save_vector(vector, path.with_suffix("")), "v.safetensors.json"),
        "export_control_vector_gguf": (
            lambda path: export_control_vector_gguf(vector.select([1, 2]), path),
            "v.gguf",
        ),
        "save_html": (lambda path: save_html(projection, path), "view.html"),
        "save_result": (lambda path: save_result(layer_similarity(vector), path.parent, "sim"), "sim.json"),
        "save_result table": (
            lambda path: save_result(layer_similarity(vector), path.parent, "sim"),
            "sim.by_distance.csv",
        ),
    }


@pytest.mark.parametrize(
    "writer",
    [
        "save_vector",
        "save_vector sidecar",
        "export_control_vector_gguf",
        "save_html",
        "save_result",
        "save_result table",
    ],
)
def test_api_writers_refuse_a_foreign_file_and_replace_their_own(writer, tmp_path, tiny, made):
    from caa_lens.outputs import OutputError
    from caa_lens.vector_files import load_vector

    write, name = _api_writers(tiny, load_vector(made["vector"]))[writer]
    target = tmp_path / name
    target.write_bytes(USER_BYTES)
    before = snapshot(tmp_path)
    with pytest.raises(OutputError, match="refusing"):
        write(target)
    assert_untouched(before)
    assert snapshot(tmp_path).keys() == before.keys()
    target.unlink()
    write(target)  # its own output, written twice: the second call replaces the first
    first = snapshot(tmp_path)
    write(target)
    assert snapshot(tmp_path).keys() == first.keys()
