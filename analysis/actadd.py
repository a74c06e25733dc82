"""ActAdd's three quantitative experiments (Turner et al. 2023, arXiv 2308.10248) on any model.

- ``weddings_topic``: the "weddings" ActAdd vector injected in mode ``"front"`` over layers x
  coefficients on neutral prompts; the share of completions with a wedding word, the wedding-word rate,
  and the fluency cost (the completion's NLL under the unsteered model).
- ``related_text_perplexity``: the same vector at the front of every sentence of four texts (one about
  weddings, three unrelated); per text, the perplexity ratio steered / unsteered.
- ``sentiment_shift``: the "Love" - "Hate" vector on negative sentences as the user's text; VADER's
  positive rate and mean compound score of the completions.

Every effect is paired: the same prompts (sentences) unsteered and steered, the mean of the per-item
differences with a 95% percentile bootstrap interval over items, n, and a null band from random vectors
of the same per-position norms (``caa_lens.stats.random_like``) at the same layer and coefficient.
Generation is slow, so by default the random controls run at the best cell of the grid only (``null_scope``
in the tables says where); the best cell is picked on the same prompts it is reported on, so its effect
is an optimistic (in-sample) estimate, which the saved summaries state.

ActAdd adds its rows from the first token of the user's text (``caa_lens.steering``). A prompt whose
user text is shorter than the vector's window is dropped before anything runs (``window="user"``), and
the dropped prompts are listed in the prompts table; ``window="prompt"`` keeps the package's own rule
(the window may run into the chat template after the user's text, as long as it ends inside the prompt).

Data: the prompts are ``analysis/data/actadd_prompts.json`` (written for this package); the texts and
negative sentences come from the shared reference data (``../shared/data``: ActAdd's four texts, SST-2
dev) when a directory is given or ``$CAA_LENS_SHARED_DATA`` names one, else from originally written
stand-ins in ``analysis/data``; every result records which were used.
"""

import json
import math
import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

import caa_lens as cl
from caa_lens.capability import text_windows
from caa_lens.ood import OODPrompt
from caa_lens.open_ended import GenerationSettings, open_ended_effects, steered_generations
from caa_lens.outputs import check_output_dir
from caa_lens.prompts import format_prompt, pad_token_id, right_pad
from caa_lens.scorers import (
    WEDDING_WORDS,
    DegeneracyScorer,
    FluencyScorer,
    SentimentScorer,
    TextScorer,
    WordRateScorer,
    score_generations,
)
from caa_lens.stats import null_band
from caa_lens.steering import Injection, front_rows, steering
from caa_lens.sweep import NULL_PREFIX, with_controls

__all__ = [
    "ACTADD_MARKER",
    "EXPERIMENTS",
    "ActAddShort",
    "GenerationExperiment",
    "RelatedTextConfig",
    "RelatedTextResult",
    "SentimentConfig",
    "SentimentResult",
    "TopicConfig",
    "TopicResult",
    "actadd_layer",
    "actadd_texts",
    "claim_actadd_dir",
    "is_actadd_dir",
    "load_actadd",
    "negative_sentences",
    "prompt_windows",
    "related_text_perplexity",
    "run_actadd_short",
    "save_actadd",
    "scaled_layers",
    "sentence_losses",
    "sentiment_shift",
    "split_sentences",
    "topic_prompts",
    "weddings_topic",
]

EXPERIMENTS = ("weddings", "perplexity", "sentiment")
SHARED_DATA_ENV = "CAA_LENS_SHARED_DATA"
ACTADD_TEXTS = "text/actadd_texts"  # ActAdd's four documents, under the shared data
SST2 = "text/sst2_glue_dev_872.tsv"
WEDDING_TEXT = "chatgpt_wedding_essay_20230423"  # the related text among the shared four
FALLBACK_WEDDING_TEXT = "wedding_day"
ControlsAt = Literal["all", "layer", "cell"]
Window = Literal["user", "prompt"]
CONTROLS_AT = ("all", "layer", "cell")
NULL_SCOPES = {"all": "every cell", "layer": "best layer", "cell": "best cell"}

# Written first into every output directory: it marks it as caa_lens's, so a rerun may replace the files.
ACTADD_MARKER = ".caa_lens-actadd"


def _data_dir() -> Path:
    return Path(str(resources.files("analysis") / "data"))


# ----------------------------------------------------------------------------------------------- data


def topic_prompts() -> tuple[OODPrompt, ...]:
    """The 24 neutral prompts of the topic experiment (``analysis/data/actadd_prompts.json``)."""
    path = _data_dir() / "actadd_prompts.json"
    records = json.loads(path.read_text(encoding="utf-8"))
    return tuple(OODPrompt(str(r["id"]), str(r["prompt"]), "actadd_prompts") for r in records)


def _shared_dir(shared_data: str | Path | None) -> Path | None:
    """The shared-data directory: the one given (which must exist), else ``$CAA_LENS_SHARED_DATA`` when
    it names a directory, else ``None`` (the bundled stand-ins)."""
    if shared_data is not None:
        path = Path(shared_data)
        if not path.is_dir():
            raise FileNotFoundError(f"shared data directory {path} does not exist")
        return path
    env = os.environ.get(SHARED_DATA_ENV)
    return Path(env) if env and Path(env).is_dir() else None


