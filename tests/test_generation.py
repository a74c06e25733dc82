"""caa_lens.generation on the tiny random model: cached = uncached, batched = unbatched, reproducible."""

import dataclasses

import pytest
import torch

from caa_lens.generation import GenerationResult, end_token_ids, generate, next_tokens
from caa_lens.prompts import format_prompt
from caa_lens.provenance import make_provenance
from caa_lens.residuals import multiplier_for_ratio, residual_norm
from caa_lens.steering import Injection, steering
from caa_lens.vectors import SteeringVector

QUESTIONS = ("Is it sunny?", "What is the best way to learn a new language? Practice", "Hi")
PREFIXES = ("(", "I think the", "")
REFERENCE = ["The capital of France is Paris. The quick brown fox jumps over the lazy dog."]


def make_vector(model, layers=(0, 1, 2, 3), site="resid_post", positions=None, seed=0):
    generator = torch.Generator().manual_seed(seed)
    shape = (len(layers), *(() if positions is None else (positions,)), model.cfg.d_model)
    provenance = make_provenance(model, site, "test", "random", "test", "0", 1, torch.float32)
    return SteeringVector(torch.randn(shape, generator=generator), tuple(layers), provenance)


def prompts(model):
    """Prompts of different lengths; with an assistant prefix ``steer_start`` comes before ``last``."""
    return [format_prompt(model.tokenizer, q, prefix) for q, prefix in zip(QUESTIONS, PREFIXES, strict=True)]


def injection(model, mode="from_start", layer=2, ratio=None, seed=0):
    """A steering injection strong enough to change greedy tokens but not to collapse them."""
    ratio = ratio if ratio is not None else (2.0 if mode == "front" else 0.5)
    site = "resid_pre" if mode == "front" else "resid_post"
    vector = make_vector(model, site=site, positions=3 if mode == "front" else None, seed=seed)
    m = multiplier_for_ratio(vector, layer, ratio, residual_norm(model, layer, REFERENCE, site=site))
    return Injection(vector, layer, m, mode)


def assert_no_hooks(model):
    assert all(not point.fwd_hooks for point in model.hook_dict.values())
    assert not model.original_model._forward_pre_hooks


@pytest.mark.parametrize("mode", ["from_start", "front", "last", "all"])
def test_cached_and_uncached_greedy_generation_steer_identically(tiny, mode):
    steer, batch = injection(tiny, mode), prompts(tiny)
    assert batch[0].steer_start < batch[0].last and len({len(p) for p in batch}) == 3
    cached = generate(tiny, batch, steer, max_new_tokens=12, stop_at_eos=False)
    uncached = generate(tiny, batch, steer, max_new_tokens=12, stop_at_eos=False, use_cache=False)
    plain = generate(tiny, batch, max_new_tokens=12, stop_at_eos=False)
    assert cached.token_ids == uncached.token_ids
    assert cached.token_ids != plain.token_ids, "the test vector should change the greedy tokens"
    assert_no_hooks(tiny)


def test_batched_generation_equals_unbatched_per_row(tiny):
    steer = [injection(tiny), injection(tiny, "last", layer=1, ratio=-0.5, seed=1), injection(tiny, "front")]
    batched = generate(tiny, prompts(tiny), steer, max_new_tokens=12, stop_at_eos=False)
    for row, prompt in enumerate(prompts(tiny)):
        single = generate(tiny, [prompt], steer, max_new_tokens=12, stop_at_eos=False)
        assert single.token_ids[0] == batched.token_ids[row]
        assert single.texts[0] == batched.texts[row]


def test_steering_is_driver_independent(tiny):
    """The bridge's own generate loop (which passes the cache, not positions) is steered the same way."""
    prompt, steer = prompts(tiny)[1], injection(tiny)
    ours = generate(tiny, [prompt], steer, max_new_tokens=8, stop_at_eos=False)
    with steering(tiny, steer, start=prompt.steer_start):
        theirs = tiny.generate(
            torch.tensor([prompt.token_ids]),
            max_new_tokens=8,
            do_sample=False,
            stop_at_eos=False,
            verbose=False,
        )
    assert tuple(theirs[0, len(prompt) :].tolist()) == ours.token_ids[0]
    assert_no_hooks(tiny)


