"""ActAdd's related-text perplexity experiment (Turner et al. 2023, arXiv 2308.10248) on any model: the
"weddings" vector at the front of every sentence of four texts (one about weddings, three unrelated);
per text, the perplexity ratio steered / unsteered.

Every ratio is paired: the same sentences unsteered and steered, with a 95% percentile bootstrap
interval over sentences and a null band from random vectors of the same per-position norms
(``caa_lens.stats.random_like``) at the same layer and coefficient.
"""

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

import caa_lens as cl
from analysis.actadd_data import actadd_texts, split_sentences
from analysis.actadd_setup import actadd_layer, bundled_pair, front_window, jsonable, row_norms
from caa_lens.capability import text_windows
from caa_lens.prompts import pad_token_id, right_pad
from caa_lens.stats import null_band
from caa_lens.steering import Injection, steering
from caa_lens.sweep_controls import NULL_PREFIX, with_controls

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

__all__ = ["RelatedTextConfig", "RelatedTextResult", "related_text_perplexity", "sentence_losses"]


@dataclass(frozen=True)
class RelatedTextConfig:
    """The perplexity experiment: the ``pair``'s vector at ``layer`` (default ``actadd_layer``) at the
    front of every sentence, for ``coefficients``, with ``controls`` random same-norm vectors each."""

    pair: str = "weddings"
    layer: int | None = None
    # Small: on the default model the vector's rows are several times the residual norm (see the notes in
    # the summary), and c >= 0.5 raises every text's perplexity by half or more.
    coefficients: tuple[float, ...] = (0.05, 0.1, 0.2, 0.5, 1.0)
    controls: int = 3
    control_seed: int = 0
    max_sentences: int | None = None  # per text; None: all
    batch_size: int = 16
    n_resamples: int = 4000
    seed: int = 0
    coverage: float = 0.95

    def __post_init__(self) -> None:
        if not self.coefficients or any(not math.isfinite(c) or c == 0 for c in self.coefficients):
            raise ValueError(f"coefficients must be finite and non-zero, got {self.coefficients}")
        if len(set(self.coefficients)) != len(self.coefficients):
            raise ValueError(f"coefficients repeat: {self.coefficients}")
        if self.layer is not None and self.layer < 0:
            raise ValueError(f"layer must be >= 0, got {self.layer}")
        if self.controls < 0 or self.control_seed < 0:
            raise ValueError("controls and control_seed must be >= 0")
        if self.max_sentences is not None and self.max_sentences < 1:
            raise ValueError(f"max_sentences must be >= 1 (None: all), got {self.max_sentences}")
        if self.batch_size < 1 or self.n_resamples < 1:
            raise ValueError("batch_size and n_resamples must be >= 1")

    def quick(self) -> "RelatedTextConfig":
        return replace(self, coefficients=(1.0, 4.0), controls=2, max_sentences=4, n_resamples=500)

    def short(self) -> "RelatedTextConfig":
        return replace(self, coefficients=(1.0, 4.0), controls=3, max_sentences=12)


@dataclass(frozen=True, eq=False)
class RelatedTextResult:
    """Perplexity ratios of related and unrelated texts under a front-injected ActAdd vector.

    Attributes:
        ratios: one row per (text, vector, coefficient): n_sentences, n_tokens, ppl_unsteered,
            ppl_steered, ratio = exp(mean over tokens of the NLL difference), ratio_low / ratio_high (95%
            bootstrap over sentences, paired), is_control; the tested vector's rows also carry null_low,
            null_high, n_null (the band of the controls' ratios at that text and coefficient) and vs_null.
        sentences: every sentence of every text, its token count, and whether it was used.
        losses: summed NLL of every used sentence under every (vector, coefficient), coefficient 0 the
            unsteered run.
        related: the text about the vector's topic (the wedding essay).
    """

    ratios: pd.DataFrame
    sentences: pd.DataFrame
    losses: pd.DataFrame
    layer: int
    related: str
    info: dict = field(default_factory=dict)

    def tested(self) -> pd.DataFrame:
        """The tested vector's rows of ``ratios`` (no controls)."""
        return self.ratios[~self.ratios.is_control].reset_index(drop=True)


def _injections(
    named: Mapping[str, cl.SteeringVector], rows: Sequence[tuple[str, float]], layer: int
) -> list[Injection]:
    """One front injection per vector among ``rows``, its multiplier zero on the other rows."""
    out = []
    for name in sorted({n for n, c in rows if c != 0}):
        values = [c if n == name else 0.0 for n, c in rows]
        out.append(Injection(named[name], layer, torch.tensor(values, dtype=torch.float32), "front"))
    return out


