"""``caa-lens sweep run|merge|summary``: layer x multiplier sweeps of behaviour probability."""

from pathlib import Path

import typer

from analysis.cli.checks import (
    METRIC_HELP,
    UsageError,
    check_layers_fit,
    check_metric_option,
    check_model,
    checking,
    existing_file,
    for_model,
    load_model_arg,
    model_option,
    parse_layers,
    parse_multipliers,
    positive,
    read_dataset,
    vector_files,
)

__all__ = ["sweep_app", "sweep_merge", "sweep_run", "sweep_summary"]

sweep_app = typer.Typer(help="Layer x multiplier sweeps of behaviour probability (resumable, shardable).")


@sweep_app.command("run")
def sweep_run(
    dataset: str = typer.Argument(..., help="A/B or Yes/No dataset path, or a bundled name (optimism:test)."),
    vector: list[Path] = typer.Option(..., help="Saved vector (.safetensors); repeat for several."),
    out: Path = typer.Option(..., help="Results JSONL (resumed if it exists with the same configuration)."),
    layers: str = typer.Option(..., help="Comma-separated layers to steer."),
    multipliers: str = typer.Option(
        "-2,-1,0,1,2", help="Comma-separated multipliers (0, the unsteered baseline, is added if missing)."
    ),
    controls: int = typer.Option(
        3,
        help="Random vectors of the same per-layer norm swept beside each vector (named "
        "random:VECTOR:SEED): the null band of the effects. 0: none.",
    ),
    control_seed: int = typer.Option(0, help="Seed of the first random control (then +1, +2...)."),
    shard: str = typer.Option("", help="i/n: this job's share of the work (default: SLURM array, else 0/1)."),
    model: str = model_option(),
    batch_size: int = typer.Option(8, help="Questions per prefix pass."),
    limit: int = typer.Option(0, help="Use only the first N items (0: all)."),
    metric: str = typer.Option("letter", help=METRIC_HELP),
) -> None:
    """Sweep layers x multipliers x vectors (and random controls), appending rows to OUT as they are
    computed; then print the effects summary (as `caa-lens sweep summary OUT` does)."""
    from caa_lens.multipliers import check_multipliers
    from caa_lens.sweep import run_sweep
    from caa_lens.sweep_io import check_sweep_output
    from caa_lens.sweep_shards import default_shard, parse_shard

    chosen = parse_layers(layers, allow_all=False)
    assert chosen is not None
    values = parse_multipliers(multipliers)
    positive(batch_size, "--batch-size")
    if controls < 0:
        raise UsageError(f"--controls must be >= 0 (0: no random controls), got {controls}")
    if control_seed < 0:
        raise UsageError(f"--control-seed must be >= 0, got {control_seed}")
    with checking("--shard"):
        chosen_shard = parse_shard(shard) if shard else default_shard()
    check_metric_option(metric)
    data = read_dataset(dataset, limit)
    check_metric_option(metric, data)
    named = vector_files(vector, chosen)
    reserved = [name for name in named if name == "random" or name.startswith("random:")]
    if controls and reserved:
        raise UsageError(
            f"vector files named {reserved} clash with the random controls' names (random:VECTOR:SEED); "
            f"rename the files, or pass --controls 0 if they are your own controls"
        )
    with checking("--multipliers"):
        check_multipliers(values, list(named.values()))
    with checking("--out"):
        check_sweep_output(out)
    check_layers_fit(chosen, check_model(model), "--layers")

    bridge = load_model_arg(model)
    with checking("--layers"):
        check_layers_fit(chosen, bridge.cfg.n_layers, "--layers")
    run = run_sweep(
        bridge,
        data,
        for_model(named, vector, bridge),
        chosen,
        values,
        out,
        shard=chosen_shard,
        batch_size=batch_size,
        controls=controls,
        control_seed=control_seed,
        metric=metric,  # type: ignore[arg-type]
    )
    typer.echo(
        f"{out}: shard {run.shard[0]}/{run.shard[1]}, {run.units_computed} of {run.units_total} "
        f"(item, layer) units computed, {run.rows_written} rows written"
        + (f" ({controls} random controls per vector)" if controls else "")
    )
    if run.shard[1] > 1:
        typer.echo(
            "effects are summarised over all items: merge the shards (caa-lens sweep merge) and run "
            "caa-lens sweep summary on the merged file"
        )
        return
    _print_effects(out)


def _print_effects(results: Path, csv: Path | None = None) -> None:
    """The effects summary of a results file, printed (and written to ``csv``, checked beforehand)."""
    from caa_lens.files import atomic_write_bytes
    from caa_lens.sweep_effects import effects_summary, format_effects, verdicts
    from caa_lens.sweep_io import load_results

    with checking():
        table = load_results(results)
        summary = effects_summary(table)
    if csv is not None:
        atomic_write_bytes(csv, summary.to_csv(index=False).encode())
    typer.echo(
        "Effect = mean over items of p(matching) steered minus unsteered (multiplier 0) on the same items, "
        "95% bootstrap interval; null band = the effects of random vectors of the same norm at the same cell; "
        "X-matching = the effect on items whose matching answer is X (a letter push moves them in opposite "
        "directions)."
    )
    if "logprob_diff" in table.columns:
        typer.echo(
            "Metric: likelihood (letter-free): p(matching) = sigmoid of the mean per-token log-probability of "
            "the matching answer's text minus the other's, as the reply to the question without its choices; "
            "0.5 = equally likely."
        )
    if (summary["vs_null"] == "no controls").all():
        typer.echo(
            f"note: {results} has no random controls, so no null band: an interval excluding 0 may still "
            f"be a random push of that size (sweep with --controls 3)"
        )
    typer.echo(format_effects(summary))
    typer.echo("\n".join(verdicts(summary)))


@sweep_app.command("merge")
def sweep_merge(
    shards: list[Path] = typer.Argument(..., help="Shard result files of one sweep."),
    out: Path = typer.Option(..., help="Merged results JSONL."),
    allow_incomplete: bool = typer.Option(False, help="Merge even if some cells are missing."),
) -> None:
    """Join the shard files of one sweep, refusing conflicts, duplicates and (by default) gaps."""
    from caa_lens.sweep_io import check_sweep_output, merge_results

    for path in shards:
        existing_file(path, "shard file")
    if any(path.resolve() == out.resolve() for path in shards):
        raise UsageError(f"--out {out} is one of the shard files; write the merged table to a new file")
    with checking("--out"):
        check_sweep_output(out)
    with checking():
        frame = merge_results(shards, out, allow_incomplete)
    typer.echo(f"wrote {out} ({len(frame)} rows from {len(shards)} files)")


@sweep_app.command("summary")
def sweep_summary(
    results: Path = typer.Argument(..., help="Results JSONL."),
    csv: Path | None = typer.Option(None, help="Also write the effects table as CSV."),
) -> None:
    """Paired effect of every vector x layer x multiplier against multiplier 0, with its 95% bootstrap
    interval, n, the null band of the random controls and the per-letter split."""
    from caa_lens.outputs import check_output_file
    from caa_lens.sweep_effects import is_summary_csv

    existing_file(results, "results file")
    if csv is not None:
        with checking("--csv"):
            check_output_file(csv, "sweep summary CSV", is_summary_csv)
    _print_effects(results, csv)
