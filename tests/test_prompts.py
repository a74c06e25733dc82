"""Chat formatting on four real template families: no double BOS, and exact steering/reading positions."""

import pytest

from caa_lens.prompts import format_prompt, left_pad, prompt_text
from caa_lens.tiny import LLAMA2_TEMPLATE, tiny_tokenizer

CHATML = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' }}"
    "{% endif %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
LLAMA3 = (
    "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + "
    "'<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)
GEMMA = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for message in messages %}{% if message['role'] == 'assistant' %}{% set role = 'model' %}"
    "{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)

# family: (template, bos token, what the text must end with for assistant prefix "(A)")
FAMILIES = {
    "chatml": (CHATML, "<|im_start|>", "<|im_start|>assistant\n(A)"),
    "llama2": (LLAMA2_TEMPLATE, "<s>", "[/INST] (A)"),
    "llama3": (LLAMA3, "<|begin_of_text|>", "<|start_header_id|>assistant<|end_header_id|>\n\n(A)"),
    "gemma": (GEMMA, "<bos>", "<start_of_turn>model\n(A)"),
}
QUESTION = "Is the glass half full?\n\nChoices:\n (A) Yes, it is half full.\n (B) No, it is half empty."


def tokenizer_for(family: str):
    template, bos, _ = FAMILIES[family]
    tokenizer = tiny_tokenizer()
    tokenizer.chat_template = template
    tokenizer.bos_token = bos
    return tokenizer


def decode(tokenizer, ids) -> str:
    return tokenizer.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_positions_and_no_double_bos(family):
    tokenizer = tokenizer_for(family)
    prompt = format_prompt(tokenizer, QUESTION, "(A)")
    ids = prompt.token_ids
    assert prompt.text.endswith(FAMILIES[family][2])
    assert decode(tokenizer, ids) == prompt.text
    # No double BOS: the tokenizer adds one by default, the template writes one; only one may remain.
    bos = tokenizer.bos_token_id
    assert not (ids[0] == bos and ids[1] == bos)
    assert ids.count(tokenizer.convert_tokens_to_ids("<s>")) <= 1
    # steer_start is the last token of the prompt before the assistant's text.
    generation_prompt = prompt_text(tokenizer, QUESTION)
    assert decode(tokenizer, ids[: prompt.steer_start + 1]).rstrip(" ") == generation_prompt.rstrip(" ")
    assert len(decode(tokenizer, ids[: prompt.steer_start])) < len(generation_prompt)
    # The answer position holds the letter, found by offsets.
    assert decode(tokenizer, ids[prompt.answer_position : prompt.answer_position + 1]).strip(" (") == "A"
    assert prompt.last == len(ids) - 1


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_open_parenthesis_prompt_for_scoring(family):
    tokenizer = tokenizer_for(family)
    prompt = format_prompt(tokenizer, QUESTION, "(")
    assert prompt.answer_position is None
    assert decode(tokenizer, prompt.token_ids[prompt.last :]).strip() == "("


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_system_prompt(family):
    tokenizer = tokenizer_for(family)
    prompt = format_prompt(tokenizer, "Hi", "(A)", system="Be brief.")
    assert "Be brief." in prompt.text
    if family == "gemma":  # no system role: merged into the user turn
        assert "<start_of_turn>user\nBe brief.\n\nHi" in prompt.text


def test_plain_style_prepends_one_bos():
    tokenizer = tiny_tokenizer()
    prompt = format_prompt(tokenizer, "What is 2+2?", "(A)", style="plain")
    assert prompt.text == "Input: What is 2+2?\nResponse: (A)"
    assert prompt.token_ids[0] == tokenizer.bos_token_id != prompt.token_ids[1]
    assert decode(tokenizer, prompt.token_ids[prompt.steer_start : prompt.steer_start + 1]).endswith(":")
    no_bos = format_prompt(tokenizer, "What is 2+2?", style="plain", prepend_bos=False)
    assert no_bos.token_ids[0] != tokenizer.bos_token_id


