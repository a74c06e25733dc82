"""The machinery of ActAdd's two generation experiments (topic and sentiment): one shared config, the
result, and the grid that generates, scores and pairs.

Every effect is paired: the same prompts unsteered and steered, the mean of the per-prompt differences
with a 95% percentile bootstrap interval over prompts, n, and a null band from random vectors of the
same per-position norms (``caa_lens.stats.random_like``) at the same layer and coefficient. Generation
is slow, so by default the random controls run at the best cell of the grid only (``null_scope`` in
the tables says where); the best cell is picked on the same prompts it is reported on, so its effect
is an optimistic (in-sample) estimate, which the saved summaries state.
"""

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, ClassVar, NamedTuple, TypeVar

import pandas as pd

import caa_lens as cl
from analysis.actadd_setup import (
    CONTROLS_AT,
    NULL_SCOPES,
    ControlsAt,
    Window,
    bundled_pair,
    front_window,
    jsonable,
    prompt_windows,
    row_norms,
)
from caa_lens.hooks import scaled_layers
from caa_lens.ood import OODPrompt
from caa_lens.open_ended import GenerationSettings, open_ended_effects, steered_generations
from caa_lens.prompts import format_prompt
from caa_lens.scorers import DegeneracyScorer, FluencyScorer, TextScorer, score_generations
from caa_lens.sweep_controls import NULL_PREFIX

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

__all__ = ["GenerationConfig", "GenerationExperiment", "SizedForms", "run_generation_experiment"]

_Config = TypeVar("_Config", bound="GenerationConfig")
_Result = TypeVar("_Result", bound="GenerationExperiment")


class SizedForms(NamedTuple):
    """What an experiment's quick form (a smoke run) and short form (the main job's) set of its own."""

    quick_layers: tuple[int, ...]
    short_layers: tuple[int, ...]
    short_coefficients: tuple[float, ...]


@dataclass(frozen=True)
class GenerationConfig:
    """The grid and sizes of a generation experiment (``TopicConfig``, ``SentimentConfig``)."""

    layers: tuple[int, ...] | None = None  # None: ``reference_layers`` scaled to the model's depth
    # Layers of a 30-layer model (the default model), scaled by ``scaled_layers`` to other depths.
    reference_layers: tuple[int, ...] = (2, 4, 6, 8, 10)
    coefficients: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0)  # 0 (unsteered) is always added
    n_prompts: int | None = None  # the first n prompts; None: all
    controls: int = 3
    controls_at: ControlsAt = "cell"
    control_seed: int = 0
    max_new_tokens: int = 40
    batch_size: int = 32
    window: Window = "user"
    n_resamples: int = 4000
    seed: int = 0
    # What the quick and short forms set per experiment (the rest of both forms is shared, below).
    forms: ClassVar[SizedForms]

    def __post_init__(self) -> None:
        if not self.coefficients or any(not math.isfinite(c) for c in self.coefficients):
            raise ValueError(f"coefficients must be finite numbers, got {self.coefficients}")
        if not [c for c in self.coefficients if c != 0]:
            raise ValueError("give at least one non-zero coefficient (0, the unsteered run, is always added)")
        if len(set(self.coefficients)) != len(self.coefficients):
            raise ValueError(f"coefficients repeat: {self.coefficients}")
        if self.layers is not None and (not self.layers or len(set(self.layers)) != len(self.layers)):
            raise ValueError(f"layers must be a non-empty list without repeats, got {self.layers}")
        if self.controls_at not in CONTROLS_AT:
            raise ValueError(f"controls_at must be one of {CONTROLS_AT}, got {self.controls_at!r}")
        if self.controls < 0 or self.control_seed < 0:
            raise ValueError("controls and control_seed must be >= 0")
        if self.n_prompts is not None and self.n_prompts < 1:
            raise ValueError(f"n_prompts must be >= 1 (None: all), got {self.n_prompts}")
        if self.max_new_tokens < 1 or self.batch_size < 1 or self.n_resamples < 1:
            raise ValueError("max_new_tokens, batch_size and n_resamples must be >= 1")
        if self.window not in ("user", "prompt"):
            raise ValueError(f"window must be 'user' or 'prompt', got {self.window!r}")

    def quick(self: _Config) -> _Config:
        """A smoke run: 4 prompts, 8 new tokens, 2 coefficients, 2 controls at every cell."""
        return replace(
            self,
            n_prompts=4,
            coefficients=(4.0, 16.0),
            reference_layers=self.forms.quick_layers,
            controls=2,
            controls_at="all",
            max_new_tokens=8,
            n_resamples=500,
        )

    def short(self: _Config) -> _Config:
        """The main job's short form: 12 prompts, 24 new tokens, 2 controls at the best cell, at the
        experiment's short layers and coefficients."""
        return replace(
            self,
            n_prompts=12,
            reference_layers=self.forms.short_layers,
            coefficients=self.forms.short_coefficients,
            controls=2,
            controls_at="cell",
            max_new_tokens=24,
        )


