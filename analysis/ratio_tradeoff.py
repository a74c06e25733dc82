"""The ratio trade-off: how hard to push a steering vector before the text breaks.

``ratio_tradeoff`` sweeps the ratio ||m v|| / ||resid|| (both signs) and reports the whole curve: the
paired behaviour effect against unsteered on the same items and the perplexity increase on the same
text tokens, each with an interval, then picks the ratio with the largest behaviour effect within a
stated perplexity budget (``select_ratio``): the Patterns paper's open question of how hard to push
before the text breaks. The perplexity side is ``steered_token_losses`` on ``perplexity_text``,
compared token by token (``nll_increase``).
"""

import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from analysis._scoring import layer_scores, prefix_batches
from caa_lens.capability import read_text, text_windows
from caa_lens.data import ContrastiveDataset, neutral_text
from caa_lens.evaluation import scoring_prompts
from caa_lens.multipliers import check_injection_multipliers
from caa_lens.prompts import pad_token_id, right_pad
from caa_lens.residuals import multiplier_for_ratio, residual_norm
from caa_lens.stats import paired_effect
from caa_lens.steering import Injection, steering
from caa_lens.vectors import SteeringVector

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

__all__ = [
    "RatioTradeoff",
    "most_efficient_ratio",
    "nll_increase",
    "perplexity_text",
    "ratio_tradeoff",
    "select_ratio",
    "steered_token_losses",
]

SHARED_DATA_ENV = "CAA_LENS_SHARED_DATA"  # the shared reference data directory (../shared/data)
WIKITEXT = Path("text") / "wiki.test.raw"


def perplexity_text(source: str | Path | None = None) -> tuple[str, str]:
    """The reference text for perplexity under steering, and a description of where it came from.

    ``source`` may be a text file, or a shared-data directory holding ``text/wiki.test.raw``
    (WikiText-2's raw test split; ``../shared/data/README.md``). Without it, the directory named by
    ``$CAA_LENS_SHARED_DATA`` is used when it holds WikiText-2, else caa_lens's bundled neutral text
    (``caa_lens.data.neutral_text``: about 4,000 words of varied encyclopedic prose, no repetition).
    A ``source`` that does not exist is an error rather than a silent fallback.
    """
    if source is not None:
        path = Path(source)
        if path.is_dir():
            path = path / WIKITEXT
        if not path.is_file():
            raise FileNotFoundError(
                f"no perplexity text at {path}: pass a text file, or a shared-data directory holding "
                f"{WIKITEXT} (see ../shared/data/README.md), or None for the bundled neutral text"
            )
        return read_text(path), (f"WikiText-2 test ({path})" if path.name == WIKITEXT.name else str(path))
    shared = os.environ.get(SHARED_DATA_ENV)
    if shared:
        path = Path(shared) / WIKITEXT
        if path.is_file():
            return read_text(path), f"WikiText-2 test ({path})"
        warnings.warn(
            f"${SHARED_DATA_ENV} is set but {path} does not exist; using the bundled neutral text",
            stacklevel=2,
        )
    return neutral_text(), "caa_lens bundled neutral text (caa_lens.data.neutral_text)"


def steered_token_losses(
    model: "TransformerBridge",
    vector: SteeringVector,
    layer: int,
    multipliers: Sequence[float],
    text: str | Sequence[int],
    context: int | None = None,
    stride: int | None = None,
    max_tokens: int | None = None,
    add_bos: bool | None = None,
    rows_per_pass: int = 8,
) -> Float[Tensor, "multiplier token"]:
    """Per-token NLL (nats) of ``text`` with ``m * v`` added at every position of ``layer``, per m.

    The tokenization, BOS rule and sliding windows are ``caa_lens.capability.perplexity``'s, so the
    mean of row k is that function's ``mean_nll`` under ``Injection(vector, layer, m_k, "all")``.
    Columns are the scored tokens in text order, the same tokens for every multiplier, so rows can
    be compared token by token (``nll_increase``). Every (multiplier, window) pair is one batch row:
    ``rows_per_pass`` rows share a forward pass (the logits take ``rows * context * vocab`` floats).
    """
    plan = text_windows(model, text, context, stride, max_tokens, add_bos)
    ids, prefix, windows, first = plan.ids, plan.prefix, plan.windows, plan.first_scored
    values = torch.tensor([float(m) for m in multipliers])
    check_injection_multipliers([Injection(vector, layer, values, "all")])
    losses = torch.full((len(values), len(ids) - first), math.nan, dtype=torch.float64)
    jobs = [(k, window) for k in range(len(values)) for window in windows]
    pad, device = pad_token_id(model.tokenizer), model.cfg.device
    for begin in range(0, len(jobs), rows_per_pass):
        chunk = jobs[begin : begin + rows_per_pass]
        batch, mask = right_pad([prefix + ids[start:end] for _, (start, end, _) in chunk], pad)
        injection = Injection(vector, layer, values[[k for k, _ in chunk]], "all")
        with torch.inference_mode(), steering(model, [injection], start=0):
            logits = model(batch.to(device), attention_mask=mask.to(device))
        for i, (k, (start, end, score_from)) in enumerate(chunk):
            # Text token t sits at column t - start + len(prefix); the column before predicts it.
            columns = torch.arange(score_from, end) - start + len(prefix)
            logprobs = logits[i, columns - 1].double().log_softmax(dim=-1)
            targets = batch[i, columns].to(logprobs.device)
            losses[k, score_from - first : end - first] = -logprobs.gather(-1, targets[:, None])[:, 0].cpu()
    bad = [float(values[k]) for k in range(len(values)) if not torch.isfinite(losses[k]).all()]
    if bad:
        raise ValueError(
            f"the text's token losses are not finite under multipliers {bad} at layer {layer}: the "
            f"steered activations overflowed; use smaller ratios"
        )
    return losses


