"""Invariants of caa_lens.steering on the tiny random model."""

import dataclasses
import math

import pytest
import torch

from caa_lens.data import PromptPair
from caa_lens.hooks import hook_name
from caa_lens.methods import actadd_vector
from caa_lens.prompts import FormattedPrompt, format_prompt, left_pad, pad_token_id
from caa_lens.provenance import VectorMismatchError, make_provenance
from caa_lens.steering import Injection, front_rows, steer_start_columns, steering
from caa_lens.tiny import tiny_tokenizer
from caa_lens.vectors import SteeringVector

QUESTIONS = ("Is it sunny?", "What is the best way to learn a new language?", "Hi")


def make_vector(model, layers=(0, 1, 2, 3), site="resid_post", positions=None, seed=0, width=None):
    """A random steering vector with norm about 1 per layer (per position for ActAdd)."""
    generator = torch.Generator().manual_seed(seed)
    width = width or model.cfg.d_model
    shape = (len(layers), *(() if positions is None else (positions,)), width)
    directions = torch.randn(shape, generator=generator) / math.sqrt(width)
    provenance = make_provenance(model, site, "test", "random", "test", "0", 1, torch.float32)
    if width != model.cfg.d_model:
        provenance = dataclasses.replace(provenance, d_model=width)
    return SteeringVector(directions, tuple(layers), provenance)


def batch(model, questions=QUESTIONS):
    prompts = [format_prompt(model.tokenizer, q) for q in questions]
    ids, mask, offsets = left_pad([p.token_ids for p in prompts], pad_token_id(model.tokenizer))
    return prompts, ids, mask, offsets


def logits_of(model, ids, mask=None):
    with torch.inference_mode():
        return model(ids, attention_mask=mask)


def residual(model, ids, layer, site="resid_post", mask=None):
    name = hook_name(model, layer, site)
    with torch.inference_mode():
        _, cache = model.run_with_cache(ids, attention_mask=mask, names_filter=[name])
    return cache[name]


def assert_no_hooks(model):
    assert all(not point.fwd_hooks and not point._forward_hooks for point in model.hook_dict.values())
    assert not model.original_model._forward_pre_hooks
    assert not model.original_model._forward_hooks


def test_zero_multiplier_and_zero_vector_change_no_logit(tiny):
    _, ids, mask, offsets = batch(tiny)
    before = logits_of(tiny, ids, mask)
    vector = make_vector(tiny)
    zero = SteeringVector(torch.zeros_like(vector.directions), vector.layers, vector.provenance)
    for mode in ("from_start", "all", "last"):
        injections = [Injection(vector, 1, 0.0, mode), Injection(zero, 2, 5.0, mode)]
        with steering(tiny, injections, start=offsets):
            assert torch.equal(logits_of(tiny, ids, mask), before)
    assert_no_hooks(tiny)


@pytest.mark.parametrize("exit_by", ["normal", "exception", "keyboard_interrupt"])
def test_context_restores_model_on_every_exit(tiny, exit_by):
    _, ids, mask, offsets = batch(tiny)
    before = logits_of(tiny, ids, mask)
    error = {"normal": None, "exception": ValueError, "keyboard_interrupt": KeyboardInterrupt}[exit_by]
    try:
        with steering(tiny, Injection(make_vector(tiny), 1, 3.0), start=offsets):
            assert not torch.allclose(logits_of(tiny, ids, mask), before)
            if error is not None:
                raise error("leave the context")
    except (ValueError, KeyboardInterrupt) as caught:
        assert error is not None and isinstance(caught, error)
    assert torch.equal(logits_of(tiny, ids, mask), before)
    assert_no_hooks(tiny)


