"""analysis.actadd_data: the bundled prompts, texts and sentences are what the experiments need; the
shared data is used when given; sentences are split where they end."""

import pytest
from helpers.actadd import no_shared_env  # noqa: F401  (autouse: the bundled fallbacks, no shared data)

from analysis.actadd_data import actadd_texts, negative_sentences, split_sentences, topic_prompts
from caa_lens.lexicons import WEDDING_WORDS
from caa_lens.scorers import words


def test_bundled_data_is_what_the_experiments_need():
    prompts = topic_prompts()
    assert len(prompts) == 24 and len({p.id for p in prompts}) == 24
    for p in prompts:
        assert 5 <= len(p.prompt.split()) <= 15
        assert not set(words(p.prompt)) & set(WEDDING_WORDS), p
    texts, source, related = actadd_texts(None)
    assert len(texts) == 4 and related in texts and "stand-in" in source
    assert all(250 <= len(t.split()) <= 350 for t in texts.values())
    assert sum(w in WEDDING_WORDS for w in words(texts[related])) >= 10
    assert all(not set(words(t)) & set(WEDDING_WORDS) for name, t in texts.items() if name != related)
    sentences, source = negative_sentences(None)
    assert len(sentences) == 40 and "stand-in" in source


def test_shared_data_is_used_when_given(shared_data):
    texts, source, related = actadd_texts(shared_data)
    assert related == "chatgpt_wedding_essay_20230423" and "ActAdd" in source and len(texts) == 4
    sentences, source = negative_sentences(shared_data, 5)
    assert len(sentences) == 5 and "SST-2" in source
    with pytest.raises(FileNotFoundError):
        actadd_texts(shared_data / "nothing-here")


def test_split_sentences():
    assert split_sentences("One. Two!  Three?\n\nFour 4.5 stays.\nLast") == [
        "One.",
        "Two!",
        "Three?",
        "Four 4.5 stays.",
        "Last",
    ]
