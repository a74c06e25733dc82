"""The one entry point of the scripts in ``figures/``: ``python figures/NAME.py RESULTS_DIR --out DIR``.

Each script is named after a registry entry (``FIGURES`` or ``ACTADD_FIGURES``) and only calls
``script_main(NAME)``. The output directory may also be given positionally (``RESULTS_DIR OUT``); it
defaults to ``RESULTS_DIR/figures`` for the main job's figures and to ``RESULTS_DIR`` itself (beside
the tables) for the ActAdd figures.
"""

import argparse
from collections.abc import Sequence
from pathlib import Path

from analysis.actadd_store import is_actadd_dir
from analysis.plots.actadd_registry import ACTADD_FIGURES, draw_actadd
from analysis.plots.registry import FIGURES, draw
from analysis.plots.style import files_backend

__all__ = ["script_main"]


def script_main(name: str, argv: Sequence[str] | None = None) -> None:
    """Draw the figure(s) of registry entry ``name`` from the results directory named in ``argv``
    (default: the command line) and print each file written."""
    actadd = name in ACTADD_FIGURES
    if not actadd and name not in FIGURES:
        raise ValueError(
            f"unknown figure type {name!r}: expected one of {sorted([*FIGURES, *ACTADD_FIGURES])}"
        )
    spec = ACTADD_FIGURES[name] if actadd else FIGURES[name]
    source = "`caa-lens actadd ...`" if actadd else "`caa-lens demo`"
    default = "RESULTS" if actadd else "RESULTS/figures"
    parser = argparse.ArgumentParser(
        description=f"{spec.summary} Drawn from a results directory written by {source}."
    )
    parser.add_argument("results", type=Path, help=f"directory written by {source}")
    parser.add_argument("out", type=Path, nargs="?", help=f"output directory (default: {default})")
    parser.add_argument("--out", dest="out_option", type=Path, help="the same as OUT")
    args = parser.parse_args(None if argv is None else list(argv))
    if args.out and args.out_option and args.out != args.out_option:
        parser.error("give the output directory once (OUT or --out)")
    out = args.out or args.out_option
    files_backend()
    if not actadd:
        paths = draw(args.results, out, [name])
    else:
        if not is_actadd_dir(args.results):
            parser.error(f"{args.results} is not a directory written by `caa-lens actadd`")
        paths = draw_actadd(args.results, out, [name])
        if not paths:
            parser.error(
                f"{args.results} holds no saved results of this experiment ({', '.join(spec.reads)})"
            )
    for path in paths:
        print(path)
