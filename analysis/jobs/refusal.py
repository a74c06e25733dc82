"""The refusal study (``caa-lens refusal``): one job on the job runner (``caa_lens.jobs``).

Two parts, each a run of stages whose results are saved before the next starts (a rerun skips the
finished ones):

- the A/B sweep (``analysis.jobs.refusal_ab``): the plain and the letter-balanced CAA vector from the
  first ``sweep_pairs`` training pairs, swept over layers x multipliers on the test set beside random
  vectors of the same norm, with the per-letter split (stages ``ab_vectors``, ``ab_sweep``);
- the analyses (``analysis.jobs.refusal_analyses``): a vector from ``n_pairs`` letter-balanced training
  pairs and every analysis on letter-balanced held-out items (stages ``letters`` ... ``reversal``).

The model and the datasets are parameters: by default the CAA refusal files under the shared data
directory (``--shared-data`` or ``$CAA_LENS_SHARED_DATA``: ``caa/generate/refusal/generate_dataset.json``
and ``caa/test/refusal/test_dataset_ab.json``), the interference study's other behaviours from the same
place (else the bundled ones) and the perplexity text ``text/wiki.test.raw`` (else the bundled one).
Every layer the study uses is derived from the model's layer count or picked by its own layer sweep.
"""

import dataclasses
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from analysis.jobs.refusal_ab import AbSweepConfig, ab_sweep, ab_vectors
from analysis.jobs.refusal_analyses import ANALYSIS_STAGES, Study
from analysis.letters import balanced_subset, letter_counts
from caa_lens.data import BUNDLED_BEHAVIOURS, resolve_dataset
from caa_lens.extraction import extract_contrastive
from caa_lens.hooks import layer_at_depth
from caa_lens.identity import model_identity
from caa_lens.jobs import Job, build_manifest, dataset_hashes, invoked_command, load_job_model, write_manifest
from caa_lens.methods import contrastive_vector
from caa_lens.models import DEFAULT_MODEL

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

__all__ = [
    "CAA_OTHER_BEHAVIOURS",
    "REFUSAL_STAGES",
    "SHARED_DATA_ENV",
    "RefusalConfig",
    "default_datasets",
    "run_refusal",
]

SHARED_DATA_ENV = "CAA_LENS_SHARED_DATA"
REFUSAL_STAGES = ("ab_vectors", "ab_sweep", *ANALYSIS_STAGES)
CAA_OTHER_BEHAVIOURS = ("sycophancy", "hallucination", "corrigible-neutral-HHH")
# The A/B sweep's layers on the 30-layer default model (derived at the same depths for other models).
_AB_LAYERS = (4, 8, 10, 12, 14, 16, 18, 20, 24)


def _caa_files(shared: Path, behaviour: str) -> tuple[str, str]:
    caa = shared / "caa"
    return (
        str(caa / "generate" / behaviour / "generate_dataset.json"),
        str(caa / "test" / behaviour / "test_dataset_ab.json"),
    )


def default_datasets(
    shared_data: Path | None,
) -> tuple[str, str, tuple[tuple[str, str, str], ...], Path | None]:
    """Training and test specs, the interference behaviours and the perplexity text of a study on
    ``shared_data`` (else ``$CAA_LENS_SHARED_DATA``); raises ValueError when there is neither."""
    shared = shared_data or (Path(os.environ[SHARED_DATA_ENV]) if os.environ.get(SHARED_DATA_ENV) else None)
    if shared is None:
        raise ValueError(
            f"no refusal data: give --train and --test (e.g. refusal and refusal:test), --shared-data DIR or "
            f"set ${SHARED_DATA_ENV}"
        )
    train, test = _caa_files(shared, "refusal")
    others = tuple((name, *_caa_files(shared, name)) for name in CAA_OTHER_BEHAVIOURS)
    if not all(Path(path).is_file() for _, *paths in others for path in paths):
        others = _bundled_others()
    text = shared / "text" / "wiki.test.raw"
    return train, test, others, text if text.is_file() else None


def _bundled_others() -> tuple[tuple[str, str, str], ...]:
    return tuple((b, b, f"{b}:test") for b in BUNDLED_BEHAVIOURS if b != "refusal")


@dataclass(frozen=True)
class RefusalConfig:
    """Everything the refusal study depends on; the command line's options one to one."""

    train: str  # training pairs: a bundled name or a CAA JSON / MWE JSONL path
    test: str  # held-out A/B items
    model: str = DEFAULT_MODEL
    # (name, train, test) of the behaviours steered beside refusal in the interference stage.
    others: tuple[tuple[str, str, str], ...] = dataclasses.field(default_factory=_bundled_others)
    reference_text: Path | None = None  # perplexity text of the ratio study (None: the bundled one)
    stages: tuple[str, ...] = REFUSAL_STAGES
    n_pairs: int = 200  # letter-balanced training pairs of the analyses' vector
    eval_items: int = 30  # letter-balanced held-out items scored per cell
    layer: int | None = None  # None: picked by the layer sweep (the middle of the network)
    multiplier: float | None = None  # None: --ratio at the chosen layer
    ratio: float = 0.25
    reversal_budget: float = 540.0  # seconds
    reversal_items: int = 20
    reversal_min_items: int = 20  # fewer search or held-out items and a reversal claim is refused
    reversal_multiplier: float | None = None
    seed: int = 0
    figures: bool = True
    sweep_pairs: int = 200  # the A/B sweep's vectors: the first N training pairs
    sweep_balance: bool = False  # ... or N/2 of each matching letter, so the letter cancels exactly
    sweep_layers: tuple[int, ...] | None = None  # None: (4, 8, 10, ..., 20, 24) of 30 at the same depths
    sweep_multipliers: tuple[float, ...] = (-8.0, -4.0, -2.0, 0.0, 2.0, 4.0, 8.0)
    controls: int = 5
    control_seed: int = 0
    bootstrap: int = 4000
    sweep_batch: int = 8
    timing: bool = False
    naive_cells: int = 6