@pytest.mark.parametrize("start", [0, 5, 9])
def test_steering_starts_exactly_at_start(tiny, start):
    ids = torch.tensor([format_prompt(tiny.tokenizer, QUESTIONS[1]).token_ids])
    plain_resid, plain_logits = residual(tiny, ids, 2), logits_of(tiny, ids)
    with steering(tiny, Injection(make_vector(tiny), 2, 2.0), start=start):
        resid, logits = residual(tiny, ids, 2), logits_of(tiny, ids)
    # Causal model: columns before the start see nothing of the steering, from the start all do.
    assert torch.equal(resid[:, :start], plain_resid[:, :start])
    assert torch.equal(logits[:, :start], plain_logits[:, :start])
    assert (resid[0, start:] != plain_resid[0, start:]).all(dim=-1).all()
    assert (logits[0, start:] != plain_logits[0, start:]).any(dim=-1).all()


def test_padded_rows_start_at_their_own_columns(tiny):
    prompts, ids, mask, offsets = batch(tiny)
    starts = steer_start_columns(prompts, offsets)
    assert starts == [o + p.steer_start for p, o in zip(prompts, offsets, strict=True)]
    plain = residual(tiny, ids, 1, mask=mask)
    with steering(tiny, Injection(make_vector(tiny), 1, 2.0), start=starts):
        steered = residual(tiny, ids, 1, mask=mask)
    changed = (steered != plain).any(dim=-1)
    columns = torch.arange(ids.shape[1])
    for row, start in enumerate(starts):
        assert torch.equal(changed[row], columns >= start), f"row {row} should be steered from column {start}"


def test_resid_post_equals_resid_pre_of_next_layer(tiny):
    _, ids, mask, offsets = batch(tiny)
    post = make_vector(tiny, layers=(1,), site="resid_post")
    pre = SteeringVector(post.directions, (2,), dataclasses.replace(post.provenance, site="resid_pre"))
    with steering(tiny, Injection(post, 1, 2.5), start=offsets):
        at_post = logits_of(tiny, ids, mask)
    with steering(tiny, Injection(pre, 2, 2.5, site="resid_pre"), start=offsets):
        at_pre = logits_of(tiny, ids, mask)
    assert torch.equal(at_post, at_pre)  # the same tensor: block L's output is block L+1's input


def capture_around(model, name, run):
    """Residual at hook ``name`` before and after the steering hooks that ``run`` registers."""
    seen = {}
    with model.hooks(fwd_hooks=[(name, lambda x, hook: seen.__setitem__("before", x.clone()))]):
        run(lambda: model.hooks(fwd_hooks=[(name, lambda x, hook: seen.__setitem__("after", x.clone()))]))
    return seen["before"], seen["after"]


def test_added_delta_is_exactly_m_times_v(tiny):
    _, ids, mask, offsets = batch(tiny)
    first, second = make_vector(tiny, seed=1), make_vector(tiny, seed=2)
    name = hook_name(tiny, 2)
    starts = [offset + 2 for offset in offsets]

    def run(capture_after):
        injections = [Injection(first, 2, 1.5), Injection(second, 2, -0.75)]
        with steering(tiny, injections, start=starts), capture_after():
            logits_of(tiny, ids, mask)

    before, after = capture_around(tiny, name, run)
    expected = before + 1.5 * first.at(2) + -0.75 * second.at(2)
    for row, start in enumerate(starts):
        assert torch.equal(after[row, :start], before[row, :start])
        assert torch.equal(after[row, start:], expected[row, start:])


def test_per_row_multipliers_equal_separate_runs(tiny):
    ids = torch.tensor([format_prompt(tiny.tokenizer, QUESTIONS[0]).token_ids] * 3)
    vector, multipliers = make_vector(tiny), torch.tensor([-2.0, 0.0, 3.0])
    with steering(tiny, Injection(vector, 1, multipliers), start=4):
        swept = logits_of(tiny, ids)
    for row, m in enumerate(multipliers.tolist()):
        with steering(tiny, Injection(vector, 1, m), start=4):
            single = logits_of(tiny, ids[row : row + 1])
        torch.testing.assert_close(swept[row], single[0], rtol=0, atol=1e-5)


