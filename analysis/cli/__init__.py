"""The ``caa-lens`` command: the stage commands, the jobs, ActAdd's experiments and figures, in one app.

``main`` is the entry point: it turns every error into one line on stderr and an exit code (2: a bad
argument, input or output path, found before any work; 1: the run itself failed), with ``--debug``
(anywhere on the command line) showing the traceback instead. Every command that runs a model takes the
same ``--model`` option (``analysis.cli.checks.model_option``; ``tiny`` everywhere), checked before the
model loads.

Modules: ``checks`` (argument checks, ``UsageError``), ``stages`` (vectors, evaluate), ``sweep``
(sweep run|merge|summary), ``generate``, ``jobs`` (demo, analyse, refusal, figures), ``actadd``.
"""

import sys
import traceback
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import typer
from typer.exceptions import TyperException

from analysis.cli import actadd, generate, jobs, stages, sweep
from analysis.cli.checks import UsageError

__all__ = ["app", "main", "run"]

app = typer.Typer(
    help=(
        "Contrastive activation engineering on TransformerLens.\n\n"
        "Typical session: `caa-lens vectors optimism --out v.safetensors`, then `caa-lens sweep run ...`, "
        "`caa-lens evaluate ...`, `caa-lens generate ...`; or everything at once with `caa-lens demo`. "
        "Datasets are bundled names (optimism, formality, sycophancy, refusal; add :test for the held-out split) "
        "or paths to CAA JSON / model-written-evaluation JSONL files. Errors are one line; add --debug "
        "anywhere for the traceback. Exit codes: 0 done, 1 the run failed, 2 a bad argument or file."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# The stage commands, in the order of a session.
app.command()(stages.vectors)
app.add_typer(sweep.sweep_app, name="sweep")
app.command()(stages.evaluate)
app.command("generate")(generate.generate_command)
# The jobs: many stages, one results directory.
app.command()(jobs.demo)
app.command()(jobs.analyse)
app.command()(jobs.refusal)
app.command()(jobs.figures)
app.add_typer(actadd.actadd_app, name="actadd")


def _one_line(error: BaseException) -> str:
    message = error.format_message() if isinstance(error, TyperException) else str(error)
    if isinstance(error, KeyError) and error.args:
        message = str(error.args[0])
    message = " ".join(message.split()) or type(error).__name__
    return message


@contextmanager
def _warnings_as_lines() -> Iterator[None]:
    """Warnings reach the user as ``caa-lens: warning: ...`` lines, not as source excerpts."""
    previous = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        print(f"caa-lens: warning: {' '.join(str(message).split())}", file=sys.stderr)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = previous


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``caa-lens`` with ``argv`` (default: the process's arguments) and return the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    args = [arg for arg in args if arg != "--debug"]
    if not args:
        args = ["--help"]
    with _warnings_as_lines():
        try:
            app(args=args, prog_name="caa-lens", standalone_mode=False)
            return 0
        except typer.Exit as done:
            return int(done.exit_code or 0)
        except (typer.Abort, KeyboardInterrupt):
            print("caa-lens: interrupted", file=sys.stderr)
            return 130
        except (TyperException, UsageError) as error:
            if debug:
                traceback.print_exc()
            print(f"caa-lens: error: {_one_line(error)}", file=sys.stderr)
            return 2
        except Exception as error:
            if debug:
                traceback.print_exc()
                return 1
            print(
                f"caa-lens: error: {_one_line(error)} ({type(error).__name__}; --debug shows the traceback)",
                file=sys.stderr,
            )
            return 1


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