def test_chat_style_without_template_is_refused():
    tokenizer = tiny_tokenizer()
    tokenizer.chat_template = None
    with pytest.raises(ValueError, match="no chat template"):
        format_prompt(tokenizer, "Hi", style="chat")
    assert format_prompt(tokenizer, "Hi").text == "Input: Hi\nResponse:"


def test_yes_no_answer_position():
    tokenizer = tokenizer_for("chatml")
    prompt = format_prompt(tokenizer, "Is the sky blue?", "Yes")
    assert decode(tokenizer, prompt.token_ids[prompt.answer_position :]).startswith("Y")


def test_left_pad_offsets():
    ids, mask, offsets = left_pad([(5, 6, 7), (8,)], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert offsets == [0, 2]
    with pytest.raises(ValueError):
        left_pad([], 0)


@pytest.mark.slow
def test_default_model_tokenizer_positions(default_model):
    tokenizer = default_model.tokenizer
    prompt = format_prompt(tokenizer, QUESTION, "(A)")
    assert prompt.text.endswith("<|im_start|>assistant\n(A)")
    assert prompt.token_ids[:2] != (tokenizer.bos_token_id,) * 2
    assert tokenizer.convert_ids_to_tokens(prompt.token_ids[prompt.answer_position]) == "A"
    assert tokenizer.convert_ids_to_tokens(prompt.token_ids[prompt.steer_start]) == "Ċ"
    assert decode(tokenizer, prompt.token_ids[: prompt.steer_start + 1]) == prompt_text(tokenizer, QUESTION)
    # ActAdd's anchor: past SmolLM2's default system turn, on the question's first word.
    head = decode(tokenizer, prompt.token_ids[: prompt.user_start])
    assert head.endswith("<|im_start|>user\n") and "<|im_start|>system\n" in head
    assert tokenizer.convert_ids_to_tokens(prompt.token_ids[prompt.user_start]) == "Is"


WEDDINGS = "I talk about weddings constantly"


@pytest.mark.parametrize("system", [None, "Repeat after me: I talk about weddings constantly."])
@pytest.mark.parametrize("style", ["chat", "plain"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_user_start_is_the_first_token_of_the_user_text(family, style, system):
    """Found by rendering the template, never by searching: a system prompt holding the same words
    (the second case) must not be taken for the user's text."""
    tokenizer = tokenizer_for(family)
    prompt = format_prompt(tokenizer, f"{WEDDINGS}, and then", "(A)", system=system, style=style)
    assert prompt.user_start is not None and 0 < prompt.user_start <= prompt.steer_start
    whole, head = (
        decode(tokenizer, prompt.token_ids),
        decode(tokenizer, prompt.token_ids[: prompt.user_start]),
    )
    # Everything before user_start is template (and system prompt): the user's words come next.
    assert whole.startswith(head)
    assert whole[len(head) :].lstrip().startswith(f"{WEDDINGS}, and then")
    assert decode(tokenizer, prompt.token_ids[prompt.user_start : prompt.user_start + 1]).strip() == "I"
    if system is not None:
        assert WEDDINGS in head  # the system prompt's copy of the words lies before the user's
    if family == "chatml" and style == "chat" and system is None:
        assert "<|im_start|>system\nYou are a helpful AI assistant" in head  # the default system turn


def test_user_start_of_empty_or_space_padded_messages():
    tokenizer = tokenizer_for("chatml")
    assert format_prompt(tokenizer, "", "(A)").user_start is None
    assert format_prompt(tokenizer, "  ", style="plain").user_start is None
    padded = format_prompt(tokenizer, "  Hi there", style="plain")
    assert decode(tokenizer, padded.token_ids[padded.user_start :]).lstrip().startswith("Hi there")
    assert decode(tokenizer, padded.token_ids[: padded.user_start]).rstrip() == "Input:"  # no BOS here