def test_front_mode_touches_only_first_len_h_positions(tiny):
    prompts, ids, mask, offsets = batch(tiny)
    vector = make_vector(tiny, layers=(1,), site="resid_pre", positions=3)
    name = hook_name(tiny, 1, "resid_pre")
    starts = steer_start_columns(prompts, offsets, "front")
    assert starts == [o + p.user_start for p, o in zip(prompts, offsets, strict=True)]

    def run(capture_after):
        with steering(tiny, Injection(vector, 1, 4.0, "front"), start=starts), capture_after():
            logits_of(tiny, ids, mask)

    before, after = capture_around(tiny, name, run)
    for row, start in enumerate(starts):
        front = slice(start, start + 3)
        assert torch.equal(after[row, front], before[row, front] + 4.0 * vector.at(1))
        assert torch.equal(after[row, :start], before[row, :start])
        assert torch.equal(after[row, start + 3 :], before[row, start + 3 :])


# ActAdd's wedding pair (GUIDE section 6) and a user message that starts with the same words.
WEDDINGS = PromptPair(
    "weddings", "I talk about weddings constantly", "I do not talk about weddings constantly"
)
WEDDING_USER = "I talk about weddings constantly, and then I went up to my friend and said that the weather"
CHATML = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' }}"
    "{% endif %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def wedding_prompt(tiny, template: str, style: str) -> FormattedPrompt:
    tokenizer = tiny_tokenizer()  # the model's vocabulary, with the template under test
    tokenizer.chat_template = {"llama2": tokenizer.chat_template, "chatml": CHATML}[template]
    return format_prompt(tokenizer, WEDDING_USER, style=style)


@pytest.mark.parametrize(("template", "style"), [("llama2", "chat"), ("chatml", "chat"), ("llama2", "plain")])
def test_front_mode_steers_the_users_words_not_the_template(tiny, template, style):
    """ActAdd's rows land on the user's tokens (row 1, the pair's first word, on the user's first
    token; the BOS row dropped), under left padding, and nothing before them: the template header
    and ChatML's default system prompt at column 0 are no longer steered."""
    vector = actadd_vector(tiny, WEDDINGS, layers=(1,))
    rows = front_rows(Injection(vector, 1, 3.0, "front"), tiny.tokenizer)
    assert torch.equal(rows, vector.at(1)[1:])
    width = rows.shape[0]
    prompt = wedding_prompt(tiny, template, style)
    other = format_prompt(tiny.tokenizer, "Hi")  # shorter: the wedding prompt's row is not padded
    ids, mask, offsets = left_pad([other.token_ids, prompt.token_ids], pad_token_id(tiny.tokenizer))
    starts = steer_start_columns([other, prompt], offsets, "front")
    name = hook_name(tiny, 1, "resid_pre")

    def run(capture_after):
        # Only the wedding row is checked; "Hi" is too short for the vector, so it starts past the end.
        injection = Injection(vector, 1, 3.0, "front")
        with steering(tiny, injection, start=[ids.shape[1], starts[1]]), capture_after():
            logits_of(tiny, ids, mask)

    before, after = capture_around(tiny, name, run)
    changed = (after[1] != before[1]).any(dim=-1).nonzero().flatten().tolist()
    user = starts[1]
    assert user == offsets[1] + prompt.user_start > offsets[1]  # not column 0 of the prompt
    assert set(changed) <= set(range(user, user + width)) and changed  # zero rows change nothing
    assert torch.equal(after[1, :user], before[1, :user])  # template header / system prompt untouched
    assert torch.equal(after[1, user + width :], before[1, user + width :])
    torch.testing.assert_close(after[1, user : user + width], before[1, user : user + width] + 3.0 * rows)
    steered_text = tiny.tokenizer.decode(ids[1, user : user + width].tolist())
    assert steered_text.lstrip().startswith(WEDDINGS.positive)
    assert WEDDINGS.positive not in tiny.tokenizer.decode(ids[1, :user].tolist())
    assert (
        tiny.tokenizer.decode(ids[1, offsets[1] : user].tolist())
        .rstrip()
        .endswith(
            {"chat": "[INST]" if template == "llama2" else "<|im_start|>user", "plain": "Input:"}[style]
        )
    )


