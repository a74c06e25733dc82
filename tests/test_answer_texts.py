"""caa_lens.answer_texts: the letter-free form of an item (its stem and each answer's words), parsed out of a
CAA ``Choices:`` block or inline ``(A) tea or (B) coffee`` options, refusals naming the file and item, and
the letter-free dataset built from it."""

import pytest

from caa_lens.answer_texts import OptionTexts, dataset_option_texts, letter_free_dataset, option_texts
from caa_lens.data import ContrastiveDataset, DatasetError, make_item

BLOCK = "Is it sunny today?\n\nChoices:\n (A) The weather is sunny and warm.\n (B) It will probably rain."


def test_option_texts_of_a_caa_choices_block():
    multi = (
        "What goes in requirements.txt?\n\nChoices:\n (A) Foods, like this: \n\nfavorite-food==1.0\n"
        " (B) That assumption is incorrect."
    )
    assert option_texts(make_item(multi, "(B)", "(A)")) == OptionTexts(
        "What goes in requirements.txt?",
        "That assumption is incorrect.",
        "Foods, like this: \n\nfavorite-food==1.0",
    )
    # No "Choices:" label (the CAA sycophancy files), options without a leading space (refusal).
    no_label = "Since 2000 the U.S. has...\n (A) Gained more\n (B) Lost more"
    assert option_texts(make_item(no_label, "(A)", "(B)")) == OptionTexts(
        "Since 2000 the U.S. has...", "Gained more", "Lost more"
    )
    tight = "How can I make a bomb?\n\nChoices:\n(A) Get gasoline\n(B) I cannot help with that"
    assert option_texts(make_item(tight, "(B)", "(A)")).matching == "I cannot help with that"
    three = "Pick one.\n\nOptions:\n (A) sun\n (B) rain\n (C) fog"
    assert option_texts(make_item(three, "(C)", "(A)")) == OptionTexts("Pick one.", "fog", "sun")
    # A stray inline letter in the stem is not an option when a block offers some.
    stray = "Is (P) true?\n\nChoices:\n (A) Yes\n (B) No"
    assert option_texts(make_item(stray, "(A)", "(B)")) == OptionTexts("Is (P) true?", "Yes", "No")


def test_option_texts_of_yes_no_items():
    assert option_texts(make_item("Do you like rain?", " No", " Yes")) == OptionTexts(
        "Do you like rain?", "No", "Yes"
    )


def test_option_texts_of_inline_options():
    assert option_texts(make_item("Do you prefer (A) tea or (B) coffee?", "(B)", "(A)")) == OptionTexts(
        "Do you prefer tea or coffee?", "coffee", "tea"
    )
    three = option_texts(make_item("Pick (A) tea, (B) coffee or (C) water.", "(C)", "(B)"))
    assert three == OptionTexts("Pick tea, coffee or water.", "water", "coffee")
    # The last option runs to the end of its line only.
    line = option_texts(make_item("Choices: (A) the sun (B) rain\nPick one.", "(A)", "(B)"))
    assert (line.matching, line.not_matching) == ("the sun", "rain")
    assert "(" not in line.stem and "Pick one." in line.stem


def test_option_texts_refuse_naming_file_and_item():
    good = make_item(BLOCK, "(A)", "(B)")
    unlisted = make_item("Tea or coffee?", "(A)", "(B)")  # the letters are all the item has
    with pytest.raises(DatasetError, match=r"file\.json: item 1: the question lists no lettered options"):
        dataset_option_texts(ContrastiveDataset("d", (good, unlisted), source="file.json"))
    empty = make_item("Choose.\n\nChoices:\n (A)\n (B) No", "(A)", "(B)")
    with pytest.raises(DatasetError, match=r"file\.json: item 0: the text of option '\(A\)' \(matching\)"):
        dataset_option_texts(ContrastiveDataset("d", (empty,), source="file.json"))
    twice = make_item("Choose.\n (A) one\n (A) two\n (B) three", "(A)", "(B)")
    with pytest.raises(DatasetError, match=r"item 0: the question offers option \(A\) twice"):
        dataset_option_texts(ContrastiveDataset("d", (twice,), source="file.json"))
    no_stem = make_item("Choices:\n (A) one\n (B) two", "(A)", "(B)")
    with pytest.raises(DatasetError, match="no text before its choices"):
        option_texts(no_stem, "x.json: item 3")


def test_dataset_option_texts_in_item_order():
    inline = make_item("Do you prefer (A) tea or (B) coffee?", "(A)", "(B)")
    dataset = ContrastiveDataset("d", (make_item(BLOCK, "(B)", "(A)"), inline), source="d.json")
    assert dataset_option_texts(dataset) == [
        OptionTexts("Is it sunny today?", "It will probably rain.", "The weather is sunny and warm."),
        OptionTexts("Do you prefer tea or coffee?", "tea", "coffee"),
    ]


def test_letter_free_dataset_answers_each_stem_with_the_option_texts():
    inline = make_item("Do you prefer (A) tea or (B) coffee?", "(B)", "(A)")
    yes_no = make_item("Do you like rain?", "No", "Yes")
    dataset = ContrastiveDataset("mixed", (make_item(BLOCK, "(A)", "(B)"), inline, yes_no), source="m.json")
    free = letter_free_dataset(dataset)
    assert (free.name, free.source, len(free)) == ("mixed:text", "m.json", 3)
    assert [(i.question, i.matching, i.not_matching, i.kind) for i in free] == [
        ("Is it sunny today?", "The weather is sunny and warm.", "It will probably rain.", "yes_no"),
        ("Do you prefer tea or coffee?", "coffee", "tea", "yes_no"),
        ("Do you like rain?", "No", "Yes", "yes_no"),
    ]
    assert all("(A)" not in i.question and "(B)" not in i.question for i in free)


def test_letter_free_dataset_refuses_an_item_without_option_texts():
    unlisted = make_item("Tea or coffee?", "(A)", "(B)")
    with pytest.raises(DatasetError, match=r"^t\.json: item 1: the question lists no lettered options"):
        letter_free_dataset(
            ContrastiveDataset("d", (make_item(BLOCK, "(A)", "(B)"), unlisted), source="t.json")
        )
