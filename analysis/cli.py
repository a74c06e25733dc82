"""The ``caa-lens`` command: caa_lens's stage commands plus the main job, analyses and figures.

It lives in ``analysis`` because the main job runs the analyses, and ``caa_lens`` never imports
``analysis``; the stage commands themselves are defined in ``caa_lens.cli`` and mounted here.

``main`` is the entry point: it turns every error into one line on stderr and an exit code (2: a bad
argument, input or output path, found before any work; 1: the run itself failed), with ``--debug``
(anywhere on the command line) showing the traceback instead.
"""

import math
import sys
import traceback
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import typer
from typer.exceptions import TyperException

from caa_lens.cli import MODEL_HELP, UsageError, checking
from caa_lens.cli import app as stage_app
from caa_lens.models import DEFAULT_MODEL

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
app.registered_commands += stage_app.registered_commands
app.registered_groups += stage_app.registered_groups


def _datasets(specs: list[str]) -> tuple[tuple[str, str, str], ...]:
    """``NAME=TRAIN,TEST`` specs, each file loaded once here so a bad one fails before the model loads."""
    from caa_lens.data import resolve_dataset

    parsed: list[tuple[str, str, str]] = []
    for spec in specs:
        name, _, files = spec.partition("=")
        train, _, test = files.partition(",")
        if not (name and train and test):
            raise UsageError(f"--dataset {spec!r}: expected NAME=TRAIN,TEST (bundled names or file paths)")
        if name in {n for n, _, _ in parsed}:
            raise UsageError(f"--dataset {spec!r}: the name {name!r} is used twice")
        for part in (train, test):
            with checking(f"--dataset {name}"):
                resolve_dataset(part)
        parsed.append((name, train, test))
    return tuple(parsed)


def _check_demo_arguments(out: Path, model: str, focus_layer: int | None, multiplier: float) -> None:
    from analysis.pipeline import is_results_dir
    from caa_lens.outputs import check_output_dir

    with checking("--out"):
        check_output_dir(out, "results", is_results_dir)
    if focus_layer is not None and focus_layer < 0:
        raise UsageError(f"--focus-layer must be >= 0, got {focus_layer}")
    if not math.isfinite(multiplier):
        raise UsageError(f"--multiplier must be a finite number, got {multiplier}")
    from caa_lens import cli as stage

    n_layers = stage._check_model(model)
    if n_layers is not None and focus_layer is not None and focus_layer >= n_layers:
        raise UsageError(
            f"--focus-layer {focus_layer} does not exist; the model has layers 0..{n_layers - 1}"
        )


@app.command()
def demo(
    out: Path = typer.Option(
        Path("results/demo"), help="Directory for vectors, tables, figures and the report."
    ),
    model: str = typer.Option(DEFAULT_MODEL, help=MODEL_HELP),
    dataset: list[str] = typer.Option(
        [], help="NAME=TRAIN,TEST to analyse instead of the bundled behaviours (repeatable)."
    ),
    focus: str = typer.Option(
        "", help="Behaviour used for the single-behaviour analyses (default: the first)."
    ),
    focus_layer: int | None = typer.Option(
        None,
        help="Layer for the multiplier curves, transfer, reversal and generations (default: the layer "
        "where steering moves the focus behaviour most, picked on the selection half of its test items).",
    ),
    multiplier: float = typer.Option(
        8.0, help="Multiplier for the single-behaviour analyses and generations."
    ),
    reference_text: Path | None = typer.Option(
        None, help="Text file for perplexity (default: a built-in paragraph)."
    ),
    quick: bool = typer.Option(False, help="Tiny sizes: a smoke test of every stage in a few minutes."),
) -> None:
    """The main job: vectors for every behaviour at every layer, a layer x multiplier sweep, the analysis
    suite, steered generations and a Markdown report with every figure. Rerunning skips finished stages."""
    from analysis.pipeline import DemoConfig, run_demo
    from caa_lens.capability import read_text
    from caa_lens.data import BUNDLED_BEHAVIOURS

    chosen = _datasets(dataset) if dataset else None
    names = [name for name, _, _ in chosen] if chosen else list(BUNDLED_BEHAVIOURS)
    if reference_text is not None:
        with checking("--reference-text"):
            if not read_text(reference_text).strip():
                raise UsageError(f"--reference-text {reference_text} is empty")
    if focus and focus not in names:
        raise UsageError(f"--focus {focus!r} is not one of the datasets {list(names)}")
    settings = dict(
        model=model, focus_layer=focus_layer, focus_multiplier=multiplier, reference_text=reference_text
    )
    if chosen:
        config = DemoConfig(datasets=chosen, focus=focus or chosen[0][0], **settings)  # type: ignore[arg-type]
    elif focus:
        config = DemoConfig(focus=focus, **settings)  # type: ignore[arg-type]
    else:
        config = DemoConfig(**settings)  # type: ignore[arg-type]
    config = config.quick() if quick else config
    # --quick sets its own focus layer and multiplier: check the ones the run will use.
    _check_demo_arguments(out, model, config.focus_layer, config.focus_multiplier)
    run_demo(out, config)


