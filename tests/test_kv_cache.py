"""The prefix-reusing paths refuse an unfilled KV cache instead of returning wrong numbers."""

import pytest
import torch

from caa_lens.kv_cache import new_cache, require_filled


def test_an_empty_cache_after_a_pass_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="holds 0 positions after a pass over 5"):
        require_filled(new_cache(), 5, "test prefix pass")


def test_the_bridge_fills_the_cache_and_reusing_it_matches_the_full_pass(tiny) -> None:
    ids = torch.arange(3, 11).unsqueeze(0)
    cache = new_cache()
    with torch.inference_mode():
        full = tiny(ids)
        tiny(ids[:, :5], past_key_values=cache)
        require_filled(cache, 5, "tiny prefix pass")
        rest = tiny(ids[:, 5:], past_key_values=cache)
    torch.testing.assert_close(rest, full[:, 5:], atol=1e-4, rtol=1e-4)
