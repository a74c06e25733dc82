"""Sweeps: prefix reuse equals full recompute, and the results file resumes, shards and merges safely."""

import pytest
import torch
from helpers.sweep_setting import LAYERS, MULTIPLIERS, mixed_setting, sweep

from caa_lens.evaluation import behaviour_probabilities, item_hash, label_scores, scoring_prompts
from caa_lens.steering import Injection, steering
from caa_lens.sweep import run_sweep
from caa_lens.sweep_effects import summarize
from caa_lens.sweep_io import load_results
from caa_lens.sweep_shards import parse_shard


@pytest.fixture(scope="module")
def setting(tiny):
    return mixed_setting(tiny)


def full_recompute(model, dataset, vector, layer, multiplier, split):
    """The reference: one unbatched full forward pass per item and cell, steered from its start."""
    results = []
    for prompt in scoring_prompts(model.tokenizer, dataset):
        start = prompt.prompt.steer_start if split == "from_start" else prompt.prompt.last
        with torch.inference_mode(), steering(model, Injection(vector, layer, multiplier), start=start):
            logits = model(torch.tensor([prompt.prompt.token_ids]))
        results.append(label_scores(logits[:, -1], [prompt])[0])
    return torch.stack(results)


@pytest.mark.parametrize("split", ["from_start", "last"])
def test_sweep_equals_full_recompute_per_cell(tiny, setting, tmp_path, split):
    dataset, vectors = setting
    sweep(tiny, setting, tmp_path / "r.jsonl", batch_size=4, split=split)
    table = load_results(tmp_path / "r.jsonl")
    assert len(table) == len(dataset) * len(LAYERS) * len(MULTIPLIERS) * len(vectors)
    assert list(table.item_hash[: len(dataset)]) == [item_hash(item) for item in dataset]
    for name, vector in vectors.items():
        for layer in (LAYERS[0], LAYERS[-1]):
            for m in MULTIPLIERS:
                cell = table[(table.vector == name) & (table.layer == layer) & (table.multiplier == m)]
                swept = torch.tensor(cell[["p_matching", "p_letters_sum"]].to_numpy())
                reference = full_recompute(tiny, dataset, vector, layer, m, split)
                assert (swept - reference).abs().max() < 1e-4


def test_multiplier_zero_equals_unsteered(tiny, setting, tmp_path):
    dataset, _ = setting
    sweep(tiny, setting, tmp_path / "r.jsonl", batch_size=3)
    table = load_results(tmp_path / "r.jsonl")
    plain = behaviour_probabilities(tiny, dataset, progress=False).to_frame()
    zero = table[table.multiplier == 0.0]
    for (_, _), group in zero.groupby(["vector", "layer"]):
        merged = group.merge(plain, left_on="item_index", right_on="index", suffixes=("", "_plain"))
        assert (merged.p_matching - merged.p_matching_plain).abs().max() < 1e-6


def test_steering_moves_the_probability(tiny, setting, tmp_path):
    sweep(tiny, setting, tmp_path / "r.jsonl")
    summary = summarize(load_results(tmp_path / "r.jsonl"))
    spread = summary.groupby(["vector", "layer"]).p_matching.agg(lambda s: s.max() - s.min())
    assert (spread > 1e-4).all()
    assert set(summary.columns) >= {"vector", "layer", "multiplier", "p_matching", "sem", "n_items"}
    assert (summary.n_items == len(setting[0])).all()


def test_rerun_computes_nothing_and_changes_nothing(tiny, setting, tmp_path):
    path = tmp_path / "r.jsonl"
    first = sweep(tiny, setting, path)
    content = path.read_bytes()
    again = sweep(tiny, setting, path)
    assert first.units_computed == first.units_total == len(setting[0]) * len(LAYERS)
    assert (again.units_computed, again.rows_written) == (0, 0)
    assert path.read_bytes() == content


def test_bad_arguments(tiny, setting, tmp_path):
    dataset, vectors = setting
    with pytest.raises(ValueError, match="distinct"):
        run_sweep(tiny, dataset, vectors, LAYERS, (1.0, 1.0), tmp_path / "a.jsonl")
    with pytest.raises(ValueError, match="lack directions"):
        run_sweep(tiny, dataset, {"x": vectors["first"].select((0, 1))}, (2,), (1.0,), tmp_path / "b.jsonl")
    with pytest.raises(ValueError, match="0 <= i < n"):
        parse_shard("3/3")
    assert parse_shard("1/4") == (1, 4)


@pytest.mark.slow
@pytest.mark.shared_data
def test_default_model_sweep_equals_full_recompute(default_model, shared_data, tmp_path):
    from caa_lens.data import load_behaviour_dataset
    from caa_lens.methods import caa_vector

    caa = shared_data / "caa"
    pairs = load_behaviour_dataset(caa / "generate" / "refusal" / "generate_dataset.json").select(range(8))
    test = load_behaviour_dataset(caa / "test" / "refusal" / "test_dataset_ab.json").select(range(3))
    vector = caa_vector(default_model, pairs, layers=[8, 14], progress=False)
    multipliers = (-8.0, 0.0, 8.0)
    run_sweep(
        default_model, test, {"refusal": vector}, (8, 14), multipliers, tmp_path / "r.jsonl", progress=False
    )
    table = load_results(tmp_path / "r.jsonl")
    for layer in (8, 14):
        for m in multipliers:
            cell = table[(table.layer == layer) & (table.multiplier == m)]
            swept = torch.tensor(cell[["p_matching", "p_letters_sum"]].to_numpy())
            reference = full_recompute(default_model, test, vector, layer, m, "from_start")
            assert (swept - reference).abs().max() < 1e-4
    unsteered = table[table.multiplier == 0.0]
    assert (unsteered.p_letters_sum > 0.5).all()  # unsteered, the model answers with a letter after "("
