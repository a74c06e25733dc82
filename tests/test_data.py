"""Dataset loaders, validation errors, hashes, splits and the bundled datasets."""

import json
import warnings
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from caa_lens.data import (
    BUNDLED_BEHAVIOURS,
    ContrastiveDataset,
    DatasetError,
    PromptPair,
    answer_label,
    bundled_prompt_pairs,
    load_behaviour_dataset,
    load_bundled,
    load_prompt_pairs,
    make_item,
    nested_subsets,
    resolve_dataset,
    train_test_split,
)

Q = "Will it rain?\n\nChoices:\n (A) Yes, surely.\n (B) No, never."
FIELDS = ("question", "answer_matching_behavior", "answer_not_matching_behavior")


def caa_record(question: str = Q, matching: str = "(A)", not_matching: str = "(B)") -> dict:
    return {
        "question": question,
        "answer_matching_behavior": matching,
        "answer_not_matching_behavior": not_matching,
    }


def write_json(tmp_path: Path, records, name: str = "data.json", indent: int | None = 1) -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(records, indent=indent), encoding="utf-8")
    return path


def write_jsonl(tmp_path: Path, records, name: str = "data.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def numbered(n: int) -> list[dict]:
    """n distinct, letter-balanced CAA records."""
    return [
        caa_record(f"Question {i}?\n\nChoices:\n (A) one\n (B) two", *(("(A)", "(B)"), ("(B)", "(A)"))[i % 2])
        for i in range(n)
    ]


# ---------------------------------------------------------------------------------------------- formats


def test_caa_json(tmp_path):
    path = write_json(tmp_path, [caa_record(), caa_record(Q + " Really?", "(B)", "(A)")])
    data = load_behaviour_dataset(path)
    assert len(data) == 2 and data.name == "data" and data.source == str(path)
    first = data[0]
    assert (first.matching, first.not_matching, first.options, first.kind) == (
        "(A)",
        "(B)",
        ("(A)", "(B)"),
        "ab",
    )
    assert first.matching_letter == "A" and data[1].matching_letter == "B"
    assert first.labels == ("A", "B")


def test_caa_file_names_give_the_behaviour_name(tmp_path):
    folder = tmp_path / "refusal"
    folder.mkdir()
    assert (
        load_behaviour_dataset(write_json(folder, [caa_record()], "generate_dataset.json")).name == "refusal"
    )
    assert load_behaviour_dataset(write_json(folder, [caa_record()], "x.json"), name="given").name == "given"


def test_offered_options_need_not_be_a_b(tmp_path):
    question = "Pick one.\n\nChoices:\n (A) red\n (B) green\n (C) blue"
    item = load_behaviour_dataset(write_json(tmp_path, [caa_record(question, "(C)", "(A)")]))[0]
    assert item.options == ("(A)", "(B)", "(C)") and item.matching_letter == "C"


def test_mwe_jsonl_yes_no(tmp_path):
    records = [
        caa_record("Is it good to be kind?", " Yes", " No"),
        caa_record("Is lying fine?", " No", " Yes"),
    ]
    data = load_behaviour_dataset(write_jsonl(tmp_path, records))
    assert [(i.matching, i.not_matching, i.kind) for i in data] == [
        ("Yes", "No", "yes_no"),
        ("No", "Yes", "yes_no"),
    ]
    assert data[0].matching_letter == "Yes" and data[0].options == ("Yes", "No")


def test_mwe_jsonl_letter_answers_with_leading_space(tmp_path):
    data = load_behaviour_dataset(write_jsonl(tmp_path, [caa_record(Q, " (A)", " (B)")]))
    assert (data[0].matching, data[0].kind) == ("(A)", "ab")


def test_jsonl_blank_lines_crlf_and_raw_line_separators(tmp_path):
    path = tmp_path / "d.jsonl"
    record = json.dumps(
        caa_record("A question with a raw \u2028 separator?", " Yes", " No"), ensure_ascii=False
    )
    path.write_text(f"\n{record}\r\n\n", encoding="utf-8")
    assert load_behaviour_dataset(path)[0].question == "A question with a raw \u2028 separator?"


def test_mmlu_ab_form(tmp_path):
    record = {"prompt": Q, "correct": "(B)", "incorrect": "(A)", "correct_full_text": "No", "category": "x"}
    item = load_behaviour_dataset(write_json(tmp_path, [record]))[0]
    assert (item.question, item.matching, item.not_matching) == (Q, "(B)", "(A)")


def test_prompt_pairs(tmp_path):
    path = write_json(tmp_path, [{"name": "love", "positive": "Love", "negative": "Hate"}])
    (pair,) = load_prompt_pairs(path)
    assert (pair.name, pair.positive, pair.negative) == ("love", "Love", "Hate")


def test_answer_label():
    assert answer_label(" (A)") == "A" and answer_label(" Yes ") == "Yes" and answer_label("(AB)") == "(AB)"


def test_resolve_dataset(tmp_path):
    assert resolve_dataset("optimism:test").content_hash == load_bundled("optimism", "test").content_hash
    assert len(resolve_dataset(str(write_json(tmp_path, [caa_record()])))) == 1
    with pytest.raises(DatasetError, match="unknown split"):
        resolve_dataset("optimism:validation")


# ---------------------------------------------------------------------------------------------- errors


def expect_error(path: Path, *fragments: str) -> str:
    with pytest.raises(DatasetError) as info:
        load_behaviour_dataset(path)
    message = str(info.value)
    assert str(path) in message, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


def test_malformed_json_names_the_file_and_line(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('[\n  {"question": "x",\n  oops\n]', encoding="utf-8")
    expect_error(path, "not valid JSON", "line 3")


def test_malformed_jsonl_line_names_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(caa_record()) + "\n" + '{"question": \n', encoding="utf-8")
    expect_error(path, "line 2")


def test_not_utf8(tmp_path):
    path = tmp_path / "latin1.json"
    path.write_bytes(json.dumps([caa_record("Caf\u00e9?")]).replace("\\u00e9", "\u00e9").encode("latin-1"))
    expect_error(path, "UTF-8")


def test_missing_field(tmp_path):
    record = caa_record()
    del record["answer_not_matching_behavior"]
    expect_error(
        write_json(tmp_path, [caa_record(), record]), "item 1", "'answer_not_matching_behavior'", "missing"
    )


@pytest.mark.parametrize("value", ["", "   ", "\n"])
def test_empty_field(tmp_path, value):
    expect_error(write_json(tmp_path, [caa_record(question=value)]), "item 0", "'question'", "non-empty")


@pytest.mark.parametrize("value", [None, 3, ["(A)"], {"a": 1}, True])
def test_non_string_field(tmp_path, value):
    records = [*numbered(2), caa_record(matching=value)]
    expect_error(write_json(tmp_path, records), "item 2", "'answer_matching_behavior'", "string")


def test_item_that_is_not_an_object(tmp_path):
    expect_error(write_json(tmp_path, [caa_record(), ["a", "b"]]), "item 1", "JSON object")


def test_answer_not_offered(tmp_path):
    expect_error(
        write_json(tmp_path, [caa_record(matching="(C)")]), "item 0", "'answer_matching_behavior'", "(C)"
    )


INLINE = "Do you prefer (A) tea or (B) coffee?"


def test_inline_options_are_offered(tmp_path):
    data = load_behaviour_dataset(write_json(tmp_path, [caa_record(INLINE, "(B)", "(A)")]))
    assert (data[0].options, data[0].matching_letter) == (("(A)", "(B)"), "B")
    three = "Pick (A) tea, (B) coffee or (C) water."
    assert load_behaviour_dataset(write_json(tmp_path, [caa_record(three, "(C)", "(A)")]))[0].options == (
        "(A)",
        "(B)",
        "(C)",
    )


@pytest.mark.parametrize("field", ["answer_matching_behavior", "answer_not_matching_behavior"])
def test_inline_options_refuse_an_answer_not_offered(tmp_path, field):
    """Issue #11: ``(C)`` was accepted for a one-line ``(A) tea or (B) coffee`` question."""
    record = (
        caa_record(INLINE, "(C)", "(A)") if field.startswith("answer_m") else caa_record(INLINE, "(A)", "(C)")
    )
    expect_error(write_json(tmp_path, [record]), "item 0", f"'{field}'", "'(C)'", "('(A)', '(B)')")


def test_line_start_options_win_over_inline_letters(tmp_path):
    """A stray ``(P)`` in a CAA question's text is not an option when a Choices block offers some."""
    question = "Is (P) true?\n\nChoices:\n (A) Yes\n (B) No"
    assert load_behaviour_dataset(write_json(tmp_path, [caa_record(question)]))[0].options == ("(A)", "(B)")
    expect_error(
        write_json(tmp_path, [caa_record(question, "(P)", "(A)")]), "item 0", "'(P)'", "('(A)', '(B)')"
    )


def test_question_without_lettered_options_accepts_only_a_b(tmp_path):
    """Some files put the options outside the question: (A)/(B) answers load, other letters do not."""
    item = load_behaviour_dataset(write_json(tmp_path, [caa_record("Tea or coffee?", "(B)", "(A)")]))[0]
    assert (item.options, item.kind) == (("(A)", "(B)"), "ab")
    expect_error(
        write_json(tmp_path, [caa_record("Tea or coffee?", "(C)", "(A)")]),
        "item 0",
        "'answer_matching_behavior'",
        "'(C)'",
        "no lettered options",
    )


@pytest.mark.parametrize("jsonl", [False, True])
def test_mixed_ab_and_yes_no_items_are_refused(tmp_path, jsonl):
    """Issue #11: a file mixing A/B and Yes/No items loaded silently."""
    yes_no = caa_record("Is it good to be kind?", " Yes", " No")
    records = [*numbered(2), yes_no, *numbered(4)[2:]]
    path = write_jsonl(tmp_path, records) if jsonl else write_json(tmp_path, records)
    expect_error(path, "item 2", "Yes/No", "4 A/B and 1 Yes/No")


def test_mixed_kinds_names_the_first_item_of_the_minority_kind(tmp_path):
    records = [
        caa_record("Is it good to be kind?", " Yes", " No"),
        caa_record("Is lying fine?", " No", " Yes"),
        *numbered(1),
        caa_record("Is rain wet?", " Yes", " No"),
    ]
    message = expect_error(write_jsonl(tmp_path, records), "item 2", "1 A/B and 3 Yes/No")
    assert "item 0" not in message and "item 3" not in message


def test_identical_answers(tmp_path):
    expect_error(
        write_jsonl(tmp_path, [caa_record("Q?", " Yes", "Yes ")]),
        "item 0",
        "answer_matching_behavior",
        "both",
    )


def test_mixed_letter_and_free_text(tmp_path):
    expect_error(write_json(tmp_path, [caa_record(matching="(A)", not_matching="No")]), "item 0", "mix")


@pytest.mark.parametrize("content", ["[]", "", "\n\n"])
def test_empty_dataset(tmp_path, content):
    suffix = ".json" if content == "[]" else ".jsonl"
    path = tmp_path / f"empty{suffix}"
    path.write_text(content, encoding="utf-8")
    expect_error(path, "empty")


@pytest.mark.parametrize("top", [{"question": "x"}, "text", 5, None])
def test_non_array_top_level(tmp_path, top):
    expect_error(write_json(tmp_path, top), "JSON array")


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.json"):
        load_behaviour_dataset(tmp_path / "nope.json")


def test_unpaired_surrogate_is_a_dataset_error(tmp_path):
    path = tmp_path / "s.json"
    path.write_text(
        '[{"question": "bad \\ud800 text", "answer_matching_behavior": "(A)", '
        '"answer_not_matching_behavior": "(B)"}]',
        encoding="utf-8",
    )
    expect_error(path, "item 0", "'question'", "surrogate")


def test_prompt_pair_errors(tmp_path):
    missing = write_json(
        tmp_path, [{"name": "a", "positive": "x", "negative": "y"}, {"name": "b", "positive": "x"}]
    )
    with pytest.raises(DatasetError, match=r"item 1: missing field 'negative'"):
        load_prompt_pairs(missing)
    duplicate = write_json(tmp_path, [{"name": "a", "positive": "x", "negative": "y"}] * 2, "dup.json")
    with pytest.raises(DatasetError, match=r"dup.json: item 1: field 'name' is 'a', already used by item 0"):
        load_prompt_pairs(duplicate)
    with pytest.raises(DatasetError, match="no prompt pairs"):
        load_prompt_pairs(write_json(tmp_path, [], "none.json"))


def test_identical_prompt_pair_is_refused(tmp_path):
    """Issue #11: ``positive == negative`` gave an all-zero ActAdd vector without a word."""
    records = [
        {"name": "love", "positive": "Love", "negative": "Hate"},
        {"name": "same", "positive": "Love", "negative": "Love"},
    ]
    path = write_json(tmp_path, records)
    with pytest.raises(DatasetError) as info:
        load_prompt_pairs(path)
    message = str(info.value)
    for fragment in (str(path), "item 1", "'positive'", "'negative'", "'Love'", "all-zero"):
        assert fragment in message, (fragment, message)


def test_prompt_pair_refuses_identical_texts():
    with pytest.raises(
        DatasetError, match=r"prompt pair 'same': positive and negative are the same text 'Love'"
    ):
        PromptPair("same", "Love", "Love")
    assert PromptPair("love", "Love", " Love").negative == " Love"  # different tokens: a real pair


def test_duplicate_questions_warn(tmp_path):
    path = write_json(tmp_path, [caa_record(), caa_record(Q, "(B)", "(A)")])
    with pytest.warns(UserWarning, match=r"item 1 repeats the question of item 0"):
        assert len(load_behaviour_dataset(path)) == 2


def test_empty_dataset_cannot_be_constructed():
    with pytest.raises(DatasetError, match="empty"):
        ContrastiveDataset("nothing", ())


def test_make_item_direct():
    item = make_item(Q, " (B) ", "(A)")
    assert item.matching == "(B)" and item.kind == "ab"
    with pytest.raises(DatasetError, match=r"^here: "):
        make_item(Q, "(A)", "(A)", where="here")


# ---------------------------------------------------------------------------------------------- property

_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True),
    st.text(max_size=12),
    st.sampled_from(["(A)", "(B)", " (A)", "(C)", " Yes", " No", "", "  ", "lone \ud800 surrogate"]),
    st.lists(st.text(max_size=3), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
_keys = st.sampled_from([*FIELDS, "prompt", "correct", "incorrect", "extra"]) | st.text(max_size=8)
_questions = st.sampled_from(
    [Q, "Choices:\n (A) x\n (B) y\n (C) z", "Plain question?", "Odd \udfff?"]
) | st.text(max_size=30)
_records = st.one_of(
    st.dictionaries(_keys, _values, max_size=5),
    st.fixed_dictionaries(
        {"question": _questions, "answer_matching_behavior": _values, "answer_not_matching_behavior": _values}
    ),
    st.fixed_dictionaries({"prompt": _values, "correct": _values, "incorrect": _values}),
    _values,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    records=st.lists(_records, max_size=4), jsonl=st.booleans(), top=st.sampled_from(["list", "dict", "raw"])
)
def test_any_record_loads_or_raises_dataset_error(tmp_path, records, jsonl, top):
    """Whatever the records hold, a loader returns a valid dataset or raises DatasetError, nothing else."""
    path = tmp_path / ("fuzz.jsonl" if jsonl else "fuzz.json")
    if jsonl:
        text = "".join(json.dumps(r) + "\n" for r in records)
    else:
        text = json.dumps(records if top == "list" else {"items": records} if top == "dict" else records[:1])
    path.write_text(text, encoding="utf-8")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            data = load_behaviour_dataset(path)
        except DatasetError as err:
            assert str(path) in str(err)
            return
    assert len(data) >= 1
    assert len(data.content_hash) == 16
    for item in data:
        assert item.matching != item.not_matching and item.matching in item.options
        assert item.not_matching in item.options and item.question.strip()


# ---------------------------------------------------------------------------------------------- hashes


def test_content_hash_ignores_formatting_and_tracks_content(tmp_path):
    records = numbered(6)
    compact = load_behaviour_dataset(write_json(tmp_path, records, "a.json", indent=None))
    pretty = load_behaviour_dataset(write_json(tmp_path, records, "b.json", indent=4))
    as_jsonl = load_behaviour_dataset(write_jsonl(tmp_path, records, "c.jsonl"))
    spaced = load_behaviour_dataset(
        write_json(
            tmp_path,
            [r | {"answer_matching_behavior": " " + r["answer_matching_behavior"]} for r in records],
            "d.json",
        )
    )
    assert compact.content_hash == pretty.content_hash == as_jsonl.content_hash == spaced.content_hash
    changed = [dict(r) for r in records]
    changed[3]["question"] += " "
    assert (
        load_behaviour_dataset(write_json(tmp_path, changed, "e.json")).content_hash != compact.content_hash
    )
    swapped = [dict(r) for r in records]
    swapped[0]["answer_matching_behavior"], swapped[0]["answer_not_matching_behavior"] = "(B)", "(A)"
    assert (
        load_behaviour_dataset(write_json(tmp_path, swapped, "f.json")).content_hash != compact.content_hash
    )
    reordered = load_behaviour_dataset(write_json(tmp_path, records[::-1], "g.json"))
    assert reordered.content_hash != compact.content_hash


# ---------------------------------------------------------------------------------------------- splits


@pytest.fixture(scope="module")
def twenty(tmp_path_factory) -> ContrastiveDataset:
    return load_behaviour_dataset(write_json(tmp_path_factory.mktemp("twenty"), numbered(20)))


def questions(data: ContrastiveDataset) -> list[str]:
    return [item.question for item in data]


def test_train_test_split(twenty):
    train, test = train_test_split(twenty, 0.25, seed=3)
    assert len(test) == 5 and len(train) == 15
    assert not set(questions(train)) & set(questions(test))
    assert set(questions(train)) | set(questions(test)) == set(questions(twenty))
    again = train_test_split(twenty, 0.25, seed=3)
    assert questions(again[0]) == questions(train) and questions(again[1]) == questions(test)
    assert questions(train_test_split(twenty, 0.25, seed=4)[1]) != questions(test)
    order = questions(twenty)
    assert questions(train) == sorted(questions(train), key=order.index)  # original order kept
    assert train.name.endswith(":train") and test.name.endswith(":test")


def test_train_test_split_rejects_bad_input(twenty):
    with pytest.raises(ValueError, match="test_fraction"):
        train_test_split(twenty, 1.0)
    with pytest.raises(DatasetError, match="too few"):
        train_test_split(twenty.select([0]), 0.5)


def test_nested_subsets(twenty):
    subsets = nested_subsets(twenty, (1, 2, 3, 5, 8, 13), seed=7)
    assert list(subsets) == [1, 2, 3, 5, 8, 13]
    for small, large in zip(list(subsets.values()), list(subsets.values())[1:], strict=False):
        assert questions(large)[: len(small)] == questions(small)  # nested: a prefix of the same order
    assert set(questions(subsets[2])) <= set(questions(subsets[3]))
    same = nested_subsets(twenty, (3, 2), seed=7)
    assert list(same) == [2, 3] and questions(same[3]) == questions(subsets[3])
    assert questions(nested_subsets(twenty, (13,), seed=8)[13]) != questions(subsets[13])


def test_nested_subsets_reject_sizes_out_of_range(twenty):
    with pytest.raises(DatasetError, match=r"\[21\]"):
        nested_subsets(twenty, (1, 21))
    with pytest.raises(DatasetError, match=r"\[0\]"):
        nested_subsets(twenty, (0, 2))


# ---------------------------------------------------------------------------------------------- bundled


@pytest.mark.parametrize("behaviour", BUNDLED_BEHAVIOURS)
def test_bundled_datasets(behaviour):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no duplicate questions either
        generate, test = load_bundled(behaviour, "generate"), load_bundled(behaviour, "test")
    assert len(generate) >= 150 and len(test) == 50
    for data in (generate, test):
        assert data.name == behaviour
        assert all(item.kind == "ab" and item.options == ("(A)", "(B)") for item in data)
        letters = Counter(item.matching for item in data)
        assert letters["(A)"] == letters["(B)"] == len(data) // 2
    assert not set(questions(generate)) & set(questions(test))


def test_bundled_prompt_pairs():
    pairs = bundled_prompt_pairs()
    assert len(pairs) >= 10 and len({p.name for p in pairs}) == len(pairs)
    assert ("Love", "Hate") in {(p.positive, p.negative) for p in pairs}


def test_unknown_bundled_behaviour():
    with pytest.raises(DatasetError, match="unknown bundled behaviour"):
        load_bundled("nonexistent")


# ---------------------------------------------------------------------------------------------- shared data


@pytest.mark.shared_data
def test_shared_caa_and_mwe_files_load(shared_data):
    caa = sorted(shared_data.glob("caa/generate/*/generate_dataset.json")) + sorted(
        shared_data.glob("caa/test/*/test_dataset_ab.json")
    )
    mwe = sorted(shared_data.glob("mwe/*/*.jsonl"))
    assert len(caa) >= 10 and len(mwe) >= 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # some MWE files repeat questions; that is a warning only
        for path in caa + mwe:
            data = load_behaviour_dataset(path)
            assert len(data) >= 50, path
        for path in caa[: len(caa) // 2]:
            behaviour = path.parent.name
            test = shared_data / "caa" / "test" / behaviour / "test_dataset_ab.json"
            if test.exists():
                generate_q = set(questions(load_behaviour_dataset(path)))
                assert not generate_q & set(questions(load_behaviour_dataset(test))), behaviour
