"""Per-label mean differences and the letter record: counts, shares, and the warnings they give."""

import dataclasses
import warnings

import pytest
import torch

from caa_lens.data import ContrastiveDataset, make_item
from caa_lens.extraction import extract_contrastive
from caa_lens.letter_balance import (
    LETTER_SHARE_LIMIT,
    LabelMeans,
    label_means,
    labels_or_none,
    letter_record,
    one_label_note,
)
from caa_lens.provenance import make_provenance

QUESTIONS = ["Is it sunny?", "Hi", "Rain?", "Do you like the ocean?", "Is the fox lazy?"]


@pytest.fixture(scope="module")
def acts(tiny):
    items = tuple(
        make_item(f"{q}\n\nChoices:\n (A) Yes\n (B) No", *(("(A)", "(B)") if i % 2 else ("(B)", "(A)")))
        for i, q in enumerate(QUESTIONS)
    )
    dataset = ContrastiveDataset("letters", items)
    return extract_contrastive(tiny, dataset, (1, 2), keep_examples=True, progress=False)


def planted_means(behaviour: float, letter: float) -> LabelMeans:
    """Two labels whose mean differences are ``b + L`` (A) and ``b - L`` (B), ``b`` orthogonal to ``L``."""
    b, axis = torch.zeros(2, 8, dtype=torch.float64), torch.zeros(2, 8, dtype=torch.float64)
    b[:, 0], axis[:, 1] = behaviour, letter
    return LabelMeans(("A", "B"), (3, 3), torch.stack([b + axis, b - axis]))


def test_label_means_from_sums_equal_those_from_examples(acts):
    from_sums = label_means(acts)
    from_examples = label_means(dataclasses.replace(acts, label_sums=None, labels=(), label_counts=()))
    assert from_sums.labels == from_examples.labels == ("A", "B")
    assert from_sums.counts == from_examples.counts == (2, 3)
    torch.testing.assert_close(from_sums.means, from_examples.means, rtol=1e-5, atol=1e-5)


def test_labels_or_none_without_sums_or_examples(acts):
    bare = dataclasses.replace(acts, examples=None, label_sums=None, labels=(), label_counts=())
    assert labels_or_none(bare) is None and labels_or_none(acts) is not None
    with pytest.raises(ValueError, match="no per-label sums and no examples"):
        label_means(bare)


def test_balanced_mean_axis_and_shares_of_planted_means():
    groups = planted_means(behaviour=1.0, letter=10.0)
    torch.testing.assert_close(groups.balanced[:, 0], torch.ones(2, dtype=torch.float64))
    torch.testing.assert_close(groups.axis[:, 1], torch.full((2,), 10.0, dtype=torch.float64))
    shares = groups.shares(groups.means[0].float())
    assert shares is not None and ((shares > 0.98) & (shares < 1)).all()
    one = LabelMeans(("A",), (3,), groups.means[:1])
    assert one.axis is None and one.shares(groups.means[0].float()) is None


def test_letter_record_records_counts_and_shares_and_warns_above_the_limit(tiny):
    provenance = make_provenance(tiny, "resid_post", "answer", "m", "d", "0", 6, torch.float32)
    letter = planted_means(behaviour=1.0, letter=10.0)
    with pytest.warns(UserWarning, match=r"mostly the answer letter at layers \[1, 2\]"):
        recorded = letter_record(provenance, letter.means[0].float(), (1, 2), letter, "advice")
    assert recorded.label_counts == {"A": 3, "B": 3}
    assert (
        set(recorded.letter_share) == {"1", "2"} and min(recorded.letter_share.values()) > LETTER_SHARE_LIMIT
    )
    behaviour = planted_means(behaviour=10.0, letter=1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        quiet = letter_record(provenance, behaviour.balanced.float(), (1, 2), behaviour, "advice")
    assert max(quiet.letter_share.values()) < 1e-12
    assert letter_record(provenance, letter.means[0].float(), (1, 2), None, "advice") == provenance


def test_one_label_note_warns_and_names_the_label():
    groups = LabelMeans(("B",), (4,), torch.zeros(1, 2, 8, dtype=torch.float64))
    with pytest.warns(UserWarning, match="every pair's matching answer is 'B'"):
        note = one_label_note(groups, "demo")
    assert note.startswith("letter balancing impossible")
