"""Open-ended steering: mixed-cell batches decode as each cell alone, effects pair the same prompts,
and a planted effect is recovered above its null while a random push stays inside it."""

import numpy as np
import pandas as pd
import pytest
import torch

from caa_lens.generation import generate
from caa_lens.ood import OODPrompt
from caa_lens.open_ended import (
    GENERATION_TABLE_COLUMNS,
    GenerationSettings,
    examples,
    open_ended_effects,
    steered_generations,
)
from caa_lens.provenance import make_provenance
from caa_lens.scorers import WordRateScorer, score_generations
from caa_lens.steering import Injection
from caa_lens.vectors import SteeringVector

PROMPTS = ["Is it sunny?", "Tell me about the sea.", "What is a cat?", "Hello there, friend.", "Why?"]


def vector_for(model, directions: dict[int, torch.Tensor]) -> SteeringVector:
    provenance = make_provenance(model, "resid_post", "answer", "test", "test", "0", 1, torch.float32)
    layers = tuple(sorted(directions))
    return SteeringVector(torch.stack([directions[layer] for layer in layers]), layers, provenance)


def random_vector(model, seed: int = 0, scale: float = 1.0) -> SteeringVector:
    generator = torch.Generator().manual_seed(seed)
    d = model.cfg.d_model
    return vector_for(model, {layer: scale * torch.randn(d, generator=generator) for layer in (1, 2)})


def test_mixed_cell_batches_decode_as_each_cell_alone(tiny):
    vector = random_vector(tiny, scale=3.0)
    settings = GenerationSettings(max_new_tokens=5, batch_size=7)
    table = steered_generations(tiny, PROMPTS, vector, [1, 2], [-2.0, 2.0], settings=settings, progress=False)
    for (layer, multiplier), cell in table.groupby(["layer", "multiplier"]):
        injections = [Injection(vector, int(layer), float(multiplier))] if multiplier else []
        alone = generate(tiny, PROMPTS, injections, max_new_tokens=5)
        got = cell.sort_values("prompt_index").completion_ids.map(tuple).tolist()
        assert got == list(alone.token_ids), (layer, multiplier)


def test_table_layout_controls_and_shared_baseline(tiny):
    vector = random_vector(tiny)
    table = steered_generations(
        tiny, PROMPTS[:3], vector, [1], [1.5], name="v", controls=2, control_seed=5,
        settings=GenerationSettings(max_new_tokens=3), progress=False,
    )  # fmt: skip
    assert tuple(table.columns) == GENERATION_TABLE_COLUMNS
    assert sorted(set(table.vector)) == ["random:v:5", "random:v:6", "v"]
    assert len(table) == 3 * 2 * 3  # vectors x multipliers (0 and 1.5) x prompts
    baselines = table[table.multiplier == 0].groupby("vector").completion.apply(tuple)
    assert baselines.nunique() == 1  # one unsteered run, paired with every vector


def test_sampling_gives_several_completions_per_prompt_reproducibly(tiny):
    vector = random_vector(tiny)
    settings = GenerationSettings(max_new_tokens=4, temperature=1.0, samples=3, seed=2)
    first = steered_generations(tiny, PROMPTS[:2], vector, [1], [1.0], settings=settings, progress=False)
    again = steered_generations(tiny, PROMPTS[:2], vector, [1], [1.0], settings=settings, progress=False)
    assert sorted(set(first["sample"])) == [0, 1, 2]
    assert first.completion.tolist() == again.completion.tolist()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"layers": [7]}, "layer"),
        ({"layers": [3]}, "no direction at layers \\[3\\]"),
        ({"multipliers": [float("nan")]}, "finite"),
        ({"mode": "middle"}, "unknown steering mode"),
        ({"prompts": []}, "no prompts"),
    ],
)
def test_bad_arguments_fail_before_generating(tiny, change, message):
    arguments = {"prompts": PROMPTS[:1], "layers": [1], "multipliers": [1.0], "mode": "from_start"}
    arguments |= change
    with pytest.raises(ValueError, match=message):
        steered_generations(
            tiny, arguments["prompts"], random_vector(tiny), arguments["layers"], arguments["multipliers"],
            mode=arguments["mode"], progress=False,
        )  # fmt: skip