def actadd_texts(shared_data: str | Path | None = None) -> tuple[dict[str, str], str, str]:
    """The four texts of the perplexity experiment, their source, and the name of the related one.

    From ``<shared>/text/actadd_texts/*.txt`` (ActAdd's wedding essay, shipping essay, vegan banana
    bread and Wikipedia's Macedonia article) when a shared-data directory is given or found, else the
    four texts written for this package (``analysis/data/actadd_texts``: a wedding day and three
    unrelated ones). A given directory without the four texts is an error, not a silent fallback.
    """
    shared = _shared_dir(shared_data)
    if shared is not None:
        folder = shared / ACTADD_TEXTS
        files = sorted(folder.glob("*.txt"))
        if len(files) != 4 or WEDDING_TEXT not in {f.stem for f in files}:
            if shared_data is not None:
                raise FileNotFoundError(
                    f"{folder} should hold ActAdd's four texts (with {WEDDING_TEXT}.txt); "
                    f"found {[f.name for f in files]}"
                )
        else:
            texts = {f.stem: f.read_text(encoding="utf-8") for f in files}
            return texts, f"ActAdd's texts ({folder})", WEDDING_TEXT
    folder = _data_dir() / "actadd_texts"
    texts = {f.stem: f.read_text(encoding="utf-8") for f in sorted(folder.glob("*.txt"))}
    return texts, "caa_lens stand-in texts (analysis/data/actadd_texts)", FALLBACK_WEDDING_TEXT


