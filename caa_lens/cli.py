"""Stage commands of the ``caa-lens`` command line (mounted, with the main job, by ``analysis.cli``)."""

from pathlib import Path

import typer

app = typer.Typer(
    help="Contrastive activation engineering on TransformerLens: build steering vectors, steer, evaluate.",
    no_args_is_help=True,
    add_completion=False,
)


@app.command()
def vectors(
    dataset: str = typer.Argument(
        ..., help="CAA JSON / MWE JSONL path, or a bundled name (optimism[:test])."
    ),
    out: Path = typer.Option(..., help="Output .safetensors path (a .json sidecar is written beside it)."),
    model: str = typer.Option("smollm2-135m-instruct", help="Model name, checkpoint dir or .gguf file."),
    layers: str = typer.Option("all", help="Comma-separated layer indices, or 'all'."),
    site: str = typer.Option("resid_post", help="resid_pre, resid_mid or resid_post."),
    position: str = typer.Option(
        "answer", help="'answer' (CAA: the answer-letter token) or 'last' (Patterns)."
    ),
    batch_size: int = typer.Option(16, help="Pairs per forward batch."),
    limit: int = typer.Option(0, help="Use only the first N pairs (0: all)."),
) -> None:
    """Build mean-difference steering vectors from a contrastive dataset and save them with provenance."""
    from caa_lens.data import resolve_dataset
    from caa_lens.methods import caa_vector
    from caa_lens.models import load_model
    from caa_lens.vectors import save_vector

    data = resolve_dataset(dataset)
    if limit:
        data = data.select(range(min(limit, len(data))), f":first{limit}")
    bridge = load_model(model)
    chosen = None if layers == "all" else [int(x) for x in layers.split(",")]
    vector = caa_vector(bridge, data, chosen, site, position, batch_size)  # type: ignore[arg-type]
    path = save_vector(vector, out)
    typer.echo(f"wrote {path} ({len(vector.layers)} layers, {vector.provenance.n_pairs} pairs)")


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def _vectors(paths: list[Path], bridge) -> dict:
    from caa_lens.vectors import load_vector

    named = {path.stem: load_vector(path, bridge) for path in paths}
    if len(named) != len(paths):
        raise typer.BadParameter("two vector files share a file name (the vector column must be unique)")
    return named


sweep_app = typer.Typer(help="Layer x multiplier sweeps of behaviour probability (resumable, shardable).")
app.add_typer(sweep_app, name="sweep")


@sweep_app.command("run")
def sweep_run(
    dataset: str = typer.Argument(..., help="A/B or Yes/No dataset path, or a bundled name (optimism:test)."),
    vector: list[Path] = typer.Option(..., help="Saved vector (.safetensors); repeat for several."),
    out: Path = typer.Option(..., help="Results JSONL (resumed if it exists with the same configuration)."),
    layers: str = typer.Option(..., help="Comma-separated layers to steer."),
    multipliers: str = typer.Option("-2,-1,0,1,2", help="Comma-separated multipliers."),
    shard: str = typer.Option("", help="i/n: this job's share of the work (default: SLURM array, else 0/1)."),
    model: str = typer.Option("smollm2-135m-instruct", help="Model name, checkpoint dir or .gguf file."),
    batch_size: int = typer.Option(8, help="Questions per prefix pass."),
    limit: int = typer.Option(0, help="Use only the first N items (0: all)."),
) -> None:
    """Sweep layers x multipliers x vectors, appending rows to OUT as they are computed."""
    from caa_lens.data import resolve_dataset
    from caa_lens.models import load_model
    from caa_lens.sweep import default_shard, parse_shard, run_sweep

    data = resolve_dataset(dataset)
    if limit:
        data = data.select(range(min(limit, len(data))), f":first{limit}")
    bridge = load_model(model)
    chosen_shard = parse_shard(shard) if shard else default_shard()
    run = run_sweep(
        bridge,
        data,
        _vectors(vector, bridge),
        [int(x) for x in layers.split(",")],
        _floats(multipliers),
        out,
        shard=chosen_shard,
        batch_size=batch_size,
    )
    typer.echo(
        f"{out}: shard {run.shard[0]}/{run.shard[1]}, {run.units_computed} of {run.units_total} "
        f"(item, layer) units computed, {run.rows_written} rows written"
    )


