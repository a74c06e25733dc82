"""Shared machinery of the benchmarks: options, data, models, interleaved timing and the JSON record.

Every benchmark script prints exactly one JSON line per workload on stdout (logs go to stderr), so
``run_all.py`` and any other caller can collect them. Timing is robust to a noisy machine in three
ways: each contender is warmed up first (on a small input), the contenders are timed *interleaved*
(round r runs every contender once, in an order rotated by r, so a burst of load from elsewhere hits
them alike), and the reported figure is the median over rounds. Process CPU time is recorded beside
wall time: on a shared machine wall time includes waiting for a core, CPU time mostly does not.
"""

import argparse
import functools
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA_ENV = "CAA_LENS_SHARED_DATA"
REFUSAL_GENERATE = Path("caa/generate/refusal/generate_dataset.json")
REFUSAL_TEST_AB = Path("caa/test/refusal/test_dataset_ab.json")
REFUSAL_TEST_OPEN = Path("caa/test/refusal/test_dataset_open_ended.json")
STEERING_VECTORS_REQUIREMENT = "steering-vectors==0.12.2"


def log(*parts: object) -> None:
    """Progress messages go to stderr; stdout carries only the JSON lines."""
    print(*parts, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- options


def parser(description: str) -> argparse.ArgumentParser:
    """An argument parser with the options every benchmark script shares."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="same contenders on smaller sizes (< 3 min in all)")
    p.add_argument("--repeats", type=int, default=None, help="timed rounds per contender (default: by mode)")
    p.add_argument(
        "--shared-data",
        type=Path,
        default=None,
        help=f"the shared data directory (default: ${SHARED_DATA_ENV}, else ../shared/data beside the repo)",
    )
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument(
        "--no-install",
        action="store_true",
        help=f"do not pip-install {STEERING_VECTORS_REQUIREMENT} when it is missing (skip that contender)",
    )
    return p


def setup(args: argparse.Namespace) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.repeats is not None and args.repeats < 1:
        raise SystemExit("--repeats must be >= 1")


def peer_repeats(args: argparse.Namespace) -> int | None:
    """Rounds for a peer or baseline contender: one, unless ``--repeats`` asks for more.

    The targets that need a tight ratio (caa_lens against the limit, steered against unsteered) are
    between contenders that get every round; a peer 2x or 10x slower needs no second round to decide
    its target, and its rounds were half of the 15-minute budget.
    """
    return None if args.repeats is not None else 1


def shared_data_dir(option: Path | None = None) -> Path:
    """``--shared-data``, else ``$CAA_LENS_SHARED_DATA``, else ``../shared/data`` beside the repository."""
    root = option or Path(os.environ.get(SHARED_DATA_ENV) or REPO.parent / "shared" / "data")
    if not (root / REFUSAL_GENERATE).exists():
        raise SystemExit(
            f"the CAA refusal data is not under {root} (looked for {REFUSAL_GENERATE}); "
            f"pass --shared-data DIR or set {SHARED_DATA_ENV}"
        )
    return root


# --------------------------------------------------------------------------- models and data


@functools.cache
def load_bridge(device: str = "cpu"):
    """The default model (SmolLM2-135M-Instruct) as caa_lens loads it: a TransformerBridge in raw mode."""
    from caa_lens.models import load_model

    return load_model(device=device)


@functools.cache
def load_plain_hf(device: str = "cpu"):
    """A separate, plain Hugging Face copy of the default model and a fresh tokenizer.

    The bridge wraps the HF modules of its own model in place, so peers that hook HF modules get a
    model of their own, loaded from the same cached checkpoint.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from caa_lens.models import default_checkpoint

    checkpoint = default_checkpoint()
    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).to(device)
    model.eval()
    return model, AutoTokenizer.from_pretrained(checkpoint)


def refusal_dataset(shared: Path, n_pairs: int | None = None, name: str = "refusal"):
    """The CAA refusal generate set, its first ``n_pairs`` items, cycled when more are asked for."""
    from caa_lens.data import ContrastiveDataset, load_behaviour_dataset

    full = load_behaviour_dataset(shared / REFUSAL_GENERATE, name=name)
    if n_pairs is None:
        return full
    items = tuple(full.items[i % len(full)] for i in range(n_pairs))
    return ContrastiveDataset(f"{name}:{n_pairs}", items, full.source)


