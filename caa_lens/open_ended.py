"""Open-ended steering: generations over a grid of settings, scored, as paired effects with a null.

``steered_generations`` writes the completion of every prompt under every (vector, layer, multiplier)
cell, its random same-norm controls beside it (``caa_lens.sweep_controls.with_controls``: the null band) and the
unsteered completion (multiplier 0) of each prompt, generated once and paired with every cell. Rows of
different cells share a batch: each (vector, layer) in a batch is one ``Injection`` whose per-row
multiplier is zero on the other rows (adding ``0 * v`` leaves a float unchanged), so a batch of mixed
cells decodes exactly as each cell alone would (greedy).

``open_ended_effects`` turns a scored table (``caa_lens.scorers.score_generations``) into the rule every
number of the package follows: per metric and cell, the mean over prompts of (steered - unsteered) on the
same prompts (samples of one prompt are averaged first: the prompt is the unit), a bootstrap interval,
n, and, where controls were generated, the null band and whether the interval lies outside it.

>>> import torch
>>> from caa_lens.tiny import tiny_model
>>> from caa_lens.vectors import SteeringVector
>>> from caa_lens.provenance import make_provenance
>>> model = tiny_model()
>>> provenance = make_provenance(model, "resid_post", "answer", "demo", "demo", "0", 1, torch.float32)
>>> vector = SteeringVector(torch.ones(1, 64), (1,), provenance)
>>> table = steered_generations(model, ["Hi there", "Tell me more"], vector, [1], [4.0],
...                             settings=GenerationSettings(max_new_tokens=4), progress=False)
>>> sorted(set(table.multiplier)), len(table)
([0.0, 4.0], 4)
"""

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from caa_lens.generation import check_generation, generate
from caa_lens.hooks import check_layers
from caa_lens.multipliers import check_multipliers
from caa_lens.ood import OODPrompt
from caa_lens.prompts import FormattedPrompt, format_prompt
from caa_lens.stats import EFFECT_NULL_COLUMNS, paired_effect, with_null
from caa_lens.steering import MODES, Injection
from caa_lens.sweep_controls import NULL_PREFIX, with_controls
from caa_lens.vectors import SteeringVector

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

__all__ = [
    "EFFECT_COLUMNS",
    "GENERATION_TABLE_COLUMNS",
    "GenerationSettings",
    "check_effects_output",
    "examples",
    "is_effects_csv",
    "open_ended_effects",
    "steered_generations",
]

GENERATION_TABLE_COLUMNS = (
    "vector",
    "layer",
    "multiplier",
    "mode",
    "prompt_index",
    "prompt_id",
    "source",
    "sample",
    "prompt",
    "completion",
    "completion_ids",
)

# The columns of open_ended_effects, in order: a CSV whose first line is exactly these is ours.
EFFECT_COLUMNS = (
    "metric",
    "vector",
    "layer",
    "multiplier",
    "n_prompts",
    "unsteered",
    "steered",
    *EFFECT_NULL_COLUMNS,
)