def sentence_losses(
    model: "TransformerBridge",
    sentences: Sequence[str],
    named: Mapping[str, cl.SteeringVector],
    layer: int,
    coefficients: Sequence[float],
    batch_size: int = 16,
    progress: bool = False,
) -> pd.DataFrame:
    """Summed NLL and token count of every sentence as its own sequence, unsteered and under every
    (vector, coefficient) added in mode front from the sentence's first token.

    The BOS and scoring rules are ``caa_lens.capability.perplexity``'s (``text_windows``): the BOS,
    when the tokenizer adds one, is unscored context and every text token is scored; without it the
    first token is not scored. Rows of different vectors and coefficients share batches (per-row
    multipliers, zero on the others), so ``exp(nll / n_tokens)`` equals ``perplexity(model, sentence,
    Injection(vector, layer, c, "front")).perplexity`` for each.

    Returns columns sentence_index, vector ("" for the unsteered rows), coefficient, nll, n_tokens.
    """
    plans = [text_windows(model, s) for s in sentences]
    for i, plan in enumerate(plans):
        if len(plan.windows) != 1:
            raise ValueError(f"sentence {i} is longer than one window ({plan.context} tokens); split it")
    prefix = plans[0].prefix if plans else []
    cells = [("", 0.0)] + [(n, float(c)) for n in named for c in coefficients if c != 0]
    work = sorted(
        ((i, cell) for i in range(len(plans)) for cell in cells), key=lambda w: len(plans[w[0]].ids)
    )
    pad, device = pad_token_id(model.tokenizer), model.cfg.device
    out = []
    bar = tqdm(total=len(work), desc="sentences", unit="row", disable=not progress)
    with torch.inference_mode():
        for begin in range(0, len(work), batch_size):
            batch = work[begin : begin + batch_size]
            ids, mask = right_pad([prefix + plans[i].ids for i, _ in batch], pad)
            injections = _injections(named, [cell for _, cell in batch], layer)
            with steering(model, injections, start=len(prefix)):
                logits = model(ids.to(device), attention_mask=mask.to(device))
            for row, (i, (name, coefficient)) in enumerate(batch):
                first = plans[i].first_scored + len(prefix)
                end = len(prefix) + len(plans[i].ids)
                columns = torch.arange(first, end)
                logprobs = logits[row, columns - 1].double().log_softmax(dim=-1)
                targets = ids[row, columns].to(logprobs.device)
                nll = -float(logprobs.gather(-1, targets[:, None]).sum())
                out.append((i, name, coefficient, nll, len(columns)))
            bar.update(len(batch))
    bar.close()
    table = pd.DataFrame(out, columns=["sentence_index", "vector", "coefficient", "nll", "n_tokens"])
    if not np.isfinite(table.nll).all():
        raise ValueError("a steered NLL is not finite: the activations overflowed; use smaller coefficients")
    return table.sort_values(["vector", "coefficient", "sentence_index"]).reset_index(drop=True)


