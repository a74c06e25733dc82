"""analysis.plots.spec: a FigureSpec finds its inputs in a saved results directory, draws each with its
plot function and writes the PNG files it declares; check_kinds resolves figure types against a registry."""

import dataclasses
from fnmatch import fnmatch
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pandas as pd
import pytest
from matplotlib.figure import Figure

from analysis.norms import NormProfile
from analysis.plots import FIGURES, is_caa_lens_png
from analysis.plots.spec import FigureSpec, check_kinds
from analysis.store import load_result, save_result


def profile(scale: float) -> NormProfile:
    return NormProfile(
        pd.DataFrame(
            {
                "layer": [0, 1, 2],
                "vector_norm": [1.0 * scale, 2.0 * scale, 4.0 * scale],
                "resid_read": [10.0, 20.0, 40.0],
                "ratio_read": [0.1 * scale, 0.1 * scale, 0.1 * scale],
            }
        )
    )


def find_norms(results: Path) -> list[tuple[str, NormProfile]]:
    """Every saved ``results/norms-*.json``, drawn into ``norms-*.png``."""
    names = sorted(p.stem for p in (results / "results").glob("norms-*.json"))
    return [(name, load_result(results / "results", name)) for name in names]


drawn: list[NormProfile] = []


def plot_norms(result: NormProfile) -> Figure:
    drawn.append(result)
    figure, axes = plt.subplots()
    axes.plot(result.table["layer"], result.table["vector_norm"])
    axes.set_title("vector norm by layer")
    return figure


SPEC = FigureSpec[NormProfile](
    "norms",
    "Each saved vector's norm by layer.",
    ("results/norms-*.json",),
    ("norms-*.png",),
    find_norms,
    plot_norms,
)


@pytest.fixture
def results(tmp_path) -> Path:
    out = tmp_path / "job"
    save_result(profile(1.0), out / "results", "norms-beta")
    save_result(profile(3.0), out / "results", "norms-alpha")
    save_result(profile(5.0), out / "results", "norm_profile")  # another figure's input, not this one's
    return out


def test_find_sees_the_declared_inputs_in_name_order(results):
    found = SPEC.find(results)
    assert [stem for stem, _ in found] == ["norms-alpha", "norms-beta"]
    assert [float(r.table["vector_norm"].max()) for _, r in found] == [12.0, 4.0]
    saved = sorted(str(p.relative_to(results)) for p in results.rglob("*.json"))
    assert [s for s in saved if any(fnmatch(s, glob) for glob in SPEC.reads)] == [
        "results/norms-alpha.json",
        "results/norms-beta.json",
    ]


def test_draw_writes_one_png_per_input_under_the_declared_names(results, tmp_path):
    drawn.clear()
    figures = tmp_path / "figures"
    paths = SPEC.draw(results, figures)
    assert paths == [figures / "norms-alpha.png", figures / "norms-beta.png"]
    assert sorted(p.name for p in figures.iterdir()) == ["norms-alpha.png", "norms-beta.png"]
    assert all(any(fnmatch(p.name, glob) for glob in SPEC.files) for p in paths)
    assert all(is_caa_lens_png(p) and p.read_bytes().startswith(b"\x89PNG") for p in paths)
    # plot got the results as saved, in find's order, and every figure was closed after saving.
    assert len(drawn) == 2
    pd.testing.assert_frame_equal(drawn[0].table, profile(3.0).table)
    pd.testing.assert_frame_equal(drawn[1].table, profile(1.0).table)
    assert plt.get_fignums() == []


def test_draw_with_nothing_saved_writes_nothing(tmp_path):
    figures = tmp_path / "figures"
    (tmp_path / "job" / "results").mkdir(parents=True)
    assert SPEC.find(tmp_path / "job") == []
    assert SPEC.draw(tmp_path / "job", figures) == []
    assert not figures.exists()


def test_a_registered_spec_writes_its_declared_files(results, tmp_path):
    spec = FIGURES["norm_profile"]
    assert (spec.name, spec.reads, spec.files) == (
        "norm_profile",
        ("results/norm_profile.json",),
        ("norm_profile.png",),
    )
    paths = spec.draw(results, tmp_path / "figures")
    assert [p.name for p in paths] == ["norm_profile.png"] and is_caa_lens_png(paths[0])


def test_spec_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        SPEC.name = "other"  # type: ignore[misc]


def test_check_kinds():
    registry = {"b": SPEC, "a": SPEC, "c": SPEC}
    assert check_kinds(None, registry) == ["b", "a", "c"]  # the registry's order
    assert check_kinds(["c", "a"], registry) == ["c", "a"]  # the order asked for
    with pytest.raises(
        ValueError, match=r"^unknown figure types \['x', 'z'\]: expected some of \['a', 'b', 'c'\]$"
    ):
        check_kinds(["z", "a", "x"], registry)
