"""caa_lens.tiny: the tiny random Llama-style model and its byte-level BPE tokenizer build offline, have
the documented shape, are deterministic in the seed (without touching the caller's RNG), and the
tokenizer round-trips text."""

import socket

import pytest
import torch

from caa_lens.tiny import (
    LLAMA2_TEMPLATE,
    SPECIAL_TOKENS,
    TINY_MODEL_NAME,
    tiny_hf_model,
    tiny_model,
    tiny_tokenizer,
)

ASCII_TEXTS = (
    "The capital of France is Paris.",
    "Choices:\n (A) Yes\n (B) No",
    "  two  spaces, a\ttab and trailing space ",
    "Unseen bytes: ~`{}|\\^ 0123456789 @#$%&*_+=<>",
    "zzqx jvkw",  # no merges in the corpus
)


def probe(model) -> torch.Tensor:
    ids = torch.tensor([model.tokenizer("I love the ocean and I hate the rain.").input_ids])
    with torch.inference_mode():
        return model(ids).clone()


def test_builds_with_the_network_unreachable(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("caa_lens.tiny opened a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    model = tiny_model(seed=3, n_layers=2)
    assert model.cfg.n_layers == 2 and model.cfg.model_name == TINY_MODEL_NAME


def test_has_the_documented_shape(tiny):
    cfg = tiny.cfg
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.d_vocab) == (4, 64, 4, len(tiny.tokenizer))
    assert cfg.model_name == TINY_MODEL_NAME == "caa-lens-tiny-llama"
    hf = tiny.original_model.config
    assert (hf.num_key_value_heads, hf.intermediate_size, hf.max_position_embeddings) == (2, 128, 512)
    assert not hf.tie_word_embeddings
    assert [f"blocks.{layer}.hook_resid_post" in tiny.hook_dict for layer in range(5)] == [True] * 4 + [False]
    assert {p.device.type for p in tiny.parameters()} == {"cpu"}
    assert {p.dtype for p in tiny.parameters()} == {torch.float32}


def test_shape_overrides_and_dtype():
    hf_model, _ = tiny_hf_model(
        n_layers=2, d_model=32, n_heads=2, n_kv_heads=1, d_mlp=48, dtype=torch.bfloat16
    )
    config = hf_model.config
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads) == (2, 32, 2)
    assert (config.num_key_value_heads, config.intermediate_size) == (1, 48)
    assert {p.dtype for p in hf_model.parameters()} == {torch.bfloat16}


def test_same_seed_same_weights_and_logits_other_seed_differs(tiny):
    first, _ = tiny_hf_model()
    second, _ = tiny_hf_model()
    other, _ = tiny_hf_model(seed=1)
    a, b, c = first.state_dict(), second.state_dict(), other.state_dict()
    assert a.keys() == b.keys() == c.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["model.embed_tokens.weight"], c["model.embed_tokens.weight"])
    # The fixture's bridge and a fresh build give bit-identical logits.
    assert torch.equal(probe(tiny_model()), probe(tiny))


def test_building_does_not_disturb_the_callers_rng():
    torch.manual_seed(1234)
    expected = torch.rand(3)
    torch.manual_seed(1234)
    tiny_hf_model(seed=7, n_layers=1)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("text", ASCII_TEXTS)
def test_tokenizer_round_trips_ascii(text):
    tokenizer = tiny_tokenizer()
    ids = tokenizer(text, add_special_tokens=False).input_ids
    assert tokenizer.decode(ids) == text
    with_bos = tokenizer(text).input_ids
    assert with_bos == [tokenizer.bos_token_id, *ids]


def test_tokenizer_has_merges_special_tokens_and_the_llama2_template():
    tokenizer = tiny_tokenizer()
    ids = tokenizer("The capital of France is Paris.", add_special_tokens=False).input_ids
    assert len(ids) < len("The capital of France is Paris.")  # real multi-character merges
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token, tokenizer.unk_token) == (
        "<s>",
        "</s>",
        "<pad>",
        "<unk>",
    )
    for token in SPECIAL_TOKENS:
        (single,) = tokenizer(token, add_special_tokens=False).input_ids
        assert tokenizer.convert_ids_to_tokens(single) == token
    assert len(tokenizer) == 400 and tokenizer.chat_template == LLAMA2_TEMPLATE
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False)
    assert chat == "<s>[INST] Hi [/INST]"


def test_each_tokenizer_is_a_fresh_copy():
    changed = tiny_tokenizer()
    changed.chat_template = "{{ messages[0]['content'] }}"
    assert tiny_tokenizer().chat_template == LLAMA2_TEMPLATE
