"""analysis.store and the refusal script's cache: results round-trip, and loading a file runs no code.

Issue #11: a results JSON naming ``caa_lens.data.shuffled_indices`` made ``load_result`` import and
call it, and the refusal script unpickled its activation cache with ``torch.load`` in unsafe mode.
"""

import json
import re
from pathlib import Path

import pandas as pd
import pytest
import torch

import caa_lens.data
from analysis.interference import Interference
from analysis.reversal import ReversalConfig, ReversalResult
from analysis.store import FORMAT, RESULT_TYPES, ResultFileError, load_result, save_result

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def calls(monkeypatch) -> list[tuple]:
    """Replaces ``caa_lens.data.shuffled_indices`` by a recorder: a crafted file must never call it.

    The recorder is a class, so the old loader's ``-> type`` annotation, checked at runtime in the
    tests, lets it through and the test sees the call itself rather than a type-check error.
    """
    recorded: list[tuple] = []

    class Recorder:
        def __init__(self, *args, **kwargs) -> None:
            recorded.append((args, kwargs))

    monkeypatch.setattr(caa_lens.data, "shuffled_indices", Recorder)
    return recorded


def load_refused(directory: Path, name: str, calls: list[tuple]) -> str:
    """Loads a crafted result; checks nothing was called first, then that a ResultFileError came."""
    try:
        load_result(directory, name)
    except Exception as err:  # any kind: asserted below, after the calls
        error: Exception | None = err
    else:
        error = None
    assert calls == [], f"loading {name}.json called the function it names: {calls}"
    assert isinstance(error, ResultFileError), repr(error)
    return str(error)


def reversal_result() -> ReversalResult:
    table = pd.DataFrame({"text": ["a b", "c"], "reversal": [0.25, -0.5], "lambda": [0.0, float("nan")]})
    return ReversalResult(
        layer=3,
        multiplier=-2.5,
        config=ReversalConfig(n_tokens=3, lambdas=(0.0, 0.1), iterations=2, progress=False),
        direction=1.0,
        unsteered=0.4,
        steered=0.7,
        heldout_unsteered=0.45,
        heldout_steered=0.65,
        best=table,
        pareto=table.head(1),
        history=pd.DataFrame({"iteration": [0, 1], "fitness": [0.1, 0.2]}),
        iterations=2,
        elapsed_s=1.5,
        stopped_by="iterations",
        n_evaluated=12,
    )


def interference() -> Interference:
    generator = torch.Generator().manual_seed(0)
    return Interference(
        steered=("optimism", "formality"),
        scored=("optimism", "formality", "sycophancy"),
        combinations=(("optimism",), ("formality",), ("optimism", "formality")),
        layers={"optimism": 2, "formality": 3},
        multipliers={"optimism": 4.0, "formality": -1.5},
        baseline=torch.rand(3, generator=generator),
        scores=torch.rand(3, 3, generator=generator),
        effect=torch.randn(3, 3, generator=generator),
        additive_prediction=torch.tensor([[0.1, float("nan"), 0.3]] * 3),
    )


# ---------------------------------------------------------------------------------------------- round trip


def test_round_trip_of_a_result_with_a_nested_dataclass_and_tables(tmp_path):
    original = reversal_result()
    save_result(original, tmp_path, "reversal")
    loaded = load_result(tmp_path, "reversal")
    assert type(loaded) is ReversalResult and loaded.config == original.config
    assert (loaded.layer, loaded.multiplier, loaded.stopped_by) == (3, -2.5, "iterations")
    for field in ("best", "pareto", "history"):
        pd.testing.assert_frame_equal(getattr(loaded, field), getattr(original, field))


def test_round_trip_of_a_result_with_tensors_dicts_and_nested_tuples(tmp_path):
    original = interference()
    save_result(original, tmp_path, "interference")
    loaded = load_result(tmp_path, "interference")
    assert (loaded.steered, loaded.scored, loaded.combinations) == (
        original.steered,
        original.scored,
        original.combinations,
    )
    assert (loaded.layers, loaded.multipliers) == (original.layers, original.multipliers)
    for field in ("baseline", "scores", "effect", "additive_prediction"):
        torch.testing.assert_close(getattr(loaded, field), getattr(original, field), equal_nan=True)


def test_registry_holds_every_result_type_the_main_job_saves():
    """Every ``save_result(<call>(...))`` in analysis.jobs.main saves a registered type."""
    source = (REPO / "analysis" / "jobs" / "main.py").read_text()
    assert "save_result(" in source
    names = {name.rpartition(".")[2] for name in RESULT_TYPES}
    expected = {
        "BehaviourSimilarity", "Interference", "LayerSimilarity", "LayerTransfer", "MethodSimilarity",
        "NormProfile", "PcaProjections", "RatioTradeoff", "ReversalResult", "SampleSizeScaling",
        "Separability", "SizeEffect", "TokenProjection",
    }  # fmt: skip
    assert expected <= names and "ReversalConfig" in names  # the config nested in ReversalResult


