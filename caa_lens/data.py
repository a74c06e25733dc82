"""Contrastive data: A/B and Yes/No behaviour items, prompt pairs, their loaders, splits and hashes.

Every loader validates every item and names the file, the item index and the field in its error, so
a malformed dataset never turns into a vector of NaNs or a silently skipped item.
"""

import hashlib
import json
import random
import re
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Literal

__all__ = [
    "BUNDLED_BEHAVIOURS",
    "FIBONACCI_SIZES",
    "INLINE_LETTER",
    "OFFERED_LETTER",
    "ContrastiveDataset",
    "ContrastiveItem",
    "DatasetError",
    "ItemKind",
    "PromptPair",
    "answer_label",
    "bundled_path",
    "bundled_prompt_pairs",
    "load_behaviour_dataset",
    "load_bundled",
    "load_prompt_pairs",
    "make_item",
    "nested_subsets",
    "neutral_text",
    "resolve_dataset",
    "shuffled_indices",
    "train_test_split",
]

ItemKind = Literal["ab", "yes_no"]
FIBONACCI_SIZES: tuple[int, ...] = (1, 2, 3, 5, 8, 13, 21, 34, 55, 89)
BUNDLED_BEHAVIOURS: tuple[str, ...] = ("optimism", "formality", "sycophancy", "refusal")
_LETTER_ANSWER = re.compile(r"^\(([A-Z])\)$")
OFFERED_LETTER = re.compile(r"^[ \t]*\(([A-Z])\)", re.MULTILINE)
# "Do you prefer (A) tea or (B) coffee?": options on one line; not "f(X)", where a word precedes.
INLINE_LETTER = re.compile(r"(?<!\w)\(([A-Z])\)")
# Files that list the choices outside the question (no lettered option in it) may answer with these.
_DEFAULT_OPTIONS: tuple[str, ...] = ("(A)", "(B)")
_KIND_NAMES: dict[str, str] = {"ab": "A/B", "yes_no": "Yes/No"}


class DatasetError(ValueError):
    """A dataset file or item is malformed; the message names the file, the item and the field."""


@dataclass(frozen=True)
class ContrastiveItem:
    """One behaviour question with the answer that shows the behaviour and the one that does not.

    Answers are stored without surrounding whitespace (``"(A)"``, ``"Yes"``); the prompt formatter
    adds whatever spacing the model's template uses.
    """

    question: str
    matching: str
    not_matching: str
    options: tuple[str, ...]
    kind: ItemKind

    @property
    def matching_letter(self) -> str:
        """The token-level label scored for this item: ``A`` of ``(A)``, or ``Yes``."""
        return answer_label(self.matching)

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(answer_label(option) for option in self.options)


@dataclass(frozen=True)
class ContrastiveDataset:
    """A named, ordered collection of items with a content hash for provenance."""

    name: str
    items: tuple[ContrastiveItem, ...]
    source: str = ""

    def __post_init__(self) -> None:
        if not self.items:
            raise DatasetError(f"{self.source or self.name}: the dataset is empty")

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[ContrastiveItem]:
        return iter(self.items)

    def __getitem__(self, index: int) -> ContrastiveItem:
        return self.items[index]

    @property
    def content_hash(self) -> str:
        """SHA-256 (first 16 hex digits) of the items' content, independent of file formatting."""
        canonical = json.dumps(
            [[i.question, i.matching, i.not_matching, list(i.options), i.kind] for i in self.items],
            ensure_ascii=False,
        )
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def select(self, indices: Sequence[int], suffix: str = "") -> "ContrastiveDataset":
        items = tuple(self.items[i] for i in indices)
        return replace(self, name=self.name + suffix, items=items)


@dataclass(frozen=True)
class PromptPair:
    """An ActAdd prompt pair such as ``Love`` / ``Hate``."""

    name: str
    positive: str
    negative: str

    def __post_init__(self) -> None:
        # Both prompts would give the same activations, so the vector would be all zeros and every
        # steering run with it a silent no-op.
        if self.positive == self.negative:
            raise DatasetError(
                f"prompt pair {self.name!r}: positive and negative are the same text "
                f"{self.positive!r}, so their difference is an all-zero vector; give two different prompts"
            )


def answer_label(answer: str) -> str:
    """The part of an answer the model is scored on: the letter of ``(A)``, else the stripped answer."""
    stripped = answer.strip()
    letter = _LETTER_ANSWER.match(stripped)
    return letter.group(1) if letter else stripped


