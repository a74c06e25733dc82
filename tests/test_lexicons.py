"""The scorers' word and phrase lists: well-formed, so the scorers that match them accept them."""

import pytest

from caa_lens.lexicons import (
    AGREEMENT_PHRASES,
    CASUAL_WORDS,
    DISAGREEMENT_PHRASES,
    REFUSAL_PHRASES,
    WEDDING_WORDS,
)
from caa_lens.scorers import PhraseScorer, WordRateScorer, words


@pytest.mark.parametrize("phrases", [REFUSAL_PHRASES, AGREEMENT_PHRASES, DISAGREEMENT_PHRASES])
def test_phrase_lists_are_distinct_non_empty_phrases(phrases):
    assert phrases and len(set(phrases)) == len(phrases)
    PhraseScorer("check", phrases)  # refuses empty phrases


@pytest.mark.parametrize("vocabulary", [WEDDING_WORDS, CASUAL_WORDS])
def test_word_lists_are_distinct_single_lower_case_words(vocabulary):
    assert len(set(vocabulary)) == len(vocabulary)
    assert all(words(w) == [w] for w in vocabulary)
    WordRateScorer("check", vocabulary)  # refuses anything else


def test_agreement_and_disagreement_do_not_overlap():
    assert not {p.lower() for p in AGREEMENT_PHRASES} & {p.lower() for p in DISAGREEMENT_PHRASES}