def test_front_mode_bos_row_choice(tiny):
    """The BOS row is dropped only for an ActAdd vector read with a BOS; other positional vectors keep
    every row. Row 0 of ActAdd is BOS minus BOS: it never carried anything to keep."""
    with_bos = actadd_vector(tiny, WEDDINGS, layers=(1,))
    without_bos = actadd_vector(tiny, WEDDINGS, layers=(1,), prepend_bos=False)
    assert with_bos.at(1).shape[0] == without_bos.at(1).shape[0] + 1
    assert with_bos.at(1)[0].abs().max() < 1e-5
    assert torch.equal(front_rows(Injection(with_bos, 1, mode="front"), tiny.tokenizer), with_bos.at(1)[1:])
    assert torch.equal(front_rows(Injection(without_bos, 1, mode="front"), tiny.tokenizer), without_bos.at(1))
    plain = make_vector(tiny, layers=(1,), site="resid_pre", positions=3)
    assert torch.equal(front_rows(Injection(plain, 1, mode="front"), tiny.tokenizer), plain.at(1))
    single = make_vector(tiny, layers=(1,), site="resid_pre")
    assert front_rows(Injection(single, 1, mode="front"), tiny.tokenizer).shape == (1, tiny.cfg.d_model)


def test_front_mode_refuses_prompts_without_a_located_user_text(tiny):
    unlocated = FormattedPrompt((1, 20, 30), "x", 2, None)
    with pytest.raises(ValueError, match=r"prompts \[0\] have no located user text"):
        steer_start_columns([unlocated], [0], "front")
    assert steer_start_columns([unlocated], [0], "from_start") == [2]


def test_front_mode_under_a_kv_cache_split_inside_the_window(tiny):
    """The prompt pass run in two chunks, split inside the ActAdd window, steers like one pass."""
    from transformers import DynamicCache

    prompt = wedding_prompt(tiny, "chatml", "chat")
    ids = torch.tensor([prompt.token_ids])
    injection = Injection(actadd_vector(tiny, WEDDINGS, layers=(1,)), 1, 3.0, "front")
    split = prompt.user_start + 4
    with steering(tiny, injection, start=prompt.user_start), torch.inference_mode():
        whole = tiny(ids)
        cache = DynamicCache()
        head = tiny(ids[:, :split], past_key_values=cache)
        tail = tiny(ids[:, split:], past_key_values=cache)
    torch.testing.assert_close(torch.cat([head, tail], dim=1), whole, rtol=0, atol=1e-5)
    assert not torch.equal(whole, logits_of(tiny, ids))


@pytest.mark.parametrize(("mode", "start"), [("from_start", 3), ("from_start", 12), ("last", 15), ("all", 0)])
def test_kv_cache_passes_see_absolute_positions(tiny, mode, start):
    """A prompt run in two chunks on a DynamicCache is steered like the same prompt run whole."""
    from transformers import DynamicCache

    ids = torch.tensor([format_prompt(tiny.tokenizer, QUESTIONS[1]).token_ids])
    injections = [
        Injection(make_vector(tiny), 1, 2.0, mode),
        Injection(make_vector(tiny, seed=3), 3, -1.0, mode),
    ]
    with steering(tiny, injections, start=start), torch.inference_mode():
        whole = tiny(ids)
        cache = DynamicCache()
        head = tiny(ids[:, :8], past_key_values=cache)
        tail = tiny(ids[:, 8:], past_key_values=cache)
    torch.testing.assert_close(torch.cat([head, tail], dim=1), whole, rtol=0, atol=1e-5)


