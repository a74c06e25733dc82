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
import json
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal

import torch
from tqdm.auto import tqdm

from caa_lens.data import ContrastiveDataset
from caa_lens.evaluation import (
    ScoringPrompt,
    SplitRule,
    check_multipliers,
    check_scores_finite,
    encode_prefixes,
    item_hash,
    scoring_prompts,
    suffix_scores,
)
from caa_lens.hooks import check_layers
from caa_lens.likelihood import (
    LikelihoodPrompt,
    encode_likelihood_prefixes,
    likelihood_prompts,
    likelihood_suffix_scores,
)
from caa_lens.models import model_identity
from caa_lens.prompts import PromptStyle
from caa_lens.stats import random_like
from caa_lens.sweep_io import (
    FORMAT,
    METRICS,
    NULL_PREFIX,
    SweepConfigError,
    SweepFileError,
    SweepTable,
    append_rows,
    check_sweep_output,
    effects_summary,
    encode_line,
    format_effects,
    is_summary_csv,
    is_sweep_file,
    load_results,
    lock_descriptor,
    merge_results,
    normalise_config,
    parse_table,
    place_locked,
    row_key,
    summarize,
    verdicts,
    warn_incomplete,
)
from caa_lens.vectors import SteeringVector

Metric = Literal["letter", "likelihood"]

__all__ = [
    "METRICS",
    "Metric",
    "SweepConfigError",
    "SweepFileError",
    "SweepRun",
    "check_metric",
    "check_multipliers",
    "check_sweep_output",
    "control_name",
    "default_shard",
    "effects_summary",
    "format_effects",
    "is_summary_csv",
    "is_sweep_file",
    "load_results",
    "merge_results",
    "parse_shard",
    "run_sweep",
    "shard_units",
    "summarize",
    "verdicts",
    "with_controls",
]


@dataclass(frozen=True)
class SweepRun:
    """What one call of ``run_sweep`` did."""

    path: Path
    config: dict
    shard: tuple[int, int]
    units_total: int  # (item, layer) units of this shard
    units_computed: int  # units that were missing rows and were (re)computed
    rows_written: int


def vector_hash(vector: SteeringVector, layers: Sequence[int]) -> str:
    """SHA-256 (16 hex digits) of the directions at ``layers``, the content the sweep depends on."""
    data = torch.stack([vector.at(layer).float().contiguous() for layer in layers]).numpy().tobytes()
    return hashlib.sha256(data).hexdigest()[:16]


def _named_vectors(vectors: SteeringVector | Mapping[str, SteeringVector]) -> dict[str, SteeringVector]:
    if isinstance(vectors, SteeringVector):
        return {vectors.provenance.dataset or "vector": vectors}
    if not vectors:
        raise ValueError("no vectors to sweep")
    return dict(vectors)


def control_name(vector: str, seed: int) -> str:
    """The name of ``vector``'s random control of seed ``seed``: ``random:<vector>:<seed>``.

    ``caa_lens.stats.with_null`` reads this name to pair a control with the vector it controls.

    >>> control_name("refusal", 2)
    'random:refusal:2'
    """
    return f"{NULL_PREFIX}:{vector}:{seed}"


def _is_null_name(name: str) -> bool:
    return name == NULL_PREFIX or name.startswith(f"{NULL_PREFIX}:")


