"""Hardening: clear errors for bad input, no state left on the model, bit-identical reruns."""

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from analysis.cli import app
from caa_lens.data import ContrastiveDataset, make_item
from caa_lens.extraction import extract_contrastive
from caa_lens.generation import generate
from caa_lens.methods import caa_vector
from caa_lens.prompts import format_prompt
from caa_lens.provenance import make_provenance
from caa_lens.steering import Injection, steering
from caa_lens.vectors import SteeringVector

QUESTION = "Is the sea calm today?\n\nChoices:\n (A) Yes, very calm.\n (B) No, it is rough."


def dataset(n: int = 4) -> ContrastiveDataset:
    items = tuple(
        make_item(f"{i}. {QUESTION}", *(("(A)", "(B)") if i % 2 else ("(B)", "(A)"))) for i in range(n)
    )
    return ContrastiveDataset("hardening", items)


def logits_of(model) -> torch.Tensor:
    ids = torch.tensor([format_prompt(model.tokenizer, "A fixed probe prompt.").token_ids])
    with torch.inference_mode():
        return model(ids).clone()


def vector_for(model, values: torch.Tensor) -> SteeringVector:
    provenance = make_provenance(model, "resid_post", "answer", "test", "t", "0", 1, torch.float32)
    return SteeringVector(values.reshape(1, -1), (1,), provenance)


def no_hooks_left(model) -> bool:
    return all(not hook._forward_hooks and not hook._forward_pre_hooks for hook in model.hook_dict.values())


def test_model_outputs_bit_identical_after_every_kind_of_call(tiny):
    before = logits_of(tiny)
    vector = caa_vector(tiny, dataset(), progress=False)
    extract_contrastive(tiny, dataset(), keep_examples=True, progress=False)
    prompt = format_prompt(tiny.tokenizer, "Tell me about the sea.")
    generate(tiny, [prompt], [Injection(vector, layer=2, multiplier=3.0)], max_new_tokens=4)
    with pytest.raises(RuntimeError, match="boom"), steering(tiny, [Injection(vector, 1, 2.0)], start=0):
        raise RuntimeError("boom")
    with pytest.raises(KeyboardInterrupt), steering(tiny, [Injection(vector, 1, 2.0)], start=0):
        raise KeyboardInterrupt
    assert torch.equal(logits_of(tiny), before)
    assert no_hooks_left(tiny)


def test_prompt_longer_than_context_is_refused(tiny):
    long_item = make_item("word " * 700 + "\n (A) x\n (B) y", "(A)", "(B)")
    with pytest.raises(ValueError, match=r"long\.json: item 0: \d+ tokens exceed the model's context of 512"):
        extract_contrastive(tiny, ContrastiveDataset("long", (long_item,), "long.json"), progress=False)
    with pytest.raises(ValueError, match="prompt 0 plus 600 new tokens"):
        generate(tiny, ["hi"], max_new_tokens=600)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.floats(allow_nan=True, allow_infinity=True))
def test_any_multiplier_is_accepted_or_refused_clearly(tiny, multiplier):
    vector = vector_for(tiny, torch.ones(64))
    if math.isfinite(multiplier):
        Injection(vector, 1, multiplier)
    else:
        with pytest.raises(ValueError, match="finite"):
            Injection(vector, 1, multiplier)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.sampled_from([0.0, 1.0, -2.5, math.nan, math.inf, -math.inf]), min_size=64, max_size=64))
def test_non_finite_vectors_are_refused(tiny, values):
    tensor = torch.tensor(values)
    if torch.isfinite(tensor).all():
        assert vector_for(tiny, tensor).layers == (1,)
    else:
        with pytest.raises(ValueError, match="NaN or infinite values at layers"):
            vector_for(tiny, tensor)


def test_zero_vector_cannot_be_normalised(tiny):
    with pytest.raises(ValueError, match="zero-norm"):
        vector_for(tiny, torch.zeros(64)).normalized()


def test_cli_vectors_are_bit_identical_across_runs(tmp_path):
    from caa_lens.tiny import tiny_hf_model

    hf_model, tokenizer = tiny_hf_model()
    hf_model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    runner = CliRunner()
    outputs = []
    for run in range(2):
        out = tmp_path / f"run{run}" / "optimism.safetensors"
        args = ["vectors", "optimism", "--out", str(out), "--model", str(tmp_path / "model"), "--limit", "6"]
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        outputs.append(out.read_bytes())
    assert outputs[0] == outputs[1]
