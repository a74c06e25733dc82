"""A tiny random-weight Llama-style model and a small byte-level BPE tokenizer, fully offline.

Used by the unit tests and the docstring examples: it builds in well under a second, has the same
architecture family as the default model (RMSNorm, rotary, grouped-query attention, gated MLP) and a
tokenizer with real multi-character merges, a BOS token added by default (the case where a naive
chat-template tokenisation doubles the BOS), and the special tokens of four chat-template families.
"""

import functools
import tempfile

import torch

__all__ = [
    "LLAMA2_TEMPLATE",
    "SPECIAL_TOKENS",
    "TINY_MODEL_NAME",
    "tiny_hf_model",
    "tiny_model",
    "tiny_tokenizer",
]

TINY_MODEL_NAME = "caa-lens-tiny-llama"

# Special tokens of the template families the prompt formatter is tested on (ChatML, Llama-2,
# Llama-3, Gemma). The tiny tokenizer's own template is Llama-2's, whose text begins with the BOS.
SPECIAL_TOKENS = (
    "<unk>",
    "<s>",
    "</s>",
    "<pad>",
    "<|im_start|>",
    "<|im_end|>",
    "<|begin_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<bos>",
    "<start_of_turn>",
    "<end_of_turn>",
)

LLAMA2_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ '[INST] <<SYS>>\\n' + message['content'] + '\\n<</SYS>>\\n\\n' }}"
    "{% elif message['role'] == 'user' %}"
    "{% if loop.index0 == 1 and messages[0]['role'] == 'system' %}{{ message['content'] + ' [/INST]' }}"
    "{% else %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% endif %}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'] + ' ' + eos_token }}{% endif %}"
    "{% endfor %}"
)

_CORPUS = """
The capital of France is Paris. The quick brown fox jumps over the lazy dog. I think that the answer
is (A) because the question asks about the future, and the other choice (B) is about the past.
Choices: (A) Yes (B) No. Would you agree with this statement? Yes. No. I love the ocean and I hate the
rain. The weather today is sunny and warm; tomorrow it will probably rain. Please answer the question.
You are a helpful assistant. What is the best way to learn a new language? Practice every day, read
books, talk to people, and listen carefully. Steering vectors change the behaviour of a language model.
"""


@functools.lru_cache(maxsize=1)
def _tokenizer_dir() -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator([_CORPUS] * 4, trainer=trainer)
    bos_id = tokenizer.token_to_id("<s>")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos_id)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        additional_special_tokens=list(SPECIAL_TOKENS[4:]),
    )
    fast.chat_template = LLAMA2_TEMPLATE
    # An in-memory tokenizer lacks the name_or_path that TransformerBridge reads: save and reload it.
    directory = tempfile.mkdtemp(prefix="caa_lens_tiny_tok_")
    fast.save_pretrained(directory)
    return directory


def tiny_tokenizer():
    """A fresh copy of the tiny tokenizer (callers may change its chat template freely)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(_tokenizer_dir())


def tiny_hf_model(
    seed: int = 0,
    n_layers: int = 4,
    d_model: int = 64,
    n_heads: int = 4,
    n_kv_heads: int = 2,
    d_mlp: int = 128,
    dtype: torch.dtype = torch.float32,
):
    """The plain Hugging Face ``LlamaForCausalLM`` and tokenizer behind ``tiny_model`` (same seed, same weights)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = tiny_tokenizer()
    config = LlamaConfig(
        hidden_size=d_model,
        num_hidden_layers=n_layers,
        num_attention_heads=n_heads,
        num_key_value_heads=n_kv_heads,
        intermediate_size=d_mlp,
        vocab_size=len(tokenizer),
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    # Seed a private generator state so building a model never disturbs the caller's RNG stream.
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        hf_model = LlamaForCausalLM(config).to(dtype=dtype).eval()  # type: ignore[call-arg]
    finally:
        torch.random.set_rng_state(generator_state)
    return hf_model, tokenizer


def tiny_model(seed: int = 0, dtype: torch.dtype = torch.float32, **shape: int):
    """A random-weight Llama-style TransformerBridge on the CPU, deterministic in ``seed``.

    ``shape`` overrides ``n_layers`` (4), ``d_model`` (64), ``n_heads`` (4), ``n_kv_heads`` (2), ``d_mlp`` (128).

    >>> model = tiny_model()
    >>> model.cfg.n_layers, model.cfg.d_model
    (4, 64)
    """
    from transformer_lens.model_bridge import TransformerBridge

    hf_model, tokenizer = tiny_hf_model(seed, dtype=dtype, **shape)
    # Any supported architecture name works: the bridge reads the architecture from hf_model.config.
    bridge = TransformerBridge.boot_transformers(
        "meta-llama/Llama-2-7b-hf", hf_model=hf_model, tokenizer=tokenizer, device="cpu", dtype=dtype
    )
    bridge.cfg.model_name = TINY_MODEL_NAME
    bridge.eval()
    return bridge
