"""Layer x multiplier x vector sweeps of behaviour probability, written as a resumable tidy table.

The table is a JSONL file: a header line recording the sweep's configuration, then one row per
item x layer x vector x multiplier. Rows are appended as each (batch of questions, layer) group
finishes, flushed and fsynced, so a killed sweep loses at most the group it was computing. Resuming
reads the file, drops a truncated last line (the only damage a kill can do), recomputes every group
that still misses a row, and appends only the missing rows: nothing is lost or duplicated, and as a
group's batch of questions is fixed by the configuration, recomputed values equal the first run's.

Controls: ``controls=k`` adds, for every named vector, k random vectors of the same per-layer norm
(``caa_lens.stats.random_like``) named ``random:<vector>:<seed>``, swept as extra vectors of the same
sweep: they ride on the same prefix pass, and their effects give each cell its null band
(``effects_summary``). Multiplier 0 is always swept, since every effect is a paired difference
against it.

Metrics: ``metric="letter"`` (the CAA A/B metric, ``caa_lens.evaluation``) or ``"likelihood"`` (the
letter-free answer-text metric, ``caa_lens.likelihood``). Both write the same columns, so summaries,
merges and effects tables read either; for likelihood rows ``p_matching`` is sigmoid(``logprob_diff``),
``p_letters_sum`` is the mean per-token probability of the two answer texts, and a ``logprob_diff``
column is added. The metric is recorded in the header (files written before it was recorded are
``"letter"``), so a file is resumed only with the metric that wrote it.

Work units are (item, layer) pairs in a fixed order; ``shard=(i, n)`` takes the i-th of n contiguous
chunks (SLURM: ``shard=(SLURM_ARRAY_TASK_ID, SLURM_ARRAY_TASK_COUNT)``), each shard writes its own
file, and ``merge_results`` joins them, refusing mixed configurations, duplicates and gaps.
"""

import hashlib
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch
from tqdm.auto import tqdm

from caa_lens.data import ContrastiveDataset
from caa_lens.evaluation import (
    ScoringPrompt,
    SplitRule,
    check_scores_finite,
    encode_prefixes,
    item_hash,
    scoring_prompts,
    suffix_scores,
)
from caa_lens.hooks import check_layers
from caa_lens.identity import model_identity
from caa_lens.likelihood import (
    LikelihoodPrompt,
    encode_likelihood_prefixes,
    likelihood_prompts,
    likelihood_suffix_scores,
)
from caa_lens.multipliers import check_multipliers
from caa_lens.prompts import PromptStyle
from caa_lens.sweep_controls import NULL_PREFIX, with_controls
from caa_lens.sweep_io import FORMAT, METRICS, check_sweep_output, normalise_config
from caa_lens.sweep_shards import check_shard, shard_units
from caa_lens.sweep_writer import ResultsFile
from caa_lens.vectors import SteeringVector

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

Metric = Literal["letter", "likelihood"]

__all__ = ["Metric", "SweepRun", "check_metric", "run_sweep"]


@dataclass(frozen=True)
class SweepRun:
    """What one call of ``run_sweep`` did."""

    path: Path
    config: dict
    shard: tuple[int, int]
    units_total: int  # (item, layer) units of this shard
    units_computed: int  # units that were missing rows and were (re)computed
    rows_written: int


def _vector_hash(vector: SteeringVector, layers: Sequence[int]) -> str:
    """SHA-256 (16 hex digits) of the directions at ``layers``, the content the sweep depends on."""
    data = torch.stack([vector.at(layer).float().contiguous() for layer in layers]).numpy().tobytes()
    return hashlib.sha256(data).hexdigest()[:16]


def _named_vectors(vectors: SteeringVector | Mapping[str, SteeringVector]) -> dict[str, SteeringVector]:
    if isinstance(vectors, SteeringVector):
        return {vectors.provenance.dataset or "vector": vectors}
    if not vectors:
        raise ValueError("no vectors to sweep")
    return dict(vectors)