@app.command()
def analyse(
    dataset: list[str] = typer.Option(
        ..., help="NAME=TRAIN,TEST (repeatable), e.g. refusal=gen.json,test.json."
    ),
    out: Path = typer.Option(Path("results/analyse"), help="Results directory."),
    model: str = typer.Option(DEFAULT_MODEL, help=MODEL_HELP),
    focus_layer: int | None = typer.Option(
        None, help="Layer for transfer, reversal and generations (default: picked on selection items)."
    ),
    multiplier: float = typer.Option(8.0, help="Multiplier for the single-behaviour analyses."),
    quick: bool = typer.Option(False, help="Tiny sizes."),
) -> None:
    """The analysis suite (and sweep, report and figures) on your own datasets: `demo` with --dataset."""
    demo(
        out=out,
        model=model,
        dataset=dataset,
        focus="",
        focus_layer=focus_layer,
        multiplier=multiplier,
        reference_text=None,
        quick=quick,
    )


@app.command()
def figures(
    results: Path = typer.Argument(..., help="A results directory written by `caa-lens demo`."),
    out: Path | None = typer.Option(None, help="Where to write the PNGs (default: RESULTS/figures)."),
    kind: list[str] = typer.Option([], help="Figure types to draw (repeatable; default: all)."),
) -> None:
    """Redraw figures from saved results alone (no model needed)."""
    from analysis.figures import FIGURES, draw, is_figures_dir
    from analysis.pipeline import is_results_dir
    from caa_lens.outputs import check_output_dir

    if not results.is_dir() or not is_results_dir(results):
        raise UsageError(f"{results} is not a results directory written by `caa-lens demo`")
    unknown = [k for k in kind if k not in FIGURES]
    if unknown:
        raise UsageError(
            f"--kind {', '.join(unknown)}: unknown figure type; known types: {', '.join(FIGURES)}"
        )
    with checking("--out"):
        check_output_dir(out or results / "figures", "figures", is_figures_dir)
    for path in draw(results, out, kind or None):
        typer.echo(str(path))


actadd_app = typer.Typer(
    help=(
        "ActAdd's quantitative experiments (Turner et al. 2023): topic steering with 'weddings', perplexity "
        "of related vs unrelated text, and sentiment with 'Love' - 'Hate'; paired effects with intervals "
        "and a null band from random vectors of the same norm. Writes CSV tables, a JSON summary and a figure."
    ),
    no_args_is_help=True,
)
app.add_typer(actadd_app, name="actadd")

ACTADD_OUT_HELP = (
    "Output directory (new, empty, or one these commands wrote); shared by the three experiments."
)
SHARED_DATA_HELP = (
    "The shared reference data directory (../shared/data: ActAdd's texts, SST-2). Default: "
    "$CAA_LENS_SHARED_DATA, else the stand-ins bundled in analysis/data (the outputs say which)."
)


