"""Every notebook in notebooks/ runs end to end and is stored without outputs.

Notebooks are found by glob, so new ones are picked up without touching this file. One that reads
``CAA_LENS_QUICK`` offers a quick mode (tiny model, fewer items) and runs in it here; one that does not
runs in full on the default model, marked ``slow``. Notebooks listed in ``FULL_RUNS`` also run in full.
"""

from pathlib import Path

import nbformat
import pytest
from conftest import SHARED_DATA

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
QUICK_FLAG = "CAA_LENS_QUICK"
SHARED_FLAG = "CAA_LENS_SHARED_DATA"  # notebooks that read it need ../shared/data; skipped without it
FULL_RUNS = ("01_quickstart.ipynb",)  # quick-mode notebooks that CI also runs on the default model


def _code_reads(path: Path, flag: str) -> bool:
    """Whether any code cell of the notebook mentions the environment variable ``flag``."""
    notebook = nbformat.read(path, as_version=4)
    return any(flag in cell.source for cell in notebook.cells if cell.cell_type == "code")


def _supports_quick(path: Path) -> bool:
    return _code_reads(path, QUICK_FLAG)


def _execute(path: Path, quick: bool, monkeypatch: pytest.MonkeyPatch, timeout: int) -> None:
    """Run every cell in a fresh kernel (this interpreter's); any cell error fails the test."""
    from nbclient import NotebookClient

    if _code_reads(path, SHARED_FLAG):
        if not SHARED_DATA.is_dir():
            pytest.skip(f"{path.name} reads the shared data, not found at {SHARED_DATA} (set {SHARED_FLAG})")
        monkeypatch.setenv(SHARED_FLAG, str(SHARED_DATA))
    monkeypatch.setenv(QUICK_FLAG, "1" if quick else "0")
    # The kernel inherits the environment: drop CI's Agg backend so figures render inline as for a user.
    monkeypatch.delenv("MPLBACKEND", raising=False)
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook,
        timeout=timeout,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
    )
    client.execute()  # raises CellExecutionError, with the cell and traceback, on any error
    errors = [out for cell in notebook.cells for out in cell.get("outputs", []) if out.output_type == "error"]
    assert not errors, f"{path.name}: {errors}"


def _run_params():
    for path in NOTEBOOKS:
        marks = () if _supports_quick(path) else (pytest.mark.slow,)
        yield pytest.param(path, id=path.name, marks=marks)


@pytest.mark.parametrize("path", list(_run_params()))
def test_notebook_runs(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Quick mode where the notebook offers it, else a full run (slow)."""
    quick = _supports_quick(path)
    _execute(path, quick, monkeypatch, timeout=300 if quick else 900)


@pytest.mark.slow
@pytest.mark.parametrize("name", FULL_RUNS)
def test_notebook_runs_in_full(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The full run on the default model of notebooks that also have a quick mode."""
    path = NOTEBOOK_DIR / name
    assert path.exists(), f"{name} is listed in FULL_RUNS but missing from {NOTEBOOK_DIR}"
    _execute(path, False, monkeypatch, timeout=900)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_is_stored_without_outputs(path: Path) -> None:
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    dirty = [
        index
        for index, cell in enumerate(notebook.cells)
        if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None)
    ]
    assert not dirty, f"{path.name}: cells {dirty} have outputs; clear them before committing"


def test_notebooks_are_found() -> None:
    assert NOTEBOOKS, f"no notebooks in {NOTEBOOK_DIR}"
