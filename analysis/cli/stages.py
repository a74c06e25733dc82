"""The stage commands ``caa-lens vectors`` and ``caa-lens evaluate`` (arguments checked before the
model loads, ``analysis.cli.checks``)."""

from pathlib import Path

import typer

from analysis.cli.checks import (
    METRIC_HELP,
    SITES,
    UsageError,
    check_layers_fit,
    check_metric_option,
    check_model,
    checking,
    existing_file,
    finite,
    for_model,
    load_model_arg,
    model_option,
    parse_layers,
    positive,
    read_dataset,
    vector_files,
)

__all__ = ["evaluate", "vectors"]


def vectors(
    dataset: str = typer.Argument(
        ..., help="CAA JSON / MWE JSONL path, or a bundled name (optimism[:test])."
    ),
    out: Path = typer.Option(
        ..., help="Output .safetensors path (a readable copy of its metadata goes to OUT.json)."
    ),
    model: str = model_option(),
    layers: str = typer.Option("all", help="Comma-separated layer indices, or 'all'."),
    site: str = typer.Option("resid_post", help="resid_pre, resid_mid or resid_post."),
    position: str = typer.Option(
        "answer", help="'answer' (CAA: the answer-letter token) or 'last' (Patterns)."
    ),
    batch_size: int = typer.Option(16, help="Pairs per forward batch."),
    limit: int = typer.Option(0, help="Use only the first N pairs (0: all)."),
    sidecar: bool = typer.Option(True, help="Also write OUT.json, a human-readable copy of the metadata."),
    method: str = typer.Option(
        "letter_balanced",
        help="'letter_balanced' (default: each matching answer label weighted equally, so the answer "
        "letter cancels) or 'mean_difference' (the plain mean of the CAA paper).",
    ),
) -> None:
    """Build mean-difference steering vectors from a contrastive dataset and save them with provenance."""
    from caa_lens.methods import caa_vector
    from caa_lens.vector_files import check_vector_output, save_vector

    chosen = parse_layers(layers)
    if site not in SITES:
        raise UsageError(f"--site must be one of {', '.join(SITES)}, got {site!r}")
    if method not in ("letter_balanced", "mean_difference"):
        raise UsageError(f"--method must be 'letter_balanced' or 'mean_difference', got {method!r}")
    if position not in ("answer", "last"):
        raise UsageError(f"--position must be 'answer' or 'last', got {position!r}")
    positive(batch_size, "--batch-size")
    data = read_dataset(dataset, limit)
    with checking("--out"):
        out = check_vector_output(out, sidecar=sidecar)
    check_layers_fit(chosen, check_model(model), "--layers")

    bridge = load_model_arg(model)
    with checking("--layers"):
        check_layers_fit(chosen, bridge.cfg.n_layers, "--layers")
    vector = caa_vector(bridge, data, chosen, site, position, batch_size, method=method)  # type: ignore[arg-type]
    path = save_vector(vector, out, sidecar=sidecar)
    typer.echo(f"wrote {path} ({len(vector.layers)} layers, {vector.provenance.n_pairs} pairs)")


def evaluate(
    dataset: str = typer.Argument("", help="A/B or Yes/No dataset (MMLU/TruthfulQA A/B files too)."),
    text: Path | None = typer.Option(None, help="Measure the perplexity of this text file instead."),
    vector: Path | None = typer.Option(None, help="Saved vector to steer with (optional)."),
    layer: int = typer.Option(0, help="Layer to steer."),
    multiplier: float = typer.Option(0.0, help="Steering multiplier."),
    model: str = model_option(),
    max_tokens: int = typer.Option(20000, help="Perplexity: score at most this many tokens (0: all)."),
    batch_size: int = typer.Option(16, help="Items per forward pass."),
    metric: str = typer.Option("letter", help=METRIC_HELP),
) -> None:
    """Behaviour probability / accuracy of a dataset, or perplexity of a text, optionally steered."""
    from caa_lens.capability import ab_capability, perplexity, read_text
    from caa_lens.multipliers import check_multipliers
    from caa_lens.steering import Injection

    if bool(dataset) == (text is not None):
        raise UsageError("give a DATASET or --text, not both (and not neither)")
    if layer < 0:
        raise UsageError(f"--layer must be >= 0, got {layer}")
    if max_tokens < 0:
        raise UsageError(f"--max-tokens must be >= 0 (0: all), got {max_tokens}")
    positive(batch_size, "--batch-size")
    finite(multiplier, "--multiplier")
    check_metric_option(metric)
    if text is not None and metric != "letter":
        raise UsageError("--metric scores a DATASET; --text measures perplexity (leave --metric out)")
    data = read_dataset(dataset) if dataset else None
    check_metric_option(metric, data)
    if text is not None:
        existing_file(text, "text file")
        with checking():
            content = read_text(text)
        if not content.strip():
            raise UsageError(f"text file {text} is empty")
    named = vector_files([vector], [layer]) if vector is not None else {}
    if named:
        with checking("--multiplier"):
            check_multipliers([multiplier], list(named.values()))
    check_layers_fit([layer], check_model(model), "--layer")

    bridge = load_model_arg(model)
    with checking("--layer"):
        check_layers_fit([layer], bridge.cfg.n_layers, "--layer")
    injections = []
    if vector is not None:
        mode = "all" if text is not None else "from_start"
        injections.append(Injection(for_model(named, [vector], bridge)[vector.stem], layer, multiplier, mode))
    if text is not None:
        result = perplexity(bridge, content, injections, max_tokens=max_tokens or None)
        typer.echo(
            f"perplexity {result.perplexity:.3f} over {result.n_tokens} tokens ({result.n_windows} windows)"
        )
        return
    assert data is not None
    if metric == "likelihood":
        from caa_lens.likelihood import likelihood_scores

        scores = likelihood_scores(bridge, data, injections, batch_size)
        typer.echo(
            f"{scores.dataset}: mean p(matching) {scores.mean_p_matching:.4f} (likelihood: sigmoid of the "
            f"per-token log-probability difference of the answer texts), mean difference "
            f"{scores.mean_logprob_diff:+.4f} nats/token, matching text more likely on "
            f"{scores.preferred_fraction:.4f} of items, mean per-token probability of the texts "
            f"{scores.mean_p_token_mean:.4f} ({len(scores.items)} items)"
        )
        return
    score = ab_capability(bridge, data, injections, batch_size)
    typer.echo(
        f"{score.dataset}: mean p(matching) {score.mean_p_correct:.4f}, accuracy (p > 0.5) "
        f"{score.accuracy:.4f} (always answering {score.majority_label} scores {score.majority_baseline:.4f}), "
        f"mass on the offered answers {score.mean_p_letters_sum:.4f} ({score.n_items} items)"
    )
