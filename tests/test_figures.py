"""figures/: one script per registered figure, each run as a subprocess on a saved results directory,
and every figure command the README shows, run as written."""

import os
import re
import shutil
import subprocess
import sys
from fnmatch import fnmatch
from pathlib import Path

import pytest

from analysis.plots import ACTADD_FIGURES, FIGURES, is_caa_lens_png, is_figures_dir

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "figures"
REGISTRY = {**FIGURES, **ACTADD_FIGURES}
# The figure commands in the README's prose (inline code spans), e.g. `python figures/sweep.py ...`.
README_COMMAND = re.compile(r"`((?:python figures/|caa-lens figures )[^`]*)`")


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    """The main job's results on the tiny model at quick sizes (its ActAdd results in ``actadd/``)."""
    import caa_lens as cl
    from analysis.jobs.main import DemoConfig, run_demo

    out = tmp_path_factory.mktemp("demo") / "results"
    run_demo(out, DemoConfig(model=cl.TINY_MODEL, focus_layer=2).quick())
    shutil.rmtree(out / "figures")  # the scripts must draw them again from the saved files alone
    return out


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env.pop("MPLBACKEND", None)  # the scripts choose their backend themselves
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_every_registered_figure_has_a_script_and_every_script_a_figure():
    scripts = {p.stem for p in SCRIPTS.glob("*.py")}
    assert scripts == set(REGISTRY)
    for name in REGISTRY:
        text = (SCRIPTS / f"{name}.py").read_text()
        assert f'script_main("{name}")' in text and f"python figures/{name}.py" in text
    assert not set(FIGURES) & set(ACTADD_FIGURES)


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_script_draws_its_figures_from_saved_results(name, demo, tmp_path):
    results = demo / "actadd" if name in ACTADD_FIGURES else demo
    out = tmp_path / "figures"
    done = _run([sys.executable, str(SCRIPTS / f"{name}.py"), str(results), "--out", str(out)], tmp_path)
    assert done.returncode == 0, done.stderr
    written = [Path(line) for line in done.stdout.split()]
    assert written and sorted(p.name for p in out.iterdir()) == sorted(p.name for p in written)
    for path in written:
        assert any(fnmatch(path.name, pattern) for pattern in REGISTRY[name].files), path.name
        assert is_caa_lens_png(path)


def test_script_takes_the_output_directory_positionally_once(demo, tmp_path):
    script = str(SCRIPTS / "norm_profile.py")
    done = _run([sys.executable, script, str(demo), str(tmp_path / "a")], tmp_path)
    assert done.returncode == 0, done.stderr
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["norm_profile.png"]
    twice = _run(
        [sys.executable, script, str(demo), str(tmp_path / "a"), "--out", str(tmp_path / "b")], tmp_path
    )
    assert twice.returncode == 2 and "once" in twice.stderr


def test_scripts_never_write_into_a_directory_of_other_files(demo, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    done = _run([sys.executable, str(SCRIPTS / "sweep.py"), str(demo), "--out", str(tmp_path)], tmp_path)
    assert done.returncode != 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_actadd_script_refuses_a_directory_actadd_did_not_write(demo, tmp_path):
    done = _run([sys.executable, str(SCRIPTS / "actadd_topic.py"), str(demo)], tmp_path)
    assert done.returncode == 2 and "caa-lens actadd" in done.stderr


def test_readme_figure_commands_run_as_written(demo, tmp_path):
    """Each command runs in a copy of the repository's layout: every ``results/NAME`` it names is a
    copy of the quick demo's results, ``figures/`` a copy of the repository's scripts and gallery."""
    commands = README_COMMAND.findall((REPO / "README.md").read_text())
    assert any(c.startswith("python figures/") for c in commands)
    assert any(c.startswith("caa-lens figures") for c in commands)
    shutil.copytree(SCRIPTS, tmp_path / "figures", ignore=shutil.ignore_patterns("__pycache__"))
    for name in sorted({m for c in commands for m in re.findall(r"results/([\w.-]+)", c)}):
        shutil.copytree(demo, tmp_path / "results" / name)
    caa_lens = str(Path(sys.executable).parent / "caa-lens")
    for command in commands:
        program, *args = command.split()
        argv = [sys.executable, *args] if program == "python" else [caa_lens, *args]
        done = _run(argv, tmp_path)
        assert done.returncode == 0, f"{command}: {done.stderr}"
        written = [
            tmp_path / line if not Path(line).is_absolute() else Path(line) for line in done.stdout.split()
        ]
        assert written and all(is_caa_lens_png(p) for p in written), command
    assert is_figures_dir(tmp_path / "figures" / "gallery")
