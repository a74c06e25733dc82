"""analysis.plots.sweep: effects against layer and multiplier, with intervals, null bands and notes."""

import matplotlib

matplotlib.use("Agg")

import pandas as pd

from analysis.plots.sweep import plot_sweep_layers, plot_sweep_multipliers, sweep_effects_view


def _effects(with_null: bool) -> pd.DataFrame:
    rows = []
    for vector in ("a", "b", "random:a:0"):
        for layer in (1, 2):
            for multiplier in (-4.0, 0.0, 4.0):
                effect = 0.05 * multiplier * layer
                rows.append(
                    {
                        "vector": vector,
                        "layer": layer,
                        "multiplier": multiplier,
                        "effect": effect,
                        "effect_low": effect - 0.05,
                        "effect_high": effect + 0.05,
                        "null_low": -0.1 if with_null else float("nan"),
                        "null_high": 0.1 if with_null else float("nan"),
                        "vs_null": "inside null" if abs(effect) < 0.1 else "above null",
                    }
                )
    return pd.DataFrame(rows)


def test_controls_are_dropped_and_what_is_lacking_is_said():
    rows, notes = sweep_effects_view(_effects(with_null=True))
    assert set(rows.vector) == {"a", "b"} and notes == []
    _, notes = sweep_effects_view(_effects(with_null=False))
    assert notes == ["no null band (no random controls)"]
    means = _effects(True).drop(columns=["effect", "effect_low", "effect_high"]).assign(p_matching=0.5)
    rows, notes = sweep_effects_view(means)
    assert notes[0] == "difference of means, no intervals" and (rows.effect == 0).all()


def test_both_figures_draw_one_panel_per_behaviour_or_one_line_each():
    by_layer = plot_sweep_layers(_effects(with_null=True), "effects on held-out items")
    assert len(by_layer.axes) == 2 and [ax.get_title() for ax in by_layer.axes] == ["a", "b"]
    by_multiplier = plot_sweep_multipliers(_effects(with_null=False), 2)
    assert by_multiplier.axes[0].get_title() == "steering at layer 2"
    assert "no null band" in by_multiplier._suptitle.get_text()  # type: ignore[union-attr]
