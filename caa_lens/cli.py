"""The ``caa-lens`` command line."""

from pathlib import Path

import typer

app = typer.Typer(
    help="Contrastive activation engineering on TransformerLens: build steering vectors, steer, evaluate.",
    no_args_is_help=True,
    add_completion=False,
)


@app.command()
def demo(
    out: Path = typer.Option(Path("results/demo"), help="Directory for vectors, tables and the report."),
    model: str = typer.Option("smollm2-135m-instruct", help="Model name, checkpoint dir or .gguf file."),
    question: str = typer.Option("What is the capital of France?", help="Question the model answers first."),
    pairs: int = typer.Option(150, help="Contrastive pairs per bundled behaviour used for the vectors."),
) -> None:
    """The main job: load the model, answer a question, read residual norms, build vectors."""
    from caa_lens.pipeline import run_demo

    run_demo(out=out, model_name=model, question=question, n_pairs=pairs)


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


if __name__ == "__main__":
    app()
