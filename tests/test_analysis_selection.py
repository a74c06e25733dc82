"""Selection apart from report: disjoint seeded splits, layer picks made on selection items only, and
headline effects computed on report items only (a planted effect is recovered; selection noise is not)."""

import numpy as np
import pandas as pd
import pytest

from analysis.selection import SelectionSplit, pick_layer, report_effects, split_for_selection
from caa_lens.data import ContrastiveDataset, make_item

Q = "Sunny?\n\nChoices:\n (A) yes\n (B) no"


def _dataset(n: int) -> ContrastiveDataset:
    items = tuple(
        make_item(f"{Q} {k}", "(A)" if k % 2 else "(B)", "(B)" if k % 2 else "(A)") for k in range(n)
    )
    return ContrastiveDataset("toy", items)


def test_split_is_disjoint_complete_seeded_and_recorded():
    data = _dataset(40)
    split = split_for_selection(data, seed=3)
    assert sorted(split.selection + split.report) == list(range(40))
    assert split == split_for_selection(data, seed=3)
    assert split.digest != split_for_selection(data, seed=4).digest
    assert split.record()["n_selection"] == 20 and split.record()["seed"] == 3


def test_split_refuses_overlap_and_empty_parts():
    with pytest.raises(ValueError, match="overlap"):
        SelectionSplit("x", 0, (0, 1), (1, 2))
    with pytest.raises(ValueError, match="cannot be split"):
        split_for_selection(_dataset(1))


def _results(effect_by_layer: dict[int, float], n_items: int, noise: float, seed: int) -> pd.DataFrame:
    """A sweep table with a planted per-item effect: p = 0.5 + effect * m / 4 + item noise."""
    rng = np.random.default_rng(seed)
    base = rng.normal(0.5, 0.05, n_items)
    rows = []
    for layer, effect in effect_by_layer.items():
        for m in (-4.0, 0.0, 4.0):
            jitter = rng.normal(0, noise, n_items) if m else np.zeros(n_items)
            for item in range(n_items):
                rows.append(
                    {
                        "vector": "v",
                        "layer": layer,
                        "multiplier": m,
                        "item_index": item,
                        "item_hash": f"h{item}",
                        "matching_label": "A" if item % 2 else "B",
                        "p_matching": float(base[item] + effect * m / 4 + jitter[item]),
                    }
                )
    return pd.DataFrame(rows)


def test_pick_uses_only_selection_items():
    """Item effects that differ between the halves: the pick follows the selection half."""
    data = _dataset(40)
    split = split_for_selection(data, seed=0)
    results = _results({1: 0.0, 2: 0.0}, 40, 0.0, seed=0)
    selection = results["item_index"].isin(split.selection)
    # Layer 1 moves only the selection items, layer 2 only the report items.
    steered = results["multiplier"] != 0
    results.loc[steered & selection & (results.layer == 1), "p_matching"] += 0.1 * results["multiplier"] / 4
    results.loc[steered & ~selection & (results.layer == 2), "p_matching"] += 0.1 * results["multiplier"] / 4
    pick = pick_layer(results, split, "v")
    assert pick.layer == 1
    assert pick.selection_effect == pytest.approx(0.2, abs=1e-9)


def test_report_effects_recover_a_planted_effect_on_report_items_only():
    data = _dataset(60)
    split = split_for_selection(data, seed=1)
    results = _results({1: 0.08}, 60, 0.02, seed=1)
    table = report_effects(results, split)
    cell = table[(table.layer == 1) & (table.multiplier == 4.0)].iloc[0]
    assert cell.n_items == len(split.report)
    assert cell.effect_low <= 0.08 <= cell.effect_high
    assert (table["split"] == "report").all()


def test_picking_the_best_of_noisy_layers_is_optimistic_in_sample_but_not_on_report_items():
    """Ten layers with no effect: the winner's in-sample effect is biased up, its report effect is not."""
    data = _dataset(40)
    in_sample, held_out = [], []
    for seed in range(20):
        split = split_for_selection(data, seed=seed)
        results = _results(dict.fromkeys(range(10), 0.0), 40, 0.05, seed=seed)
        pick = pick_layer(results, split, "v")
        in_sample.append(pick.selection_effect)
        table = report_effects(results, split)
        plus = table[(table.layer == pick.layer) & (table.multiplier == 4.0)].effect.iloc[0]
        minus = table[(table.layer == pick.layer) & (table.multiplier == -4.0)].effect.iloc[0]
        held_out.append(plus - minus)
    assert np.mean(in_sample) > 0.02  # the winner of ten noisy cells looks like an effect
    assert abs(np.mean(held_out)) < 0.01  # on items it was not picked on, it is noise