def nll_increase(
    steered: Float[Tensor, " token"],
    baseline: Float[Tensor, " token"],
    block_tokens: int = 64,
    n_resamples: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Mean per-token NLL increase (nats) of ``steered`` over ``baseline`` on the same tokens, with a
    block-bootstrap interval: ``(mean, low, high)``.

    Neighbouring tokens' losses move together (a hard passage is hard for several tokens), so
    resampling single tokens would understate the uncertainty; the tokens are cut into consecutive
    blocks of ``block_tokens`` and whole blocks are resampled (the mean is the resampled blocks' total
    over their token count). With fewer than two blocks the interval is NaN. ``exp(x) - 1`` of each
    value is the relative perplexity increase, since perplexity is ``exp`` of the mean NLL.

    >>> base = torch.rand(640, dtype=torch.float64)
    >>> mean, low, high = nll_increase(base + 0.1, base)
    >>> round(mean, 6), round(low, 6), round(high, 6)
    (0.1, 0.1, 0.1)
    """
    if steered.shape != baseline.shape or steered.dim() != 1 or not steered.numel():
        raise ValueError(
            f"steered and baseline must be per-token losses of the same tokens, got shapes "
            f"{tuple(steered.shape)} and {tuple(baseline.shape)}"
        )
    if block_tokens < 1 or not 0 < level < 1:
        raise ValueError(f"block_tokens must be >= 1 and level in (0, 1), got {block_tokens}, {level}")
    differences = (steered.double() - baseline.double()).cpu()
    mean = float(differences.mean())
    n_blocks = -(-len(differences) // block_tokens)
    if n_blocks < 2:
        return mean, math.nan, math.nan
    padded = torch.zeros(n_blocks * block_tokens, dtype=torch.float64)
    padded[: len(differences)] = differences
    sums = padded.reshape(n_blocks, block_tokens).sum(1)
    lengths = torch.full((n_blocks,), float(block_tokens), dtype=torch.float64)
    lengths[-1] = len(differences) - (n_blocks - 1) * block_tokens  # the last block may be shorter
    generator = torch.Generator().manual_seed(seed)
    picks = torch.randint(n_blocks, (n_resamples, n_blocks), generator=generator)
    means = sums[picks].sum(1) / lengths[picks].sum(1)
    tail = (1 - level) / 2
    low, high = (float(q) for q in means.quantile(torch.tensor([tail, 1 - tail], dtype=torch.float64)))
    # Rounding can put an endpoint a hair past the mean when every block agrees.
    return mean, min(low, mean), max(high, mean)


@dataclass(frozen=True, eq=False)
class RatioTradeoff:
    """Behaviour effect and perplexity increase at each ratio ||m v|| / ||resid|| at one layer.

    ``table`` columns, one row per signed ratio (a negative ratio steers against the behaviour):

    - ``ratio``, ``multiplier`` (``caa_lens.residuals.multiplier_for_ratio``), ``p_matching`` (mean).
    - ``behaviour_change`` (``_low``, ``_high``): the paired effect vs unsteered on the same items,
      signed by the ratio (positive = moved the way the ratio steers), with its bootstrap interval
      over items (``caa_lens.stats.paired_effect``).
    - ``perplexity``; ``perplexity_increase`` (``_low``, ``_high``): ppl / ppl_unsteered - 1, from the
      mean per-token NLL increase on the same tokens (``nll_increase``, in nats: ``nll_increase``
      column), with a block-bootstrap interval over the text's tokens.
    - ``within_budget``: ``perplexity_increase <= perplexity_budget``.

    ``best_ratio`` is chosen by ``select_ratio`` (NaN when no ratio qualifies); ``selection`` says
    why. Pick on a selection split of the items and report on another (``analysis.selection``).
    """

    layer: int
    reference_norm: float
    baseline_score: float
    baseline_perplexity: float
    perplexity_budget: float
    table: pd.DataFrame
    best_ratio: float
    selection: str = ""
    text_source: str = ""
    n_items: int = 0
    n_tokens: int = 0
    block_tokens: int = 64
    level: float = 0.95


def _check_budget(perplexity_budget: float) -> None:
    if not (math.isfinite(perplexity_budget) and perplexity_budget > 0):
        raise ValueError(
            f"perplexity_budget must be a positive fraction (0.1 = +10%), got {perplexity_budget}"
        )


def select_ratio(table: pd.DataFrame, perplexity_budget: float = 0.10) -> tuple[float, str]:
    """The ratio with the largest behaviour change whose perplexity increase is within the budget.

    Criterion: among rows with ``perplexity_increase <= perplexity_budget`` (point estimate) and a
    positive ``behaviour_change``, those whose interval excludes zero (``behaviour_change_low > 0``)
    come first; the largest ``behaviour_change`` among them wins. If none excludes zero the largest
    positive change still wins, and the reason says it is indistinguishable from no effect. Returns
    ``(ratio, reason)``; ``(nan, reason)`` when no ratio qualifies.

    >>> table = pd.DataFrame({"ratio": [0.1, 0.5, 1.0], "behaviour_change": [0.05, 0.2, 0.4],
    ...     "behaviour_change_low": [0.01, 0.1, 0.3], "behaviour_change_high": [0.1, 0.3, 0.5],
    ...     "perplexity_increase": [0.01, 0.05, 0.3]})
    >>> select_ratio(table, 0.1)[0], select_ratio(table, 0.5)[0]
    (0.5, 1.0)
    """
    _check_budget(perplexity_budget)
    lacking = {"ratio", "behaviour_change", "behaviour_change_low", "perplexity_increase"} - set(table)
    if lacking:
        raise ValueError(f"select_ratio needs a ratio_tradeoff table; this one lacks {sorted(lacking)}")
    budget = f"{perplexity_budget:.0%} perplexity budget"
    within = table[table.perplexity_increase <= perplexity_budget]
    if within.empty:
        if table.perplexity_increase.notna().any():
            lowest = table.loc[table.perplexity_increase.idxmin()]
            return math.nan, (
                f"no ratio stays within the {budget} (the smallest increase is "
                f"{lowest.perplexity_increase:+.1%}, at ratio {lowest.ratio:g}): raise the budget or "
                "try smaller ratios"
            )
        return math.nan, "no ratio has a finite perplexity increase"
    moving = within[within.behaviour_change > 0]
    if moving.empty:
        return math.nan, (
            f"none of the {len(within)} ratios within the {budget} moves the behaviour the way it steers"
        )
    sure = moving[moving.behaviour_change_low > 0]
    pool = sure if len(sure) else moving
    best = pool.loc[pool.behaviour_change.idxmax()]
    reason = (
        f"ratio {best.ratio:g}: the largest behaviour change ({best.behaviour_change:+.3f}"
        + (
            f" [{best.behaviour_change_low:+.3f}, {best.behaviour_change_high:+.3f}]"
            if "behaviour_change_high" in best
            else ""
        )
        + f") among the {len(within)} ratios within the {budget} (its increase: "
        f"{best.perplexity_increase:+.1%})"
    )
    if sure.empty:
        reason += (
            "; no ratio within budget has an interval excluding 0, so it is indistinguishable from no effect"
        )
    return float(best.ratio), reason


def most_efficient_ratio(table: pd.DataFrame, perplexity_budget: float = 0.10) -> float:
    """Deprecated: ``select_ratio(table, perplexity_budget)[0]`` (the efficiency quotient it used to
    maximise was set by a perplexity threshold, not by the data)."""
    warnings.warn(
        "most_efficient_ratio is deprecated: use select_ratio(table, perplexity_budget), which also "
        "returns the reason, or RatioTradeoff.best_ratio",
        DeprecationWarning,
        stacklevel=2,
    )
    return select_ratio(table, perplexity_budget)[0]


def _signed_ratios(ratios: Sequence[float], both_signs: bool) -> list[float]:
    chosen = [float(r) for r in ratios]
    if not chosen or any(r == 0 or not math.isfinite(r) for r in chosen):
        raise ValueError(
            f"ratios must be finite and non-zero (the unsteered run is always added), got {ratios}"
        )
    if both_signs:
        chosen += [-r for r in chosen if -r not in chosen]
    return list(dict.fromkeys(chosen))


def ratio_tradeoff(
    model: "TransformerBridge",
    vector: SteeringVector,
    layer: int,
    dataset: ContrastiveDataset,
    text: str | Path | Sequence[int] | None = None,
    ratios: Sequence[float] = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0),
    reference_norm: float | None = None,
    perplexity_budget: float = 0.10,
    max_tokens: int | None = 1024,
    context: int | None = 256,
    both_signs: bool = True,
    block_tokens: int = 64,
    n_resamples: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> RatioTradeoff:
    """Sweep ||m v|| / ||resid|| at ``layer``: paired behaviour effects on ``dataset`` and the perplexity
    increase on a text, each with an interval, and the best ratio within a perplexity budget.

    Args:
        text: the reference text (a string, or its token ids), a ``Path`` to a text file or a
            shared-data directory, or ``None``: ``perplexity_text()`` (WikiText-2 from
            ``$CAA_LENS_SHARED_DATA`` when there, else the bundled neutral text). Steered at every
            position (``mode="all"``); the first ``max_tokens`` tokens are scored in windows of
            ``context`` (``caa_lens.capability.perplexity``'s windows).
        ratios: target ratios; with ``both_signs`` each is also run negated (steering against the
            behaviour). The multiplier of each is ``multiplier_for_ratio``.
        reference_norm: the residual norm the ratio refers to; by default ``residual_norm`` of the
            dataset's scoring prompts at ``layer`` (first token skipped).
        perplexity_budget: the largest relative perplexity increase a chosen ratio may cost
            (0.10 = +10%); ``select_ratio`` states the criterion.
        block_tokens: block length of the bootstrap over the text's tokens (neighbours are dependent).
        n_resamples, level, seed: of both bootstraps (items and token blocks).
    """
    _check_budget(perplexity_budget)  # before the model runs
    if text is None or isinstance(text, Path):
        text, source = perplexity_text(text)
    else:
        source = "text given by the caller"
    signed = _signed_ratios(ratios, both_signs)
    if reference_norm is None:
        prompts = [p.prompt for p in scoring_prompts(model.tokenizer, dataset)]
        reference_norm = residual_norm(model, layer, prompts, vector.provenance.site)
    multipliers = [multiplier_for_ratio(vector, layer, r, reference_norm) for r in signed]
    values = [0.0, *multipliers]
    scores = layer_scores(model, prefix_batches(model, dataset), [vector], layer, values)[:, 0]  # [item, m]
    losses = steered_token_losses(model, vector, layer, values, text, context, max_tokens=max_tokens)
    base_nll = losses[0]
    records = []
    for k, (ratio, multiplier) in enumerate(zip(signed, multipliers, strict=True), start=1):
        sign = math.copysign(1.0, ratio)
        change = paired_effect(
            sign * scores[:, k], sign * scores[:, 0], n_resamples=n_resamples, confidence=level, seed=seed
        )
        mean, low, high = nll_increase(losses[k], base_nll, block_tokens, n_resamples, level, seed)
        increase = math.expm1(mean)
        records.append(
            {
                "ratio": ratio,
                "multiplier": multiplier,
                "p_matching": float(scores[:, k].mean()),
                "behaviour_change": change.mean,
                "behaviour_change_low": change.low,
                "behaviour_change_high": change.high,
                "perplexity": math.exp(float(losses[k].mean())),
                "perplexity_increase": increase,
                "perplexity_increase_low": math.expm1(low),
                "perplexity_increase_high": math.expm1(high),
                "nll_increase": mean,
                "within_budget": increase <= perplexity_budget,
            }
        )
    table = pd.DataFrame(records)
    best, reason = select_ratio(table, perplexity_budget)
    return RatioTradeoff(
        layer,
        float(reference_norm),
        float(scores[:, 0].mean()),
        math.exp(float(base_nll.mean())),
        perplexity_budget,
        table,
        best,
        reason,
        source,
        scores.shape[0],
        losses.shape[1],
        block_tokens,
        level,
    )
