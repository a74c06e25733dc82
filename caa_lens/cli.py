"""Stage commands of the ``caa-lens`` command line (mounted, with the main job, by ``analysis.cli``).

Every command runs in two phases. **Checking**: every argument, input file, vector file, layer and
output path is validated before a model is loaded or anything is computed; a problem there is a
``UsageError`` (exit code 2) naming the option or file and what to do. **Running**: the model is
loaded and the work done; a failure there exits with code 1. Either way the user sees one line
(``caa-lens: error: ...``); ``--debug`` shows the traceback. Outputs go only to new paths or to files
caa_lens itself wrote (``caa_lens.outputs``): a command never modifies a file it did not create.
"""

import json
import math
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import typer

from caa_lens.models import DEFAULT_MODEL

__all__ = ["UsageError", "app", "checking", "parse_layers", "parse_multipliers", "positive"]

app = typer.Typer(
    help="Contrastive activation engineering on TransformerLens: build steering vectors, steer, evaluate.",
    no_args_is_help=True,
    add_completion=False,
)

MODEL_HELP = (
    "Model: 'smollm2-135m-instruct' (default, offline), 'tiny', a checkpoint dir, a .gguf file or a Hub name."
)
SITES = ("resid_pre", "resid_mid", "resid_post")
METRIC_HELP = (
    "'letter' (CAA: p of the matching answer letter after '(') or 'likelihood' (letter-free: the mean "
    "per-token log-probability of the matching minus the other answer's text as the reply to the question "
    "without its choices; p(matching) = sigmoid of that difference)."
)
_INTEGER = re.compile(r"[+-]?\d+")


class UsageError(ValueError):
    """A bad argument, input file or output path, found before any work was done (exit code 2)."""