def negative_sentences(shared_data: str | Path | None = None, n: int = 40) -> tuple[tuple[str, ...], str]:
    """The first ``n`` negative (label 0) SST-2 dev sentences, or the 40 bundled stand-ins, and the source."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    shared = _shared_dir(shared_data)
    path = shared / SST2 if shared is not None else None
    if path is not None and path.is_file():
        table = pd.read_csv(path, sep="\t", quoting=3, dtype={"sentence": str})
        if not {"sentence", "label"} <= set(table.columns):
            raise ValueError(f"{path}: expected the columns sentence and label, got {list(table.columns)}")
        chosen = [str(s).strip() for s in table[table["label"] == 0]["sentence"]][:n]
        return tuple(chosen), f"SST-2 dev, label 0, first {len(chosen)} ({path})"
    if shared_data is not None:
        raise FileNotFoundError(f"no SST-2 file at {path}")
    records = json.loads((_data_dir() / "negative_sentences.json").read_text(encoding="utf-8"))
    chosen = [str(s) for s in records][:n]
    return tuple(chosen), f"caa_lens stand-in negative sentences (analysis/data), first {len(chosen)}"


# A sentence ends at ., ! or ? (with any citation marks like "[3]" and closing quotes or brackets after
# it) followed by white space and a capital, a digit, or an opening quote or bracket.
_SENTENCE_END = re.compile(r"([.!?](?:\[[^\]\n]{1,20}\])*[\"')\]]*)\s+(?=[\"'(\[]?[A-Z0-9])")


def split_sentences(text: str) -> list[str]:
    """Sentences of a text: split at line breaks and after ``.``, ``!`` or ``?`` before a capital or digit
    (citation marks stay with their sentence).

    >>> split_sentences("A wedding.[2] The groom (tall) came!\\nINGREDIENTS\\n1 cup flour, e.g. spelt.")
    ['A wedding.[2]', 'The groom (tall) came!', 'INGREDIENTS', '1 cup flour, e.g. spelt.']
    """
    out = []
    for line in text.splitlines():
        marked = _SENTENCE_END.sub("\\1\\n", line.strip())
        out += [part.strip() for part in marked.split("\n") if part.strip()]
    return out


# --------------------------------------------------------------------------------------------- layers


def scaled_layers(
    n_layers: int, reference: Sequence[int] = (2, 4, 6, 8, 10), of: int = 30
) -> tuple[int, ...]:
    """``reference`` layers of an ``of``-layer model at the same depth fractions of an ``n_layers`` one.

    >>> scaled_layers(30), scaled_layers(4), scaled_layers(48)
    ((2, 4, 6, 8, 10), (0, 1), (3, 6, 10, 13, 16))
    """
    if n_layers < 1:
        raise ValueError(f"n_layers must be >= 1, got {n_layers}")
    chosen = [min(n_layers - 1, int(layer * n_layers / of + 0.5)) for layer in reference]
    return tuple(sorted(set(chosen)))


def actadd_layer(n_layers: int) -> int:
    """ActAdd's GPT-2-XL injection layer (6 of 48) at the same depth fraction: 4 of 30, 1 of 4.

    >>> actadd_layer(48), actadd_layer(30), actadd_layer(4)
    (6, 4, 1)
    """
    return min(n_layers - 1, int(6 * n_layers / 48 + 0.5))


def _pair(name: str) -> cl.PromptPair:
    pairs = {p.name: p for p in cl.bundled_prompt_pairs()}
    if name not in pairs:
        raise ValueError(f"no bundled prompt pair {name!r}: expected one of {sorted(pairs)}")
    return pairs[name]


def _window(model, vector: cl.SteeringVector, layer: int) -> int:
    """How many positions the vector covers in mode front (its BOS row dropped)."""
    return int(front_rows(Injection(vector, layer, 1.0, "front"), model.tokenizer).shape[0])


def _row_norms(model, vector: cl.SteeringVector, layers: Sequence[int], texts: Sequence) -> pd.DataFrame:
    """The norm of every row the vector adds at each layer, beside the mean residual norm there
    (``caa_lens.steering.residual_norm`` of ``texts`` at the vector's site): ``ratio`` is how many
    residual norms one unit of the coefficient adds at that row."""
    rows = []
    for layer in layers:
        added = front_rows(Injection(vector, layer, 1.0, "front"), model.tokenizer).double().norm(dim=-1)
        resid = cl.residual_norm(model, layer, list(texts), site=vector.provenance.site)
        rows += [
            {"layer": int(layer), "row": i, "norm": float(n), "resid_norm": resid, "ratio": float(n) / resid}
            for i, n in enumerate(added)
        ]
    return pd.DataFrame(rows, columns=["layer", "row", "norm", "resid_norm", "ratio"])


def prompt_windows(
    model, prompts: Sequence[OODPrompt], width: int, window: Window = "user", system: str | None = None
) -> pd.DataFrame:
    """Whether the front window of ``width`` positions fits each prompt, and which prompts are used.

    Columns: prompt_id, prompt, user_tokens (the user's text in the prompt), tail_tokens (template tokens after
    it), window, used, reason. ``window="user"``: the user's text must hold the whole window (ActAdd's
    rows land on the user's words); ``"prompt"``: the window may run on into the template, but must end
    inside the prompt (the package refuses a window that would reach generated tokens).
    """
    if window not in ("user", "prompt"):
        raise ValueError(f"window must be 'user' or 'prompt', got {window!r}")
    rows = []
    for p in prompts:
        formatted = format_prompt(model.tokenizer, p.prompt, system=system)
        # The template's text after the user's message, tokenised alone: it starts with a special
        # token or a space, so it tokenises alike in context (the user's words may not: a template
        # that puts a space before them changes their first token).
        after = formatted.text.rsplit(p.prompt, 1)[-1] if p.prompt in formatted.text else ""
        tail = len(model.tokenizer(after, add_special_tokens=False).input_ids) if after else 0
        if formatted.user_start is None:
            user, used, reason = 0, False, "user text not located in the formatted prompt"
        else:
            user = len(formatted) - formatted.user_start - tail
            room = user if window == "user" else user + tail
            used = width <= room
            reason = "" if used else f"{room} tokens from the user's first token, window {width}"
        rows.append((p.id, p.prompt, user, tail, width, used, reason))
    columns = ["prompt_id", "prompt", "user_tokens", "tail_tokens", "window", "used", "reason"]
    return pd.DataFrame(rows, columns=columns)


# ------------------------------------------------------------------------------ generation experiments


@dataclass(frozen=True)
class _GenerationConfig:
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


@dataclass(frozen=True)
class TopicConfig(_GenerationConfig):
    """The topic experiment: ``pair`` injected over ``layers`` (default: 2, 4, 6, 8, 10 of 30, scaled
    to the model's depth) x ``coefficients``; ``words`` are the topic words counted in completions.

    The coefficients are smaller than GPT-2-XL's c = 4-8: on the default model the vector's last two
    rows (the positions where ActAdd pads the shorter prompt with spaces) are several residual norms
    long at c = 1 (the saved ``vector_norms`` table)."""

    pair: str = "weddings"
    topic: str = "wedding"
    words: tuple[str, ...] = WEDDING_WORDS

    def quick(self) -> "TopicConfig":
        """A smoke run: 4 prompts, 8 new tokens, 2 coefficients, 2 controls at every cell."""
        return replace(
            self,
            n_prompts=4,
            coefficients=(4.0, 16.0),
            reference_layers=(2, 6),
            controls=2,
            controls_at="all",
            max_new_tokens=8,
            n_resamples=500,
        )

    def short(self) -> "TopicConfig":
        """The main job's short form: 12 prompts, layers 2 and 4 (of 30) x c = 1, 2, 24 new tokens (the
        full run's best cell was layer 2, c = 2)."""
        return replace(
            self,
            n_prompts=12,
            reference_layers=(2, 4),
            coefficients=(1.0, 2.0),
            controls=2,
            controls_at="cell",
            max_new_tokens=24,
        )


@dataclass(frozen=True)
class SentimentConfig(_GenerationConfig):
    """The sentiment experiment: ``pair`` ("Love" - "Hate") on the first ``n_prompts`` negative
    sentences at ``layers`` (default: 2 and 4 of 30, scaled: ActAdd's depth and half of it)."""

    pair: str = "love-hate"
    n_prompts: int | None = 40
    reference_layers: tuple[int, ...] = (2, 4)  # ActAdd's depth (6 of 48 -> 4 of 30) and half of it
    coefficients: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0)

    def quick(self) -> "SentimentConfig":
        return replace(
            self,
            n_prompts=4,
            reference_layers=(4,),
            coefficients=(4.0, 16.0),
            controls=2,
            controls_at="all",
            max_new_tokens=8,
            n_resamples=500,
        )

    def short(self) -> "SentimentConfig":
        return replace(
            self,
            n_prompts=12,
            reference_layers=(4,),
            coefficients=(2.0, 8.0),
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


class TopicResult(GenerationExperiment):
    """``weddings_topic``'s result (metrics ``<topic>_any``, ``<topic>_rate``, completion_nll, degenerate)."""


class SentimentResult(GenerationExperiment):
    """``sentiment_shift``'s result (metrics positive, sentiment, completion_nll, degenerate)."""


def _settings(config: _GenerationConfig) -> GenerationSettings:
    return GenerationSettings(max_new_tokens=config.max_new_tokens, batch_size=config.batch_size)


def _best(effects: pd.DataFrame, name: str, metric: str) -> tuple[int, float]:
    rows = effects[(effects.vector == name) & (effects.metric == metric)]
    rows = rows.sort_values(["effect", "multiplier", "layer"], ascending=[False, True, True], kind="stable")
    top = rows.iloc[0]
    return int(top["layer"]), float(top["multiplier"])


def _generation_grid(
    model,
    prompts: Sequence[OODPrompt],
    vector: cl.SteeringVector,
    name: str,
    layers: Sequence[int],
    config: _GenerationConfig,
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


def _run_generation_experiment(
    kind: type[GenerationExperiment],
    experiment: str,
    model,
    items: Sequence[OODPrompt],
    source: str,
    vector: cl.SteeringVector | None,
    config: _GenerationConfig,
    pair: str,
    default_layers: tuple[int, ...],
    scorers: Sequence[TextScorer],
    metrics: Sequence[str],
    select: str,
    progress: bool,
) -> GenerationExperiment:
    started = time.perf_counter()
    layers = tuple(config.layers) if config.layers is not None else default_layers
    cl.check_layers(model, list(layers))
    if vector is None:
        vector = cl.actadd_vector(model, _pair(pair), list(layers))
    width = max(_window(model, vector, layer) for layer in layers)
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
        "config": _jsonable(asdict(config)),
        "seconds": round(time.perf_counter() - started, 1),
    }
    return kind(
        experiment,
        effects,
        scored,
        windows,
        _row_norms(model, vector, layers, [format_prompt(model.tokenizer, p.prompt) for p in used]),
        select,
        best_layer,
        best_coefficient,
        info,
    )


def weddings_topic(
    model,
    config: TopicConfig = TopicConfig(),
    prompts: Sequence[OODPrompt] | None = None,
    vector: cl.SteeringVector | None = None,
    progress: bool = False,
) -> TopicResult:
    """ActAdd's topic experiment: how often completions mention the topic under the pair's vector.

    Args:
        config: the grid and sizes (``TopicConfig``; ``.quick()`` for a smoke run).
        prompts: default ``topic_prompts()`` (24 neutral prompts).
        vector: a steering vector to use instead of ``actadd_vector(model, pair)`` (a planted one in
            tests); it needs directions at the chosen layers.

    The unsteered completions are generated once and paired with every cell. Metrics:
    ``<topic>_any`` (the share of completions with a topic word: the paper's measure, and the one the
    best cell is picked on), ``<topic>_rate`` (topic words per word), ``completion_nll`` (fluency
    cost: nats per token under the unsteered model) and ``degenerate`` (share of looping completions).
    """
    topic = WordRateScorer(config.topic, tuple(config.words))
    scorers: list[TextScorer] = [
        topic,
        FluencyScorer(model, batch_size=config.batch_size),
        DegeneracyScorer(),
    ]
    metrics = [*topic.columns[::-1], "completion_nll", "degenerate"]
    n_layers = int(cl.model_identity(model).n_layers)
    items = topic_prompts() if prompts is None else tuple(prompts)
    source = "analysis/data/actadd_prompts.json" if prompts is None else "given prompts"
    result = _run_generation_experiment(
        TopicResult,
        "weddings",
        model,
        items,
        source,
        vector,
        config,
        config.pair,
        scaled_layers(n_layers, config.reference_layers),
        scorers,
        metrics,
        f"{config.topic}_any",
        progress,
    )
    assert isinstance(result, TopicResult)
    return result


def sentiment_shift(
    model,
    config: SentimentConfig = SentimentConfig(),
    sentences: Sequence[str] | None = None,
    shared_data: str | Path | None = None,
    vector: cl.SteeringVector | None = None,
    progress: bool = False,
) -> SentimentResult:
    """ActAdd's sentiment experiment: negative sentences as the user's text, steered with "Love" - "Hate".

    Metrics: ``positive`` (VADER compound >= 0.05; the best cell is picked on it), ``sentiment`` (mean
    compound), ``completion_nll`` and ``degenerate``. ``sentences`` default: ``negative_sentences``
    (SST-2 dev negatives from the shared data, else the bundled stand-ins).
    """
    if sentences is None:
        chosen, source = negative_sentences(shared_data, config.n_prompts or 40)
    else:
        chosen, source = tuple(sentences), "given sentences"
    items = [OODPrompt(f"s{i:03d}", s, "negative") for i, s in enumerate(chosen)]
    scorers: list[TextScorer] = [
        SentimentScorer(),
        FluencyScorer(model, batch_size=config.batch_size),
        DegeneracyScorer(),
    ]
    metrics = ["positive", "sentiment", "completion_nll", "degenerate"]
    n_layers = int(cl.model_identity(model).n_layers)
    result = _run_generation_experiment(
        SentimentResult,
        "sentiment",
        model,
        items,
        source,
        vector,
        config,
        config.pair,
        scaled_layers(n_layers, config.reference_layers),
        scorers,
        metrics,
        "positive",
        progress,
    )
    assert isinstance(result, SentimentResult)
    return result


# -------------------------------------------------------------------------------- related-text perplexity


@dataclass(frozen=True)
class RelatedTextConfig:
    """The perplexity experiment: the ``pair``'s vector at ``layer`` (default ``actadd_layer``) at the
    front of every sentence, for ``coefficients``, with ``controls`` random same-norm vectors each."""

    pair: str = "weddings"
    layer: int | None = None
    # Small: on the default model the vector's rows are several times the residual norm (see the notes in
    # the summary), and c >= 0.5 raises every text's perplexity by half or more.
    coefficients: tuple[float, ...] = (0.05, 0.1, 0.2, 0.5, 1.0)
    controls: int = 3
    control_seed: int = 0
    max_sentences: int | None = None  # per text; None: all
    batch_size: int = 16
    n_resamples: int = 4000
    seed: int = 0
    coverage: float = 0.95

    def __post_init__(self) -> None:
        if not self.coefficients or any(not math.isfinite(c) or c == 0 for c in self.coefficients):
            raise ValueError(f"coefficients must be finite and non-zero, got {self.coefficients}")
        if len(set(self.coefficients)) != len(self.coefficients):
            raise ValueError(f"coefficients repeat: {self.coefficients}")
        if self.layer is not None and self.layer < 0:
            raise ValueError(f"layer must be >= 0, got {self.layer}")
        if self.controls < 0 or self.control_seed < 0:
            raise ValueError("controls and control_seed must be >= 0")
        if self.max_sentences is not None and self.max_sentences < 1:
            raise ValueError(f"max_sentences must be >= 1 (None: all), got {self.max_sentences}")
        if self.batch_size < 1 or self.n_resamples < 1:
            raise ValueError("batch_size and n_resamples must be >= 1")

    def quick(self) -> "RelatedTextConfig":
        return replace(self, coefficients=(1.0, 4.0), controls=2, max_sentences=4, n_resamples=500)

    def short(self) -> "RelatedTextConfig":
        return replace(self, coefficients=(1.0, 4.0), controls=3, max_sentences=12)


@dataclass(frozen=True, eq=False)
class RelatedTextResult:
    """Perplexity ratios of related and unrelated texts under a front-injected ActAdd vector.

    Attributes:
        ratios: one row per (text, vector, coefficient): n_sentences, n_tokens, ppl_unsteered,
            ppl_steered, ratio = exp(mean over tokens of the NLL difference), ratio_low / ratio_high (95%
            bootstrap over sentences, paired), is_control; the tested vector's rows also carry null_low,
            null_high, n_null (the band of the controls' ratios at that text and coefficient) and vs_null.
        sentences: every sentence of every text, its token count, and whether it was used.
        losses: summed NLL of every used sentence under every (vector, coefficient), coefficient 0 the
            unsteered run.
        related: the text about the vector's topic (the wedding essay).
    """

    ratios: pd.DataFrame
    sentences: pd.DataFrame
    losses: pd.DataFrame
    layer: int
    related: str
    info: dict = field(default_factory=dict)

    def tested(self) -> pd.DataFrame:
        """The tested vector's rows of ``ratios`` (no controls)."""
        return self.ratios[~self.ratios.is_control].reset_index(drop=True)


def _injections(
    named: Mapping[str, cl.SteeringVector], rows: Sequence[tuple[str, float]], layer: int
) -> list[Injection]:
    """One front injection per vector among ``rows``, its multiplier zero on the other rows."""
    out = []
    for name in sorted({n for n, c in rows if c != 0}):
        values = [c if n == name else 0.0 for n, c in rows]
        out.append(Injection(named[name], layer, torch.tensor(values, dtype=torch.float32), "front"))
    return out


def sentence_losses(
    model,
    sentences: Sequence[str],
    named: Mapping[str, cl.SteeringVector],
    layer: int,
    coefficients: Sequence[float],
    batch_size: int = 16,
    progress: bool = False,
) -> pd.DataFrame:
    """Summed NLL and token count of every sentence as its own sequence, unsteered and under every
    (vector, coefficient) added in mode front from the sentence's first token.

    The BOS and scoring rules are ``caa_lens.capability.perplexity``'s (``text_windows``): the BOS,
    when the tokenizer adds one, is unscored context and every text token is scored; without it the
    first token is not scored. Rows of different vectors and coefficients share batches (per-row
    multipliers, zero on the others), so ``exp(nll / n_tokens)`` equals ``perplexity(model, sentence,
    Injection(vector, layer, c, "front")).perplexity`` for each.

    Returns columns sentence_index, vector ("" for the unsteered rows), coefficient, nll, n_tokens.
    """
    plans = [text_windows(model, s) for s in sentences]
    for i, plan in enumerate(plans):
        if len(plan.windows) != 1:
            raise ValueError(f"sentence {i} is longer than one window ({plan.context} tokens); split it")
    prefix = plans[0].prefix if plans else []
    cells = [("", 0.0)] + [(n, float(c)) for n in named for c in coefficients if c != 0]
    work = sorted(
        ((i, cell) for i in range(len(plans)) for cell in cells), key=lambda w: len(plans[w[0]].ids)
    )
    pad, device = pad_token_id(model.tokenizer), model.cfg.device
    out = []
    bar = tqdm(total=len(work), desc="sentences", unit="row", disable=not progress)
    with torch.inference_mode():
        for begin in range(0, len(work), batch_size):
            batch = work[begin : begin + batch_size]
            ids, mask = right_pad([prefix + plans[i].ids for i, _ in batch], pad)
            injections = _injections(named, [cell for _, cell in batch], layer)
            with steering(model, injections, start=len(prefix)):
                logits = model(ids.to(device), attention_mask=mask.to(device))
            for row, (i, (name, coefficient)) in enumerate(batch):
                first = plans[i].first_scored + len(prefix)
                end = len(prefix) + len(plans[i].ids)
                columns = torch.arange(first, end)
                logprobs = logits[row, columns - 1].double().log_softmax(dim=-1)
                targets = ids[row, columns].to(logprobs.device)
                nll = -float(logprobs.gather(-1, targets[:, None]).sum())
                out.append((i, name, coefficient, nll, len(columns)))
            bar.update(len(batch))
    bar.close()
    table = pd.DataFrame(out, columns=["sentence_index", "vector", "coefficient", "nll", "n_tokens"])
    if not np.isfinite(table.nll).all():
        raise ValueError("a steered NLL is not finite: the activations overflowed; use smaller coefficients")
    return table.sort_values(["vector", "coefficient", "sentence_index"]).reset_index(drop=True)


def _log_ratio_interval(
    differences: np.ndarray, counts: np.ndarray, n_resamples: int, seed: int, confidence: float = 0.95
) -> tuple[float, float, float]:
    """sum(differences) / sum(counts) and its percentile bootstrap interval over items (sentences)."""
    point = float(differences.sum() / counts.sum())
    picks = np.random.default_rng(seed).integers(0, len(differences), (n_resamples, len(differences)))
    values = differences[picks].sum(axis=1) / counts[picks].sum(axis=1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(values, [tail, 1 - tail])
    return point, min(float(low), point), max(float(high), point)


def related_text_perplexity(
    model,
    config: RelatedTextConfig = RelatedTextConfig(),
    texts: Mapping[str, str] | None = None,
    related: str | None = None,
    shared_data: str | Path | None = None,
    vector: cl.SteeringVector | None = None,
    progress: bool = False,
) -> RelatedTextResult:
    """ActAdd's perplexity experiment: does the vector make text about its topic easier to predict?

    Every text is split into sentences (``split_sentences``); a sentence shorter than the vector's front
    window is dropped (listed in ``sentences``). Each used sentence is scored as its own sequence,
    unsteered and with the vector (and ``config.controls`` random same-norm vectors) added at its front,
    at every coefficient (``sentence_losses``). Per text and coefficient the ratio is
    ``exp(sum of NLL differences / sum of tokens)``: below 1 the steered model finds the text easier.

    Args:
        texts: ``{name: text}``; default ``actadd_texts(shared_data)``.
        related: the name of the text about the topic (for the figure and the summary).
        vector: a vector to use instead of ``actadd_vector(model, pair)`` (a planted one in tests).
    """
    started = time.perf_counter()
    if texts is None:
        chosen, source, default_related = actadd_texts(shared_data)
    else:
        chosen, source, default_related = dict(texts), "given texts", next(iter(texts), "")
    related = related or default_related
    if related not in chosen:
        raise ValueError(f"the related text {related!r} is not among the texts {sorted(chosen)}")
    n_layers = int(cl.model_identity(model).n_layers)
    layer = config.layer if config.layer is not None else actadd_layer(n_layers)
    cl.check_layers(model, [layer])
    if vector is None:
        vector = cl.actadd_vector(model, _pair(config.pair), [layer])
    width = _window(model, vector, layer)
    sentence_rows, used = [], []
    for name, text in chosen.items():
        kept = 0
        for index, sentence in enumerate(split_sentences(text)):
            n_tokens = len(model.tokenizer(sentence, add_special_tokens=False).input_ids)
            ok = n_tokens >= width and (config.max_sentences is None or kept < config.max_sentences)
            reason = "" if ok else ("shorter than the window" if n_tokens < width else "past max_sentences")
            sentence_rows.append((name, index, sentence, n_tokens, ok, reason))
            if ok:
                used.append((name, index, sentence))
                kept += 1
    sentences = pd.DataFrame(
        sentence_rows, columns=["text", "sentence_index", "sentence", "n_tokens", "used", "reason"]
    )
    short = [name for name in chosen if not ((sentences.text == name) & sentences.used).any()]
    if short:
        raise ValueError(f"texts {short} have no sentence as long as the vector's {width}-token window")
    named = with_controls({config.pair: vector}, config.controls, config.control_seed)
    losses = sentence_losses(
        model, [s for _, _, s in used], named, layer, config.coefficients, config.batch_size, progress
    )
    owner = pd.DataFrame({"text": [t for t, _, _ in used], "text_sentence": [i for _, i, _ in used]})
    losses = losses.join(owner, on="sentence_index").rename(columns={"sentence_index": "row"})
    ratios = _ratios(losses, config)
    norms = _row_norms(model, vector, [layer], [s for _, _, s in used])
    info = {
        "experiment": "perplexity",
        "model": cl.model_identity(model).name,
        "n_layers": n_layers,
        "pair": config.pair,
        "vector_method": vector.provenance.method,
        "mode": "front",
        "layer": int(layer),
        "window": width,
        "source": source,
        "texts": list(chosen),
        "related": related,
        "row_norms": [round(float(n), 2) for n in norms["norm"]],
        "resid_norm": round(float(norms["resid_norm"].iloc[0]), 2),
        "config": _jsonable(asdict(config)),
        "seconds": round(time.perf_counter() - started, 1),
    }
    return RelatedTextResult(ratios, sentences, losses, int(layer), related, info)


def _ratios(losses: pd.DataFrame, config: RelatedTextConfig) -> pd.DataFrame:
    base = losses[losses.vector == ""].set_index("row")
    rows = []
    for (text, name, coefficient), cell in losses[losses.vector != ""].groupby(
        ["text", "vector", "coefficient"], sort=True
    ):
        cell = cell.sort_values("row")
        before = base.loc[cell.row]
        counts = cell.n_tokens.to_numpy(float)
        differences = cell.nll.to_numpy() - before.nll.to_numpy()
        point, low, high = _log_ratio_interval(differences, counts, config.n_resamples, config.seed)
        rows.append(
            {
                "text": text,
                "vector": name,
                "coefficient": float(coefficient),
                "n_sentences": len(cell),
                "n_tokens": int(counts.sum()),
                "ppl_unsteered": math.exp(before.nll.sum() / counts.sum()),
                "ppl_steered": math.exp(cell.nll.sum() / counts.sum()),
                "log_ratio": point,
                "ratio": math.exp(point),
                "ratio_low": math.exp(low),
                "ratio_high": math.exp(high),
                "is_control": str(name).startswith(f"{NULL_PREFIX}:"),
            }
        )
    table = pd.DataFrame(rows)
    null: dict[str, list] = {"null_low": [], "null_high": [], "n_null": [], "vs_null": []}
    for row in table.itertuples():
        controls = table[table.is_control & (table.text == row.text) & (table.coefficient == row.coefficient)]
        if row.is_control or controls.empty:
            null["null_low"].append(np.nan)
            null["null_high"].append(np.nan)
            null["n_null"].append(0)
            null["vs_null"].append("" if row.is_control else "no null")
            continue
        band = null_band(controls.log_ratio.to_list(), config.coverage)
        null["null_low"].append(math.exp(band.low))
        null["null_high"].append(math.exp(band.high))
        null["n_null"].append(band.n_vectors)
        verdict = "inside null"
        if row.ratio_high < math.exp(band.low):
            verdict = "below null"
        elif row.ratio_low > math.exp(band.high):
            verdict = "above null"
        null["vs_null"].append(verdict)
    return table.assign(**null)


# ------------------------------------------------------------------------------------------ outputs


def is_actadd_dir(path: Path) -> bool:
    """True for a directory these experiments wrote (their marker file is there)."""
    return (Path(path) / ACTADD_MARKER).is_file()


def claim_actadd_dir(out: str | Path) -> Path:
    """Make ``out`` an ActAdd output directory, refusing one that holds anyone else's files."""
    out = check_output_dir(out, "ActAdd results", is_actadd_dir)
    out.mkdir(parents=True, exist_ok=True)
    marker = out / ACTADD_MARKER
    if not marker.exists():
        marker.write_text('{"format": "caa_lens.actadd/1"}\n')
    return out


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    return value


def _csv(frame: pd.DataFrame, path: Path) -> Path:
    table = frame.copy()
    if "completion_ids" in table:
        table["completion_ids"] = [" ".join(str(int(i)) for i in ids) for ids in table["completion_ids"]]
    table.to_csv(path, index=False)
    return path


def save_actadd(result: GenerationExperiment | RelatedTextResult, out: str | Path) -> list[Path]:
    """Write a result's tables (CSV) and summary (JSON) into ``out`` (claimed with ``claim_actadd_dir``).

    Files are named after the experiment: ``weddings_effects.csv``, ``weddings_generations.csv``,
    ``weddings_prompts.csv``, ``weddings_vector_norms.csv``, ``weddings.json``; ``perplexity_ratios.csv``,
    ``perplexity_sentences.csv``, ``perplexity_losses.csv``, ``perplexity.json``; ``sentiment_*`` as for
    weddings. The figure is drawn by ``analysis.actadd_plots.save_figure``.
    """
    out = claim_actadd_dir(out)
    if isinstance(result, RelatedTextResult):
        name = "perplexity"
        tables = {"ratios": result.ratios, "sentences": result.sentences, "losses": result.losses}
        summary = {**result.info, "layer": result.layer, "related": result.related}
    else:
        name = result.experiment
        tables = {
            "effects": result.effects,
            "generations": result.generations,
            "prompts": result.prompts,
            "vector_norms": result.vector_norms,
        }
        summary = {
            **result.info,
            "select_metric": result.select_metric,
            "best_layer": result.best_layer,
            "best_coefficient": result.best_coefficient,
        }
    paths = [_csv(frame, out / f"{name}_{part}.csv") for part, frame in tables.items()]
    summary_path = out / f"{name}.json"
    summary_path.write_text(json.dumps(_jsonable(summary), indent=1) + "\n")
    return [*paths, summary_path]


def load_actadd(out: str | Path, experiment: str) -> GenerationExperiment | RelatedTextResult:
    """Read back what ``save_actadd`` wrote for ``experiment`` ("weddings", "perplexity", "sentiment")."""
    out = Path(out)
    if experiment not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {experiment!r}: expected one of {EXPERIMENTS}")
    if not is_actadd_dir(out) or not (out / f"{experiment}.json").is_file():
        raise FileNotFoundError(f"{out} holds no saved {experiment!r} experiment (no {experiment}.json)")
    summary = json.loads((out / f"{experiment}.json").read_text())
    if experiment == "perplexity":
        ratios = pd.read_csv(out / "perplexity_ratios.csv", keep_default_na=False, na_values=[""])
        ratios["vs_null"] = ratios["vs_null"].fillna("")
        sentences = pd.read_csv(out / "perplexity_sentences.csv", keep_default_na=False)
        losses = pd.read_csv(out / "perplexity_losses.csv", keep_default_na=False, na_values=["nan"])
        return RelatedTextResult(
            ratios, sentences, losses, int(summary["layer"]), str(summary["related"]), summary
        )
    kind = TopicResult if experiment == "weddings" else SentimentResult
    effects = pd.read_csv(out / f"{experiment}_effects.csv")
    generations = pd.read_csv(out / f"{experiment}_generations.csv", keep_default_na=False)
    prompts = pd.read_csv(out / f"{experiment}_prompts.csv", keep_default_na=False)
    norms = pd.read_csv(out / f"{experiment}_vector_norms.csv")
    return kind(
        experiment,
        effects,
        generations,
        prompts,
        norms,
        str(summary["select_metric"]),
        int(summary["best_layer"]),
        float(summary["best_coefficient"]),
        summary,
    )


# ------------------------------------------------------------------------------------- the main job


@dataclass(frozen=True, eq=False)
class ActAddShort:
    """The three experiments in short form, as the main job runs them."""

    topic: TopicResult
    perplexity: RelatedTextResult
    sentiment: SentimentResult
    paths: tuple[Path, ...]


def run_actadd_short(
    model, out: str | Path, shared_data: str | Path | None = None, quick: bool = False
) -> ActAddShort:
    """All three experiments in short form (``quick``: the smoke sizes for the tiny model), each saved
    with its figure into ``out`` (an ActAdd output directory; give the main job a subdirectory of its
    results, e.g. ``results/actadd``). Took 155 s on the default model on two busy CPU cores."""
    from analysis.actadd_plots import save_figure

    out = claim_actadd_dir(out)
    size = "quick" if quick else "short"
    topic_config: TopicConfig = getattr(TopicConfig(), size)()
    text_config: RelatedTextConfig = getattr(RelatedTextConfig(), size)()
    sentiment_config: SentimentConfig = getattr(SentimentConfig(), size)()
    topic = weddings_topic(model, topic_config)
    perplexity = related_text_perplexity(model, text_config, shared_data=shared_data)
    sentiment = sentiment_shift(model, sentiment_config, shared_data=shared_data)
    paths: list[Path] = []
    for result in (topic, perplexity, sentiment):
        paths += save_actadd(result, out)
        paths.append(save_figure(result, out))
    return ActAddShort(topic, perplexity, sentiment, tuple(paths))
