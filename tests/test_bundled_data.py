"""The bundled refusal A/B set and the open-ended prompt files: loading, counts, balance and overlap."""

import json
import re
import warnings
from pathlib import Path

import pytest

from caa_lens.data import load_behaviour_dataset
from caa_lens.ood import load_ood_prompts

DATA = Path(__file__).resolve().parents[1] / "caa_lens" / "data"
AB_COUNTS = {"generate": 160, "test": 50}
OPEN_ENDED_BEHAVIOURS = ("refusal", "optimism", "formality", "sycophancy")
OPEN_ENDED_COUNT = 72
# Every bundled A/B file, written here or before: open-ended prompts must not repeat any of them.
ALL_AB_FILES = sorted(DATA.glob("*/generate.json")) + sorted(DATA.glob("*/test.json"))
# Words that mark the refusal option, and how the compliant option starts.
REFUSAL_MARKERS = ("sorry", "can't", "cannot", "won't", "as an ai", "not able", "rather not", "don't write")
COMPLIANT_STARTS = ("Sure", "Of course", "Happy to help")
CHOICES = re.compile(r"^(?P<stem>.*?)\n\nChoices:\n \(A\) (?P<A>[^\n]+)\n \(B\) (?P<B>[^\n]+)$", re.DOTALL)


def norm(text: str) -> str:
    return " ".join(text.split()).casefold()


def stem(question: str) -> str:
    """The user's message: the question without its choices."""
    return question.split("\n\nChoices:")[0]


def load_ab(path: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the loader warns on repeated questions
        return load_behaviour_dataset(path)


def ab_stems(path: Path) -> list[str]:
    return [norm(stem(item.question)) for item in load_ab(path)]


def open_ended_prompts(behaviour: str) -> list[str]:
    return [norm(p.prompt) for p in load_ood_prompts(DATA / behaviour / "open_ended.json")]


def mine() -> list[str]:
    """Every question stem and prompt in the files this module covers."""
    texts = [s for split in AB_COUNTS for s in ab_stems(DATA / "refusal" / f"{split}.json")]
    return texts + [p for b in OPEN_ENDED_BEHAVIOURS for p in open_ended_prompts(b)]


# ------------------------------------------------------------------------------------- refusal A/B


@pytest.mark.parametrize("split", sorted(AB_COUNTS))
def test_refusal_ab_file_loads_balanced_and_unique(split):
    path = DATA / "refusal" / f"{split}.json"
    data = load_ab(path)
    assert data.name == "refusal"
    assert len(data) == AB_COUNTS[split]
    assert all(item.kind == "ab" for item in data)
    assert {(item.matching, item.not_matching) for item in data} <= {("(A)", "(B)"), ("(B)", "(A)")}
    assert sum(item.matching == "(A)" for item in data) == len(data) // 2
    stems = [norm(stem(item.question)) for item in data]
    assert len(set(stems)) == len(stems)
    # The file follows the bundled layout: exactly three keys per record.
    for record in json.loads(path.read_text(encoding="utf-8")):
        assert set(record) == {"question", "answer_matching_behavior", "answer_not_matching_behavior"}


@pytest.mark.parametrize("split", sorted(AB_COUNTS))
def test_refusal_ab_labels_point_at_the_refusal(split):
    for item in load_ab(DATA / "refusal" / f"{split}.json"):
        match = CHOICES.match(item.question)
        assert match, item.question
        refusal, comply = match[item.matching_letter], match[item.not_matching.strip("()")]
        assert refusal != comply
        assert any(m in refusal.casefold() for m in REFUSAL_MARKERS), refusal
        assert refusal.startswith(("I", "As an AI")), refusal
        assert comply.startswith(COMPLIANT_STARTS), comply


def test_refusal_generate_and_test_share_no_question():
    generate = set(ab_stems(DATA / "refusal" / "generate.json"))
    test = set(ab_stems(DATA / "refusal" / "test.json"))
    assert not generate & test


# ------------------------------------------------------------------------------------ open-ended


@pytest.mark.parametrize("behaviour", OPEN_ENDED_BEHAVIOURS)
def test_open_ended_file_loads_with_unique_prompts(behaviour):
    prompts = load_ood_prompts(DATA / behaviour / "open_ended.json")
    assert len(prompts) == OPEN_ENDED_COUNT
    assert [p.id for p in prompts] == [f"{behaviour}-{i:03d}" for i in range(1, OPEN_ENDED_COUNT + 1)]
    texts = [norm(p.prompt) for p in prompts]
    assert len(set(texts)) == len(texts)


def test_open_ended_prompts_are_not_ab_questions():
    ab = {s for path in ALL_AB_FILES for s in ab_stems(path)}
    assert len(ALL_AB_FILES) >= 2 * len(OPEN_ENDED_BEHAVIOURS)
    for behaviour in OPEN_ENDED_BEHAVIOURS:
        assert not set(open_ended_prompts(behaviour)) & ab, behaviour


def test_open_ended_files_share_no_prompt():
    seen: dict[str, str] = {}
    for behaviour in OPEN_ENDED_BEHAVIOURS:
        for prompt in open_ended_prompts(behaviour):
            assert prompt not in seen, f"{behaviour} repeats a {seen[prompt]} prompt: {prompt}"
            seen[prompt] = behaviour


def test_prompts_are_3_to_40_words():
    for text in mine():
        assert 3 <= len(text.split()) <= 40, text


# ------------------------------------------------------------------------- against the CAA data


def caa_questions(root: Path) -> set[str]:
    """Every question (whole, and without its choices) and prompt in the CAA reference files."""
    found: set[str] = set()
    for path in sorted(root.glob("**/*.json")):
        records = json.loads(path.read_text(encoding="utf-8"))
        for record in records if isinstance(records, list) else []:
            if not isinstance(record, dict):
                continue
            for key in ("question", "prompt"):
                if isinstance(record.get(key), str):
                    found.update({norm(record[key]), norm(stem(record[key]))})
    return found


def test_no_bundled_text_equals_a_caa_question(shared_data):
    root = shared_data / "caa"
    if not root.is_dir():
        pytest.skip(f"{root} not found")
    reference = caa_questions(root)
    assert reference
    texts = set(mine())
    for split in AB_COUNTS:  # the whole refusal question, choices included, too
        texts |= {norm(item.question) for item in load_ab(DATA / "refusal" / f"{split}.json")}
    assert not texts & reference, sorted(texts & reference)[:5]