@contextmanager
def checking(what: str = "") -> Iterator[None]:
    """Turn the validation errors raised inside into ``UsageError`` (prefixed with ``what``)."""
    try:
        yield
    except UsageError:
        raise
    except (ValueError, OSError, KeyError, TypeError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        raise UsageError(f"{what}: {message}" if what else str(message)) from err


def positive(value: int, option: str) -> int:
    if value < 1:
        raise UsageError(f"{option} must be a positive integer, got {value}")
    return value


def parse_layers(text: str, option: str = "--layers", allow_all: bool = True) -> list[int] | None:
    """``"10,14"`` -> ``[10, 14]``; ``"all"`` -> ``None``. Every entry a non-negative integer, no repeats."""
    if allow_all and text.strip() == "all":
        return None
    entries = [entry.strip() for entry in text.split(",")]
    if not text.strip() or any(not entry for entry in entries):
        raise UsageError(f"{option} {text!r} has an empty entry; write layer indices like 10,14")
    layers = []
    for entry in entries:
        if not _INTEGER.fullmatch(entry):
            raise UsageError(f"{option} {text!r}: {entry!r} is not a layer index (a whole number)")
        if int(entry) < 0:
            raise UsageError(f"{option} {text!r}: layer {entry} is negative; layers count from 0")
        layers.append(int(entry))
    if len(set(layers)) != len(layers):
        raise UsageError(f"{option} {text!r} repeats a layer")
    return layers


def parse_multipliers(text: str, option: str = "--multipliers") -> list[float]:
    """``"-2,0,2"`` -> ``[-2.0, 0.0, 2.0]``: non-empty, every entry a finite number, no repeats."""
    entries = [entry.strip() for entry in text.split(",")]
    if not text.strip():
        raise UsageError(f"{option} is empty; give at least one multiplier, e.g. {option}=-4,0,4")
    if any(not entry for entry in entries):
        raise UsageError(f"{option} {text!r} has an empty entry; write multipliers like -4,0,4")
    values = []
    for entry in entries:
        try:
            value = float(entry)
        except ValueError:
            raise UsageError(f"{option} {text!r}: {entry!r} is not a number") from None
        if not math.isfinite(value):
            raise UsageError(f"{option} {text!r}: {entry!r} is not a finite number")
        values.append(value)
    if len(set(values)) != len(values):
        raise UsageError(f"{option} {text!r} repeats a multiplier")
    return values


def _finite(value: float, option: str) -> float:
    if not math.isfinite(value):
        raise UsageError(f"{option} must be a finite number, got {value}")
    return value


def _existing_file(path: Path, what: str) -> Path:
    if not path.exists():
        raise UsageError(f"{what} {path} does not exist")
    if not path.is_file():
        raise UsageError(f"{what} {path} is not a file")
    return path


def _layer_count(model: str) -> int | None:
    """The model's layer count read from its config without loading weights, when that is cheap."""
    from caa_lens.models import TINY_MODEL, cache_dir

    if model == TINY_MODEL:
        return 4  # caa_lens.tiny's default shape
    # The default model's checkpoint, once built, is an ordinary HF directory in the cache.
    directory = cache_dir() / "checkpoints" / DEFAULT_MODEL if model == DEFAULT_MODEL else Path(model)
    config = directory / "config.json"
    if not config.is_file():
        return None
    try:
        record = json.loads(config.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        if isinstance(record.get(key), int):
            return int(record[key])
    return None


def _check_layers_fit(layers: Sequence[int] | None, n_layers: int | None, option: str) -> None:
    if layers is None or n_layers is None:
        return
    outside = [layer for layer in layers if layer >= n_layers]
    if outside:
        raise UsageError(f"{option}: layers {outside} do not exist; the model has layers 0..{n_layers - 1}")


def _check_model(model: str) -> int | None:
    from caa_lens.models import ModelFetchError, check_model_spec

    try:
        check_model_spec(model)
    except (ModelFetchError, ValueError, OSError) as err:  # a missing model is the user's input to fix
        raise UsageError(f"--model: {err}") from err
    return _layer_count(model)


def _load(model: str):
    from caa_lens.models import load_model

    return load_model(model)


def _dataset(spec: str, limit: int = 0):
    from caa_lens.data import resolve_dataset

    if limit < 0:
        raise UsageError(f"--limit must be >= 0 (0: all items), got {limit}")
    with checking():
        data = resolve_dataset(spec)
    if limit:
        data = data.select(range(min(limit, len(data))), f":first{limit}")
    return data


def _metric(metric: str, data=None) -> str:
    """Check ``--metric``; for ``likelihood``, also that every item's answer texts can be located."""
    from caa_lens.sweep import check_metric

    with checking("--metric"):
        check_metric(metric)
    if metric == "likelihood" and data is not None:
        from caa_lens.likelihood import dataset_option_texts

        with checking("--metric likelihood"):
            dataset_option_texts(data)
    return metric


def _vector_files(paths: Sequence[Path], layers: Sequence[int] | None) -> dict:
    """Load and verify saved vectors (integrity only; the model check follows the model's load)."""
    from caa_lens.vectors import load_vector

    named = {}
    for path in paths:
        _existing_file(path, "vector file")
        with checking(str(path)):
            vector = load_vector(path)
        if path.stem in named:
            raise UsageError(f"two vector files are named {path.stem!r}; the vector column must be unique")
        missing = [layer for layer in layers or () if layer not in vector.layers]
        if missing:
            raise UsageError(
                f"{path} has no direction for layers {missing}; it has layers {list(vector.layers)}"
            )
        named[path.stem] = vector
    return named


def _for_model(named: dict, paths: Sequence[Path], bridge) -> dict:
    """Reload each vector against the loaded model: refuses one made on another model or weights."""
    from caa_lens.vectors import load_vector

    checked = {}
    for path in paths:
        with checking(str(path)):
            checked[path.stem] = load_vector(path, bridge)
    return checked


@app.command()
def vectors(
    dataset: str = typer.Argument(
        ..., help="CAA JSON / MWE JSONL path, or a bundled name (optimism[:test])."
    ),
    out: Path = typer.Option(
        ..., help="Output .safetensors path (a readable copy of its metadata goes to OUT.json)."
    ),
    model: str = typer.Option(DEFAULT_MODEL, help=MODEL_HELP),
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
    from caa_lens.vectors import check_vector_output, save_vector

    chosen = parse_layers(layers)
    if site not in SITES:
        raise UsageError(f"--site must be one of {', '.join(SITES)}, got {site!r}")
    if method not in ("letter_balanced", "mean_difference"):
        raise UsageError(f"--method must be 'letter_balanced' or 'mean_difference', got {method!r}")
    if position not in ("answer", "last"):
        raise UsageError(f"--position must be 'answer' or 'last', got {position!r}")
    positive(batch_size, "--batch-size")
    data = _dataset(dataset, limit)
    with checking("--out"):
        out = check_vector_output(out, sidecar=sidecar)
    _check_layers_fit(chosen, _check_model(model), "--layers")

    bridge = _load(model)
    with checking("--layers"):
        _check_layers_fit(chosen, bridge.cfg.n_layers, "--layers")
    vector = caa_vector(bridge, data, chosen, site, position, batch_size, method=method)  # type: ignore[arg-type]
    path = save_vector(vector, out, sidecar=sidecar)
    typer.echo(f"wrote {path} ({len(vector.layers)} layers, {vector.provenance.n_pairs} pairs)")


sweep_app = typer.Typer(help="Layer x multiplier sweeps of behaviour probability (resumable, shardable).")
app.add_typer(sweep_app, name="sweep")


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
    model: str = typer.Option(DEFAULT_MODEL, help=MODEL_HELP),
    batch_size: int = typer.Option(8, help="Questions per prefix pass."),
    limit: int = typer.Option(0, help="Use only the first N items (0: all)."),
    metric: str = typer.Option("letter", help=METRIC_HELP),
) -> None:
    """Sweep layers x multipliers x vectors (and random controls), appending rows to OUT as they are
    computed; then print the effects summary (as `caa-lens sweep summary OUT` does)."""
    from caa_lens.sweep import check_multipliers, check_sweep_output, default_shard, parse_shard, run_sweep

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
    _metric(metric)
    data = _dataset(dataset, limit)
    _metric(metric, data)
    named = _vector_files(vector, chosen)
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
    _check_layers_fit(chosen, _check_model(model), "--layers")

    bridge = _load(model)
    with checking("--layers"):
        _check_layers_fit(chosen, bridge.cfg.n_layers, "--layers")
    run = run_sweep(
        bridge,
        data,
        _for_model(named, vector, bridge),
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
    from caa_lens.sweep import effects_summary, format_effects, load_results, verdicts

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
    from caa_lens.sweep import check_sweep_output, merge_results

    for path in shards:
        _existing_file(path, "shard file")
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
    from caa_lens.sweep import is_summary_csv

    _existing_file(results, "results file")
    if csv is not None:
        with checking("--csv"):
            check_output_file(csv, "sweep summary CSV", is_summary_csv)
    _print_effects(results, csv)


@app.command()
def evaluate(
    dataset: str = typer.Argument("", help="A/B or Yes/No dataset (MMLU/TruthfulQA A/B files too)."),
    text: Path | None = typer.Option(None, help="Measure the perplexity of this text file instead."),
    vector: Path | None = typer.Option(None, help="Saved vector to steer with (optional)."),
    layer: int = typer.Option(0, help="Layer to steer."),
    multiplier: float = typer.Option(0.0, help="Steering multiplier."),
    model: str = typer.Option(DEFAULT_MODEL, help=MODEL_HELP),
    max_tokens: int = typer.Option(20000, help="Perplexity: score at most this many tokens (0: all)."),
    batch_size: int = typer.Option(16, help="Items per forward pass."),
    metric: str = typer.Option("letter", help=METRIC_HELP),
) -> None:
    """Behaviour probability / accuracy of a dataset, or perplexity of a text, optionally steered."""
    from caa_lens.capability import ab_capability, perplexity, read_text
    from caa_lens.steering import Injection
    from caa_lens.sweep import check_multipliers

    if bool(dataset) == (text is not None):
        raise UsageError("give a DATASET or --text, not both (and not neither)")
    if layer < 0:
        raise UsageError(f"--layer must be >= 0, got {layer}")
    if max_tokens < 0:
        raise UsageError(f"--max-tokens must be >= 0 (0: all), got {max_tokens}")
    positive(batch_size, "--batch-size")
    _finite(multiplier, "--multiplier")
    _metric(metric)
    if text is not None and metric != "letter":
        raise UsageError("--metric scores a DATASET; --text measures perplexity (leave --metric out)")
    data = _dataset(dataset) if dataset else None
    _metric(metric, data)
    if text is not None:
        _existing_file(text, "text file")
        with checking():
            content = read_text(text)
        if not content.strip():
            raise UsageError(f"text file {text} is empty")
    named = _vector_files([vector], [layer]) if vector is not None else {}
    if named:
        with checking("--multiplier"):
            check_multipliers([multiplier], list(named.values()))
    _check_layers_fit([layer], _check_model(model), "--layer")

    bridge = _load(model)
    with checking("--layer"):
        _check_layers_fit([layer], bridge.cfg.n_layers, "--layer")
    injections = []
    if vector is not None:
        mode = "all" if text is not None else "from_start"
        injections.append(
            Injection(_for_model(named, [vector], bridge)[vector.stem], layer, multiplier, mode)
        )
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


@app.command("generate")
def generate_command(
    prompts: Path = typer.Argument(..., help="JSON array of {id, prompt} (the shared OOD files)."),
    out: Path = typer.Option(..., help="Output JSONL, one completion per line."),
    vector: Path | None = typer.Option(None, help="Saved vector to steer with (optional)."),
    layer: int = typer.Option(0, help="Layer to steer."),
    multipliers: str = typer.Option("0", help="Comma-separated multipliers."),
    judge: str = typer.Option("", help="Behaviour description: score with the model itself as judge."),
    model: str = typer.Option(DEFAULT_MODEL, help=MODEL_HELP),
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
    from caa_lens.ood import (
        ModelJudgeScorer,
        check_generations_output,
        load_ood_prompts,
        run_ood,
        write_generations,
    )
    from caa_lens.sweep import check_multipliers

    values = parse_multipliers(multipliers)
    if mode not in ("from_start", "last"):
        raise UsageError(f"--mode must be 'from_start' or 'last', got {mode!r}")
    if layer < 0:
        raise UsageError(f"--layer must be >= 0, got {layer}")
    positive(max_new_tokens, "--max-new-tokens")
    positive(batch_size, "--batch-size")
    if vector is None and any(m != 0 for m in values):
        raise UsageError("--multipliers other than 0 need a --vector to steer with")
    _existing_file(prompts, "prompt file")
    with checking():
        items = load_ood_prompts(prompts)
    named = _vector_files([vector], [layer]) if vector is not None else {}
    with checking("--multipliers"):
        check_multipliers(values, list(named.values()) or None)
    with checking("--out"):
        check_generations_output(out)
    _check_layers_fit([layer], _check_model(model), "--layer")

    bridge = _load(model)
    with checking("--layer"):
        _check_layers_fit([layer], bridge.cfg.n_layers, "--layer")
    steer = _for_model(named, [vector], bridge)[vector.stem] if vector is not None else None
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


def _scored_generations(
    prompts: Path, out: Path, vector: Path | None, layer: int, multipliers: str, score: str, model: str,
    max_new_tokens: int, batch_size: int, mode: str, controls: int, effects: Path | None, judge: str,
) -> None:  # fmt: skip
    """``generate --score``: every argument is checked before the model loads (one line each)."""
    from caa_lens.files import atomic_write_bytes
    from caa_lens.ood import check_generations_output, load_ood_prompts, write_generations
    from caa_lens.open_ended import (
        EFFECT_COLUMNS,
        GenerationSettings,
        check_effects_output,
        open_ended_effects,
        steered_generations,
    )
    from caa_lens.scorers import check_scorer_names, named_scorers, score_generations
    from caa_lens.sweep import check_multipliers

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
    _existing_file(prompts, "prompt file")
    with checking():
        items = load_ood_prompts(prompts)
    named = _vector_files([vector], [layer])
    with checking("--multipliers"):
        check_multipliers(values, list(named.values()))
    with checking("--out"):
        check_generations_output(out)
    if effects is not None:
        with checking("--effects"):
            check_effects_output(effects)
    _check_layers_fit([layer], _check_model(model), "--layer")

    bridge = _load(model)
    with checking("--layer"):
        _check_layers_fit([layer], bridge.cfg.n_layers, "--layer")
    steer = _for_model(named, [vector], bridge)[vector.stem]
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