@dataclass(frozen=True, eq=False)
class GenerationExperiment:
    """Steered generations scored and turned into paired effects.

    Attributes:
        effects: one row per (metric, layer, coefficient) of the tested vector: ``open_ended_effects``'s
            columns (unsteered, steered, effect, effect_low, effect_high, n_prompts, null_low, null_high,
            n_null, vs_null) plus null_scope ("every cell", "best layer", "best cell" or "none") and
            best (the cell picked on ``select_metric``).
        generations: every completion with its scores (controls' rows included).
        prompts: the window check of every prompt (``prompt_windows``): which were used.
        vector_norms: the norm of every row the vector adds, per layer, beside the mean residual norm of
            the prompts there (``ratio``: residual norms added per unit of the coefficient).
        best_layer, best_coefficient: the cell with the largest effect on ``select_metric``, picked on the
            same prompts (in-sample).
        info: model, pair, data source, settings, timing.
    """

    experiment: str
    effects: pd.DataFrame
    generations: pd.DataFrame
    prompts: pd.DataFrame
    vector_norms: pd.DataFrame
    select_metric: str
    best_layer: int
    best_coefficient: float
    info: dict = field(default_factory=dict)

    def cell(self, metric: str, layer: int | None = None, coefficient: float | None = None) -> pd.Series:
        """The effects row of ``metric`` at a cell (default: the best one)."""
        layer = self.best_layer if layer is None else layer
        coefficient = self.best_coefficient if coefficient is None else coefficient
        rows = self.effects[
            (self.effects.metric == metric)
            & (self.effects.layer == layer)
            & (self.effects.multiplier == coefficient)
        ]
        if rows.empty:
            raise KeyError(f"no {metric!r} effect at layer {layer}, coefficient {coefficient}")
        return rows.iloc[0]


def _settings(config: GenerationConfig) -> GenerationSettings:
    return GenerationSettings(max_new_tokens=config.max_new_tokens, batch_size=config.batch_size)


def _best(effects: pd.DataFrame, name: str, metric: str) -> tuple[int, float]:
    rows = effects[(effects.vector == name) & (effects.metric == metric)]
    rows = rows.sort_values(["effect", "multiplier", "layer"], ascending=[False, True, True], kind="stable")
    top = rows.iloc[0]
    return int(top["layer"]), float(top["multiplier"])