def check_metric(metric: object) -> Metric:
    """``metric`` if it is one a sweep can score (``METRICS``), else a ValueError saying which are."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {', '.join(map(repr, METRICS))}, got {metric!r}")
    return metric  # type: ignore[return-value]


def _check_count(value: object, option: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{option} must be a whole number >= 0, got {value!r}")
    return value


def with_controls(
    vectors: Mapping[str, SteeringVector], controls: int, seed: int = 0
) -> dict[str, SteeringVector]:
    """``vectors`` followed by ``controls`` random vectors of the same per-layer norm for each of them.

    The control of ``name`` with seed ``s`` (``seed <= s < seed + controls``) is
    ``random_like(vectors[name], s)`` named ``control_name(name, s)``. Every vector gets the same seeds,
    so two vectors' controls share their random directions, each scaled to its own vector's norms: their
    null bands differ only through the norms, which keeps them comparable.

    Raises:
        ValueError: ``controls`` or ``seed`` is not a whole number >= 0, or (with controls) a given
            vector's name is one the controls use (``random`` or ``random:...``).
    """
    _check_count(controls, "controls")
    _check_count(seed, "control_seed")
    named = dict(vectors)
    if not controls:
        return named
    reserved = sorted(name for name in named if _is_null_name(name))
    if reserved:
        raise ValueError(
            f"vector names {reserved} are reserved for random controls ({NULL_PREFIX}:<vector>:<seed>); "
            f"rename those vectors, or sweep them with controls=0 if they are your own controls"
        )
    for name, vector in vectors.items():
        for s in range(seed, seed + controls):
            named[control_name(name, s)] = random_like(vector, s)
    return named


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


def _check_shard(shard: tuple[int, int]) -> tuple[int, int]:
    index, count = (int(x) for x in shard)
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"shard must be (i, n) with 0 <= i < n, got {shard}")
    return index, count


def parse_shard(text: str) -> tuple[int, int]:
    """``"2/8"`` -> ``(2, 8)`` (the command line's ``--shard i/n``)."""
    try:
        index, count = text.split("/")
        return _check_shard((int(index), int(count)))
    except ValueError as err:
        raise ValueError(f"shard must look like i/n with 0 <= i < n, got {text!r}") from err


def sweep_config(
    model,
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
        "vectors": {name: vector_hash(v, layers) for name, v in vectors.items()},
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


def _differences(header: dict, config: dict, shard: tuple[int, int]) -> list[str]:
    """How a file's header differs from this sweep's configuration and shard (empty: the same sweep)."""
    old = normalise_config(header.get("config", {}))
    config = normalise_config(config)
    differences = [
        f"{key}: file has {old.get(key)!r}, this sweep has {config.get(key)!r}"
        for key in sorted(set(old) | set(config))
        if old.get(key) != config.get(key)
    ]
    if tuple(header.get("shard", ())) != shard:
        differences.append(f"shard: file has {header.get('shard')}, this sweep has {list(shard)}")
    return differences


def shard_units(n_items: int, layers: Sequence[int], shard: tuple[int, int]) -> list[tuple[int, int]]:
    """The (item, layer) units of one shard: a contiguous chunk of all units ordered by item then layer.

    Contiguous chunks keep an item's layers together, so each shard encodes each prefix once.
    """
    index, count = _check_shard(shard)
    units = [(item, layer) for item in range(n_items) for layer in layers]
    return units[index * len(units) // count : (index + 1) * len(units) // count]


class _ResultsFile:
    """The results file of one ``run_sweep`` call; nothing is written to it until rows are ready.

    Deferring every write to the first computed group means a call that fails before it (a bad
    prompt, an out-of-memory error, a Ctrl-C) leaves the file exactly as it found it, or absent if it
    was absent: no header-only file, no cut tail, no replaced header. Then:

    - a new file is created holding the header and the first rows in one step (``place_locked``);
    - a resumed file has its truncated last line cut, then rows appended;
    - a header-only file of another configuration (no results to lose, and caa_lens's own) is
      replaced in one step by the new header and the first rows.

    The file is locked from the moment it is read (or created) until the call ends.
    """

    def __init__(self, path: Path, header: dict, done: set) -> None:
        self.path, self.header, self.done = path, encode_line(header), done
        self.handle: int | None = None  # the descriptor holding the lock
        self.cut: int | None = None  # length to cut the file to before the first append
        self.replace = False  # a header-only file of another sweep: replaced at the first write

    def __enter__(self) -> "_ResultsFile":
        if not self.path.exists():
            return self
        self.handle = os.open(self.path, os.O_RDWR)
        try:
            lock_descriptor(self.handle, self.path)
            table = parse_table(self.path)  # checked whole before anything is changed
            if table is None:
                raise SweepFileError(
                    f"{self.path} is empty, not a results table caa_lens wrote; refusing to write into it "
                    f"(choose another output path, or remove the empty file)"
                )
            self._adopt(table)
        except BaseException:
            self.close()
            raise
        return self

    def _adopt(self, table: SweepTable) -> None:
        header = json.loads(self.header)
        differences = _differences(table.header, header["config"], tuple(header["shard"]))
        if differences and table.rows:
            raise SweepConfigError(
                f"{self.path} holds results of a different sweep; refusing to resume it ("
                + "; ".join(differences)
                + "). Use another output file, or delete this one to start over."
            )
        if differences:
            warnings.warn(
                f"{self.path} holds only the header of a different sweep (no results); its header will be "
                f"replaced by this sweep's (" + "; ".join(differences) + ")",
                stacklevel=4,
            )
            self.replace = True
            return
        self.done.update(row_key(row) for row in table.rows)
        if table.tail_bytes:
            warn_incomplete(self.path, table, "it is cut off before new rows are appended")
            self.cut = table.complete_bytes

    def append(self, rows: Sequence[dict]) -> None:
        payload = b"".join(encode_line(row) for row in rows)  # encoded (and checked) before any write
        if self.handle is None:
            try:
                self.handle = place_locked(self.path, self.header + payload, replace=False)
            except FileExistsError as err:
                raise SweepFileError(
                    f"{self.path} was created by another process while this sweep computed; rerun to "
                    f"resume that file"
                ) from err
        elif self.replace:
            old = self.handle
            self.handle = place_locked(self.path, self.header + payload, replace=True)
            os.close(old)  # the lock moves to the new file, which was locked before it appeared
            self.replace = False
        else:
            if self.cut is not None:
                os.ftruncate(self.handle, self.cut)
                os.fsync(self.handle)
                self.cut = None
            append_rows(self.path, rows)  # looked up here, so tests/helpers/sweep_worker.py can slow it
        self.done.update(row_key(row) for row in rows)

    def finish(self) -> None:
        """After a successful run: the file exists with this sweep's header even if no row was due."""
        if self.handle is None or self.replace or self.cut is not None:
            self.append([])

    def close(self) -> None:
        if self.handle is not None:
            os.close(self.handle)  # releases the lock
            self.handle = None

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()


def run_sweep(
    model,
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
    shard = _check_shard(shard)
    named = with_controls(given, controls, control_seed)
    # Every length is checked (and, for likelihood, every answer text located) before any pass.
    prompts: list[ScoringPrompt] | list[LikelihoodPrompt] = (
        scoring_prompts(model.tokenizer, dataset, system, style, model)
        if metric == "letter"
        else likelihood_prompts(model.tokenizer, dataset, system, style, model)
    )
    config = sweep_config(
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
    with _ResultsFile(path, {"format": FORMAT, "config": config, "shard": list(shard)}, done) as table:
        run = _compute(model, dataset, prompts, named, values, units, config, table, shard, progress)
        table.finish()
    return run


def _compute(
    model,
    dataset: ContrastiveDataset,
    prompts: list[ScoringPrompt] | list[LikelihoodPrompt],
    named: dict[str, SteeringVector],
    values: tuple[float, ...],
    units: list[tuple[int, int]],
    config: dict,
    table: _ResultsFile,
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


def default_shard() -> tuple[int, int]:
    """The shard of a SLURM array task (its index from ``SLURM_ARRAY_TASK_MIN``), else ``(0, 1)``."""
    env = os.environ
    if "SLURM_ARRAY_TASK_ID" in env and "SLURM_ARRAY_TASK_COUNT" in env:
        index = int(env["SLURM_ARRAY_TASK_ID"]) - int(env.get("SLURM_ARRAY_TASK_MIN", "0"))
        return _check_shard((index, int(env["SLURM_ARRAY_TASK_COUNT"])))
    return (0, 1)
