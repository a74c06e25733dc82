"""The data of ActAdd's experiments: the topic prompts, the four texts and the negative sentences.

The prompts are ``analysis/data/actadd_prompts.json`` (written for this package); the texts and
negative sentences come from the shared reference data (``../shared/data``: ActAdd's four texts, SST-2
dev) when a directory is given or ``$CAA_LENS_SHARED_DATA`` names one, else from originally written
stand-ins in ``analysis/data``; every result records which were used (each loader returns its source).
"""

import json
import os
import re
from importlib import resources
from pathlib import Path

import pandas as pd

from caa_lens.ood import OODPrompt

__all__ = [
    "ACTADD_TEXTS",
    "SHARED_DATA_ENV",
    "SST2",
    "actadd_texts",
    "negative_sentences",
    "split_sentences",
    "topic_prompts",
]

SHARED_DATA_ENV = "CAA_LENS_SHARED_DATA"
ACTADD_TEXTS = "text/actadd_texts"  # ActAdd's four documents, under the shared data
SST2 = "text/sst2_glue_dev_872.tsv"
WEDDING_TEXT = "chatgpt_wedding_essay_20230423"  # the related text among the shared four
FALLBACK_WEDDING_TEXT = "wedding_day"


def _data_dir() -> Path:
    return Path(str(resources.files("analysis") / "data"))


def topic_prompts() -> tuple[OODPrompt, ...]:
    """The 24 neutral prompts of the topic experiment (``analysis/data/actadd_prompts.json``)."""
    path = _data_dir() / "actadd_prompts.json"
    records = json.loads(path.read_text(encoding="utf-8"))
    return tuple(OODPrompt(str(r["id"]), str(r["prompt"]), "actadd_prompts") for r in records)


def _shared_dir(shared_data: str | Path | None) -> Path | None:
    """The shared-data directory: the one given (which must exist), else ``$CAA_LENS_SHARED_DATA`` when
    it names a directory, else ``None`` (the bundled stand-ins)."""
    if shared_data is not None:
        path = Path(shared_data)
        if not path.is_dir():
            raise FileNotFoundError(f"shared data directory {path} does not exist")
        return path
    env = os.environ.get(SHARED_DATA_ENV)
    return Path(env) if env and Path(env).is_dir() else None


def actadd_texts(shared_data: str | Path | None = None) -> tuple[dict[str, str], str, str]:
    """The four texts of the perplexity experiment, their source, and the name of the related one.

    From ``<shared>/text/actadd_texts/*.txt`` (ActAdd's wedding essay, shipping essay, vegan banana
    bread and Wikipedia's Macedonia article) when a shared-data directory is given or found, else the
    four texts written for this package (``analysis/data/actadd_texts``: a wedding day and three
    unrelated ones). A given directory without the four texts is an error, not a silent fallback.
    """
    shared = _shared_dir(shared_data)
    if shared is not None:
        folder = shared / ACTADD_TEXTS
        files = sorted(folder.glob("*.txt"))
        if len(files) != 4 or WEDDING_TEXT not in {f.stem for f in files}:
            if shared_data is not None:
                raise FileNotFoundError(
                    f"{folder} should hold ActAdd's four texts (with {WEDDING_TEXT}.txt); "
                    f"found {[f.name for f in files]}"
                )
        else:
            texts = {f.stem: f.read_text(encoding="utf-8") for f in files}
            return texts, f"ActAdd's texts ({folder})", WEDDING_TEXT
    folder = _data_dir() / "actadd_texts"
    texts = {f.stem: f.read_text(encoding="utf-8") for f in sorted(folder.glob("*.txt"))}
    return texts, "caa_lens stand-in texts (analysis/data/actadd_texts)", FALLBACK_WEDDING_TEXT


def negative_sentences(shared_data: str | Path | None = None, n: int = 40) -> tuple[tuple[str, ...], str]:
    """The first ``n`` negative (label 0) SST-2 dev sentences, or the 40 bundled stand-ins, and the source."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    shared = _shared_dir(shared_data)
    path = shared / SST2 if shared is not None else None
    if path is not None and path.is_file():
        table = pd.read_csv(path, sep="\t", quoting=3, dtype={"sentence": str})
        if not {"sentence", "label"} <= set(table.columns):
            raise ValueError(f"{path}: expected the columns sentence and label, got {list(table.columns)}")
        chosen = [str(s).strip() for s in table[table["label"] == 0]["sentence"]][:n]
        return tuple(chosen), f"SST-2 dev, label 0, first {len(chosen)} ({path})"
    if shared_data is not None:
        raise FileNotFoundError(f"no SST-2 file at {path}")
    records = json.loads((_data_dir() / "negative_sentences.json").read_text(encoding="utf-8"))
    chosen = [str(s) for s in records][:n]
    return tuple(chosen), f"caa_lens stand-in negative sentences (analysis/data), first {len(chosen)}"


# A sentence ends at ., ! or ? (with any citation marks like "[3]" and closing quotes or brackets after
# it) followed by white space and a capital, a digit, or an opening quote or bracket.
_SENTENCE_END = re.compile(r"([.!?](?:\[[^\]\n]{1,20}\])*[\"')\]]*)\s+(?=[\"'(\[]?[A-Z0-9])")


def split_sentences(text: str) -> list[str]:
    """Sentences of a text: split at line breaks and after ``.``, ``!`` or ``?`` before a capital or digit
    (citation marks stay with their sentence).

    >>> split_sentences("A wedding.[2] The groom (tall) came!\\nINGREDIENTS\\n1 cup flour, e.g. spelt.")
    ['A wedding.[2]', 'The groom (tall) came!', 'INGREDIENTS', '1 cup flour, e.g. spelt.']
    """
    out = []
    for line in text.splitlines():
        marked = _SENTENCE_END.sub("\\1\\n", line.strip())
        out += [part.strip() for part in marked.split("\n") if part.strip()]
    return out
