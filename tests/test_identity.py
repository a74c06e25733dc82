"""A model's identity: name, shape, config hash and weights fingerprint, cheap and dtype-independent."""

import time

import torch

from caa_lens.identity import model_identity, weights_fingerprint


def test_model_identity_distinguishes_shapes(tiny):
    from caa_lens.tiny import tiny_model

    other = tiny_model(d_model=32, n_heads=2, n_kv_heads=1)
    assert model_identity(tiny) != model_identity(other)
    assert model_identity(tiny) == model_identity(tiny)


def test_weights_fingerprint_tells_seeds_apart_but_not_dtypes(tiny):
    from caa_lens.tiny import tiny_model

    mine = weights_fingerprint(tiny)
    assert len(mine) == 16 and mine == weights_fingerprint(tiny)
    assert weights_fingerprint(tiny_model(seed=1)) != mine
    # Rounding never flips a sign: the same weights in half precision are the same model.
    assert weights_fingerprint(tiny_model(dtype=torch.bfloat16)) == mine
    assert weights_fingerprint(tiny_model(dtype=torch.float16)) == mine
    perturbed = tiny_model()
    with torch.no_grad():
        first = next(p for p in perturbed.parameters() if p.dim() >= 2)
        first.neg_()
    assert weights_fingerprint(perturbed) != mine
    assert model_identity(perturbed).weights_hash != model_identity(tiny).weights_hash


def test_weights_fingerprint_is_cheap(tiny):
    started = time.perf_counter()
    for _ in range(20):
        weights_fingerprint(tiny)
    # About 0.3 ms on the tiny model and 3 ms on the 135M default (a bridge's parameters() walk
    # dominates); 20 ms is a bound that a loaded CI machine still meets.
    assert (time.perf_counter() - started) / 20 < 0.02
