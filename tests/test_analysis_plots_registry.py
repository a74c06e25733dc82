"""analysis.plots.registry and actadd_registry: figures drawn from saved results alone, under the
registered file names, never into a directory holding anything but caa_lens figures."""

import matplotlib

matplotlib.use("Agg")

import pytest
from helpers.plot_results import small_results

from analysis.plots import ACTADD_FIGURES, FIGURES, draw, draw_actadd, is_caa_lens_png
from analysis.store import save_result
from caa_lens.outputs import OutputError


@pytest.fixture
def results(tmp_path):
    """A results directory with a few saved results (no figures yet)."""
    small = small_results()
    out = tmp_path / "results"
    save_result(small["layer_similarity"], out / "results", "layer_similarity-alpha")
    save_result(small["norms"], out / "results", "norm_profile")
    save_result(small["interference"], out / "results", "interference")
    return out


def test_draws_what_is_saved_under_the_registered_names(results):
    paths = draw(results)
    assert [p.name for p in paths] == ["layer_similarity-alpha.png", "norm_profile.png", "interference.png"]
    assert all(p.parent == results / "figures" and is_caa_lens_png(p) for p in paths)
    assert draw(results, kinds=["norm_profile"]) == [results / "figures" / "norm_profile.png"]  # redrawn
    assert draw(results, kinds=["sweep", "reversal"]) == []  # nothing of theirs saved: skipped


def test_refuses_unknown_kinds_and_foreign_directories(results, tmp_path):
    with pytest.raises(ValueError, match="unknown figure types"):
        draw(results, kinds=["nonsense"])
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    with pytest.raises(OutputError):
        draw(results, tmp_path / "mine")
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]


def test_specs_name_their_keys_and_actadd_needs_its_own_directory(results):
    for registry in (FIGURES, ACTADD_FIGURES):
        for name, spec in registry.items():
            assert spec.name == name and spec.reads and spec.files and spec.summary
    with pytest.raises(ValueError, match="caa-lens actadd"):
        draw_actadd(results)