def _log_ratio_interval(
    differences: np.ndarray, counts: np.ndarray, n_resamples: int, seed: int, confidence: float = 0.95
) -> tuple[float, float, float]:
    """sum(differences) / sum(counts) and its percentile bootstrap interval over items (sentences)."""
    point = float(differences.sum() / counts.sum())
    picks = np.random.default_rng(seed).integers(0, len(differences), (n_resamples, len(differences)))
    values = differences[picks].sum(axis=1) / counts[picks].sum(axis=1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(values, [tail, 1 - tail])
    return point, min(float(low), point), max(float(high), point)


def related_text_perplexity(
    model: "TransformerBridge",
    config: RelatedTextConfig = RelatedTextConfig(),
    texts: Mapping[str, str] | None = None,
    related: str | None = None,
    shared_data: str | Path | None = None,
    vector: cl.SteeringVector | None = None,
    progress: bool = False,
) -> RelatedTextResult:
    """ActAdd's perplexity experiment: does the vector make text about its topic easier to predict?

    Every text is split into sentences (``split_sentences``); a sentence shorter than the vector's front
    window is dropped (listed in ``sentences``). Each used sentence is scored as its own sequence,
    unsteered and with the vector (and ``config.controls`` random same-norm vectors) added at its front,
    at every coefficient (``sentence_losses``). Per text and coefficient the ratio is
    ``exp(sum of NLL differences / sum of tokens)``: below 1 the steered model finds the text easier.

    Args:
        texts: ``{name: text}``; default ``actadd_texts(shared_data)``.
        related: the name of the text about the topic (for the figure and the summary).
        vector: a vector to use instead of ``actadd_vector(model, pair)`` (a planted one in tests).
    """
    started = time.perf_counter()
    if texts is None:
        chosen, source, default_related = actadd_texts(shared_data)
    else:
        chosen, source, default_related = dict(texts), "given texts", next(iter(texts), "")
    related = related or default_related
    if related not in chosen:
        raise ValueError(f"the related text {related!r} is not among the texts {sorted(chosen)}")
    n_layers = int(cl.model_identity(model).n_layers)
    layer = config.layer if config.layer is not None else actadd_layer(n_layers)
    cl.check_layers(model, [layer])
    if vector is None:
        vector = cl.actadd_vector(model, bundled_pair(config.pair), [layer])
    width = front_window(model, vector, layer)
    sentence_rows, used = [], []
    for name, text in chosen.items():
        kept = 0
        for index, sentence in enumerate(split_sentences(text)):
            n_tokens = len(model.tokenizer(sentence, add_special_tokens=False).input_ids)
            ok = n_tokens >= width and (config.max_sentences is None or kept < config.max_sentences)
            reason = "" if ok else ("shorter than the window" if n_tokens < width else "past max_sentences")
            sentence_rows.append((name, index, sentence, n_tokens, ok, reason))
            if ok:
                used.append((name, index, sentence))
                kept += 1
    sentences = pd.DataFrame(
        sentence_rows, columns=["text", "sentence_index", "sentence", "n_tokens", "used", "reason"]
    )
    short = [name for name in chosen if not ((sentences.text == name) & sentences.used).any()]
    if short:
        raise ValueError(f"texts {short} have no sentence as long as the vector's {width}-token window")
    named = with_controls({config.pair: vector}, config.controls, config.control_seed)
    losses = sentence_losses(
        model, [s for _, _, s in used], named, layer, config.coefficients, config.batch_size, progress
    )
    owner = pd.DataFrame({"text": [t for t, _, _ in used], "text_sentence": [i for _, i, _ in used]})
    losses = losses.join(owner, on="sentence_index").rename(columns={"sentence_index": "row"})
    ratios = _ratios(losses, config)
    norms = row_norms(model, vector, [layer], [s for _, _, s in used])
    info = {
        "experiment": "perplexity",
        "model": cl.model_identity(model).name,
        "n_layers": n_layers,
        "pair": config.pair,
        "vector_method": vector.provenance.method,
        "mode": "front",
        "layer": int(layer),
        "window": width,
        "source": source,
        "texts": list(chosen),
        "related": related,
        "row_norms": [round(float(n), 2) for n in norms["norm"]],
        "resid_norm": round(float(norms["resid_norm"].iloc[0]), 2),
        "config": jsonable(asdict(config)),
        "seconds": round(time.perf_counter() - started, 1),
    }
    return RelatedTextResult(ratios, sentences, losses, int(layer), related, info)


def _ratios(losses: pd.DataFrame, config: RelatedTextConfig) -> pd.DataFrame:
    base = losses[losses.vector == ""].set_index("row")
    rows = []
    for (text, name, coefficient), cell in losses[losses.vector != ""].groupby(
        ["text", "vector", "coefficient"], sort=True
    ):
        cell = cell.sort_values("row")
        before = base.loc[cell.row]
        counts = cell.n_tokens.to_numpy(float)
        differences = cell.nll.to_numpy() - before.nll.to_numpy()
        point, low, high = _log_ratio_interval(differences, counts, config.n_resamples, config.seed)
        rows.append(
            {
                "text": text,
                "vector": name,
                "coefficient": float(coefficient),
                "n_sentences": len(cell),
                "n_tokens": int(counts.sum()),
                "ppl_unsteered": math.exp(before.nll.sum() / counts.sum()),
                "ppl_steered": math.exp(cell.nll.sum() / counts.sum()),
                "log_ratio": point,
                "ratio": math.exp(point),
                "ratio_low": math.exp(low),
                "ratio_high": math.exp(high),
                "is_control": str(name).startswith(f"{NULL_PREFIX}:"),
            }
        )
    table = pd.DataFrame(rows)
    null: dict[str, list] = {"null_low": [], "null_high": [], "n_null": [], "vs_null": []}
    for row in table.itertuples():
        controls = table[table.is_control & (table.text == row.text) & (table.coefficient == row.coefficient)]
        if row.is_control or controls.empty:
            null["null_low"].append(np.nan)
            null["null_high"].append(np.nan)
            null["n_null"].append(0)
            null["vs_null"].append("" if row.is_control else "no null")
            continue
        band = null_band(controls.log_ratio.to_list(), config.coverage)
        null["null_low"].append(math.exp(band.low))
        null["null_high"].append(math.exp(band.high))
        null["n_null"].append(band.n_vectors)
        verdict = "inside null"
        if row.ratio_high < math.exp(band.low):
            verdict = "below null"
        elif row.ratio_low > math.exp(band.high):
            verdict = "above null"
        null["vs_null"].append(verdict)
    return table.assign(**null)
