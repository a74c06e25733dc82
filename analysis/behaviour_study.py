"""Does a vector steer a behaviour the model expresses? Picked on some prompts, reported on others.

A behaviour is a steering vector, a set of open-ended prompts and a metric that reads the behaviour off
the completions (``caa_lens.scorers``): refusal phrases on requests a careful assistant declines, VADER
sentiment on open questions, topic words, casual markers, agreement phrases. ``behaviour_study``:

1. splits the prompts once, seeded, into a *selection* part and a *report* part (``PromptSplit``);
2. generates the selection prompts at every (layer, multiplier) of a small grid and picks the cell with
   the largest effect on the metric in the expected direction among cells whose fluency cost (the
   increase of the completion's NLL under the unsteered model) stays within a budget;
3. generates the report prompts unsteered, at the picked cell and with ``controls`` random vectors of
   the same norm there, and reports every metric's paired effect with its interval and null band.

The behaviour *passes* when the report interval of its metric excludes zero in the expected direction
and lies outside the null band: a number that would survive being picked on other prompts and a push
of the same size in a random direction. The bundled behaviours' specs and prompts, and the run of all
of them, are ``analysis.behaviour_studies``.
"""

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pandas as pd

from caa_lens.data import shuffled_indices
from caa_lens.ood import OODPrompt
from caa_lens.open_ended import GenerationSettings, examples, open_ended_effects, steered_generations
from caa_lens.prompts import format_prompt
from caa_lens.residuals import multiplier_for_ratio, residual_norm
from caa_lens.scorers import DegeneracyScorer, FluencyScorer, TextScorer, score_generations
from caa_lens.vectors import SteeringVector

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

__all__ = [
    "COST_METRIC",
    "BehaviourSpec",
    "BehaviourStudy",
    "PromptSplit",
    "StudyConfig",
    "behaviour_study",
    "headline_table",
    "split_prompts",
]

COST_METRIC = "completion_nll"


@dataclass(frozen=True)
class BehaviourSpec:
    """What to steer and how to read it.

    Args:
        name: the behaviour's name in tables.
        metric: the scorer column that measures it (e.g. ``refusal``, ``sentiment``, ``wedding_any``).
        scorers: the scorers that produce ``metric`` (and any other behaviour columns to report).
        ratios: the signed strengths the selection grid tries, as ``||m v||`` over the mean residual norm
            of the selection prompts at the layer (``caa_lens.residuals.multiplier_for_ratio``), so one
            grid means the same push for vectors of any norm at any layer; the sign is the direction
            (``[-0.5, -1]`` steers away from the vector's behaviour).
        direction: +1 if the metric should rise at these ratios, -1 if it should fall.
        mode: where the vector is added (``from_start`` for CAA, ``front`` for ActAdd).
        layers: the layers to select among for this behaviour (``None``: ``StudyConfig.layers``); those
            the model lacks are dropped.
    """

    name: str
    metric: str
    scorers: tuple[TextScorer, ...]
    ratios: tuple[float, ...]
    direction: int = 1
    mode: str = "from_start"
    layers: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.direction not in (1, -1):
            raise ValueError(f"{self.name}: direction must be +1 or -1, got {self.direction}")
        if not self.ratios or 0 in self.ratios:
            raise ValueError(f"{self.name}: give non-zero ratios to select among, got {self.ratios}")
        columns = {c for scorer in self.scorers for c in scorer.columns}
        if self.metric not in columns:
            raise ValueError(
                f"{self.name}: no scorer produces the metric {self.metric!r} (they give {sorted(columns)})"
            )


@dataclass(frozen=True)
class StudyConfig:
    """The selection grid and the report's controls.

    ``fluency_budget`` is the largest mean increase of the completion NLL (nats per token, under the
    unsteered model) a selected cell may cost: 0.5 nats is a perplexity 1.65 times the unsteered one.
    """

    layers: tuple[int, ...]
    selection_fraction: float = 1 / 3
    split_seed: int = 0
    controls: int = 3
    control_seed: int = 1000
    fluency_budget: float = 0.5
    settings: GenerationSettings = field(default_factory=GenerationSettings)
    n_resamples: int = 4000

    def __post_init__(self) -> None:
        if not 0 < self.selection_fraction < 1:
            raise ValueError(f"selection_fraction must be in (0, 1), got {self.selection_fraction}")
        if not self.layers:
            raise ValueError("give at least one layer to select among")
        if self.controls < 2:
            raise ValueError(f"the null band needs at least 2 controls, got {self.controls}")