def _actadd_common(out: Path, model: str, shared_data: Path | None, needs: str | None) -> int | None:
    """Checks shared by the three commands, before the model loads; returns the model's layer count
    when it is known without loading it."""
    from analysis.actadd import ACTADD_TEXTS, SST2, is_actadd_dir
    from caa_lens import cli as stage
    from caa_lens.outputs import check_output_dir

    with checking("--out"):
        check_output_dir(out, "ActAdd results", is_actadd_dir)
    if shared_data is not None:
        if not shared_data.is_dir():
            raise UsageError(f"--shared-data {shared_data} is not a directory")
        if needs == "texts" and len(list((shared_data / ACTADD_TEXTS).glob("*.txt"))) != 4:
            raise UsageError(f"--shared-data {shared_data}: no four ActAdd texts in {ACTADD_TEXTS}/")
        if needs == "sst2" and not (shared_data / SST2).is_file():
            raise UsageError(f"--shared-data {shared_data}: no {SST2}")
    return stage._check_model(model)


def _coefficients(text: str) -> tuple[float, ...]:
    from caa_lens.cli import parse_multipliers

    values = tuple(v for v in parse_multipliers(text, "--coefficients") if v != 0)
    if not values:
        raise UsageError(f"--coefficients {text!r}: give at least one non-zero coefficient (0 is always run)")
    return values


def _actadd_layers(text: str, n_layers: int | None, option: str) -> tuple[int, ...] | None:
    from caa_lens.cli import _check_layers_fit, parse_layers

    if not text:
        return None
    layers = parse_layers(text, option, allow_all=False)
    assert layers is not None
    _check_layers_fit(layers, n_layers, option)
    return tuple(layers)


def _generation_options(controls: int, controls_at: str, prompts: int, max_new_tokens: int) -> None:
    from analysis.actadd import CONTROLS_AT

    if controls < 0:
        raise UsageError(f"--controls must be >= 0 (0: no null band), got {controls}")
    if controls_at not in CONTROLS_AT:
        raise UsageError(f"--controls-at must be one of {', '.join(CONTROLS_AT)}, got {controls_at!r}")
    if prompts < 0:
        raise UsageError(f"--prompts must be >= 0 (0: the default number), got {prompts}")
    if max_new_tokens < 1:
        raise UsageError(f"--max-new-tokens must be >= 1, got {max_new_tokens}")


def _finish_actadd(result, out: Path) -> None:
    from analysis.actadd import save_actadd
    from analysis.actadd_plots import save_figure

    for path in [*save_actadd(result, out), save_figure(result, out)]:
        typer.echo(str(path))


def _load_for_actadd(model: str):
    import caa_lens as cl

    return cl.tiny_model() if model == cl.TINY_MODEL else cl.load_model(model)


CONTROLS_AT_HELP = (
    "Where the random controls run: 'cell' (the best cell), 'layer' (the best layer), or 'all'."
)


@actadd_app.command("weddings")
def actadd_weddings(
    out: Path = typer.Option(..., help=ACTADD_OUT_HELP),
    model: str = typer.Option(DEFAULT_MODEL, help=MODEL_HELP),
    shared_data: Path | None = typer.Option(None, help="Unused here (the prompts are bundled); accepted."),
    quick: bool = typer.Option(False, help="Smoke sizes: 4 prompts, 2 coefficients, 8 new tokens."),
    layers: str = typer.Option("", help="Comma-separated layers (default: 2,4,6,8,10 of 30, scaled)."),
    coefficients: str = typer.Option("0.5,1,2,4", help="Comma-separated coefficients (0 is always run)."),
    prompts: int = typer.Option(0, help="Use the first N of the 24 bundled prompts (0: all)."),
    controls: int = typer.Option(3, help="Random same-norm vectors for the null band."),
    controls_at: str = typer.Option("cell", help=CONTROLS_AT_HELP),
    max_new_tokens: int = typer.Option(40, help="Tokens generated per completion."),
) -> None:
    """Topic steering: the share of completions with a wedding word under the 'weddings' ActAdd vector,
    over layers x coefficients, with the fluency cost."""
    from analysis.actadd import TopicConfig, weddings_topic

    _generation_options(controls, controls_at, prompts, max_new_tokens)
    values = _coefficients(coefficients)
    n_layers = _actadd_common(out, model, shared_data, None)
    chosen = _actadd_layers(layers, n_layers, "--layers")
    config = TopicConfig(
        layers=chosen,
        coefficients=values,
        n_prompts=prompts or None,
        controls=controls,
        controls_at=controls_at,  # type: ignore[arg-type]
        max_new_tokens=max_new_tokens,
    )
    config = replace(config.quick(), layers=chosen) if quick else config
    _finish_actadd(weddings_topic(_load_for_actadd(model), config, progress=True), out)


