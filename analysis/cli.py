"""The ``caa-lens`` command: caa_lens's stage commands plus the main job, analyses and figures.

It lives in ``analysis`` because the main job runs the analyses, and ``caa_lens`` never imports
``analysis``; the stage commands themselves are defined in ``caa_lens.cli`` and mounted here.
"""

from pathlib import Path

import typer

from caa_lens.cli import app as stage_app

app = typer.Typer(
    help=(
        "Contrastive activation engineering on TransformerLens.\n\n"
        "Typical session: `caa-lens vectors optimism --out v.safetensors`, then `caa-lens sweep run ...`, "
        "`caa-lens evaluate ...`, `caa-lens generate ...`; or everything at once with `caa-lens demo`. "
        "Datasets are bundled names (optimism, formality, sycophancy; add :test for the held-out split) "
        "or paths to CAA JSON / model-written-evaluation JSONL files."
    ),
    no_args_is_help=True,
    add_completion=False,
)
app.registered_commands += [c for c in stage_app.registered_commands if c.name != "demo"]
app.registered_groups += stage_app.registered_groups


def _datasets(specs: list[str]) -> tuple[tuple[str, str, str], ...]:
    parsed = []
    for spec in specs:
        name, _, files = spec.partition("=")
        train, _, test = files.partition(",")
        if not (name and train and test):
            raise typer.BadParameter(f"{spec!r}: expected NAME=TRAIN,TEST (bundled names or file paths)")
        parsed.append((name, train, test))
    return tuple(parsed)


@app.command()
def demo(
    out: Path = typer.Option(
        Path("results/demo"), help="Directory for vectors, tables, figures and the report."
    ),
    model: str = typer.Option(
        "smollm2-135m-instruct", help="Model name, checkpoint dir, .gguf file, or 'tiny'."
    ),
    dataset: list[str] = typer.Option(
        [], help="NAME=TRAIN,TEST to analyse instead of the bundled behaviours (repeatable)."
    ),
    focus: str = typer.Option(
        "", help="Behaviour used for the single-behaviour analyses (default: the first)."
    ),
    focus_layer: int = typer.Option(
        12, help="Layer for the multiplier curves, transfer, reversal and generations."
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

    config = DemoConfig(
        model=model, focus_layer=focus_layer, focus_multiplier=multiplier, reference_text=reference_text
    )
    if dataset:
        chosen = _datasets(dataset)
        config = DemoConfig(
            model=model,
            datasets=chosen,
            focus=focus or chosen[0][0],
            focus_layer=focus_layer,
            focus_multiplier=multiplier,
            reference_text=reference_text,
        )
    elif focus:
        config = DemoConfig(
            model=model,
            focus=focus,
            focus_layer=focus_layer,
            focus_multiplier=multiplier,
            reference_text=reference_text,
        )
    run_demo(out, config.quick() if quick else config)


@app.command()
def analyse(
    dataset: list[str] = typer.Option(
        ..., help="NAME=TRAIN,TEST (repeatable), e.g. refusal=gen.json,test.json."
    ),
    out: Path = typer.Option(Path("results/analyse"), help="Results directory."),
    model: str = typer.Option(
        "smollm2-135m-instruct", help="Model name, checkpoint dir, .gguf file, or 'tiny'."
    ),
    focus_layer: int = typer.Option(12, help="Layer for transfer, reversal and generations."),
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
    )  # type: ignore[arg-type]


@app.command()
def figures(
    results: Path = typer.Argument(..., help="A results directory written by `caa-lens demo`."),
    out: Path | None = typer.Option(None, help="Where to write the PNGs (default: RESULTS/figures)."),
    kind: list[str] = typer.Option([], help="Figure types to draw (repeatable; default: all)."),
) -> None:
    """Redraw figures from saved results alone (no model needed)."""
    from analysis.figures import FIGURES, draw

    try:
        paths = draw(results, out, kind or None)
    except ValueError as err:
        raise typer.BadParameter(f"{err}; known types: {', '.join(FIGURES)}") from err
    for path in paths:
        typer.echo(str(path))


if __name__ == "__main__":
    app()
