"""The job runner: a multi-stage run whose every stage saves its results before the next one starts.

A *job* writes into one results directory. It first *claims* the directory (``claim_results_dir``): a
new or empty directory, or one a job wrote before (``is_results_dir``), never a directory of the user's
own files. A *stage* is a named function that writes its results under the directory; when it returns,
``stages/<name>.done`` records it (with its wall time), and a rerun skips it, so a killed run continues
where it stopped (delete a stage's marker to redo it). The job ends with ``manifest.json``: the command,
the model, the configuration, the datasets and their content hashes, the seeds, the package versions
and the timings (``write_manifest``).

The model and the datasets are a job's parameters, never assumptions of it: ``load_job_model`` loads a
model by the name the command line takes (``tiny`` included), ``dataset_hashes`` fingerprints the
datasets a job read.

>>> import tempfile
>>> out = Path(tempfile.mkdtemp()) / "run"
>>> job = Job(out, log=lambda line: None)
>>> job.run([Stage("hello", lambda: (out / "hello.txt").write_text("hi"))])
>>> sorted(p.name for p in out.iterdir()), Job(out, log=lambda line: None).run_stage("hello", print)
(['.caa_lens-results', 'hello.txt', 'stages'], False)
"""

import json
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from caa_lens.outputs import check_output_dir

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

    from caa_lens.identity import ModelIdentity

__all__ = [
    "RESULTS_MARKER",
    "Job",
    "Stage",
    "build_manifest",
    "claim_results_dir",
    "dataset_hashes",
    "invoked_command",
    "is_results_dir",
    "load_job_model",
    "write_manifest",
]

# Written first into every results directory: it marks the directory as caa_lens's own, so a rerun may
# continue it, while a directory without it (the user's) is never written into.
RESULTS_MARKER = ".caa_lens-results"
_MARKER_TEXT = '{"format": "caa_lens.results/1"}\n'


def is_results_dir(path: Path) -> bool:
    """True for a directory a job wrote: its marker, or (runs before the marker) a stage marker file or
    a manifest that records caa-lens's version. A user's ``manifest.json`` does not count."""
    path = Path(path)
    if (path / RESULTS_MARKER).is_file() or any((path / "stages").glob("*.done")):
        return True
    try:
        manifest = json.loads((path / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and "caa-lens" in (manifest.get("versions") or {})


def claim_results_dir(out: Path) -> Path:
    """Make ``out`` a results directory of caa_lens's, refusing one that holds anyone else's files.

    Raises:
        caa_lens.outputs.OutputError: ``out`` is a file, or a non-empty directory no job wrote.
    """
    out = Path(out)
    check_output_dir(out, "results", is_results_dir)
    out.mkdir(parents=True, exist_ok=True)
    marker = out / RESULTS_MARKER
    if not marker.exists():
        marker.write_text(_MARKER_TEXT)
    return out


@dataclass(frozen=True)
class Stage:
    """One step of a job: ``run`` writes its results under the job's directory and returns nothing."""

    name: str
    run: Callable[[], None]


class Job:
    """A results directory (claimed on creation) and the stages run into it, each at most once.

    ``timings`` holds the seconds of the stages this process ran (skipped ones are absent).
    """

    def __init__(self, out: Path, log: Callable[[str], None] | None = None):
        self.out = claim_results_dir(Path(out))
        self.timings: dict[str, float] = {}
        self.started = time.perf_counter()
        self._log = log or (lambda line: print(line, flush=True))

    def marker(self, name: str) -> Path:
        """The file whose presence means stage ``name`` is done."""
        return self.out / "stages" / f"{name}.done"

    def is_done(self, name: str) -> bool:
        return self.marker(name).exists()

    def run_stage(self, name: str, work: Callable[[], None]) -> bool:
        """Run ``work`` unless stage ``name`` is done; True when it ran."""
        if self.is_done(name):
            self._log(f"[{name}] already done, skipping")
            return False
        started = time.perf_counter()
        self._log(f"[{name}] ...")
        work()
        self.timings[name] = round(time.perf_counter() - started, 1)
        marker = self.marker(name)
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps({"seconds": self.timings[name]}))
        self._log(f"[{name}] done in {self.timings[name]} s")
        return True

    def run(self, stages: Iterable[Stage]) -> None:
        """Run ``stages`` in order (each skipped when done)."""
        for stage in stages:
            self.run_stage(stage.name, stage.run)

    def seconds(self) -> float:
        """Wall time since the job was created, rounded as the manifest records it."""
        return round(time.perf_counter() - self.started, 1)


def load_job_model(name: str) -> "TransformerBridge":
    """The model a job runs on, by the name the command line takes (``tiny``: the tiny random model)."""
    from caa_lens.models import TINY_MODEL, load_model
    from caa_lens.tiny import tiny_model

    return tiny_model() if name == TINY_MODEL else load_model(name)


def dataset_hashes(datasets: Sequence[tuple[str, str, str]]) -> dict[str, dict[str, str]]:
    """``(name, train, test)`` specs (bundled names or paths) -> each one's specs and content hashes."""
    from caa_lens.data import resolve_dataset

    return {
        name: {
            "train": train,
            "train_hash": resolve_dataset(train).content_hash,
            "test": test,
            "test_hash": resolve_dataset(test).content_hash,
        }
        for name, train, test in datasets
    }


def invoked_command(default: str) -> str:
    """The ``caa-lens ...`` command line this process was started with, else ``default``."""
    if sys.argv and "caa-lens" in sys.argv[0]:
        return " ".join(["caa-lens", *sys.argv[1:]])
    return default


def build_manifest(
    command: str,
    identity: "ModelIdentity",
    config: Mapping[str, Any],
    datasets: Mapping[str, Any],
    seeds: Mapping[str, int],
    seconds: float,
    stage_seconds: Mapping[str, float],
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The one manifest format: command, model, configuration, ``extra`` (job-specific records),
    datasets with their hashes, seeds, package versions and timings, in that order."""
    from caa_lens.versions import package_versions

    return {
        "command": command,
        "model": identity.name,
        "model_config_hash": identity.config_hash,
        "config": json.loads(json.dumps(dict(config), default=str)),
        **dict(extra or {}),
        "datasets": dict(datasets),
        "seeds": dict(seeds),
        "versions": package_versions(),
        "seconds": seconds,
        "stage_seconds": dict(stage_seconds),
    }


def write_manifest(out: Path, manifest: Mapping[str, Any]) -> Path:
    """Write ``manifest`` (``build_manifest``) to ``out/manifest.json`` and return its path."""
    path = Path(out) / "manifest.json"
    path.write_text(json.dumps(manifest, indent=1))
    return path
