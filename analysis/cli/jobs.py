"""The job commands: ``caa-lens demo`` and ``caa-lens analyse`` (the main job, ``analysis.jobs.main``),
``caa-lens refusal`` (the refusal study, ``analysis.jobs.refusal``) and ``caa-lens figures`` (figures
redrawn from a results directory alone)."""

import dataclasses
import math
from pathlib import Path

import typer

from analysis.cli.checks import UsageError, check_model, checking, model_option
from caa_lens.jobs import is_results_dir
from caa_lens.models import TINY_MODEL

__all__ = ["analyse", "demo", "figures", "refusal"]


def _datasets(specs: list[str], option: str = "--dataset") -> tuple[tuple[str, str, str], ...]:
    """``NAME=TRAIN,TEST`` specs, each file loaded once here so a bad one fails before the model loads."""
    from caa_lens.data import resolve_dataset

    parsed: list[tuple[str, str, str]] = []
    for spec in specs:
        name, _, files = spec.partition("=")
        train, _, test = files.partition(",")
        if not (name and train and test):
            raise UsageError(f"{option} {spec!r}: expected NAME=TRAIN,TEST (bundled names or file paths)")
        if name in {n for n, _, _ in parsed}:
            raise UsageError(f"{option} {spec!r}: the name {name!r} is used twice")
        for part in (train, test):
            with checking(f"{option} {name}"):
                resolve_dataset(part)
        parsed.append((name, train, test))
    return tuple(parsed)


def _check_demo_arguments(out: Path, model: str, focus_layer: int | None, multiplier: float) -> None:
    from caa_lens.outputs import check_output_dir

    with checking("--out"):
        check_output_dir(out, "results", is_results_dir)
    if focus_layer is not None and focus_layer < 0:
        raise UsageError(f"--focus-layer must be >= 0, got {focus_layer}")
    if not math.isfinite(multiplier):
        raise UsageError(f"--multiplier must be a finite number, got {multiplier}")
    n_layers = check_model(model)
    if n_layers is not None and focus_layer is not None and focus_layer >= n_layers:
        raise UsageError(
            f"--focus-layer {focus_layer} does not exist; the model has layers 0..{n_layers - 1}"
        )


def demo(
    out: Path = typer.Option(
        Path("results/demo"), help="Directory for vectors, tables, figures and the report."
    ),
    model: str = model_option(),
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
    quick: bool = typer.Option(
        False, help="Tiny sizes: a smoke test of every stage in a few minutes (always on with --model tiny)."
    ),
) -> None:
    """The main job: vectors for every behaviour at every layer, a layer x multiplier sweep, the analysis
    suite, steered generations and a Markdown report with every figure. Rerunning skips finished stages."""
    from analysis.jobs.main import DemoConfig, run_demo
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
    if quick or model == TINY_MODEL:
        # The tiny model is random: full sizes would only cost time (its layers come from its depth).
        config = config.quick()
    # --quick sets its own focus layer and multiplier: check the ones the run will use.
    _check_demo_arguments(out, model, config.focus_layer, config.focus_multiplier)
    run_demo(out, config)