def _generation_grid(
    model: "TransformerBridge",
    prompts: Sequence[OODPrompt],
    vector: cl.SteeringVector,
    name: str,
    layers: Sequence[int],
    config: GenerationConfig,
    scorers: Sequence[TextScorer],
    metrics: Sequence[str],
    select: str,
    progress: bool,
) -> tuple[pd.DataFrame, pd.DataFrame, int, float]:
    """Generate, score and pair: the effects table, the scored generations and the best cell."""
    coefficients = [float(c) for c in config.coefficients if c != 0]
    settings = _settings(config)
    every = config.controls if config.controls_at == "all" else 0

    def generate(at: list[int], values: list[float], controls: int) -> pd.DataFrame:
        return steered_generations(
            model,
            prompts,
            vector,
            at,
            values,
            name=name,
            controls=controls,
            control_seed=config.control_seed,
            mode="front",
            settings=settings,
            progress=progress,
        )

    table = generate(list(layers), coefficients, every)
    scored = score_generations(table, scorers)
    effects = open_ended_effects(scored, metrics, config.n_resamples, config.seed)
    best_layer, best_coefficient = _best(effects, name, select)
    if every or not config.controls:
        scope = NULL_SCOPES["all"] if every else "none"
        effects = effects.assign(null_scope=scope)
    else:
        chosen = coefficients if config.controls_at == "layer" else [best_coefficient]
        extra = generate([best_layer], chosen, config.controls)
        extra = score_generations(extra[extra.vector.str.startswith(f"{NULL_PREFIX}:")], scorers)
        tested = scored[(scored.layer == best_layer) & scored.multiplier.isin([0.0, *chosen])]
        nulled = open_ended_effects(
            pd.concat([tested, extra], ignore_index=True), metrics, config.n_resamples, config.seed
        ).assign(null_scope=NULL_SCOPES[config.controls_at])
        keys = ["metric", "layer", "multiplier"]
        covered = effects.set_index(keys).index.isin(nulled.set_index(keys).index)
        effects = pd.concat([effects[~covered].assign(null_scope="none"), nulled], ignore_index=True)
        scored = pd.concat([scored, extra], ignore_index=True)
    effects = effects.sort_values(["metric", "layer", "multiplier"], kind="stable").reset_index(drop=True)
    effects["best"] = (effects.layer == best_layer) & (effects.multiplier == best_coefficient)
    return effects, scored, best_layer, best_coefficient


def run_generation_experiment(
    kind: type[_Result],
    experiment: str,
    model: "TransformerBridge",
    items: Sequence[OODPrompt],
    source: str,
    vector: cl.SteeringVector | None,
    config: GenerationConfig,
    pair: str,
    reader: TextScorer,
    metrics: Sequence[str],
    select: str,
    progress: bool,
) -> _Result:
    """One generation experiment end to end: the pair's vector (unless given), the prompts that hold its
    front window, the grid (``_generation_grid``), the rows' norms and the summary, as a ``kind``.

    ``reader`` scores the behaviour (its ``metrics``, ``select`` the one the best cell is picked on);
    the fluency cost (``completion_nll``) and the share of looping completions (``degenerate``) are
    scored beside it. The layers default to ``config.reference_layers`` scaled to the model's depth.
    """
    scorers = [reader, FluencyScorer(model, batch_size=config.batch_size), DegeneracyScorer()]
    metrics = [*metrics, "completion_nll", "degenerate"]
    n_layers = int(cl.model_identity(model).n_layers)
    started = time.perf_counter()
    layers = (
        tuple(config.layers)
        if config.layers is not None
        else scaled_layers(n_layers, config.reference_layers)
    )
    cl.check_layers(model, list(layers))
    if vector is None:
        vector = cl.actadd_vector(model, bundled_pair(pair), list(layers))
    width = max(front_window(model, vector, layer) for layer in layers)
    items = tuple(items)[: config.n_prompts] if config.n_prompts else tuple(items)
    windows = prompt_windows(model, items, width, config.window)
    used = [p for p, ok in zip(items, windows.used, strict=True) if ok]
    if not used:
        raise ValueError(
            f"no prompt holds the {width}-position front window of the vector: "
            f"{windows.reason.iloc[0]}; use longer prompts or window='prompt'"
        )
    effects, scored, best_layer, best_coefficient = _generation_grid(
        model, used, vector, pair, layers, config, scorers, metrics, select, progress
    )
    info = {
        "experiment": experiment,
        "model": cl.model_identity(model).name,
        "n_layers": int(cl.model_identity(model).n_layers),
        "pair": pair,
        "vector_method": vector.provenance.method,
        "mode": "front",
        "source": source,
        "layers": [int(x) for x in layers],
        "window": width,
        "n_prompts": len(used),
        "dropped_prompts": [str(i) for i in windows.prompt_id[~windows.used]],
        "select_metric": select,
        "selection": "the best cell is picked on the same prompts it is reported on (in-sample)",
        "null_scope": NULL_SCOPES[config.controls_at] if config.controls else "none",
        "config": jsonable(asdict(config)),
        "seconds": round(time.perf_counter() - started, 1),
    }
    return kind(
        experiment,
        effects,
        scored,
        windows,
        row_norms(model, vector, layers, [format_prompt(model.tokenizer, p.prompt) for p in used]),
        select,
        best_layer,
        best_coefficient,
        info,
    )