# ---------------------------------------------------------------------------------------------- no code on load


def write_record(directory: Path, name: str, record: dict) -> Path:
    path = directory / f"{name}.json"
    path.write_text(json.dumps(record), encoding="utf-8")
    return path


def test_crafted_result_naming_a_function_is_refused_and_not_called(tmp_path, calls):
    record = {
        "format": FORMAT,
        "type": "caa_lens.data.shuffled_indices",
        "fields": {"n": 3, "seed": 0},
        "tensors": [],
        "tables": [],
    }
    path = write_record(tmp_path, "evil", record)
    message = load_refused(tmp_path, "evil", calls)
    assert (
        str(path) in message
        and "type 'caa_lens.data.shuffled_indices' is not a stored result type" in message
    )


def test_crafted_nested_value_naming_a_function_is_refused_and_not_called(tmp_path, calls):
    path = save_result(reversal_result(), tmp_path, "reversal")
    record = json.loads(path.read_text())
    record["fields"]["config"] = {
        "__dataclass__": "caa_lens.data.shuffled_indices",
        "fields": {"n": 3, "seed": 0},
    }
    write_record(tmp_path, "reversal", record)
    message = load_refused(tmp_path, "reversal", calls)
    assert "'caa_lens.data.shuffled_indices' is not a stored result type" in message


@pytest.mark.parametrize("type_name", ["builtins.eval", "os.system", "pathlib.Path", 3, None])
def test_any_type_outside_the_registry_is_refused(tmp_path, type_name):
    record = {"format": FORMAT, "type": type_name, "fields": {}, "tensors": [], "tables": []}
    write_record(tmp_path, "foreign", record)
    with pytest.raises(ResultFileError, match="not a stored result type"):
        load_result(tmp_path, "foreign")


def test_fields_the_type_does_not_have_are_refused(tmp_path):
    path = save_result(reversal_result(), tmp_path, "reversal")
    record = json.loads(path.read_text())
    record["tables"].append("../../elsewhere")  # a table name becomes a file name
    write_record(tmp_path, "reversal", record)
    with pytest.raises(ResultFileError, match=r"unknown fields \['../../elsewhere'\]"):
        load_result(tmp_path, "reversal")


def test_foreign_json_is_a_clear_error(tmp_path):
    write_record(tmp_path, "other", {"format": "something-else"})
    with pytest.raises(ResultFileError, match="not a caa_lens analysis result"):
        load_result(tmp_path, "other")
    (tmp_path / "broken.json").write_text("{", encoding="utf-8")
    with pytest.raises(ResultFileError, match=r"broken\.json: not a JSON result file"):
        load_result(tmp_path, "broken")


def test_saving_an_unregistered_type_is_refused(tmp_path):
    """A file the store could not load again is never written."""
    with pytest.raises(TypeError, match="RESULT_TYPES"):
        save_result(caa_lens.data.PromptPair("a", "x", "y"), tmp_path, "pair")
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------------------------------------- torch.load


def test_no_torch_load_without_weights_only():
    """Every ``torch.load`` in the package and the analyses asks for weights_only=True."""
    offenders = []
    for path in sorted([*(REPO / "caa_lens").rglob("*.py"), *(REPO / "analysis").rglob("*.py")]):
        for match in re.finditer(r"torch\.load\(([^()]*(?:\([^()]*\)[^()]*)*)\)", path.read_text()):
            if not re.search(r"\bweights_only\s*=\s*True\b", match.group(1)):
                offenders.append(f"{path.relative_to(REPO)}: {match.group(0)}")
    assert offenders == []


def test_stored_type_names_never_change():
    """Files name their type as they always have, wherever the class lives now: results saved before a
    refactor load after it, and results saved after it are byte-identical to them."""
    assert sorted(RESULT_TYPES) == [
        "analysis.behaviour_study.BehaviourStudy", "analysis.interference.Interference",
        "analysis.norms.NormProfile", "analysis.norms.RatioTradeoff", "analysis.pca.PcaProjections",
        "analysis.pca.Separability", "analysis.reversal.ReversalConfig", "analysis.reversal.ReversalResult",
        "analysis.scaling.SampleSizeScaling", "analysis.scaling.SizeEffect",
        "analysis.similarity.BehaviourSimilarity", "analysis.similarity.LayerSimilarity",
        "analysis.similarity.LayerTransfer", "analysis.similarity.MethodSimilarity",
        "caa_lens.views.TokenProjection",
    ]  # fmt: skip
