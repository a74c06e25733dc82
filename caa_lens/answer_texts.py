"""The letter-free form of an A/B item: its question without the choices, and each answer's words.

Why: the letter-free likelihood metric (``caa_lens.likelihood``) and the letter-free extraction
(``letter_free_dataset``) score or read what the assistant *says*, so they need the text behind each
answer letter, parsed out of the question (a CAA ``Choices:`` block or inline ``(A) tea or (B)
coffee``), with a message naming the file and item when it cannot be found.
"""

import re
from collections.abc import Sequence
from dataclasses import dataclass

from caa_lens.data import (
    INLINE_LETTER,
    OFFERED_LETTER,
    ContrastiveDataset,
    ContrastiveItem,
    DatasetError,
    answer_label,
)

__all__ = ["OptionTexts", "dataset_option_texts", "letter_free_dataset", "option_texts"]

# The label line that opens a CAA choices block: "Choices:", also "Options:" / "Answer choices:".
_CHOICES_LABEL = re.compile(r"(?:^|\n)[ \t]*(?:answer[ \t]+)?(?:choices|options)[ \t]*:?[ \t]*\Z", re.I)
# What joins inline options to the sentence around them: "(A) tea, (B) coffee or (C) water."
_INLINE_EDGE = re.compile(r"(?:[\s,;:.?!]|\bor\b)+\Z")


@dataclass(frozen=True)
class OptionTexts:
    """The letter-free form of an item: the question without its choices, and each answer's words."""

    stem: str
    matching: str
    not_matching: str


def _block_options(question: str, where: str) -> tuple[str, dict[str, str]] | None:
    """Stem and option texts of a question whose options start lines (the CAA ``Choices:`` block).

    An option runs to the next option line, so a multi-line answer keeps all its lines.
    """
    markers = list(OFFERED_LETTER.finditer(question))
    if not markers:
        return None
    stem = _CHOICES_LABEL.sub("", question[: markers[0].start()].rstrip()).strip()
    ends = [m.start() for m in markers[1:]] + [len(question)]
    return stem, _collect(
        markers, [question[m.end() : end] for m, end in zip(markers, ends, strict=True)], where
    )


def _inline_options(question: str, where: str) -> tuple[str, dict[str, str]] | None:
    """Stem and option texts of a question with inline options: ``Do you prefer (A) tea or (B) coffee?``.

    An option runs to the next marker (the last one to the end of its line), without the words and
    punctuation joining it to the sentence; the stem is the question with the markers taken out
    (``Do you prefer tea or coffee?``), so it reads as a question and shows no letter.
    """
    markers = list(INLINE_LETTER.finditer(question))
    if not markers:
        return None
    line_end = question.find("\n", markers[-1].end())
    ends = [m.start() for m in markers[1:]] + [line_end if line_end >= 0 else len(question)]
    texts = [
        _INLINE_EDGE.sub("", question[m.end() : end].strip()) for m, end in zip(markers, ends, strict=True)
    ]
    pieces, at = [], 0
    for m in markers:
        pieces.append(question[at : m.start()])
        at = m.end()
        while at < len(question) and question[at] in " \t":
            at += 1
    return ("".join(pieces) + question[at:]).strip(), _collect(markers, texts, where)


def _collect(markers: Sequence[re.Match], texts: Sequence[str], where: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for marker, text in zip(markers, texts, strict=True):
        letter = marker.group(1)
        if letter in found:
            raise DatasetError(
                f"{where}: the question offers option ({letter}) twice, so its text is ambiguous for the "
                f"letter-free likelihood metric"
            )
        found[letter] = text.strip()
    return found


def option_texts(item: ContrastiveItem, where: str = "item") -> OptionTexts:
    """The stem and the matching and non-matching answer texts of an item, with no letter in them.

    A/B items: the options that start lines (the CAA ``Choices:`` block, whose label line is dropped
    from the stem) or, in a question without such lines, inline options (``(A) tea or (B) coffee``).
    Yes/No items: the whole question, and the answers themselves (``"Yes"``, ``"No"``).

    Raises:
        DatasetError: (prefixed with ``where``, e.g. the file and item) the question lists no lettered
            options (the letters are all the item has, so there is no text to score), lists a letter
            twice, an answer's text is empty, or nothing of the question is left as a stem.

    >>> from caa_lens.data import make_item
    >>> option_texts(make_item("Tea?\\n\\nChoices:\\n (A) Yes, please.\\n (B) No, thanks.", "(B)", "(A)"))
    OptionTexts(stem='Tea?', matching='No, thanks.', not_matching='Yes, please.')
    >>> option_texts(make_item("Do you prefer (A) tea or (B) coffee?", "(A)", "(B)"))
    OptionTexts(stem='Do you prefer tea or coffee?', matching='tea', not_matching='coffee')
    """
    if item.kind == "yes_no":
        return OptionTexts(item.question.strip(), item.matching.strip(), item.not_matching.strip())
    parsed = _block_options(item.question, where) or _inline_options(item.question, where)
    if parsed is None:
        raise DatasetError(
            f"{where}: the question lists no lettered options, so the text of the answers "
            f"{item.matching!r}/{item.not_matching!r} cannot be located for the letter-free likelihood "
            f"metric (it needs the options in the question, e.g. a 'Choices:' block); use metric 'letter'"
        )
    stem, texts = parsed
    answers = {}
    for key, answer in (("matching", item.matching), ("not_matching", item.not_matching)):
        text = texts.get(answer_label(answer), "")
        if not text:
            raise DatasetError(
                f"{where}: the text of option {answer!r} ({key}) cannot be located in the question "
                f"(found options {sorted(texts)}; an option needs words after its letter)"
            )
        answers[key] = text
    if not stem:
        raise DatasetError(f"{where}: the question has no text before its choices to ask the options with")
    return OptionTexts(stem, answers["matching"], answers["not_matching"])


def dataset_option_texts(dataset: ContrastiveDataset) -> list[OptionTexts]:
    """``option_texts`` of every item (errors name the dataset file and item); needs no model, so a
    command line checks a dataset with it before loading one."""
    where = dataset.source or dataset.name
    return [option_texts(item, f"{where}: item {i}") for i, item in enumerate(dataset)]


def letter_free_dataset(dataset: ContrastiveDataset) -> ContrastiveDataset:
    """The dataset with each A/B item rewritten as its stem answered by each option's *text*.

    The items become reply-text pairs (``make_item(stem, matching text, non-matching text)``), so
    ``extract_contrastive(..., position_rule="last")`` reads the residual stream at the last token of
    the reply itself: a contrast between what the assistant *says*, with no letter anywhere, which a
    model that cannot answer A/B questions still expresses. Build the vector with
    ``method="mean_difference"`` (each item is its own label, so there is no letter to balance).

    >>> from caa_lens.data import make_item
    >>> item = make_item("Tea?\\n\\nChoices:\\n (A) Yes, please.\\n (B) No, thanks.", "(B)", "(A)")
    >>> letter_free_dataset(ContrastiveDataset("d", (item,)))[0].question
    'Tea?'
    """
    from caa_lens.data import make_item

    where = dataset.source or dataset.name
    items = [
        make_item(texts.stem, texts.matching, texts.not_matching, f"{where}: item {i}")
        for i, texts in enumerate(dataset_option_texts(dataset))
    ]
    return ContrastiveDataset(f"{dataset.name}:text", tuple(items), dataset.source)
