"""caa_lens.prefix, the one KV-cache engine: every cached pass equals the full pass it replaces, the
prefix cache is never changed by a suffix pass, and an unfilled cache is an error, not wrong numbers."""

import pytest
import torch

from caa_lens.prefix import (
    decode_step,
    encode,
    encode_for_gradients,
    encode_token_prefixes,
    prefill,
    run_suffixes,
    suffix_logits,
)
from caa_lens.prompts import left_pad, right_pad
from caa_lens.provenance import make_provenance
from caa_lens.steering import Injection, steering
from caa_lens.vectors import SteeringVector

PREFIXES = [[3, 4, 5, 6, 7], [8, 9], [10, 11, 12]]
SUFFIXES = [[20, 21], [22], [23, 24, 25]]


def full_logits(model, ids, **kwargs):
    with torch.inference_mode():
        return model(torch.tensor([list(ids)]), **kwargs)[0]


def vector(model, seed=0, scale=4.0):
    provenance = make_provenance(model, "resid_post", "answer", "random", "t", "0", 1, torch.float32)
    directions = torch.randn(4, 64, generator=torch.Generator().manual_seed(seed)) * scale
    return SteeringVector(directions, (0, 1, 2, 3), provenance)


def test_an_unfilled_cache_is_an_error(tiny) -> None:
    """What transformers 5.24 did through the bridge: a pass that writes no keys and values."""

    class Forgetful:
        tokenizer, cfg = tiny.tokenizer, tiny.cfg

        def __call__(self, ids, attention_mask=None, past_key_values=None, **kwargs):
            return tiny(ids, attention_mask=attention_mask)

    model = Forgetful()
    with pytest.raises(RuntimeError, match="test pass: the KV cache holds 0 positions after a pass over 5"):
        encode(model, [[3, 4, 5, 6, 7]], where="test pass")


def test_empty_prefixes_are_refused(tiny) -> None:
    with pytest.raises(ValueError, match="at least one token"):
        encode(tiny, [[3, 4], []])


def test_suffixes_on_left_padded_prefixes_equal_full_passes(tiny) -> None:
    """Rows of other lengths, a prefix used twice and one not at all: each row equals its own full pass."""
    prefix, logits = encode_for_gradients(tiny, PREFIXES)
    assert prefix.width == 5 and prefix.lengths.tolist() == [5, 2, 3]
    for row, ids in enumerate(PREFIXES):  # the prefix pass's own logits, at the real positions
        torch.testing.assert_close(logits[row, 5 - len(ids) :], full_logits(tiny, ids), atol=1e-5, rtol=1e-5)
    owners = [2, 0, 2]
    ids, mask = right_pad([SUFFIXES[0], SUFFIXES[1], SUFFIXES[2]], 0)
    before = [layer.keys.clone() for layer in prefix.cache.layers]
    with torch.inference_mode():
        out = run_suffixes(tiny, prefix, owners, ids, mask)
    assert all(torch.equal(a, layer.keys) for a, layer in zip(before, prefix.cache.layers, strict=True))
    for row, owner in enumerate(owners):
        suffix = [SUFFIXES[0], SUFFIXES[1], SUFFIXES[2]][row]
        expected = full_logits(tiny, PREFIXES[owner] + suffix)[len(PREFIXES[owner]) :]
        torch.testing.assert_close(out[row, : len(suffix)], expected, atol=1e-5, rtol=1e-5)


def test_a_consuming_pass_equals_a_copying_one(tiny) -> None:
    """``consume=True`` (extraction, OOD: one pass per prefix) saves the copy and gives the same numbers."""
    owners = [2, 0, 2]
    ids, mask = right_pad([SUFFIXES[0], SUFFIXES[1], SUFFIXES[2]], 0)
    with torch.inference_mode():
        prefix = encode(tiny, PREFIXES)
        copied = run_suffixes(tiny, prefix, owners, ids, mask)
        assert prefix.cache.layers[0].keys.shape[0] == 3  # untouched by a copying pass
        consumed = run_suffixes(tiny, prefix, owners, ids, mask, consume=True)
    assert torch.equal(copied, consumed)
    # The consumed cache now holds the suffix rows: the prefix is spent, as documented.
    assert prefix.cache.layers[0].keys.shape[2] == prefix.width + ids.shape[1]


@pytest.mark.parametrize("multiplier", [0.0, 3.0])
def test_steering_starts_at_the_first_suffix_token(tiny, multiplier) -> None:
    steer = Injection(vector(tiny), 1, multiplier)
    prefix = encode(tiny, PREFIXES[:2])
    ids, mask = right_pad(SUFFIXES[:2], 0)
    with torch.inference_mode():
        out = run_suffixes(tiny, prefix, [0, 1], ids, mask, steer)
    for row in range(2):
        sequence = PREFIXES[row] + SUFFIXES[row]
        with steering(tiny, steer, start=len(PREFIXES[row])):
            expected = full_logits(tiny, sequence)[len(PREFIXES[row]) :]
        torch.testing.assert_close(out[row, : len(SUFFIXES[row])], expected, atol=1e-5, rtol=1e-5)