def test_a_prompt_too_long_is_named_by_its_id(tiny):
    prompts = [OODPrompt("short", "Hi", "file.json"), OODPrompt("long-one", "word " * 400, "file.json")]
    with pytest.raises(ValueError, match=r"file\.json: item with id 'long-one'"):
        steered_generations(tiny, prompts, random_vector(tiny), [1], [1.0], progress=False)


def test_generation_settings_refuse_greedy_samples():
    with pytest.raises(ValueError, match="greedy"):
        GenerationSettings(samples=2)


def synthetic(effect: float, controls: dict[str, float], n: int = 40, seed: int = 0) -> pd.DataFrame:
    """Scores with a planted per-prompt effect for ``v`` and given effects for controls."""
    rng = np.random.default_rng(seed)
    base = rng.normal(0.0, 1.0, n)
    rows = []
    for name, shift in {"v": effect, **controls}.items():
        for i in range(n):
            rows.append({"vector": name, "layer": 3, "multiplier": 0.0, "prompt_index": i, "score": base[i]})
            noisy = base[i] + shift + rng.normal(0, 0.1)
            rows.append({"vector": name, "layer": 3, "multiplier": 4.0, "prompt_index": i, "score": noisy})
    return pd.DataFrame(rows)


def test_planted_effect_is_recovered_with_its_interval_and_null():
    controls = {f"random:v:{s}": shift for s, shift in enumerate((-0.05, 0.0, 0.04, 0.02))}
    effects = open_ended_effects(synthetic(0.5, controls), ["score"], n_resamples=2000)
    (row,) = effects.itertuples()
    assert row.effect_low < 0.5 < row.effect_high
    assert row.n_prompts == 40 and row.n_null == 4
    assert row.vs_null == "above null"


def test_an_effect_the_size_of_random_pushes_is_inside_the_null():
    controls = {f"random:v:{s}": shift for s, shift in enumerate((-0.3, 0.2, 0.3, -0.2))}
    (row,) = open_ended_effects(synthetic(0.1, controls), ["score"], n_resamples=2000).itertuples()
    assert row.vs_null == "inside null"


def test_effects_refuse_unpaired_prompts():
    frame = synthetic(0.2, {})
    frame = frame[~((frame.multiplier == 4.0) & (frame.prompt_index == 0))]
    with pytest.raises(ValueError, match="prompts differ from the unsteered"):
        open_ended_effects(frame, ["score"], n_resamples=100)


def test_planted_token_steering_is_measured_end_to_end(tiny):
    """Steering along the unembedding of ' the' at the last block makes completions mostly ' the':
    the topic rate's effect is near its planted size and above the same-norm random null."""
    last = tiny.cfg.n_layers - 1
    (token,) = tiny.tokenizer.encode(" the", add_special_tokens=False)
    direction = tiny.W_U[:, token].detach().clone()
    vector = vector_for(tiny, {last: 40 * direction / direction.norm()})
    prompts = [f"Question number {i}: what is {i} plus {i}?" for i in range(12)]
    table = steered_generations(
        tiny, prompts, vector, [last], [1.0], controls=3, settings=GenerationSettings(max_new_tokens=6),
        progress=False,
    )  # fmt: skip
    scored = score_generations(table, [WordRateScorer("the", ("the",))])
    effects = open_ended_effects(scored, ["the_rate"], n_resamples=2000)
    (row,) = effects.itertuples()
    assert row.steered > 0.9 and row.unsteered < 0.2
    assert row.vs_null == "above null"
    shown = examples(table, "steer", last, 1.0, count=2)
    assert shown.steered.str.count("the").min() >= 4
