"""Run every benchmark and print one JSON line per workload on stdout.

    python benchmarks/run_all.py            # full sizes (about 15 minutes on 2 quiet cores)
    python benchmarks/run_all.py --quick    # same contenders, smaller sizes (under 3 minutes)

Benchmarks run one after the other (never in parallel: they would time each other). In a full run
each script runs in its own process; in a quick run they share this one, so the model is loaded
once (three loads were a sixth of the 3-minute budget); ``--isolated`` forces separate processes.
Their JSON lines are passed through to stdout, progress and warnings go to stderr, and a summary (targets met or missed, the total time against the budget) ends the stderr output.
``--out FILE`` also writes the lines to FILE; ``--markdown FILE`` writes the README's results table.
"""

import argparse
import contextlib
import importlib
import io
import json
import os
import subprocess
import sys
import time
import traceback
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = {
    "extraction": "bench_extraction.py",
    "sweep": "bench_sweep.py",
    "generation": "bench_generation.py",
    "memory": "bench_memory.py",
}
BUDGET_S = {"quick": 180, "full": 900}


def _fmt(x) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.3g}"
    return str(x)


SIZE_KEYS = ("pairs", "layers", "multipliers", "questions", "batch", "batch_size", "new_tokens")


def _sizes(sizes: dict) -> str:
    parts = []
    for key in SIZE_KEYS:
        if key not in sizes:
            continue
        value = sizes[key]
        if isinstance(value, list) and key == "pairs":
            value = " vs ".join(map(str, value))
        elif isinstance(value, list):
            value = value[0] if len(value) == 1 else f"{len(value)} ({value[0]:g}..{value[-1]:g})"
        parts.append(f"{key.replace('_', ' ')} {value}")
    return ", ".join(parts)


def markdown(records: list[dict]) -> str:
    """The README table: one row per workload, each contender's median, the targets and verdicts."""
    lines = [
        "| workload | sizes | median seconds | target | measured | |",
        "|---|---|---|---|---|---|",
    ]
    noisy = []
    for r in records:
        medians = "<br>".join(
            f"{name}: {_fmt(c.get('median_s'))}" + (" (scaled)" if c.get("scale") else "")
            if "skipped" not in c
            else f"{name}: skipped ({c['skipped'][:60]})"
            for name, c in r.get("contenders", {}).items()
        )
        if r["workload"] == "memory_extraction":
            medians = "<br>".join(
                f"{v.get('pairs')} pairs: peak RSS {v.get('peak_rss_mb')} MB" for v in r["runs"].values()
            )
        targets = r.get("targets", [])
        verdicts = {True: "met", False: "**missed**", None: "n/a"}
        lines.append(
            f"| {r['workload']} | {_sizes(r.get('sizes', {}))} | {medians} | "
            + "<br>".join(t["target"].replace("|", "\\|") for t in targets)
            + " | "
            + "<br>".join(f"{_fmt(t['value'])} {t['comparison']} {_fmt(t['threshold'])}" for t in targets)
            + " | "
            + "<br>".join(verdicts[t["met"]] for t in targets)
            + " |"
        )
        load = r.get("machine", {}).get("load", "")
        if load != "quiet":
            noisy.append(f"{r['workload']}: {load}")
    machine = records[0].get("machine", {}) if records else {}
    lines.append("")
    lines.append(
        f"Measured on {machine.get('cpu', '?')} ({machine.get('usable_cpus', '?')} cores, "
        f"torch {machine.get('versions', {}).get('torch', '?')}, {machine.get('torch_threads', '?')} threads), "
        f"{records[0].get('mode', '?') if records else '?'} mode; "
        + ("every workload measured on a quiet machine." if not noisy else "NOISY: " + "; ".join(noisy))
    )
    return "\n".join(lines) + "\n"


def run_isolated(script: str, argv: list[str], env: dict[str, str]) -> tuple[int, str]:
    """One benchmark script in a fresh process; returns its exit code and stdout."""
    done = subprocess.run(
        [sys.executable, str(HERE / script), *argv], stdout=subprocess.PIPE, text=True, env=env
    )
    return done.returncode, done.stdout


def run_in_process(script: str, argv: list[str]) -> tuple[int, str]:
    """One benchmark script's ``main`` in this process (models loaded once, see ``common.load_bridge``)."""
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    module = importlib.import_module(script.removesuffix(".py"))
    saved, sys.argv = sys.argv, [script, *argv]
    captured = io.StringIO()
    code = 0
    try:
        with contextlib.redirect_stdout(captured):
            module.main()
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    except Exception:  # one broken benchmark must not lose the others' lines
        traceback.print_exc()
        code = 1
    finally:
        sys.argv = saved
    return code, captured.getvalue()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--only", nargs="+", choices=sorted(SCRIPTS), default=list(SCRIPTS))
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--shared-data", default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-install", action="store_true")
    p.add_argument(
        "--isolated",
        action="store_true",
        help="each benchmark in its own process (the default for full runs)",
    )
    p.add_argument("--out", type=Path, default=None, help="also write the JSON lines to this file")
    p.add_argument("--markdown", type=Path, default=None, help="write a markdown results table here")
    args = p.parse_args()

    forwarded = ["--quick"] if args.quick else []
    for flag, value in (
        ("--repeats", args.repeats),
        ("--shared-data", args.shared_data),
        ("--device", args.device),
        ("--threads", args.threads),
    ):
        if value is not None:
            forwarded += [flag, str(value)]
    if args.no_install:
        forwarded.append("--no-install")
    mode = "quick" if args.quick else "full"
    env = dict(os.environ, PYTHONWARNINGS=os.environ.get("PYTHONWARNINGS", "ignore"), TQDM_DISABLE="1")
    isolated = args.isolated or not args.quick
    if not isolated:
        os.environ.update(TQDM_DISABLE="1")
        warnings.simplefilter("ignore")
    started = time.perf_counter()
    records: list[dict] = []
    failed: list[str] = []
    for name in args.only:
        print(f"== {name} ({mode})", file=sys.stderr, flush=True)
        step = time.perf_counter()
        if isolated:
            code, stdout = run_isolated(SCRIPTS[name], forwarded, env)
        else:
            code, stdout = run_in_process(SCRIPTS[name], forwarded)
        for line in stdout.splitlines():
            if line.startswith("{"):
                print(line, flush=True)
                records.append(json.loads(line))
        if code != 0:
            failed.append(f"{name} (exit {code})")
        print(f"== {name} took {time.perf_counter() - step:.0f} s", file=sys.stderr, flush=True)
    total = time.perf_counter() - started

    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("".join(json.dumps(r) + "\n" for r in records))
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(markdown(records))
    print(
        f"\n== summary ({mode}, {total:.0f} s; budget {BUDGET_S[mode]} s on 2 quiet cores)", file=sys.stderr
    )
    for r in records:
        for t in r.get("targets", []):
            verdict = {True: "met   ", False: "MISSED", None: "n/a   "}[t["met"]]
            print(
                f"  {verdict} {r['workload']}: {t['target']} ({_fmt(t['value'])} {t['comparison']} {t['threshold']})",
                file=sys.stderr,
            )
    noisy = sorted(
        {r["machine"]["load"] for r in records if r.get("machine", {}).get("load", "quiet") != "quiet"}
    )
    for note in noisy:
        print(f"  {note}", file=sys.stderr)
    if failed:
        print(f"  FAILED: {', '.join(failed)}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
