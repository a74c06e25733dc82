"""The saved form of ActAdd's results: a directory marked as caa_lens's, each experiment's tables as CSV
and its summary as JSON, read back into the same result types.
"""

import json
from pathlib import Path

import pandas as pd

from analysis.actadd_generation import GenerationExperiment
from analysis.actadd_perplexity import RelatedTextResult
from analysis.actadd_sentiment import SentimentResult
from analysis.actadd_setup import jsonable
from analysis.actadd_topic import TopicResult
from caa_lens.outputs import check_output_dir

__all__ = ["ACTADD_MARKER", "EXPERIMENTS", "claim_actadd_dir", "is_actadd_dir", "load_actadd", "save_actadd"]

EXPERIMENTS = ("weddings", "perplexity", "sentiment")

# Written first into every output directory: it marks it as caa_lens's, so a rerun may replace the files.
ACTADD_MARKER = ".caa_lens-actadd"


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
    weddings. The figure is drawn by ``analysis.plots.save_actadd_figure``.
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
    summary_path.write_text(json.dumps(jsonable(summary), indent=1) + "\n")
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
