"""caa_lens.prompt_pair: ActAdd's space-padded tokenisation of a prompt pair, and the residual-stream
difference h(p+) - h(p-) at every position, checked against a plain Hugging Face model with the tiny
model's weights run one prompt at a time."""

from types import SimpleNamespace

import pytest
import torch

from caa_lens.data import PromptPair
from caa_lens.prompt_pair import extract_prompt_pair, prompt_pair_tokens
from caa_lens.tiny import tiny_hf_model

PAIR = PromptPair("weddings", "I talk about weddings", "I do not talk about weddings")


@pytest.fixture(scope="module")
def plain_hf():
    """The unbridged HF model behind the ``tiny`` fixture (same seed, same weights)."""
    model, _ = tiny_hf_model()
    return model


def hidden_states(model, ids: list[int]) -> tuple[torch.Tensor, ...]:
    """hidden_states[L] is the input of block L (resid_pre of L, resid_post of L - 1)."""
    with torch.inference_mode():
        return model(torch.tensor([ids]), output_hidden_states=True).hidden_states


def test_the_shorter_prompt_is_padded_with_the_space_token(tiny):
    tokenizer = tiny.tokenizer
    (space,) = tokenizer(" ", add_special_tokens=False).input_ids
    positive_ids = tokenizer(PAIR.positive, add_special_tokens=False).input_ids
    negative_ids = tokenizer(PAIR.negative, add_special_tokens=False).input_ids
    assert len(positive_ids) < len(negative_ids)
    positive, negative = prompt_pair_tokens(tokenizer, PAIR)
    bos = tokenizer.bos_token_id
    assert negative == [bos, *negative_ids]
    assert positive == [bos, *positive_ids] + [space] * (len(negative_ids) - len(positive_ids))
    assert len(positive) == len(negative) == len(negative_ids) + 1
    # Without the BOS: the same ids, one shorter; the order of the pair does not matter for the padding.
    assert prompt_pair_tokens(tokenizer, PAIR, prepend_bos=False) == (positive[1:], negative[1:])
    swapped = PromptPair("swapped", PAIR.negative, PAIR.positive)
    assert prompt_pair_tokens(tokenizer, swapped) == (negative, positive)


def test_equal_length_prompts_are_not_padded(tiny):
    tokenizer = tiny.tokenizer
    positive, negative = prompt_pair_tokens(tokenizer, PromptPair("love-hate", "Love", "Hate"))
    bos = tokenizer.bos_token_id
    assert positive == [bos, *tokenizer("Love", add_special_tokens=False).input_ids]
    assert negative == [bos, *tokenizer("Hate", add_special_tokens=False).input_ids]
    assert len(positive) == len(negative)


class SplitsSpaces:
    """A tokenizer stand-in: one id per character, but a single space as two ids."""

    bos_token_id = None

    def __call__(self, text: str, add_special_tokens: bool = True) -> SimpleNamespace:
        return SimpleNamespace(input_ids=[7, 7] if text == " " else [ord(c) for c in text])


def test_a_tokenizer_that_splits_a_space_is_refused():
    with pytest.raises(
        ValueError, match=r"^the tokenizer splits a single space into 2 tokens; cannot pad ActAdd prompts$"
    ):
        prompt_pair_tokens(SplitsSpaces(), PAIR)


@pytest.mark.parametrize(("site", "shift"), [("resid_pre", 0), ("resid_post", 1)])
def test_difference_matches_a_plain_model_one_prompt_at_a_time(tiny, plain_hf, site, shift):
    positive, negative = prompt_pair_tokens(tiny.tokenizer, PAIR)
    layers = [0, 2]
    got = extract_prompt_pair(tiny, PAIR, layers=layers, site=site)
    pos_states, neg_states = hidden_states(plain_hf, positive), hidden_states(plain_hf, negative)
    expected = torch.stack([pos_states[layer + shift][0] - neg_states[layer + shift][0] for layer in layers])
    assert got.shape == (2, len(positive), 64) and got.dtype == torch.float32
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    if site == "resid_pre":
        assert torch.equal(got[:, 0], torch.zeros(2, 64))  # the shared BOS: causal, so no difference there
    assert float(got[:, 1:].norm()) > 0.1


def test_layers_default_to_all_and_are_sorted_unique(tiny):
    every = extract_prompt_pair(tiny, PAIR)
    assert every.shape[0] == 4
    some = extract_prompt_pair(tiny, PAIR, layers=[3, 1, 3])
    assert torch.equal(some, every[[1, 3]])
    assert torch.equal(extract_prompt_pair(tiny, PAIR, layers=2), every[[2]])


def test_bad_layers_and_sites_are_refused(tiny):
    with pytest.raises(ValueError, match=r"^layer 4 is out of range: the model has 4 layers \(0\.\.3\)$"):
        extract_prompt_pair(tiny, PAIR, layers=[1, 4])
    with pytest.raises(ValueError, match=r"^unknown hook site 'attn_out': expected one of resid_pre"):
        extract_prompt_pair(tiny, PAIR, layers=1, site="attn_out")


def test_no_hooks_are_left_on_the_model(tiny):
    extract_prompt_pair(tiny, PAIR, layers=[0, 3])
    assert all(not h._forward_hooks and not h._forward_pre_hooks for h in tiny.hook_dict.values())