@sweep_app.command("merge")
def sweep_merge(
    shards: list[Path] = typer.Argument(..., help="Shard result files of one sweep."),
    out: Path = typer.Option(..., help="Merged results JSONL."),
    allow_incomplete: bool = typer.Option(False, help="Merge even if some cells are missing."),
) -> None:
    """Join the shard files of one sweep, refusing conflicts, duplicates and (by default) gaps."""
    from caa_lens.sweep import merge_results

    frame = merge_results(shards, out, allow_incomplete)
    typer.echo(f"wrote {out} ({len(frame)} rows from {len(shards)} files)")


@sweep_app.command("summary")
def sweep_summary(
    results: Path = typer.Argument(..., help="Results JSONL."),
    csv: Path | None = typer.Option(None, help="Also write the summary as CSV."),
) -> None:
    """Mean behaviour probability per vector x layer x multiplier."""
    from caa_lens.sweep import load_results, summarize

    summary = summarize(load_results(results))
    if csv is not None:
        summary.to_csv(csv, index=False)
    typer.echo(summary.to_string(index=False, float_format=lambda x: f"{x:.3f}"))


@app.command()
def evaluate(
    dataset: str = typer.Argument("", help="A/B or Yes/No dataset (MMLU/TruthfulQA A/B files too)."),
    text: Path | None = typer.Option(None, help="Measure the perplexity of this text file instead."),
    vector: Path | None = typer.Option(None, help="Saved vector to steer with (optional)."),
    layer: int = typer.Option(0, help="Layer to steer."),
    multiplier: float = typer.Option(0.0, help="Steering multiplier."),
    model: str = typer.Option("smollm2-135m-instruct", help="Model name, checkpoint dir or .gguf file."),
    max_tokens: int = typer.Option(20000, help="Perplexity: score at most this many tokens (0: all)."),
    batch_size: int = typer.Option(16, help="Items per forward pass."),
) -> None:
    """Behaviour probability / accuracy of a dataset, or perplexity of a text, optionally steered."""
    from caa_lens.capability import ab_capability, perplexity, read_text
    from caa_lens.data import resolve_dataset
    from caa_lens.models import load_model
    from caa_lens.steering import Injection

    if bool(dataset) == (text is not None):
        raise typer.BadParameter("give a DATASET or --text, not both")
    bridge = load_model(model)
    injections = []
    if vector is not None:
        mode = "all" if text is not None else "from_start"
        injections.append(Injection(_vectors([vector], bridge)[vector.stem], layer, multiplier, mode))
    if text is not None:
        result = perplexity(bridge, read_text(text), injections, max_tokens=max_tokens or None)
        typer.echo(
            f"perplexity {result.perplexity:.3f} over {result.n_tokens} tokens ({result.n_windows} windows)"
        )
        return
    score = ab_capability(bridge, resolve_dataset(dataset), injections, batch_size)
    typer.echo(
        f"{score.dataset}: mean p(matching) {score.mean_p_correct:.4f}, accuracy (p > 0.5) "
        f"{score.accuracy:.4f}, mass on the offered answers {score.mean_p_letters_sum:.4f} ({score.n_items} items)"
    )


@app.command("generate")
def generate_command(
    prompts: Path = typer.Argument(..., help="JSON array of {id, prompt} (the shared OOD files)."),
    out: Path = typer.Option(..., help="Output JSONL, one completion per line."),
    vector: Path | None = typer.Option(None, help="Saved vector to steer with (optional)."),
    layer: int = typer.Option(0, help="Layer to steer."),
    multipliers: str = typer.Option("0", help="Comma-separated multipliers."),
    judge: str = typer.Option("", help="Behaviour description: score with the model itself as judge."),
    model: str = typer.Option("smollm2-135m-instruct", help="Model name, checkpoint dir or .gguf file."),
    max_new_tokens: int = typer.Option(64, help="Tokens to generate per completion."),
    batch_size: int = typer.Option(8, help="Completions per batch."),
) -> None:
    """Steered open-ended completions of a prompt file, optionally rated by a model judge."""
    from caa_lens.models import load_model
    from caa_lens.ood import ModelJudgeScorer, load_ood_prompts, run_ood
    from caa_lens.sweep_io import atomic_write_lines

    bridge = load_model(model)
    steer = _vectors([vector], bridge)[vector.stem] if vector is not None else None
    frame = run_ood(
        bridge,
        load_ood_prompts(prompts),
        steer,
        layer if steer is not None else None,
        _floats(multipliers),
        ModelJudgeScorer(bridge, judge) if judge else None,
        max_new_tokens,
        batch_size,
    )
    atomic_write_lines(out, frame.to_dict("records"))
    typer.echo(f"wrote {out} ({len(frame)} completions)")


if __name__ == "__main__":
    app()