def _field(record: object, key: str, where: str) -> str:
    if not isinstance(record, dict):
        raise DatasetError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if key not in record:
        raise DatasetError(f"{where}: missing field {key!r} (fields present: {sorted(record)})")
    value = record[key]
    if not isinstance(value, str) or not value.strip():
        raise DatasetError(f"{where}: field {key!r} must be a non-empty string, got {value!r}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:  # a JSON escape such as "\ud800" decodes to a lone surrogate
        raise DatasetError(f"{where}: field {key!r} contains an unpaired surrogate ({err.reason})") from err
    return value


def make_item(question: str, matching: str, not_matching: str, where: str = "item") -> ContrastiveItem:
    """Build and validate one item; ``where`` prefixes error messages (file and index)."""
    matching, not_matching = matching.strip(), not_matching.strip()
    if matching == not_matching:
        raise DatasetError(
            f"{where}: answer_matching_behavior and answer_not_matching_behavior are both {matching!r}"
        )
    ab = [bool(_LETTER_ANSWER.match(a)) for a in (matching, not_matching)]
    if ab[0] != ab[1]:
        raise DatasetError(
            f"{where}: answers {matching!r} and {not_matching!r} mix letter and free-text forms"
        )
    if ab[0]:
        offered = _offered_options(question)
        allowed = offered or _DEFAULT_OPTIONS
        for key, answer in (
            ("answer_matching_behavior", matching),
            ("answer_not_matching_behavior", not_matching),
        ):
            if answer not in allowed:
                where_offered = (
                    f"the question offers {offered}"
                    if offered
                    else f"the question offers no lettered options, so only {_DEFAULT_OPTIONS} are accepted"
                )
                raise DatasetError(
                    f"{where}: field {key!r} is {answer!r}, not an offered option ({where_offered}); "
                    "use one of those letters or list the option in the question"
                )
        return ContrastiveItem(question, matching, not_matching, allowed, "ab")
    return ContrastiveItem(question, matching, not_matching, (matching, not_matching), "yes_no")


def _offered_options(question: str) -> tuple[str, ...]:
    """The lettered options a question offers, in order: ``("(A)", "(B)")``; ``()`` if it offers none.

    Options at the start of a line (the CAA ``Choices:`` block) win; only a question without any
    falls back to inline options such as ``Do you prefer (A) tea or (B) coffee?``, so a stray
    ``(P)`` in a CAA question's text never becomes an option.

    >>> _offered_options("Do you prefer (A) tea or (B) coffee?")
    ('(A)', '(B)')
    """
    letters = OFFERED_LETTER.findall(question) or INLINE_LETTER.findall(question)
    return tuple(dict.fromkeys(f"({letter})" for letter in letters))


def _warn_duplicates(items: Sequence[ContrastiveItem], source: str) -> None:
    seen: dict[str, int] = {}
    for index, item in enumerate(items):
        if item.question in seen:
            warnings.warn(
                f"{source}: item {index} repeats the question of item {seen[item.question]}", stacklevel=3
            )
        seen.setdefault(item.question, index)


def _refuse_mixed_kinds(items: Sequence[ContrastiveItem], path: Path) -> None:
    # One file is one behaviour measured one way: A/B and Yes/No items are scored on different answer
    # tokens, so a mean over both would average two different quantities.
    counts = Counter(item.kind for item in items)
    if len(counts) < 2:
        return
    majority = items[0].kind if counts["ab"] == counts["yes_no"] else counts.most_common(1)[0][0]
    index, odd = next((i, item) for i, item in enumerate(items) if item.kind != majority)
    raise DatasetError(
        f"{path}: item {index}: answers {odd.matching!r}/{odd.not_matching!r} make it a "
        f"{_KIND_NAMES[odd.kind]} item in a file of {counts['ab']} A/B and {counts['yes_no']} Yes/No "
        f"items (the first {_KIND_NAMES[odd.kind]} one is item {index}); put the two kinds in separate files"
    )


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DatasetError(f"{path}: not UTF-8 text (byte {err.start}: {err.reason})") from err


def _records_from_json(path: Path) -> list[object]:
    try:
        data = json.loads(_read_text(path))
    except json.JSONDecodeError as err:
        raise DatasetError(
            f"{path}: not valid JSON (line {err.lineno}, column {err.colno}): {err.msg}"
        ) from err
    if not isinstance(data, list):
        raise DatasetError(f"{path}: expected a JSON array of items, got {type(data).__name__}")
    return data


def _records_from_jsonl(path: Path) -> list[object]:
    records = []
    # split on "\n" only: str.splitlines also breaks at U+2028, U+0085..., which JSON strings may hold raw
    for line_number, line in enumerate(_read_text(path).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise DatasetError(f"{path}: line {line_number} is not valid JSON: {err.msg}") from err
    return records


def load_behaviour_dataset(path: str | Path, name: str | None = None) -> ContrastiveDataset:
    """Load a CAA-style JSON array or a model-written-evaluation JSONL file of behaviour items.

    Items need ``question``, ``answer_matching_behavior`` and ``answer_not_matching_behavior``; the
    MMLU/TruthfulQA A/B files' ``prompt``/``correct``/``incorrect`` are accepted too (``correct`` is
    the "matching" answer). A letter answer must be an option the question offers; a file must hold
    one kind of item, A/B or Yes/No, not both.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"dataset file {path} does not exist")
    records = _records_from_jsonl(path) if path.suffix == ".jsonl" else _records_from_json(path)
    items = []
    for index, record in enumerate(records):
        where = f"{path}: item {index}"
        if isinstance(record, dict) and "prompt" in record and "correct" in record:
            keys = ("prompt", "correct", "incorrect")
        else:
            keys = ("question", "answer_matching_behavior", "answer_not_matching_behavior")
        question, matching, not_matching = (_field(record, key, where) for key in keys)
        items.append(make_item(question, matching, not_matching, where))
    if not items:
        raise DatasetError(f"{path}: the dataset is empty")
    _refuse_mixed_kinds(items, path)
    _warn_duplicates(items, str(path))
    default_name = (
        path.parent.name
        if path.stem in ("generate_dataset", "test_dataset_ab", "generate", "test")
        else path.stem
    )
    return ContrastiveDataset(name or default_name, tuple(items), str(path))


def load_prompt_pairs(path: str | Path) -> tuple[PromptPair, ...]:
    """Load ActAdd prompt pairs: a JSON array of ``{name, positive, negative}``."""
    path = Path(path)
    pairs = []
    for index, record in enumerate(_records_from_json(path)):
        where = f"{path}: item {index}"
        name, positive, negative = (_field(record, key, where) for key in ("name", "positive", "negative"))
        if positive == negative:
            raise DatasetError(
                f"{where}: fields 'positive' and 'negative' are both {positive!r}; identical prompts give "
                "an all-zero steering vector, so give two different prompts"
            )
        pairs.append(PromptPair(name, positive, negative))
    if not pairs:
        raise DatasetError(f"{path}: no prompt pairs")
    first: dict[str, int] = {}
    for index, pair in enumerate(pairs):
        if pair.name in first:
            raise DatasetError(
                f"{path}: item {index}: field 'name' is {pair.name!r}, already used by item {first[pair.name]}"
            )
        first[pair.name] = index
    return tuple(pairs)


def bundled_path(behaviour: str, split: Literal["generate", "test"] = "generate") -> Path:
    """Path of a dataset shipped with caa_lens (``optimism``, ``formality``, ``sycophancy``, ``refusal``)."""
    if behaviour not in BUNDLED_BEHAVIOURS:
        raise DatasetError(f"unknown bundled behaviour {behaviour!r}: expected one of {BUNDLED_BEHAVIOURS}")
    return Path(str(resources.files("caa_lens") / "data" / behaviour / f"{split}.json"))


def load_bundled(behaviour: str, split: Literal["generate", "test"] = "generate") -> ContrastiveDataset:
    return load_behaviour_dataset(bundled_path(behaviour, split), name=behaviour)


def bundled_prompt_pairs() -> tuple[PromptPair, ...]:
    return load_prompt_pairs(Path(str(resources.files("caa_lens") / "data" / "actadd_pairs.json")))


def neutral_text() -> str:
    """About 4,000 words of plain encyclopedic prose (lighthouses, tides, bread, ...) written for
    caa_lens, for perplexity under steering when WikiText-2 is not at hand (``data/README.md``)."""
    return (resources.files("caa_lens") / "data" / "neutral_text.txt").read_text(encoding="utf-8")


def resolve_dataset(spec: str) -> ContrastiveDataset:
    """A dataset from a path, or a bundled name with an optional split: ``optimism``, ``optimism:test``."""
    behaviour, _, split = spec.partition(":")
    if behaviour in BUNDLED_BEHAVIOURS and not Path(spec).exists():
        if split not in ("", "generate", "test"):
            raise DatasetError(f"unknown split {split!r} in {spec!r}: expected 'generate' or 'test'")
        return load_bundled(behaviour, "test" if split == "test" else "generate")
    return load_behaviour_dataset(spec)


def shuffled_indices(n: int, seed: int) -> list[int]:
    """A permutation of ``range(n)`` that depends only on ``n`` and ``seed`` (not on global RNG state)."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return order


def train_test_split(
    dataset: ContrastiveDataset, test_fraction: float = 0.2, seed: int = 0
) -> tuple[ContrastiveDataset, ContrastiveDataset]:
    """Seeded split; both halves keep the items' original order."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    order = shuffled_indices(len(dataset), seed)
    n_test = max(1, round(len(dataset) * test_fraction))
    if n_test >= len(dataset):
        raise DatasetError(f"{dataset.name}: {len(dataset)} items are too few to split")
    test = sorted(order[:n_test])
    train = sorted(order[n_test:])
    return dataset.select(train, ":train"), dataset.select(test, ":test")


def nested_subsets(
    dataset: ContrastiveDataset, sizes: Sequence[int] = FIBONACCI_SIZES, seed: int = 0
) -> dict[int, ContrastiveDataset]:
    """Seeded nested subsets: the size-n subset is the first n items of one fixed permutation.

    Nesting makes a sample-size curve measure the effect of adding data, not of resampling it.
    Sizes larger than the dataset are an error rather than silently truncated.
    """
    too_big = [n for n in sizes if n > len(dataset) or n < 1]
    if too_big:
        raise DatasetError(f"{dataset.name}: sizes {too_big} are not in 1..{len(dataset)}")
    order = shuffled_indices(len(dataset), seed)
    return {n: dataset.select(order[:n], f":n{n}") for n in sorted(sizes)}