@dataclass(frozen=True)
class PromptSplit:
    """A seeded partition of prompt ids into selection and report parts."""

    seed: int
    selection: tuple[str, ...]
    report: tuple[str, ...]

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps([self.selection, self.report]).encode()).hexdigest()[:16]


def split_prompts(prompts: Sequence[OODPrompt], fraction: float, seed: int) -> PromptSplit:
    """Shuffle ``prompts`` (seeded) and put the first ``fraction`` of them (at least one) in selection."""
    if len(prompts) < 4:
        raise ValueError(f"a selection/report split needs at least 4 prompts, got {len(prompts)}")
    order = shuffled_indices(len(prompts), seed)
    cut = min(max(1, round(fraction * len(prompts))), len(prompts) - 2)
    ids = [prompts[i].id for i in order]
    return PromptSplit(seed, tuple(ids[:cut]), tuple(ids[cut:]))


@dataclass(frozen=True)
class BehaviourStudy:
    """One behaviour's study: the selection grid, the pick, and the held-out report.

    ``report`` has one row per metric at the picked cell (``open_ended_effects`` columns with the null);
    ``passed`` says whether the behaviour's metric moved in the expected direction outside the null.
    """

    behaviour: str
    metric: str
    direction: int
    mode: str
    split_seed: int
    split_digest: str
    n_selection: int
    n_report: int
    vector: str
    layer: int
    multiplier: float
    ratio: float
    pick_reason: str
    selection: pd.DataFrame
    report: pd.DataFrame
    examples: pd.DataFrame
    generations: pd.DataFrame
    passed: bool
    seconds: float


def _scored(
    model: "TransformerBridge", table: pd.DataFrame, spec: BehaviourSpec, config: StudyConfig
) -> pd.DataFrame:
    scorers = [*spec.scorers, DegeneracyScorer(), FluencyScorer(model, config.settings.system)]
    return score_generations(table, scorers)


def _pick(selection: pd.DataFrame, spec: BehaviourSpec, budget: float) -> tuple[str, int, float, str]:
    cell = ["vector", "layer", "multiplier"]
    target = selection[selection.metric == spec.metric].set_index(cell)
    cost = selection[selection.metric == COST_METRIC].set_index(cell).effect
    signed = spec.direction * target.effect
    affordable = signed[cost.reindex(signed.index) <= budget]
    if affordable.empty:
        # Nothing is fluent enough: report the strongest push anyway, flagged, with its cost beside it.
        name, layer, multiplier = signed.idxmax()
        reason = f"largest {spec.metric} effect; NO cell was within the fluency budget of {budget} nats"
    else:
        name, layer, multiplier = affordable.idxmax()
        reason = f"largest {spec.metric} effect within the fluency budget of {budget} nats"
    return str(name), int(layer), float(multiplier), reason