@dataclass(frozen=True)
class GenerationSettings:
    """How completions are decoded: greedy by default (one completion per prompt), or ``samples``
    completions per prompt at ``temperature`` (nucleus ``top_p``), seeded by ``seed``."""

    max_new_tokens: int = 40
    temperature: float = 0.0
    top_p: float | None = None
    samples: int = 1
    batch_size: int = 16
    seed: int = 0
    system: str | None = None

    def __post_init__(self) -> None:
        for name in ("max_new_tokens", "samples", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise ValueError(f"temperature must be finite and >= 0 (0 is greedy), got {self.temperature}")
        if self.samples > 1 and self.temperature == 0:
            raise ValueError(
                f"samples={self.samples} with greedy decoding repeats one completion; set a temperature"
            )
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


def _as_prompts(prompts: Sequence[OODPrompt] | Sequence[str]) -> tuple[OODPrompt, ...]:
    """``OODPrompt`` objects as given, or strings numbered in order (id ``"0"``, ``"1"``, ...)."""
    out = tuple(
        p if isinstance(p, OODPrompt) else OODPrompt(str(i), str(p), "") for i, p in enumerate(prompts)
    )
    if not out:
        raise ValueError("no prompts to generate from")
    if len({p.id for p in out}) != len(out):
        raise ValueError("prompt ids repeat; give each prompt its own id")
    return out


def _injections(
    named: dict[str, SteeringVector], rows: list[tuple[str, int, float]], mode: str
) -> list[Injection]:
    """One injection per (vector, layer) among ``rows``, its multiplier zero on the other rows."""
    injections = []
    for name, layer in sorted({(n, layer) for n, layer, m in rows if m != 0}):
        values = [m if (n, at) == (name, layer) else 0.0 for n, at, m in rows]
        injections.append(Injection(named[name], layer, torch.tensor(values, dtype=torch.float32), mode))
    return injections


def _per_layer(
    multipliers: Sequence[float] | Mapping[int, Sequence[float]],
    layers: tuple[int, ...],
    vector: SteeringVector,
) -> dict[int, list[float]]:
    """The non-zero multipliers of each layer: one list for every layer, or a list per layer."""
    if isinstance(multipliers, Mapping):
        if set(multipliers) != set(layers):
            raise ValueError(
                f"multipliers are given for layers {sorted(multipliers)} but the layers are {list(layers)}"
            )
        return {
            layer: [m for m in check_multipliers(multipliers[layer], vector.select([layer])) if m != 0]
            for layer in layers
        }
    values = [m for m in check_multipliers(multipliers, vector.select(list(layers))) if m != 0]
    return {layer: values for layer in layers}


def steered_generations(
    model: "TransformerBridge",
    prompts: Sequence[OODPrompt] | Sequence[str],
    vector: SteeringVector,
    layers: int | Sequence[int],
    multipliers: Sequence[float] | Mapping[int, Sequence[float]],
    *,
    name: str = "steer",
    controls: int = 0,
    control_seed: int = 0,
    mode: str = "from_start",
    settings: GenerationSettings = GenerationSettings(),
    progress: bool = True,
) -> pd.DataFrame:
    """Completions of every prompt at every (layer, multiplier), with ``controls`` random same-norm
    vectors per cell and the unsteered completions (multiplier 0, generated once).

    Args:
        vector: the steering vector (``[d_model]`` per layer, or ActAdd's ``[pos, d_model]`` with
            ``mode="front"``).
        multipliers: the same multipliers at every layer, or a list per layer (e.g. the multipliers that
            give one norm ratio at each layer's residual norm); 0 (unsteered) is always generated.
        name: the ``vector`` column of its rows; controls are ``random:<name>:<seed>``.
        mode: where the vector is added (``caa_lens.steering``): ``from_start`` (CAA), ``front``
            (ActAdd), ``last`` or ``all``.

    Returns one row per (vector, layer, multiplier, prompt, sample) with ``GENERATION_TABLE_COLUMNS``;
    the unsteered rows appear once per (vector, layer) with multiplier 0, so every cell pairs with them.

    Raises ValueError before anything is generated: no prompts, a layer the model or vector lacks, bad or
    overflowing multipliers, an unknown mode, or a prompt too long for the context (named by its id).
    """
    items = _as_prompts(prompts)
    if mode not in MODES:
        raise ValueError(f"unknown steering mode {mode!r}: expected one of {', '.join(MODES)}")
    chosen = check_layers(model, layers)
    lacking = [layer for layer in chosen if layer not in vector.layers]
    if lacking:
        raise ValueError(
            f"vector {name!r} has no direction at layers {lacking} (it has {list(vector.layers)})"
        )
    per_layer = _per_layer(multipliers, chosen, vector)
    named = with_controls({name: vector}, controls, control_seed)
    formatted: list[FormattedPrompt] = [
        format_prompt(model.tokenizer, p.prompt, system=settings.system) for p in items
    ]
    probe = [Injection(vector, chosen[0], 1.0, mode)] if any(per_layer.values()) else []
    names = [f"{p.source or 'prompts'}: item with id {p.id!r}" for p in items]
    check_generation(model, formatted, probe, settings.max_new_tokens, names)

    cells = [("", -1, 0.0)] + [(n, layer, m) for n in named for layer in chosen for m in per_layer[layer]]
    work = [(c, i, s) for c in cells for i in range(len(items)) for s in range(settings.samples)]
    work.sort(key=lambda w: len(formatted[w[1]]))  # similar lengths share a batch: less padding
    completions: dict[tuple, tuple[str, tuple[int, ...]]] = {}
    bar = tqdm(total=len(work), desc="generate", unit="completion", disable=not progress)
    for number, begin in enumerate(range(0, len(work), settings.batch_size)):
        batch = work[begin : begin + settings.batch_size]
        result = generate(
            model,
            [formatted[i] for _, i, _ in batch],
            _injections(named, [c for c, _, _ in batch], mode),
            settings.max_new_tokens,
            settings.temperature,
            settings.top_p,
            seed=settings.seed + number,
        )
        for key, text, ids in zip(batch, result.texts, result.token_ids, strict=True):
            completions[key] = (text, ids)
        bar.update(len(batch))
    bar.close()

    rows = []
    for n in named:
        for layer in chosen:
            for m in [0.0, *per_layer[layer]]:
                cell = ("", -1, 0.0) if m == 0 else (n, layer, m)
                for i, p in enumerate(items):
                    for s in range(settings.samples):
                        text, ids = completions[(cell, i, s)]
                        rows.append((n, layer, m, mode, i, p.id, p.source, s, p.prompt, text, list(ids)))
    return pd.DataFrame(rows, columns=list(GENERATION_TABLE_COLUMNS))


def _per_prompt(frame: pd.DataFrame, metric: str) -> pd.Series:
    return frame.groupby("prompt_index", sort=True)[metric].mean()


def open_ended_effects(
    scored: pd.DataFrame,
    metrics: Sequence[str],
    n_resamples: int = 4000,
    seed: int = 0,
    coverage: float = 0.95,
) -> pd.DataFrame:
    """Paired effects of every steered cell against multiplier 0, per metric, with the null band.

    Columns: metric, vector, layer, multiplier, n_prompts, unsteered, steered (means over prompts),
    effect, effect_low, effect_high (``caa_lens.stats.paired_effect`` over prompts); and, when the table
    holds controls (``random:<vector>:<seed>``), null_low, null_high, n_null and vs_null
    (``caa_lens.stats.with_null``); without them vs_null is "no null". Controls' own rows are dropped.

    >>> rows = [{"vector": "v", "layer": 1, "multiplier": m, "prompt_index": i, "score": m / 10 + i % 3}
    ...         for m in (0.0, 2.0) for i in range(8)]
    >>> open_ended_effects(pd.DataFrame(rows), ["score"], n_resamples=200)[["effect", "vs_null"]].values.tolist()
    [[0.2, 'no null']]
    """
    needed = {"vector", "layer", "multiplier", "prompt_index", *metrics}
    lacking = sorted(needed - set(scored.columns))
    if scored.empty or lacking or not metrics:
        raise ValueError(
            f"open_ended_effects needs a scored generations table with metrics; got {len(scored)} rows"
            + (f", lacking the columns {lacking}" if lacking else "")
        )
    tables = []
    for metric in metrics:
        rows = []
        for (vector, layer), group in scored.groupby(["vector", "layer"], sort=True):
            baseline = _per_prompt(group[group.multiplier == 0], metric)
            if baseline.empty:
                raise ValueError(f"vector {vector!r}, layer {layer}: no multiplier-0 rows to pair with")
            for multiplier, cell in group[group.multiplier != 0].groupby("multiplier", sort=True):
                steered = _per_prompt(cell, metric)
                if not steered.index.equals(baseline.index):
                    raise ValueError(
                        f"vector {vector!r}, layer {layer}, multiplier {multiplier}: its prompts differ "
                        "from the unsteered ones; effects pair the same prompts"
                    )
                effect = paired_effect(
                    steered.to_numpy(), baseline.to_numpy(), n_resamples=n_resamples, seed=seed
                )
                rows.append(
                    {
                        "metric": metric,
                        "vector": vector,
                        "layer": layer,
                        "multiplier": multiplier,
                        "n_prompts": effect.n,
                        "unsteered": float(baseline.mean()),
                        "steered": float(steered.mean()),
                        "effect": effect.mean,
                        "effect_low": effect.low,
                        "effect_high": effect.high,
                    }
                )
        table = pd.DataFrame(rows)
        if table.empty:
            raise ValueError("the table has no steered rows (multiplier != 0) to measure")
        if table.vector.astype(str).str.startswith(f"{NULL_PREFIX}:").any():
            table = with_null(table, NULL_PREFIX, coverage)
        else:
            table = table.assign(null_low=np.nan, null_high=np.nan, n_null=0, vs_null="no null")
        tables.append(table)
    return pd.concat(tables, ignore_index=True)


def examples(
    generations: pd.DataFrame, vector: str, layer: int, multiplier: float, count: int = 3
) -> pd.DataFrame:
    """The first ``count`` prompts (by prompt index, sample 0) with their unsteered and steered
    completions at one cell: columns prompt_id, prompt, unsteered, steered."""
    cell = generations[
        (generations.vector == vector) & (generations.layer == layer) & (generations["sample"] == 0)
    ]
    base = cell[cell.multiplier == 0].set_index("prompt_index")
    steered = cell[cell.multiplier == multiplier].set_index("prompt_index")
    if steered.empty:
        raise ValueError(f"no generations of vector {vector!r} at layer {layer}, multiplier {multiplier}")
    chosen = sorted(steered.index)[:count]
    return pd.DataFrame(
        {
            "prompt_id": steered.loc[chosen, "prompt_id"].to_numpy(),
            "prompt": steered.loc[chosen, "prompt"].to_numpy(),
            "unsteered": base.loc[chosen, "completion"].to_numpy(),
            "steered": steered.loc[chosen, "completion"].to_numpy(),
        }
    )


def is_effects_csv(path: str | Path) -> bool:
    """Whether ``path`` is an effects table ``open_ended_effects`` wrote: its first line is exactly
    ``EFFECT_COLUMNS``. Reads only the first line."""
    try:
        with open(path, "rb") as handle:
            line = handle.readline(4096)
    except OSError:
        return False
    return line.rstrip(b"\r\n") == ",".join(EFFECT_COLUMNS).encode()


def check_effects_output(path: str | Path) -> Path:
    """Check, before any model is loaded, that ``path`` may receive an effects CSV: a new file or one
    caa_lens wrote (replaced atomically); anything else is refused with an ``OutputError``."""
    from caa_lens.outputs import check_output_file

    return check_output_file(path, "open-ended effects CSV", is_effects_csv)