def test_per_row_multipliers_and_rows_that_stop_at_eos(tiny):
    """A row pushed to EOS stops (and is padded) without changing the rows that keep going."""
    eos = tiny.tokenizer.eos_token_id
    last = tiny.cfg.n_layers - 1
    towards_eos = make_vector(tiny, layers=(last,))
    towards_eos = dataclasses.replace(
        towards_eos, directions=tiny.original_model.lm_head.weight[eos][None].detach()
    )
    push = Injection(towards_eos, last, torch.tensor([0.0, 1000.0, 0.0]), "all")
    result = generate(tiny, list(QUESTIONS), push, max_new_tokens=10)
    assert result.token_ids[1] == (eos,) and result.texts[1] == ""
    for row in (0, 2):
        alone = generate(tiny, [QUESTIONS[row]], max_new_tokens=10)
        assert result.token_ids[row] == alone.token_ids[0]
        assert eos not in result.token_ids[row][:-1]


def test_seeded_sampling_is_reproducible(tiny):
    steer = injection(tiny)

    def sample(seed, top_p=None):
        options = dict(max_new_tokens=8, temperature=1.0, top_p=top_p, seed=seed, stop_at_eos=False)
        return generate(tiny, list(QUESTIONS), steer, **options).token_ids

    first = sample(0)
    assert sample(0) == first
    assert sample(0, top_p=0.9) == sample(0, top_p=0.9)
    assert sample(1) != first


def test_top_p_keeps_the_smallest_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    generator = torch.Generator().manual_seed(0)
    draws = {int(next_tokens(logits, 1.0, 0.7, generator)) for _ in range(200)}
    assert draws == {0, 1}
    assert int(next_tokens(logits, 0.0, None, None)) == 0


def test_strings_are_formatted_with_the_chat_template(tiny):
    result = generate(tiny, [QUESTIONS[0]], max_new_tokens=0)
    assert isinstance(result, GenerationResult)
    assert result.prompt_token_ids == (format_prompt(tiny.tokenizer, QUESTIONS[0]).token_ids,)
    assert result.token_ids == ((),) and result.texts == ("",)
    assert end_token_ids(tiny) == (tiny.tokenizer.eos_token_id,)


def test_invalid_generation_arguments_are_refused(tiny):
    with pytest.raises(ValueError, match="temperature"):
        generate(tiny, ["Hi"], temperature=-1.0)
    with pytest.raises(ValueError, match="top_p"):
        generate(tiny, ["Hi"], temperature=1.0, top_p=0.0)
    with pytest.raises(ValueError, match="no prompts"):
        generate(tiny, [])
    sweep = dataclasses.replace(injection(tiny), multiplier=torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match="2 entries for 3 prompts"):
        generate(tiny, list(QUESTIONS), sweep)
    too_long = Injection(make_vector(tiny, site="resid_pre", positions=40), 1, 1.0, "front")
    with pytest.raises(ValueError, match="covers 40 positions"):
        generate(tiny, list(QUESTIONS), too_long)
    # The window starts at the user's first token, not at column 0: a vector as long as the whole
    # prompt would steer past its end (into generated tokens), and is refused.
    prompt = format_prompt(tiny.tokenizer, QUESTIONS[1])
    fits = len(prompt) - prompt.user_start
    for width, ok in ((fits, True), (fits + 1, False)):
        front = Injection(make_vector(tiny, site="resid_pre", positions=width), 1, 1.0, "front")
        if ok:
            generate(tiny, [prompt], front, max_new_tokens=1)
        else:
            with pytest.raises(ValueError, match=r"from the first token of the user's text, past the end"):
                generate(tiny, [prompt], front, max_new_tokens=1)
    assert_no_hooks(tiny)


def test_overflowing_multipliers_are_refused_before_any_pass(tiny, monkeypatch):
    vector = make_vector(tiny)
    calls = []
    monkeypatch.setattr(tiny, "forward", lambda *a, **k: calls.append(a))
    # 1e38 * |v| (about 8) overflows float32: every logit NaN, and argmax decodes token 0 forever.
    with pytest.raises(ValueError, match=r"\[1e\+38\] times the norm .* float32"):
        generate(tiny, ["Hi"], Injection(vector, 1, 1e38), max_new_tokens=2)
    per_row = Injection(vector, 1, torch.tensor([0.0, 3e38]))
    with pytest.raises(ValueError, match="float32"):
        generate(tiny, ["Hi", "Rain?"], per_row, max_new_tokens=2)
    assert not calls
    monkeypatch.undo()
    repeated = Injection(vector, 1, torch.tensor([2.0, 2.0]))  # per-row multipliers may repeat
    assert len(generate(tiny, ["Hi", "Rain?"], repeated, max_new_tokens=1).texts) == 2