def ensure_steering_vectors(allow_install: bool = True) -> str | None:
    """Import ``steering_vectors``, pip-installing it (``--no-deps``) when missing; the reason when unusable.

    steering-vectors 0.12.2 pins ``transformers<5`` but runs on 5.x, hence ``--no-deps``; it imports
    scikit-learn at import time, which is installed normally when missing.
    """
    try:
        import steering_vectors

        return None
    except ModuleNotFoundError as err:
        missing = err.name or ""
    if not allow_install:
        return f"{missing} is not installed (pip install --no-deps {STEERING_VECTORS_REQUIREMENT})"
    pip = [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    commands = []
    if missing.startswith("steering_vectors"):
        commands.append([*pip, "--no-deps", STEERING_VECTORS_REQUIREMENT])
    commands.append([*pip, "scikit-learn>=1.4,<2"])
    for command in commands:
        log("installing a benchmark peer:", " ".join(command[2:]))
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            return f"`{' '.join(command[2:])}` failed: {done.stderr.strip()[-300:]}"
    try:
        import importlib

        importlib.invalidate_caches()
        import steering_vectors  # noqa: F401

        return None
    except ModuleNotFoundError as err:
        return f"steering_vectors still cannot be imported: {err}"


# --------------------------------------------------------------------------- machine


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "absent"


def machine(device: str = "cpu") -> dict[str, Any]:
    """What the numbers were measured on, including the load from other processes when measured."""
    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
        "device": device,
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
        "versions": {
            p: _version(p)
            for p in ("torch", "transformers", "transformer-lens", "caa-lens", "steering-vectors")
        },
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    if hasattr(os, "getloadavg"):
        info["loadavg"] = [round(x, 2) for x in os.getloadavg()]
    return info


def _busy_cpu_seconds() -> float | None:
    """CPU seconds the whole machine has spent busy since boot (all cores), from /proc/stat."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _own_cpu_seconds() -> float:
    """CPU seconds of this process and of its finished children (the memory benchmark's workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def cpu_snapshot() -> dict[str, Any]:
    """Where the machine's CPU accounting stands now; two snapshots give other processes' share."""
    return {
        "wall": time.perf_counter(),
        "busy_s": _busy_cpu_seconds(),
        "own_s": _own_cpu_seconds(),
        "loadavg": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
    }


def others_cpu_share(start: dict[str, Any], end: dict[str, Any]) -> float | None:
    """The fraction of the machine's cores other processes used between two snapshots.

    Not the load average: that counts the benchmark's own threads, so a benchmark using both cores
    looked "noisy" on an idle machine. This is the machine's busy CPU time minus this process's.
    """
    if start.get("busy_s") is None or end.get("busy_s") is None:
        return None
    wall = end["wall"] - start["wall"]
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    others = (end["busy_s"] - start["busy_s"]) - (end["own_s"] - start["own_s"])
    return max(0.0, others) / (wall * cpus) if wall > 0 else None


def load_note(share: float | None) -> str:
    """A plain-words verdict on whether other processes competed for the cores while measuring."""
    if share is None:
        return "load unknown"
    if share < 0.10:
        return "quiet"
    return (
        f"NOISY: other processes used {share:.0%} of the cores while measuring; "
        "re-take these numbers on a quiet machine"
    )


# --------------------------------------------------------------------------- timing


@dataclass
class Contender:
    """One way of doing a workload.

    ``run`` does the full workload and returns its result (checked against the others afterwards);
    ``warmup`` runs a small version first so one-off costs (lazy imports, allocator growth, kernel
    selection) are not timed. ``repeats`` caps this contender's rounds (a slow peer may get fewer);
    ``scale`` multiplies its measured times (a contender timed on a known fraction of the work).
    """

    name: str
    run: Callable[[], Any]
    warmup: Callable[[], Any] | None = None
    repeats: int | None = None
    scale: float = 1.0
    note: str = ""


@dataclass
class Measured:
    name: str
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    result: Any = None
    scale: float = 1.0
    note: str = ""
    error: str | None = None

    @property
    def median(self) -> float | None:
        return statistics.median(self.wall) * self.scale if self.wall else None

    def record(self) -> dict[str, Any]:
        if self.error is not None:
            return {"skipped": self.error}
        out: dict[str, Any] = {
            "median_s": _round(self.median),
            "times_s": [_round(t * self.scale) for t in self.wall],
            "median_cpu_s": _round(statistics.median(self.cpu) * self.scale) if self.cpu else None,
            "repeats": len(self.wall),
        }
        if self.scale != 1.0:
            out["scale"] = _round(self.scale)
        if self.note:
            out["note"] = self.note
        return out


def _round(x: float | None, digits: int = 4) -> float | None:
    if x is None:
        return None
    return float(f"{x:.{digits}g}")


def _timed(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    result = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - wall0, time.process_time() - cpu0, result


def measure(contenders: list[Contender], repeats: int) -> dict[str, Measured]:
    """Warm every contender up, then time them interleaved for ``repeats`` rounds.

    Round ``r`` runs the contenders in the order rotated by ``r``, so none always runs first (or
    right after the most memory-hungry one). A contender that raises is reported as skipped with
    its error instead of ending the whole benchmark.
    """
    measured = {c.name: Measured(c.name, scale=c.scale, note=c.note) for c in contenders}
    for c in contenders:
        if c.warmup is not None:
            log(f"  warm-up {c.name}")
            try:
                c.warmup()
            except Exception as err:  # a broken peer must not hide the others' numbers
                measured[c.name].error = f"{type(err).__name__}: {err}"
                log(f"  {c.name} failed in warm-up: {measured[c.name].error}")
    for r in range(repeats):
        order = contenders[r % len(contenders) :] + contenders[: r % len(contenders)]
        for c in order:
            m = measured[c.name]
            if m.error is not None or len(m.wall) >= (c.repeats or repeats):
                continue
            try:
                wall, cpu, result = _timed(c.run)
            except Exception as err:
                m.error = f"{type(err).__name__}: {err}"
                log(f"  {c.name} failed: {m.error}")
                continue
            m.wall.append(wall)
            m.cpu.append(cpu)
            m.result = result
            log(f"  round {r + 1}/{repeats} {c.name}: {wall:.3f} s wall, {cpu:.3f} s cpu")
    return measured


def ratio(measured: dict[str, Measured], slower: str, faster: str) -> float | None:
    """How many times longer ``slower`` took than ``faster`` (medians); None if either is missing."""
    a, b = measured.get(slower), measured.get(faster)
    if a is None or b is None or a.median is None or b.median is None or b.median == 0:
        return None
    return _round(a.median / b.median)


def target(
    description: str, value: float | None, threshold: float, at_least: bool = True, strict: bool = False
) -> dict:
    """A target and whether it was met: ``value >= threshold``, or ``<=`` when ``at_least`` is False
    (``>``/``<`` when ``strict``); ``met`` is None when the value could not be measured."""
    if at_least:
        comparison, ok = (">", value > threshold) if strict and value is not None else (">=", None)
    else:
        comparison, ok = ("<", value < threshold) if strict and value is not None else ("<=", None)
    if value is not None and ok is None:
        ok = value >= threshold if at_least else value <= threshold
    return {
        "target": description,
        "value": _round(value),
        "threshold": threshold,
        "comparison": comparison,
        "met": ok,
    }


def max_relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest per-row ``||a - b|| / ||b||`` (rows: layers of a vector, cells of a sweep...)."""
    a, b = a.double().reshape(-1, a.shape[-1]), b.double().reshape(-1, b.shape[-1])
    norms = b.norm(dim=-1).clamp_min(1e-30)
    return float(((a - b).norm(dim=-1) / norms).max())


def emit(
    workload: str,
    mode: str,
    sizes: dict,
    measured: dict[str, Measured],
    *,
    device: str = "cpu",
    load_start: dict[str, Any] | None = None,
    started: float | None = None,
    **extra: Any,
) -> dict:
    """Print one workload's JSON line on stdout and return it.

    ``load_start`` (a ``cpu_snapshot`` from when the workload began) gives the share of the cores
    other processes used meanwhile and a verdict on whether the machine was quiet; ``started`` (a
    ``perf_counter``) gives ``wall_s``.
    """
    info = machine(device)
    info.pop("loadavg", None)
    if load_start is not None:
        end = cpu_snapshot()
        share = others_cpu_share(load_start, end)
        info["loadavg_start"], info["loadavg_end"] = load_start["loadavg"], end["loadavg"]
        info["others_cpu_share"] = None if share is None else round(share, 3)
        info["load"] = load_note(share)
    else:
        info["load"] = "load unknown"
    record = {
        "workload": workload,
        "mode": mode,
        "sizes": sizes,
        "contenders": {name: m.record() for name, m in measured.items()},
        **extra,
        "machine": info,
    }
    if started is not None:
        record["wall_s"] = round(time.perf_counter() - started, 1)
    print(json.dumps(record), flush=True)
    return record


def mode_of(args: argparse.Namespace) -> str:
    return "quick" if args.quick else "full"