def _sweep_pairs(config: RefusalConfig):
    generate = resolve_dataset(config.train)
    if config.sweep_balance:
        # An unequal letter count leaves (n_B - n_A) / n of the large A-vs-B difference of the read token
        # in the mean difference: 106 B vs 94 A in the first 200 CAA refusal pairs.
        by_letter = {
            letter: [i for i, item in enumerate(generate) if item.matching == f"({letter})"]
            for letter in "AB"
        }
        half = config.sweep_pairs // 2
        chosen = sorted(by_letter["A"][:half] + by_letter["B"][:half])
        return generate.select(chosen, f":balanced{2 * half}")
    n = config.sweep_pairs
    return generate.select(range(min(n, len(generate))), f":first{n}")


def run_refusal(out: Path, config: RefusalConfig) -> Path:
    """Run the study into ``out`` (claimed as a results directory) and return ``summary.json``'s path."""
    job = Job(out)
    model = load_job_model(config.model)
    identity = model_identity(model)
    n_layers = identity.n_layers
    selected = set(config.stages)
    print(f"model {identity.name}: {n_layers} layers, d_model {identity.d_model}")

    generate = resolve_dataset(config.train)
    test = resolve_dataset(config.test)
    if {"ab_vectors", "ab_sweep"} & selected:
        sweep = AbSweepConfig(
            layers=config.sweep_layers
            or tuple(sorted({layer_at_depth(layer, n_layers) for layer in _AB_LAYERS})),
            multipliers=config.sweep_multipliers,
            controls=config.controls,
            control_seed=config.control_seed,
            bootstrap=config.bootstrap,
            batch_size=config.sweep_batch,
            timing=config.timing,
            naive_cells=config.naive_cells,
        )
        (out / "ab_sweep").mkdir(exist_ok=True)
        if "ab_vectors" in selected:
            job.run_stage("ab_vectors", lambda: ab_vectors(model, _sweep_pairs(config), test, sweep, out))
        if "ab_sweep" in selected:
            job.run_stage("ab_sweep", lambda: ab_sweep(model, test, sweep, out))

    study = _study(model, out, config, generate, replace(test, name="refusal_test"))
    if study is None:
        return _finish(job, out, config, identity, None)
    for name, work in study.stages().items():
        if name in selected:

            def stage(work=work) -> None:
                work()
                study.save()

            job.run_stage(name, stage)
            study.save(job.timings)
    return _finish(job, out, config, identity, study)


def _study(model: "TransformerBridge", out: Path, config: RefusalConfig, generate, test) -> Study | None:
    """The analyses' data splits and vector (extracted through caa_lens's resumable checkpoint)."""
    if not set(ANALYSIS_STAGES) & set(config.stages):
        return None
    seed = config.seed
    train = balanced_subset(generate, config.n_pairs, seed, f":balanced{config.n_pairs}")
    evaluation = balanced_subset(test, config.eval_items, seed, f":balanced{config.eval_items}")
    rest = test.select([i for i in range(len(test)) if test[i] not in evaluation.items], ":rest")
    search_items = balanced_subset(rest, config.reversal_items, seed, ":search")
    rest = rest.select([i for i in range(len(rest)) if rest[i] not in search_items.items], ":rest")
    heldout = balanced_subset(rest, 2 * min(letter_counts(rest).values()), seed, ":heldout")
    acts = extract_contrastive(
        model, train, keep_examples=True, batch_size=8, checkpoint=out / "stages" / "extract-analyses.partial"
    )
    study = Study(
        model=model, out=out, generate=generate, train=train, evaluation=evaluation, search_items=search_items,
        heldout=heldout, acts=acts, vector=contrastive_vector(model, acts), others=config.others,
        reference_text=config.reference_text, seed=seed, ratio=config.ratio, layer=config.layer,
        multiplier=config.multiplier, reversal_budget=config.reversal_budget,
        reversal_multiplier=config.reversal_multiplier, reversal_min_items=config.reversal_min_items,
        figures=config.figures,
    )  # fmt: skip
    summary_path = out / "summary.json"
    if summary_path.exists():
        import json

        study.summary = json.loads(summary_path.read_text())
    study.summary.update(
        model=model.cfg.model_name,
        n_pairs=len(train),
        eval_items=len(evaluation),
        letters={
            "generate_all": letter_counts(generate), "train": letter_counts(train),
            "eval": letter_counts(evaluation), "search": letter_counts(search_items),
            "heldout": letter_counts(heldout),
        },
    )  # fmt: skip
    study.save()
    return study


def _finish(job: Job, out: Path, config: RefusalConfig, identity, study: Study | None) -> Path:
    steering = study.steering() if study is not None else (None, None)
    manifest = build_manifest(
        invoked_command("caa-lens refusal"),
        identity,
        dataclasses.asdict(config),
        dataset_hashes([("refusal", config.train, config.test), *config.others]),
        {"selection": config.seed, "controls": config.control_seed, "bootstrap": 0},
        job.seconds(),
        job.timings,
        extra={"layer": steering[0], "multiplier": steering[1], "threads": torch.get_num_threads()},
    )
    write_manifest(out, manifest)
    summary = out / "summary.json"
    print(f"\nsummary: {summary.resolve() if summary.exists() else out.resolve()}")
    return summary