def test_embeddings_with_explicit_positions_and_start_equal_token_ids(tiny) -> None:
    """The insertion search's pass: input embeddings, per-row positions and steering start columns."""
    steer = Injection(vector(tiny, 1), 2, 2.0)
    prefix, _ = encode_for_gradients(tiny, PREFIXES)
    ids, mask = right_pad(SUFFIXES, 0)
    embeds = tiny.original_model.get_input_embeddings().weight[ids]
    positions = prefix.lengths[:, None] + torch.arange(ids.shape[1])[None]
    start = torch.tensor([prefix.width + 1] * 3)
    with torch.no_grad():
        by_embeds = run_suffixes(
            tiny, prefix, [0, 1, 2], embeds, mask, steer, start=start, position_ids=positions
        )
        by_ids = run_suffixes(tiny, prefix, [0, 1, 2], ids, mask, steer, start=prefix.width + 1)
    for row, suffix in enumerate(SUFFIXES):
        torch.testing.assert_close(
            by_embeds[row, : len(suffix)], by_ids[row, : len(suffix)], atol=1e-5, rtol=1e-5
        )


def test_a_stopped_suffix_pass_reads_the_activations_of_the_full_pass(tiny) -> None:
    """Extraction's use: prefix and suffixes stop at a layer; a hook reads the suffix activations."""
    name = "blocks.1.hook_resid_post"
    prefix = encode(tiny, PREFIXES, stop_at_layer=2)
    ids, mask = right_pad(SUFFIXES, 0)
    seen = {}
    with torch.inference_mode(), tiny.hooks(fwd_hooks=[(name, lambda a, hook: seen.setdefault("a", a))]):
        run_suffixes(tiny, prefix, [0, 1, 2], ids, mask, stop_at_layer=2)
    for row, suffix in enumerate(SUFFIXES):
        with torch.inference_mode():
            _, cache = tiny.run_with_cache(torch.tensor([PREFIXES[row] + suffix]), names_filter=[name])
        expected = cache[name][0, len(PREFIXES[row]) :]
        torch.testing.assert_close(seen["a"][row, : len(suffix)], expected, atol=1e-5, rtol=1e-5)


def test_token_prefix_batches_map_suffix_rows_to_their_prefixes(tiny) -> None:
    batch = encode_token_prefixes(tiny, PREFIXES[:2], [[SUFFIXES[0], SUFFIXES[2]], [SUFFIXES[1]]], ("a", "b"))
    assert batch.suffix_owners == (0, 0, 1) and batch.width == 5
    logits = suffix_logits(tiny, batch, [2, 1, 1])
    for k, (owner, suffix) in enumerate([(1, SUFFIXES[1]), (0, SUFFIXES[2]), (0, SUFFIXES[2])]):
        expected = full_logits(tiny, PREFIXES[owner] + suffix)[len(PREFIXES[owner]) :]
        torch.testing.assert_close(logits[k, : len(suffix)], expected, atol=1e-5, rtol=1e-5)
    assert encode_token_prefixes(tiny, PREFIXES[:2], [[SUFFIXES[0]], [SUFFIXES[1]]]).owners == ()
    with pytest.raises(ValueError, match="no prefix to reuse"):
        encode_token_prefixes(tiny, [[], [3]], [[SUFFIXES[0]], [SUFFIXES[1]]])
    with pytest.raises(ValueError, match="non-empty suffix"):
        encode_token_prefixes(tiny, PREFIXES[:2], [[SUFFIXES[0]], []])
    with pytest.raises(ValueError, match="2 prefixes but 1 suffix lists"):
        encode_token_prefixes(tiny, PREFIXES[:2], [[SUFFIXES[0]]])


def test_prefill_then_one_token_steps_equal_the_full_pass(tiny) -> None:
    """Generation's use: a left-padded steered prompt pass, then one token per row, extending the cache."""
    steer = Injection(vector(tiny, 2), 1, 3.0)
    sequences = [PREFIXES[0] + SUFFIXES[0], PREFIXES[1] + SUFFIXES[1]]
    ids, mask, offsets = left_pad(sequences, 0)
    start = torch.tensor([o + 2 for o in offsets])
    with torch.inference_mode(), steering(tiny, steer, start=start):
        state, logits = prefill(tiny, ids[:, :-2], mask[:, :-2])
        steps = [
            decode_step(tiny, state, ids[:, c : c + 1], mask[:, : c + 1])
            for c in (ids.shape[1] - 2, ids.shape[1] - 1)
        ]
        whole = tiny(ids, attention_mask=mask)
    assert state.cache.get_seq_length() == ids.shape[1]
    cached = torch.cat([logits, *steps], dim=1)
    for row, offset in enumerate(offsets):
        torch.testing.assert_close(cached[row, offset:], whole[row, offset:], atol=1e-5, rtol=1e-5)