def behaviour_study(
    model: "TransformerBridge",
    vector: SteeringVector | dict[str, SteeringVector],
    prompts: Sequence[OODPrompt],
    spec: BehaviourSpec,
    config: StudyConfig,
    progress: bool = False,
) -> BehaviourStudy:
    """Pick a layer and multiplier on the selection prompts; report every metric on the others.

    ``vector`` may be several candidates by name (e.g. a vector read at the answer letter and one read
    at the end of the reply text): the pick is then over (candidate, layer, ratio), on the selection
    prompts like the rest, and ``BehaviourStudy.vector`` names the one reported.

    Raises ValueError before generating for fewer than 4 prompts, repeated ids, a layer the vector
    lacks, or a bad multiplier (``steered_generations`` checks the rest).
    """
    started = time.perf_counter()
    split = split_prompts(prompts, config.selection_fraction, config.split_seed)
    by_id = {p.id: p for p in prompts}
    if len(by_id) != len(prompts):
        raise ValueError(f"{spec.name}: prompt ids repeat")
    metrics = [c for scorer in spec.scorers for c in scorer.columns] + [
        "repeated_ngrams",
        "degenerate",
        COST_METRIC,
    ]

    candidates = vector if isinstance(vector, dict) else {spec.name: vector}
    layers = config.layers if spec.layers is None else spec.layers
    layers = tuple(layer for layer in layers if layer < model.cfg.n_layers) or config.layers
    chosen = [by_id[i] for i in split.selection]
    formatted = [format_prompt(model.tokenizer, p.prompt, system=config.settings.system) for p in chosen]
    references = {
        (site, layer): residual_norm(model, layer, formatted, site)
        for site in {v.provenance.site for v in candidates.values()}
        for layer in layers
    }
    ratio_of: dict[tuple[str, int, float], float] = {}
    tables = []
    for name, candidate in candidates.items():
        for layer in layers:
            reference = references[(candidate.provenance.site, layer)]
            for ratio in spec.ratios:
                ratio_of[(name, layer, multiplier_for_ratio(candidate, layer, ratio, reference))] = ratio
        per_layer = {layer: [m for (n, at, m) in ratio_of if (n, at) == (name, layer)] for layer in layers}
        tables.append(
            steered_generations(
                model,
                chosen,
                candidate,
                layers,
                per_layer,
                name=name,
                mode=spec.mode,
                settings=config.settings,
                progress=progress,
            )
        )
    grid = pd.concat(tables, ignore_index=True)
    selection = open_ended_effects(_scored(model, grid, spec, config), metrics, config.n_resamples)
    ratios = [ratio_of[(str(r.vector), int(r.layer), float(r.multiplier))] for r in selection.itertuples()]
    selection.insert(4, "ratio", ratios)
    picked, layer, multiplier, reason = _pick(selection, spec, config.fluency_budget)

    held_out = steered_generations(
        model, [by_id[i] for i in split.report], candidates[picked], [layer], [multiplier], name=picked,
        controls=config.controls, control_seed=config.control_seed, mode=spec.mode,
        settings=config.settings, progress=progress,
    )  # fmt: skip
    scored = _scored(model, held_out, spec, config)
    report = open_ended_effects(scored, metrics, config.n_resamples)
    row = report[report.metric == spec.metric].iloc[0]
    expected = "above null" if spec.direction > 0 else "below null"
    passed = bool(
        row.vs_null == expected and (row.effect_low > 0 if spec.direction > 0 else row.effect_high < 0)
    )
    return BehaviourStudy(
        spec.name, spec.metric, spec.direction, spec.mode, split.seed, split.digest, len(split.selection),
        len(split.report), picked, layer, multiplier, ratio_of[(picked, layer, multiplier)], reason, selection,
        report,
        examples(held_out, picked, layer, multiplier), scored.drop(columns=["completion_ids"]), passed,
        time.perf_counter() - started,
    )  # fmt: skip


def headline_table(studies: Sequence[BehaviourStudy]) -> pd.DataFrame:
    """One row per behaviour: its metric's held-out effect with interval and null band, and the
    fluency cost (completion NLL increase) and degenerate share change beside it."""
    rows = []
    for study in studies:
        by_metric = study.report.set_index("metric")
        target, cost, degenerate = (
            by_metric.loc[study.metric],
            by_metric.loc[COST_METRIC],
            by_metric.loc["degenerate"],
        )
        rows.append(
            {
                "behaviour": study.behaviour,
                "vector": study.vector,
                "metric": study.metric,
                "layer": study.layer,
                "multiplier": study.multiplier,
                "ratio": study.ratio,
                "n_report": int(target.n_prompts),
                "unsteered": target.unsteered,
                "steered": target.steered,
                "effect": target.effect,
                "effect_low": target.effect_low,
                "effect_high": target.effect_high,
                "null_low": target.null_low,
                "null_high": target.null_high,
                "vs_null": target.vs_null,
                "fluency_cost": cost.effect,
                "fluency_cost_low": cost.effect_low,
                "fluency_cost_high": cost.effect_high,
                "degenerate_change": degenerate.effect,
                "within_budget": "NO cell" not in study.pick_reason,
                "verdict": "passes" if study.passed else "fails",
            }
        )
    return pd.DataFrame(rows)