def check_metric(metric: object) -> Metric:
    """``metric`` if it is one a sweep can score (``METRICS``), else a ValueError saying which are."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {', '.join(map(repr, METRICS))}, got {metric!r}")
    return metric  # type: ignore[return-value]


def _with_zero(values: tuple[float, ...]) -> tuple[float, ...]:
    """``values`` with multiplier 0 (the unsteered baseline every effect is paired with) added, sorted in."""
    if 0.0 in values:
        return values
    warnings.warn(
        f"multiplier 0 added to the sweep's multipliers {list(values)}: every effect is a paired "
        f"difference against the unsteered run on the same items",
        stacklevel=3,
    )
    return tuple(sorted((*values, 0.0)))


def _sweep_config(
    model: "TransformerBridge",
    dataset: ContrastiveDataset,
    vectors: Mapping[str, SteeringVector],
    layers: Sequence[int],
    multipliers: Sequence[float],
    batch_size: int,
    split: SplitRule,
    system: str | None,
    style: str,
    controls: int = 0,
    control_seed: int = 0,
    metric: Metric = "letter",
) -> dict:
    """Everything the results depend on; a file is resumed only under an identical configuration.

    ``controls`` is recorded only when there are some, so files written before controls existed (and
    sweeps without them) keep the configuration they had and resume as before. ``metric`` is always
    recorded; a header without it (written before it was) reads as ``"letter"`` (``normalise_config``).
    """
    identity = model_identity(model)
    recorded = (
        {"controls": {"count": controls, "seed": control_seed, "prefix": NULL_PREFIX}} if controls else {}
    )
    return {
        "model": identity.name,
        "model_config_hash": identity.config_hash,
        "behaviour": dataset.name,
        "dataset_hash": dataset.content_hash,
        "n_items": len(dataset),
        "vectors": {name: _vector_hash(v, layers) for name, v in vectors.items()},
        "layers": list(layers),
        "multipliers": list(multipliers),
        # batch_size fixes which questions share a padded batch, so a resumed group is bit-identical.
        "batch_size": batch_size,
        "split": split,
        "system": system,
        "style": style,
        "metric": metric,
        **recorded,
    }


def run_sweep(
    model: "TransformerBridge",
    dataset: ContrastiveDataset,
    vectors: SteeringVector | Mapping[str, SteeringVector],
    layers: Sequence[int],
    multipliers: Sequence[float],
    path: str | Path,
    shard: tuple[int, int] = (0, 1),
    batch_size: int = 8,
    split: SplitRule = "from_start",
    system: str | None = None,
    style: PromptStyle = "auto",
    progress: bool = True,
    controls: int = 0,
    control_seed: int = 0,
    metric: Metric = "letter",
) -> SweepRun:
    """Sweep behaviour probability over layers x multipliers x vectors into ``path`` (JSONL), resumably.

    Everything is checked before the first forward pass and before the file is touched: the output
    path (a new file, or a results table caa_lens wrote; ``check_sweep_output``), the layers, the
    multipliers (``check_multipliers``), and every prompt's length against the model's context. A
    call that fails before its first rows are computed leaves the file as it was (or absent).
    Report the results with ``effects_summary(load_results(path))``.

    Args:
        vectors: one vector, or several by name (the ``vector`` column).
        layers: layers to steer (each vector needs a direction there).
        multipliers: distinct finite numbers; ``|m|`` times the largest vector norm must fit float32.
            Multiplier 0 is added (with a warning) when missing: effects are paired against it.
        path: the results file; an existing file of the same configuration and shard is resumed, and a
            header-only file (no results yet) of another configuration is replaced, with a warning.
        shard: ``(i, n)``: compute only the i-th of n deterministic chunks of the work.
        batch_size: questions per prefix pass; each layer's suffix pass has
            ``batch_size * len(vectors) * len(multipliers)`` rows.
        split: ``"from_start"`` (CAA: steer from the end of the user turn) or ``"last"``.
        controls: random vectors of the same per-layer norm to sweep beside each vector, named
            ``random:<vector>:<seed>`` (``with_controls``), for the null band. They share the prefix
            pass, but each multiplies the suffix pass's rows (and its memory) like another vector.
        control_seed: the first control's seed; the seeds are ``control_seed .. control_seed+controls-1``.
            Both are recorded in the header: a file is resumed only with the same controls.
        metric: ``"letter"`` (CAA: p(matching letter) after ``"("``) or ``"likelihood"`` (letter-free:
            sigmoid of the mean per-token log-probability difference of the two answer texts as the
            reply to the question without its choices; ``caa_lens.likelihood``). Recorded in the header:
            a file is resumed only with the same metric.

    Raises:
        OutputError: ``path`` is a file caa_lens did not write.
        SweepConfigError: ``path`` holds results of another configuration or shard.
        ValueError: a bad argument, a prompt longer than the context (naming the dataset item), or a
            score that came out non-finite (naming vector, layer, multiplier and item; nothing of its
            group is written).
    """
    metric = check_metric(metric)
    path = check_sweep_output(path)
    given = _named_vectors(vectors)
    chosen = check_layers(model, list(layers))
    missing = [(n, layer) for n, v in given.items() for layer in chosen if layer not in v.layers]
    if missing:
        raise ValueError(f"vectors lack directions for (vector, layer) {missing}")
    # Controls have the given vectors' norms, so checking the given ones covers them.
    values = _with_zero(check_multipliers(multipliers, {n: v.select(chosen) for n, v in given.items()}))
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    shard = check_shard(shard)
    named = with_controls(given, controls, control_seed)
    # Every length is checked (and, for likelihood, every answer text located) before any pass.
    prompts: list[ScoringPrompt] | list[LikelihoodPrompt] = (
        scoring_prompts(model.tokenizer, dataset, system, style, model)
        if metric == "letter"
        else likelihood_prompts(model.tokenizer, dataset, system, style, model)
    )
    config = _sweep_config(
        model,
        dataset,
        named,
        chosen,
        values,
        batch_size,
        split,
        system,
        style,
        controls,
        control_seed,
        metric,
    )
    units = shard_units(len(dataset), chosen, shard)
    done: set = set()
    with ResultsFile(path, {"format": FORMAT, "config": config, "shard": list(shard)}, done) as table:
        run = _compute(model, dataset, prompts, named, values, units, config, table, shard, progress)
        table.finish()
    return run


def _compute(
    model: "TransformerBridge",
    dataset: ContrastiveDataset,
    prompts: list[ScoringPrompt] | list[LikelihoodPrompt],
    named: dict[str, SteeringVector],
    values: tuple[float, ...],
    units: list[tuple[int, int]],
    config: dict,
    table: ResultsFile,
    shard: tuple[int, int],
    progress: bool,
) -> SweepRun:
    layers, size, done = config["layers"], config["batch_size"], table.done
    hashes = [item_hash(item) for item in dataset]
    where = dataset.source or dataset.name
    letter = normalise_config(config)["metric"] == "letter"
    lengths = [len(p.prompt) if isinstance(p, ScoringPrompt) else p.longest for p in prompts]
    # Fixed batches (sorted by length to cut padding), so a resumed group is computed as in the first run.
    ordered = sorted({item for item, _ in units}, key=lambda i: (lengths[i], i))
    unit_set = set(units)
    cells = [(name, m) for name in named for m in values]  # the suffix_scores row order per item
    computed = written = 0
    bar = tqdm(total=len(units), desc=f"sweep {dataset.name}", unit="unit", disable=not progress)
    for begin in range(0, len(ordered), size):
        batch = ordered[begin : begin + size]
        # Per layer: the rows (item, position in batch, cell) this shard owns and the file lacks.
        todo = {
            layer: [
                (item, at, j)
                for at, item in enumerate(batch)
                if (item, layer) in unit_set
                for j, (name, m) in enumerate(cells)
                if (name, layer, m, item) not in done
            ]
            for layer in layers
        }
        owned = sum((item, layer) in unit_set for item in batch for layer in layers)
        pending = {layer: rows for layer, rows in todo.items() if rows}
        bar.update(owned - sum(len({r[0] for r in rows}) for rows in pending.values()))
        if not pending:
            continue
        chosen = [prompts[i] for i in batch]
        if letter:
            prefix = encode_prefixes(model, chosen, config["split"])  # type: ignore[arg-type]
        else:
            prefix = encode_likelihood_prefixes(model, chosen, config["split"])  # type: ignore[arg-type]
        for layer, need in pending.items():
            if letter:
                scores = suffix_scores(model, prefix, list(named.values()), layer, values)
            else:
                scores = likelihood_suffix_scores(model, prefix, list(named.values()), layer, values)
            flat = scores.reshape(len(batch), len(cells), scores.shape[-1])
            # A non-finite score stops the sweep before its group is written: never a NaN row.
            check_scores_finite(
                torch.stack([flat[at, j] for _, at, j in need]),
                [
                    f"{where}: item {item}, vector {cells[j][0]!r}, layer {layer}, multiplier {cells[j][1]:g}"
                    for item, _, j in need
                ],
            )
            rows = [
                _row(config, _label(prompts[item]), hashes[item], *cells[j], layer, item, flat[at, j])
                for item, at, j in need
            ]
            table.append(rows)  # one fsynced write per (batch, layer) group
            groups = len({item for item, _, _ in need})
            computed, written = computed + groups, written + len(rows)
            bar.update(groups)
    bar.close()
    return SweepRun(table.path, config, shard, len(units), computed, written)


def _label(prompt: ScoringPrompt | LikelihoodPrompt) -> str:
    if isinstance(prompt, LikelihoodPrompt):
        return prompt.matching_label
    return prompt.labels[prompt.matching]


def _row(config, label, hash_, name, multiplier, layer, item, score) -> dict:
    """One table row; ``score`` is ``(p_matching, p_letters_sum)`` (letter) or ``(p_matching,
    p_token_mean, logprob_diff)`` (likelihood: the mean token probability fills ``p_letters_sum``)."""
    row = {
        "vector": name,
        "layer": layer,
        "multiplier": multiplier,
        "item_index": item,
        "item_hash": hash_,
        "matching_label": label,
        "p_matching": float(score[0]),
        "p_letters_sum": float(score[1]),
    }
    if len(score) > 2:
        row["logprob_diff"] = float(score[2])
    return {
        **row,
        "behaviour": config["behaviour"],
        "dataset_hash": config["dataset_hash"],
        "model": config["model"],
    }
