"""``caa-lens actadd weddings|perplexity|sentiment``: ActAdd's quantitative experiments
(``analysis.actadd_*``), arguments checked before the model loads."""

from dataclasses import replace
from pathlib import Path

import typer

from analysis.cli.checks import (
    UsageError,
    check_layers_fit,
    check_model,
    checking,
    model_option,
    parse_layers,
    parse_multipliers,
)
from caa_lens.jobs import load_job_model

__all__ = ["actadd_app", "actadd_perplexity", "actadd_sentiment", "actadd_weddings"]

actadd_app = typer.Typer(
    help=(
        "ActAdd's quantitative experiments (Turner et al. 2023): topic steering with 'weddings', perplexity "
        "of related vs unrelated text, and sentiment with 'Love' - 'Hate'; paired effects with intervals "
        "and a null band from random vectors of the same norm. Writes CSV tables, a JSON summary and a figure."
    ),
    no_args_is_help=True,
)

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
    from analysis.actadd_data import ACTADD_TEXTS, SST2
    from analysis.actadd_store import is_actadd_dir
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
    return check_model(model)


def _coefficients(text: str) -> tuple[float, ...]:
    values = tuple(v for v in parse_multipliers(text, "--coefficients") if v != 0)
    if not values:
        raise UsageError(f"--coefficients {text!r}: give at least one non-zero coefficient (0 is always run)")
    return values


def _actadd_layers(text: str, n_layers: int | None, option: str) -> tuple[int, ...] | None:
    if not text:
        return None
    layers = parse_layers(text, option, allow_all=False)
    assert layers is not None
    check_layers_fit(layers, n_layers, option)
    return tuple(layers)


def _generation_options(controls: int, controls_at: str, prompts: int, max_new_tokens: int) -> None:
    from analysis.actadd_setup import CONTROLS_AT

    if controls < 0:
        raise UsageError(f"--controls must be >= 0 (0: no null band), got {controls}")
    if controls_at not in CONTROLS_AT:
        raise UsageError(f"--controls-at must be one of {', '.join(CONTROLS_AT)}, got {controls_at!r}")
    if prompts < 0:
        raise UsageError(f"--prompts must be >= 0 (0: the default number), got {prompts}")
    if max_new_tokens < 1:
        raise UsageError(f"--max-new-tokens must be >= 1, got {max_new_tokens}")


def _finish_actadd(result, out: Path) -> None:
    from analysis.actadd_store import save_actadd
    from analysis.plots import save_actadd_figure

    for path in [*save_actadd(result, out), save_actadd_figure(result, out)]:
        typer.echo(str(path))


CONTROLS_AT_HELP = (
    "Where the random controls run: 'cell' (the best cell), 'layer' (the best layer), or 'all'."
)


@actadd_app.command("weddings")
def actadd_weddings(
    out: Path = typer.Option(..., help=ACTADD_OUT_HELP),
    model: str = model_option(),
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
    from analysis.actadd_topic import TopicConfig, weddings_topic

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
    _finish_actadd(weddings_topic(load_job_model(model), config, progress=True), out)


@actadd_app.command("perplexity")
def actadd_perplexity(
    out: Path = typer.Option(..., help=ACTADD_OUT_HELP),
    model: str = model_option(),
    shared_data: Path | None = typer.Option(None, help=SHARED_DATA_HELP),
    quick: bool = typer.Option(False, help="Smoke sizes: 4 sentences per text, 2 coefficients."),
    layer: int | None = typer.Option(None, help="Layer (default: ActAdd's 6 of 48, scaled: 4 of 30)."),
    coefficients: str = typer.Option("0.05,0.1,0.2,0.5,1", help="Comma-separated coefficients."),
    controls: int = typer.Option(3, help="Random same-norm vectors for the null band."),
    max_sentences: int = typer.Option(0, help="Use at most N sentences per text (0: all)."),
) -> None:
    """Perplexity of related (wedding) vs unrelated texts with the 'weddings' vector at the front of every
    sentence: per text, the ratio steered / unsteered."""
    from analysis.actadd_perplexity import RelatedTextConfig, related_text_perplexity

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
    result = related_text_perplexity(load_job_model(model), config, shared_data=shared_data, progress=True)
    _finish_actadd(result, out)


@actadd_app.command("sentiment")
def actadd_sentiment(
    out: Path = typer.Option(..., help=ACTADD_OUT_HELP),
    model: str = model_option(),
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
    from analysis.actadd_sentiment import SentimentConfig, sentiment_shift

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
    result = sentiment_shift(load_job_model(model), config, shared_data=shared_data, progress=True)
    _finish_actadd(result, out)