def analyse(
    dataset: list[str] = typer.Option(
        ..., help="NAME=TRAIN,TEST (repeatable), e.g. refusal=gen.json,test.json."
    ),
    out: Path = typer.Option(Path("results/analyse"), help="Results directory."),
    model: str = model_option(),
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


def figures(
    results: Path = typer.Argument(..., help="A results directory written by `caa-lens demo`."),
    out: Path | None = typer.Option(None, help="Where to write the PNGs (default: RESULTS/figures)."),
    kind: list[str] = typer.Option([], help="Figure types to draw (repeatable; default: all)."),
) -> None:
    """Redraw figures from saved results alone (no model needed)."""
    from analysis.plots import FIGURES, draw, is_figures_dir
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


def refusal(
    out: Path = typer.Option(
        Path("results/refusal"), help="Results directory (new, empty, or a results directory)."
    ),
    model: str = model_option(),
    train: str = typer.Option(
        "",
        help="Training pairs: a bundled name (refusal) or a CAA JSON / MWE JSONL path (default: the shared "
        "CAA refusal generate set).",
    ),
    test: str = typer.Option(
        "", help="Held-out A/B items: refusal:test or a path (default: the shared CAA refusal test set)."
    ),
    shared_data: Path | None = typer.Option(
        None,
        help="The shared reference data directory (default: $CAA_LENS_SHARED_DATA): the CAA refusal "
        "files, the interference behaviours and WikiText-2 for the perplexity study.",
    ),
    other: list[str] = typer.Option(
        [],
        help="NAME=TRAIN,TEST steered beside refusal in the interference stage (repeatable; default: the "
        "shared CAA sycophancy, hallucination and corrigible sets, else the bundled behaviours).",
    ),
    reference_text: Path | None = typer.Option(
        None, help="Perplexity text of the ratio study (default: the shared WikiText-2, else a bundled text)."
    ),
    stages: str = typer.Option(
        "all", help="Comma-separated stages to run (default: all; a wrong name lists them)."
    ),
    n_pairs: int = typer.Option(200, help="Letter-balanced training pairs of the analyses' vector."),
    eval_items: int = typer.Option(30, help="Letter-balanced held-out items scored per cell."),
    layer: int | None = typer.Option(None, help="Steering layer (default: picked by the layer sweep)."),
    multiplier: float | None = typer.Option(None, help="Multiplier (default: --ratio at the chosen layer)."),
    ratio: float = typer.Option(0.25, help="||m v|| / ||resid|| the layer sweep picks by."),
    reversal_budget: float = typer.Option(540.0, help="Seconds for the reversal search."),
    reversal_items: int = typer.Option(20, help="Reversal search items (>= 20 for a claim)."),
    reversal_multiplier: float | None = typer.Option(None, help="Default: the chosen multiplier."),
    seed: int = typer.Option(0, help="Seed of the item selections and probes."),
    figures: bool = typer.Option(True, help="Draw each stage's figure into OUT/figures."),
    sweep_pairs: int = typer.Option(200, help="A/B sweep: vectors from the first N training pairs."),
    sweep_balance: bool = typer.Option(False, help="A/B sweep: N/2 pairs of each matching letter instead."),
    sweep_layers: str = typer.Option("", help="A/B sweep layers (default: 4,8,10,...,20,24 of 30, scaled)."),
    sweep_multipliers: str = typer.Option("-8,-4,-2,0,2,4,8", help="A/B sweep multipliers."),
    controls: int = typer.Option(5, help="A/B sweep: random same-norm vectors per vector (the null band)."),
    control_seed: int = typer.Option(0, help="A/B sweep: seed of the first random control."),
    bootstrap: int = typer.Option(4000, help="A/B sweep: bootstrap resamples per cell."),
    sweep_batch: int = typer.Option(8, help="A/B sweep: questions per prefix pass."),
    timing: bool = typer.Option(False, help="A/B sweep: also time it against recomputing every cell."),
    threads: int = typer.Option(1, help="torch threads (1 is fastest on a busy CPU; 0: torch's default)."),
    quick: bool = typer.Option(False, help="Smoke sizes (always on with --model tiny)."),
) -> None:
    """The refusal study: the A/B sweep of the plain and letter-balanced CAA vectors with random controls
    and the letter split, then every analysis (letters, similarity, norms, PCA, layer sweep, transfer,
    sample size, ratio, interference, reversal). Rerunning skips finished stages."""
    from analysis.cli.checks import check_layers_fit, parse_layers, parse_multipliers, positive
    from analysis.jobs.refusal import REFUSAL_STAGES, RefusalConfig, default_datasets, run_refusal
    from caa_lens.capability import read_text
    from caa_lens.outputs import check_output_dir

    chosen_stages = REFUSAL_STAGES if stages.strip() == "all" else tuple(s.strip() for s in stages.split(","))
    unknown = [s for s in chosen_stages if s not in REFUSAL_STAGES]
    if unknown:
        raise UsageError(f"--stages: unknown stages {unknown}; known: {', '.join(REFUSAL_STAGES)}")
    for value, option in ((n_pairs, "--n-pairs"), (eval_items, "--eval-items"), (reversal_items, "--reversal-items"),
                          (sweep_pairs, "--sweep-pairs"), (bootstrap, "--bootstrap"), (sweep_batch, "--sweep-batch")):  # fmt: skip
        positive(value, option)
    if controls < 0 or control_seed < 0 or threads < 0:
        raise UsageError("--controls, --control-seed and --threads must be >= 0")
    for number, option in ((ratio, "--ratio"), (reversal_budget, "--reversal-budget")):
        if not math.isfinite(number) or number <= 0:
            raise UsageError(f"{option} must be a positive number, got {number}")
    for optional, option in ((multiplier, "--multiplier"), (reversal_multiplier, "--reversal-multiplier")):
        if optional is not None and not math.isfinite(optional):
            raise UsageError(f"{option} must be a finite number, got {optional}")
    if layer is not None and layer < 0:
        raise UsageError(f"--layer must be >= 0, got {layer}")
    layers = parse_layers(sweep_layers, "--sweep-layers", allow_all=False) if sweep_layers else None
    values = parse_multipliers(sweep_multipliers, "--sweep-multipliers")
    if shared_data is not None and not shared_data.is_dir():
        raise UsageError(f"--shared-data {shared_data} is not a directory")
    if bool(train) != bool(test):
        raise UsageError("give both --train and --test (or neither: the shared CAA refusal files)")
    shared_text = None
    if train:
        others = _datasets(other, "--other") if other else None
    else:
        with checking("--shared-data"):
            train, test, default_others, shared_text = default_datasets(shared_data)
        others = _datasets(other, "--other") if other else default_others
    for spec, option in ((train, "--train"), (test, "--test")):
        with checking(option):
            resolve_dataset_spec(spec)
    if reference_text is not None:
        with checking("--reference-text"):
            if not read_text(reference_text).strip():
                raise UsageError(f"--reference-text {reference_text} is empty")
    with checking("--out"):
        check_output_dir(out, "results", is_results_dir)
    n_layers = check_model(model)
    check_layers_fit([layer] if layer is not None else None, n_layers, "--layer")
    check_layers_fit(layers, n_layers, "--sweep-layers")
    config = RefusalConfig(
        train=train, test=test, model=model, reference_text=reference_text or shared_text, stages=chosen_stages,
        n_pairs=n_pairs, eval_items=eval_items, layer=layer, multiplier=multiplier, ratio=ratio,
        reversal_budget=reversal_budget, reversal_items=reversal_items, reversal_multiplier=reversal_multiplier,
        seed=seed, figures=figures, sweep_pairs=sweep_pairs, sweep_balance=sweep_balance,
        sweep_layers=tuple(layers) if layers else None, sweep_multipliers=tuple(values), controls=controls,
        control_seed=control_seed, bootstrap=bootstrap, sweep_batch=sweep_batch, timing=timing,
    )  # fmt: skip
    if others is not None:
        config = dataclasses.replace(config, others=others)
    if quick or model == TINY_MODEL:
        config = dataclasses.replace(
            config, n_pairs=min(n_pairs, 12), eval_items=min(eval_items, 6), reversal_items=min(reversal_items, 4),
            reversal_min_items=3, reversal_budget=min(reversal_budget, 10.0), sweep_pairs=min(sweep_pairs, 12),
            controls=min(controls, 2), bootstrap=min(bootstrap, 200), sweep_multipliers=(-4.0, 0.0, 4.0),
        )  # fmt: skip
    if threads:
        import torch

        torch.set_num_threads(threads)
    run_refusal(out, config)


def resolve_dataset_spec(spec: str) -> None:
    """Load a dataset spec once, so a bad file fails before the model loads."""
    from caa_lens.data import resolve_dataset

    resolve_dataset(spec)