def test_nested_contexts_compose_and_unwind(tiny):
    _, ids, mask, offsets = batch(tiny)
    outer, inner = Injection(make_vector(tiny, seed=4), 1, 2.0), Injection(make_vector(tiny, seed=5), 3, -2.0)
    plain = logits_of(tiny, ids, mask)
    with steering(tiny, [outer, inner], start=offsets):
        both = logits_of(tiny, ids, mask)
    with steering(tiny, outer, start=offsets):
        outer_only = logits_of(tiny, ids, mask)
        with steering(tiny, inner, start=offsets):
            assert torch.equal(logits_of(tiny, ids, mask), both)
        assert torch.equal(logits_of(tiny, ids, mask), outer_only)
    assert torch.equal(logits_of(tiny, ids, mask), plain)
    assert_no_hooks(tiny)


def test_generator_closed_early_leaves_no_hooks(tiny):
    _, ids, mask, offsets = batch(tiny)
    plain = logits_of(tiny, ids, mask)

    def steered_runs():
        with steering(tiny, Injection(make_vector(tiny), 2, 3.0), start=offsets):
            for _ in range(3):
                yield logits_of(tiny, ids, mask)

    runs = steered_runs()
    assert not torch.equal(next(runs), plain)
    runs.close()
    assert_no_hooks(tiny)
    assert torch.equal(logits_of(tiny, ids, mask), plain)


def test_hooks_removed_inside_the_context_fail_loudly(tiny):
    _, ids, mask, offsets = batch(tiny)
    with steering(tiny, Injection(make_vector(tiny), 2, 3.0), start=offsets):
        tiny.reset_hooks()
        with pytest.raises(RuntimeError, match="steering hooks were removed"):
            logits_of(tiny, ids, mask)
    assert_no_hooks(tiny)


def test_invalid_injections_are_refused(tiny):
    vector = make_vector(tiny)
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="multiplier must be finite"):
            Injection(vector, 1, bad)
    with pytest.raises(ValueError, match="multipliers must be finite"):
        Injection(vector, 1, torch.tensor([1.0, float("nan")]))
    with pytest.raises(ValueError, match="unknown steering mode"):
        Injection(vector, 1, 1.0, "everywhere")
    with pytest.raises(ValueError, match="only be injected with mode='front'"):
        Injection(make_vector(tiny, positions=2), 1, 1.0, "from_start")
    with pytest.raises(KeyError, match="no direction for layer"):
        Injection(make_vector(tiny, layers=(0,)), 1)


def test_invalid_injections_for_this_model_are_refused(tiny):
    _, ids, mask, offsets = batch(tiny)
    out_of_range = make_vector(tiny, layers=(7,))
    with (
        pytest.raises(ValueError, match="layer 7 is out of range"),
        steering(tiny, Injection(out_of_range, 7), start=0),
    ):
        pass
    narrow = make_vector(tiny, layers=(1,), width=32)
    with (
        pytest.raises(VectorMismatchError, match="width d_model=32"),
        steering(tiny, Injection(narrow, 1), start=0),
    ):
        pass
    post = make_vector(tiny, layers=(1,))
    wrong_site = Injection(post, 1, site="resid_pre")
    with pytest.raises(VectorMismatchError, match="hook site"), steering(tiny, wrong_site, start=0):
        pass
    with steering(tiny, Injection(post, 1, site="resid_pre", allow_mismatch=True), start=offsets):
        logits_of(tiny, ids, mask)
    two_rows = Injection(post, 1, torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match="2 entries but the batch has 3 rows"):  # noqa: SIM117
        with steering(tiny, two_rows, start=offsets):  # raises in the forward pass, not on entry
            logits_of(tiny, ids, mask)
    assert_no_hooks(tiny)
