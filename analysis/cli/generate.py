"""``caa-lens generate``: steered open-ended completions of a prompt file, scored or judged."""

from pathlib import Path

import typer

from analysis.cli.checks import (
    UsageError,
    check_layers_fit,
    check_model,
    checking,
    existing_file,
    for_model,
    load_model_arg,
    model_option,
    parse_multipliers,
    positive,
    vector_files,
)

__all__ = ["generate_command"]


def generate_command(
    prompts: Path = typer.Argument(..., help="JSON array of {id, prompt} (the shared OOD files)."),
    out: Path = typer.Option(..., help="Output JSONL, one completion per line."),
    vector: Path | None = typer.Option(None, help="Saved vector to steer with (optional)."),
    layer: int = typer.Option(0, help="Layer to steer."),
    multipliers: str = typer.Option("0", help="Comma-separated multipliers."),
    judge: str = typer.Option("", help="Behaviour description: score with the model itself as judge."),
    model: str = model_option(),
    max_new_tokens: int = typer.Option(64, help="Tokens to generate per completion."),
    batch_size: int = typer.Option(8, help="Completions per batch."),
    mode: str = typer.Option(
        "from_start", help="'from_start' (CAA: from the end of the user turn) or 'last' (Patterns of CAE)."
    ),
    score: str = typer.Option(
        "",
        help="Comma-separated scorers (refusal, sentiment, wedding, casual, agreement, disagreement, "
        "degeneracy, fluency): score every completion and print each metric's paired effect against "
        "multiplier 0 with its 95% interval (and the null band with --controls).",
    ),
    controls: int = typer.Option(0, help="Random vectors of the same norm per multiplier (with --score)."),
    effects: Path | None = typer.Option(None, help="Also write the effects table here (CSV; with --score)."),
) -> None:
    """Steered open-ended completions of a prompt file, scored (--score) or rated by a model judge."""
    if score:
        _scored_generations(
            prompts, out, vector, layer, multipliers, score, model, max_new_tokens, batch_size, mode,
            controls, effects, judge,
        )  # fmt: skip
        return
    if controls or effects is not None:
        raise UsageError("--controls and --effects need --score (the metrics whose effects they report)")
    from caa_lens.multipliers import check_multipliers
    from caa_lens.ood import (
        ModelJudgeScorer,
        check_generations_output,
        load_ood_prompts,
        run_ood,
        write_generations,
    )

    values = parse_multipliers(multipliers)
    if mode not in ("from_start", "last"):
        raise UsageError(f"--mode must be 'from_start' or 'last', got {mode!r}")
    if layer < 0:
        raise UsageError(f"--layer must be >= 0, got {layer}")
    positive(max_new_tokens, "--max-new-tokens")
    positive(batch_size, "--batch-size")
    if vector is None and any(m != 0 for m in values):
        raise UsageError("--multipliers other than 0 need a --vector to steer with")
    existing_file(prompts, "prompt file")
    with checking():
        items = load_ood_prompts(prompts)
    named = vector_files([vector], [layer]) if vector is not None else {}
    with checking("--multipliers"):
        check_multipliers(values, list(named.values()) or None)
    with checking("--out"):
        check_generations_output(out)
    bridge, steer = _load_with_vector(model, named, vector, layer)
    frame = run_ood(
        bridge,
        items,
        steer,
        layer if steer is not None else None,
        values,
        ModelJudgeScorer(bridge, judge) if judge else None,
        max_new_tokens,
        batch_size,
        mode=mode,  # type: ignore[arg-type]
    )
    write_generations(frame, out)
    typer.echo(f"wrote {out} ({len(frame)} completions)")


def _load_with_vector(model: str, named: dict, vector: Path | None, layer: int) -> tuple:
    """The model (the layer checked against its depth before and after loading) and the vector for it."""
    check_layers_fit([layer], check_model(model), "--layer")
    bridge = load_model_arg(model)
    with checking("--layer"):
        check_layers_fit([layer], bridge.cfg.n_layers, "--layer")
    return bridge, for_model(named, [vector], bridge)[vector.stem] if vector is not None else None


def _scored_generations(
    prompts: Path, out: Path, vector: Path | None, layer: int, multipliers: str, score: str, model: str,
    max_new_tokens: int, batch_size: int, mode: str, controls: int, effects: Path | None, judge: str,
) -> None:  # fmt: skip
    """``generate --score``: every argument is checked before the model loads (one line each)."""
    from caa_lens.files import atomic_write_bytes
    from caa_lens.multipliers import check_multipliers
    from caa_lens.ood import check_generations_output, load_ood_prompts, write_generations
    from caa_lens.open_ended import (
        EFFECT_COLUMNS,
        GenerationSettings,
        check_effects_output,
        open_ended_effects,
        steered_generations,
    )
    from caa_lens.scorers import check_scorer_names, named_scorers, score_generations

    with checking("--score"):
        names = check_scorer_names(score)
    if judge:
        raise UsageError("--judge and --score are separate scorers: run them one at a time")
    if vector is None:
        raise UsageError("--score reports effects of steering: give a --vector")
    values = parse_multipliers(multipliers)
    if not any(m != 0 for m in values):
        raise UsageError("--score needs at least one multiplier other than 0 (the unsteered run is added)")
    if mode not in ("from_start", "last", "front", "all"):
        raise UsageError(f"--mode must be 'from_start', 'last', 'front' or 'all', got {mode!r}")
    if controls < 0:
        raise UsageError(f"--controls must be >= 0, got {controls}")
    positive(max_new_tokens, "--max-new-tokens")
    positive(batch_size, "--batch-size")
    existing_file(prompts, "prompt file")
    with checking():
        items = load_ood_prompts(prompts)
    named = vector_files([vector], [layer])
    with checking("--multipliers"):
        check_multipliers(values, list(named.values()))
    with checking("--out"):
        check_generations_output(out)
    if effects is not None:
        with checking("--effects"):
            check_effects_output(effects)
    bridge, steer = _load_with_vector(model, named, vector, layer)
    assert steer is not None  # --vector is required here
    settings = GenerationSettings(max_new_tokens=max_new_tokens, batch_size=batch_size)
    table = steered_generations(
        bridge,
        items,
        steer,
        [layer],
        values,
        name=vector.stem,
        controls=controls,
        mode=mode,
        settings=settings,
    )
    scored = score_generations(table, named_scorers(names, bridge))
    metrics = [c for c in scored.columns if c not in table.columns]
    write_generations(scored.drop(columns=["completion_ids"]), out)
    result = open_ended_effects(scored, metrics)
    # The effects table's columns less the ones a single-vector, single-layer run repeats on every row.
    hidden = {"vector", "layer", "n_null"} | (set() if controls else {"null_low", "null_high", "vs_null"})
    shown = result[[c for c in EFFECT_COLUMNS if c not in hidden]]
    typer.echo(shown.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    if not controls:
        typer.echo("no null band: add --controls 3 (or more) to compare with random vectors of the same norm")
    if effects is not None:
        atomic_write_bytes(effects, result.to_csv(index=False).encode())
    typer.echo(f"wrote {out} ({len(scored)} completions)" + (f" and {effects}" if effects else ""))
