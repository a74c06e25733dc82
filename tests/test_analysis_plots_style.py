"""analysis.plots.style: one style applied per figure, and the caa_lens PNG marker that makes a
directory a figures directory."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
from helpers.plot_results import small_results

from analysis.plots.similarity import plot_layer_similarity
from analysis.plots.style import finish, is_caa_lens_png, is_figures_dir, save_figure


def test_plots_leave_global_style_alone():
    before = dict(matplotlib.rcParams)
    plot_layer_similarity(small_results()["layer_similarity"])
    assert dict(matplotlib.rcParams) == before


def test_saved_figures_carry_the_marker_and_plain_saves_do_not(tmp_path):
    figure, _ = plt.subplots()
    marked = save_figure(figure, tmp_path / "figures" / "one.png")
    assert is_caa_lens_png(marked) and is_figures_dir(tmp_path / "figures")
    figure, _ = plt.subplots()
    plain = tmp_path / "plain" / "two.png"
    finish(figure, plain)
    assert plain.stat().st_size > 100 and not is_caa_lens_png(plain)
    assert not is_figures_dir(tmp_path / "plain")


def test_a_figures_directory_holds_nothing_but_marked_pngs(tmp_path):
    assert is_figures_dir(tmp_path)  # empty
    figure, _ = plt.subplots()
    save_figure(figure, tmp_path / "a.png")
    (tmp_path / "notes.txt").write_text("mine")
    assert not is_figures_dir(tmp_path)
    (tmp_path / "notes.txt").unlink()
    (tmp_path / "fake.png").write_bytes(b"not a png")
    assert not is_caa_lens_png(tmp_path / "fake.png") and not is_figures_dir(tmp_path)