@actadd_app.command("perplexity")
def actadd_perplexity(
    out: Path = typer.Option(..., help=ACTADD_OUT_HELP),
    model: str = typer.Option(DEFAULT_MODEL, help=MODEL_HELP),
    shared_data: Path | None = typer.Option(None, help=SHARED_DATA_HELP),
    quick: bool = typer.Option(False, help="Smoke sizes: 4 sentences per text, 2 coefficients."),
    layer: int | None = typer.Option(None, help="Layer (default: ActAdd's 6 of 48, scaled: 4 of 30)."),
    coefficients: str = typer.Option("0.05,0.1,0.2,0.5,1", help="Comma-separated coefficients."),
    controls: int = typer.Option(3, help="Random same-norm vectors for the null band."),
    max_sentences: int = typer.Option(0, help="Use at most N sentences per text (0: all)."),
) -> None:
    """Perplexity of related (wedding) vs unrelated texts with the 'weddings' vector at the front of every
    sentence: per text, the ratio steered / unsteered."""
    from analysis.actadd import RelatedTextConfig, related_text_perplexity

    if controls < 0:
        raise UsageError(f"--controls must be >= 0 (0: no null band), got {controls}")
    if max_sentences < 0:
        raise UsageError(f"--max-sentences must be >= 0 (0: all), got {max_sentences}")
    values = _coefficients(coefficients)
    n_layers = _actadd_common(out, model, shared_data, "texts")
    if layer is not None:
        _actadd_layers(str(layer), n_layers, "--layer")
    config = RelatedTextConfig(
        layer=layer, coefficients=values, controls=controls, max_sentences=max_sentences or None
    )
    config = replace(config.quick(), layer=layer) if quick else config
    result = related_text_perplexity(_load_for_actadd(model), config, shared_data=shared_data, progress=True)
    _finish_actadd(result, out)


@actadd_app.command("sentiment")
def actadd_sentiment(
    out: Path = typer.Option(..., help=ACTADD_OUT_HELP),
    model: str = typer.Option(DEFAULT_MODEL, help=MODEL_HELP),
    shared_data: Path | None = typer.Option(None, help=SHARED_DATA_HELP),
    quick: bool = typer.Option(False, help="Smoke sizes: 4 sentences, 2 coefficients, 8 new tokens."),
    layers: str = typer.Option(
        "", help="Comma-separated layers (default: 2,4 of 30, scaled; 4 is ActAdd's depth)."
    ),
    coefficients: str = typer.Option("1,2,4,8", help="Comma-separated coefficients (0 is always run)."),
    prompts: int = typer.Option(0, help="Use the first N negative sentences (0: 40)."),
    controls: int = typer.Option(3, help="Random same-norm vectors for the null band."),
    controls_at: str = typer.Option("cell", help=CONTROLS_AT_HELP),
    max_new_tokens: int = typer.Option(40, help="Tokens generated per completion."),
) -> None:
    """Sentiment: negative sentences as the user's text, steered with 'Love' - 'Hate'; VADER's positive
    rate and compound score of the completions, with the fluency cost."""
    from analysis.actadd import SentimentConfig, sentiment_shift

    _generation_options(controls, controls_at, prompts, max_new_tokens)
    values = _coefficients(coefficients)
    n_layers = _actadd_common(out, model, shared_data, "sst2")
    chosen = _actadd_layers(layers, n_layers, "--layers")
    config = SentimentConfig(
        layers=chosen,
        coefficients=values,
        n_prompts=prompts or 40,
        controls=controls,
        controls_at=controls_at,  # type: ignore[arg-type]
        max_new_tokens=max_new_tokens,
    )
    config = replace(config.quick(), layers=chosen) if quick else config
    result = sentiment_shift(_load_for_actadd(model), config, shared_data=shared_data, progress=True)
    _finish_actadd(result, out)


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


if __name__ == "__main__":
    run()
