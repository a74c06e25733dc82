"""Behaviour probability: the CAA A/B metric and the Yes/No metric, plain, steered, or swept fast.

A/B (CAA): the prompt is the model's chat template with the question as the user turn and the
assistant turn opened with ``"("``; the score of an item is p(matching letter) / sum over the offered
letters of p(letter), read at the last position. Yes/No (model-written evaluations): the same at the
start of the assistant turn over ``Yes``/``No`` (the matching answer may be ``No``). The answer token
ids are found by tokenising each complete answer in context and taking the token right after the
scoring prompt, never by tokenising the letter alone (``"A"`` and the ``A`` after ``"("`` can differ).

Sweeps use ``encode_prefixes`` + ``suffix_scores``: the tokens before the steering start are
unsteered in every cell, so they run once per question into a KV cache, and each layer runs only the
few suffix tokens, with every (vector, multiplier) cell as a batch row on a copy of that cache. The
cache engine underneath (``encode_token_prefixes``, ``suffix_logits``) takes several suffixes per
prefix; ``caa_lens.likelihood`` scores the answer texts with it.
"""

import copy
import hashlib
import json
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Literal

import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from caa_lens.data import ContrastiveDataset, ContrastiveItem
from caa_lens.prompts import FormattedPrompt, PromptStyle, check_fits, format_prompt, left_pad, pad_token_id
from caa_lens.steering import MODES, Injection, steer_start_columns, steering
from caa_lens.vectors import SteeringVector

SplitRule = Literal["from_start", "last"]
FLOAT32_MAX = float(torch.finfo(torch.float32).max)


def _largest_norm(
    vectors: SteeringVector | Mapping[str, SteeringVector] | Sequence[SteeringVector] | None,
) -> tuple[float, str]:
    """The largest norm of any direction (any layer, any ActAdd position) and where it is."""
    if vectors is None:
        return 0.0, ""
    if isinstance(vectors, SteeringVector):
        named: dict[str, SteeringVector] = {"the vector": vectors}
    elif isinstance(vectors, Mapping):
        named = {f"vector {name!r}": v for name, v in vectors.items()}
    else:
        named = {f"vector {i}": v for i, v in enumerate(vectors)}
    best, where = 0.0, ""
    for name, vector in named.items():
        norms = vector.directions.double().norm(dim=-1).reshape(len(vector.layers), -1).amax(dim=1)
        at = int(norms.argmax())
        if float(norms[at]) > best:
            best, where = float(norms[at]), f"{name} at layer {vector.layers[at]}"
    return best, where


def check_multipliers(
    values: Iterable[float | int],
    vectors: SteeringVector | Mapping[str, SteeringVector] | Sequence[SteeringVector] | None = None,
    distinct: bool = True,
) -> tuple[float, ...]:
    """Steering multipliers that cannot overflow: non-empty, finite, distinct, ``|m| * norm`` in float32.

    A multiplier such as ``1e38`` is a finite float, but ``m * v`` overflows float32 in the residual
    stream, and every score it yields is NaN: a table of NaN rows, not an error. Checking here, before a
    model runs or a file is written, turns that into a message. (A product that fits can still
    overflow inside the model, e.g. in a norm's sum of squares; scorers check their outputs too.)

    Args:
        values: the multipliers.
        vectors: the vectors they scale (one, several by name, or a list); ``None`` checks the values
            alone (finite and within float32).
        distinct: refuse repeated values (a sweep's multipliers are a set; per-row multipliers of a
            batch may repeat).

    Returns:
        The multipliers as floats, in the order given.

    >>> check_multipliers([-2, 0, 2.5])
    (-2.0, 0.0, 2.5)
    """
    try:
        floats = tuple(float(m) for m in values)
    except (TypeError, ValueError) as err:
        raise ValueError(f"multipliers must be numbers, got {values!r}") from err
    if not floats:
        raise ValueError("no multipliers given; give at least one (0 is the unsteered baseline)")
    bad = [m for m in floats if not math.isfinite(m)]
    if bad:
        raise ValueError(f"multipliers must be finite numbers, got {bad}")
    if distinct and len(set(floats)) != len(floats):
        repeated = sorted({m for m in floats if floats.count(m) > 1})
        raise ValueError(f"multipliers must be distinct; {repeated} appear more than once in {list(floats)}")
    huge = [m for m in floats if abs(m) > FLOAT32_MAX]
    if huge:
        raise ValueError(
            f"multiplier(s) {huge} exceed the largest float32 ({FLOAT32_MAX:.4g}); steering computes in "
            f"float32 or less, so they would become infinite. Use a smaller multiplier"
        )
    norm, where = _largest_norm(vectors)
    over = [m for m in floats if abs(m) * norm > FLOAT32_MAX]
    if over:
        raise ValueError(
            f"multiplier(s) {over} times the norm {norm:.4g} of {where} exceed the largest float32 "
            f"({FLOAT32_MAX:.4g}): the steered activations would be infinite and every score NaN. "
            f"Use |multiplier| < {FLOAT32_MAX / norm:.4g}"
        )
    return floats


def check_injection_multipliers(injections: Sequence[Injection]) -> None:
    """``check_multipliers`` on each injection's multiplier(s) against its own vector (repeats allowed)."""
    for injection in injections:
        multiplier = injection.multiplier
        values = multiplier.tolist() if isinstance(multiplier, Tensor) else [multiplier]
        check_multipliers(values, injection.vector, distinct=False)


@dataclass(frozen=True)
class ScoringPrompt:
    """One item ready to score: the prompt that ends where the answer token comes next."""

    prompt: FormattedPrompt
    labels: tuple[str, ...]
    label_token_ids: tuple[int, ...]
    matching: int  # index into labels


@dataclass(frozen=True)
class ItemScore:
    index: int
    item_hash: str
    matching_label: str
    p_matching: float  # normalised over the offered labels
    p_letters_sum: float  # unnormalised mass on the offered labels (sanity: should not be tiny)


@dataclass(frozen=True)
class BehaviourScores:
    """Per-item behaviour probabilities of one dataset under one steering setting."""

    dataset: str
    dataset_hash: str
    items: tuple[ItemScore, ...]

    @property
    def mean_p_matching(self) -> float:
        return sum(s.p_matching for s in self.items) / len(self.items)

    @property
    def mean_p_letters_sum(self) -> float:
        return sum(s.p_letters_sum for s in self.items) / len(self.items)

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame([vars(s) for s in self.items])


def item_hash(item: ContrastiveItem) -> str:
    """SHA-256 (16 hex digits) of one item's content: lets result rows be matched to items safely."""
    canonical = json.dumps([item.question, item.matching, item.not_matching, list(item.options), item.kind])
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def scoring_prompt(
    tokenizer,
    item: ContrastiveItem,
    system: str | None = None,
    style: PromptStyle = "auto",
    where: str = "item",
    model=None,
) -> ScoringPrompt:
    """The scoring prompt of an item and the token id of each offered answer, found in context.

    Args:
        model: when given, a prompt longer than its context is refused (``prompts.check_fits``) before
            the answers are tokenised and before anything runs.

    Raises ValueError (prefixed with ``where``) if the prompt does not fit the model, or an answer does
    not tokenise as the scoring prompt followed by a token that starts with the answer's letter or word.
    """
    ab = item.kind == "ab"
    base = format_prompt(tokenizer, item.question, "(" if ab else "", system, style)
    n = len(base)
    if model is not None:
        check_fits(model, n, where)
    ids = []
    for label in item.labels:
        answer = f"({label})" if ab else label
        full = format_prompt(tokenizer, item.question, answer, system, style)
        if full.token_ids[:n] != base.token_ids or full.answer_position != n:
            raise ValueError(
                f"{where}: answer {answer!r} does not tokenise as the scoring prompt plus a token starting "
                f"with {label!r} (prompt ends {base.text[-30:]!r}); the metric cannot be read at one position"
            )
        ids.append(full.token_ids[n])
    if len(set(ids)) != len(ids):
        raise ValueError(f"{where}: answers {item.labels} share a first token; they cannot be told apart")
    return ScoringPrompt(base, item.labels, tuple(ids), item.labels.index(item.matching_letter))


def scoring_prompts(
    tokenizer,
    dataset: ContrastiveDataset,
    system: str | None = None,
    style: PromptStyle = "auto",
    model=None,
) -> list[ScoringPrompt]:
    """Every item's scoring prompt; with ``model``, each is checked to fit its context (errors name
    the dataset file and item)."""
    where = dataset.source or dataset.name
    return [
        scoring_prompt(tokenizer, item, system, style, f"{where}: item {i}", model)
        for i, item in enumerate(dataset)
    ]


def _describe(injections: Sequence[Injection]) -> str:
    if not injections:
        return "unsteered"
    return ", ".join(f"layer {i.layer} x {float(i.multiplier):g}" for i in injections)  # type: ignore[arg-type]


def check_scores_finite(scores: Tensor, where: Sequence[str]) -> None:
    """Raise, naming the first offending row, if a score is NaN or infinite (``where[r]`` names row r).

    Steering that overflows inside the model (a norm's sum of squares, say) yields NaN probabilities;
    they must stop the run, not become a number in a table or a mean.
    """
    bad = (~torch.isfinite(scores.reshape(len(where), -1))).any(dim=1).nonzero().flatten().tolist()
    if bad:
        raise ValueError(
            f"{where[bad[0]]}: the behaviour probability is not finite ({len(bad)} of {len(where)} rows); "
            f"the steered activations overflowed. Use a smaller multiplier"
        )


def label_scores(
    logits: Float[Tensor, "row vocab"], prompts: Sequence[ScoringPrompt]
) -> Float[Tensor, "row 2"]:
    """``(p_matching normalised, mass on the offered labels)`` per row; row ``r`` uses ``prompts[r]``."""
    probs = logits.double().softmax(dim=-1).cpu()
    out = torch.empty((len(prompts), 2), dtype=torch.float64)
    for row, prompt in enumerate(prompts):
        p = probs[row, list(prompt.label_token_ids)]
        out[row, 0] = p[prompt.matching] / p.sum()
        out[row, 1] = p.sum()
    return out


@contextmanager
def steered_prompts(
    model, injections: Sequence[Injection], prompts: Sequence[FormattedPrompt], offsets: Sequence[int]
) -> Iterator[None]:
    """Steer a left-padded batch, each injection anchored by its mode as ``generation.generate`` does."""
    with ExitStack() as stack:
        for mode in MODES:  # one context per anchor rule; nested contexts add up
            group = [injection for injection in injections if injection.mode == mode]
            if group:
                stack.enter_context(steering(model, group, start=steer_start_columns(prompts, offsets, mode)))
        yield


def behaviour_probabilities(
    model,
    dataset: ContrastiveDataset,
    injections: Injection | Sequence[Injection] = (),
    batch_size: int = 16,
    system: str | None = None,
    style: PromptStyle = "auto",
    progress: bool = True,
) -> BehaviourScores:
    """The A/B or Yes/No behaviour probability of every item, one full forward pass per batch.

    Args:
        injections: steering applied to every item (float multipliers only; sweep multipliers with
            ``caa_lens.sweep.run_sweep``). ``from_start`` is anchored at each prompt's steer_start.
        batch_size: items per forward pass (left-padded with an attention mask).

    >>> from caa_lens.tiny import tiny_model
    >>> from caa_lens.data import ContrastiveDataset, make_item
    >>> item = make_item("Sunny?\\n\\nChoices:\\n (A) yes\\n (B) no", "(A)", "(B)")
    >>> scores = behaviour_probabilities(tiny_model(), ContrastiveDataset("d", (item,)), progress=False)
    >>> 0 < scores.mean_p_matching < 1
    True
    """
    injections = (injections,) if isinstance(injections, Injection) else tuple(injections)
    if any(isinstance(i.multiplier, Tensor) for i in injections):
        raise ValueError("behaviour_probabilities takes float multipliers; use run_sweep for per-row ones")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    check_injection_multipliers(injections)
    # Every prompt is checked against the context before the first forward pass.
    prompts = scoring_prompts(model.tokenizer, dataset, system, style, model)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i].prompt))  # less padding
    results = torch.empty((len(prompts), 2), dtype=torch.float64)
    device = model.cfg.device
    bar = tqdm(total=len(prompts), desc=f"score {dataset.name}", unit="item", disable=not progress)
    with torch.inference_mode():
        for begin in range(0, len(order), batch_size):
            chosen = order[begin : begin + batch_size]
            batch = [prompts[i].prompt for i in chosen]
            ids, mask, offsets = left_pad([p.token_ids for p in batch], pad_token_id(model.tokenizer))
            with steered_prompts(model, injections, batch, offsets):
                logits = model(ids.to(device), attention_mask=mask.to(device))
            results[chosen] = label_scores(logits[:, -1], [prompts[i] for i in chosen])
            bar.update(len(chosen))
    bar.close()
    source = dataset.source or dataset.name
    check_scores_finite(
        results, [f"{source}: item {i} ({_describe(injections)})" for i in range(len(prompts))]
    )
    scores = tuple(
        ItemScore(i, item_hash(item), p.labels[p.matching], float(r[0]), float(r[1]))
        for i, (item, p, r) in enumerate(zip(dataset, prompts, results, strict=True))
    )
    return BehaviourScores(dataset.name, dataset.content_hash, scores)


@dataclass(frozen=True, eq=False)
class PrefixBatch:
    """Unsteered prefixes in a KV cache, and the suffixes still to run on copies of it.

    ``cache`` is never extended: ``suffix_logits`` works on a copy. Prefixes are left-padded to
    ``width`` columns, so every suffix (right-padded) starts at column ``width``. A prefix may have
    several suffixes (the likelihood metric runs each answer text after the same question):
    suffix row ``r`` continues prefix ``owners[r]``. The letter metric has one suffix per prefix,
    so there ``owners`` is ``0, 1, ...`` and suffix row ``i`` is item ``i``.
    """

    prompts: tuple  # one per prefix: ScoringPrompt (letter metric) or LikelihoodPrompt
    cache: object  # transformers.DynamicCache
    prefix_mask: Int[Tensor, "item prefix"]
    suffix_ids: Int[Tensor, "row suffix"]
    suffix_mask: Int[Tensor, "row suffix"]
    owners: tuple[int, ...] = ()  # the prefix of each suffix row; () means row i continues prefix i

    @property
    def width(self) -> int:
        return int(self.prefix_mask.shape[1])

    @property
    def suffix_owners(self) -> tuple[int, ...]:
        """The prefix (item) each suffix row continues."""
        return self.owners or tuple(range(int(self.suffix_ids.shape[0])))


def split_position(prompt: FormattedPrompt, rule: SplitRule) -> int:
    """Where steering starts: ``steer_start`` (CAA) or the last token (Patterns paper)."""
    if rule not in ("from_start", "last"):
        raise ValueError(f"unknown split rule {rule!r}: expected 'from_start' or 'last'")
    return prompt.steer_start if rule == "from_start" else prompt.last


def encode_token_prefixes(
    model,
    prefixes: Sequence[Sequence[int]],
    suffixes: Sequence[Sequence[Sequence[int]]],
    prompts: Sequence[object] = (),
) -> PrefixBatch:
    """Run unsteered token prefixes once into a KV cache; keep each prefix's suffixes to run later.

    The one prefix engine of caa_lens's scorers: ``encode_prefixes`` (letter metric, one suffix per
    item) and ``caa_lens.likelihood`` (one suffix per answer text) both build their batches here, and
    ``suffix_logits`` runs any selection of the suffix rows, steered, on copies of the cache.

    Args:
        prefixes: one token sequence per item, all non-empty (the tokens before steering starts).
        suffixes: for each prefix, the token sequences that continue it (at least one each).
        prompts: what the caller keeps beside the batch, one per prefix (``PrefixBatch.prompts``).
    """
    from caa_lens.kv_cache import new_cache, require_filled

    if len(suffixes) != len(prefixes) or (prompts and len(prompts) != len(prefixes)):
        raise ValueError(
            f"{len(prefixes)} prefixes but {len(suffixes)} suffix lists / {len(prompts)} prompts"
        )
    if not prefixes or min(len(p) for p in prefixes) == 0:
        raise ValueError("an item's steering starts at its first token: there is no prefix to reuse")
    if any(not group for group in suffixes) or any(not s for group in suffixes for s in group):
        raise ValueError("every prefix needs at least one non-empty suffix to continue it")
    pad = pad_token_id(model.tokenizer)
    ids, prefix_mask, _ = left_pad([list(p) for p in prefixes], pad)
    flat = [list(s) for group in suffixes for s in group]
    owners = tuple(item for item, group in enumerate(suffixes) for _ in group)
    width = max(len(s) for s in flat)
    # Right-pad suffixes: causal attention keeps later pads from affecting the real positions.
    suffix_ids = torch.full((len(flat), width), pad, dtype=torch.long)
    suffix_mask = torch.zeros((len(flat), width), dtype=torch.long)
    for row, suffix in enumerate(flat):
        suffix_ids[row, : len(suffix)] = torch.tensor(suffix)
        suffix_mask[row, : len(suffix)] = 1
    cache = new_cache()
    device = model.cfg.device
    with torch.inference_mode():
        # Every block must run to fill every layer's keys and values (stop_at_layer=n_layers stops
        # nowhere; the bridge still returns logits).
        model(
            ids.to(device),
            attention_mask=prefix_mask.to(device),
            past_key_values=cache,
            stop_at_layer=int(model.cfg.n_layers),
        )
    require_filled(cache, ids.shape[1], "scoring prefix pass")
    identity = owners == tuple(range(len(prefixes)))
    return PrefixBatch(
        tuple(prompts), cache, prefix_mask, suffix_ids, suffix_mask, () if identity else owners
    )


def encode_prefixes(model, prompts: Sequence[ScoringPrompt], split: SplitRule = "from_start") -> PrefixBatch:
    """Run the unsteered prefixes (tokens before the steering start) of a batch of items once."""
    cuts = [split_position(p.prompt, split) for p in prompts]
    if min(cuts) == 0:
        raise ValueError("an item's steering starts at its first token: there is no prefix to reuse")
    return encode_token_prefixes(
        model,
        [p.prompt.token_ids[:c] for p, c in zip(prompts, cuts, strict=True)],
        [[p.prompt.token_ids[c:]] for p, c in zip(prompts, cuts, strict=True)],
        prompts,
    )


def suffix_logits(
    model, batch: PrefixBatch, rows: Sequence[int] | Tensor, injections: Sequence[Injection] = ()
) -> Float[Tensor, "row suffix vocab"]:
    """Logits of suffix rows ``rows`` of ``batch`` (repeats allowed), each continuing its prefix's cache.

    Batch row ``k`` runs suffix row ``rows[k]`` on a copy of its prefix's cached keys and values,
    steered by ``injections`` from column ``batch.width`` (the first suffix token) on: per-row tensor
    multipliers must have ``len(rows)`` entries. The batch's own cache is left unchanged.
    """
    chosen = torch.as_tensor(rows, dtype=torch.long).reshape(-1)
    owners = torch.tensor(batch.suffix_owners, dtype=torch.long)[chosen]
    device = model.cfg.device
    cache = copy.deepcopy(batch.cache)  # suffix passes extend the cache in place
    cache.batch_select_indices(owners)  # type: ignore[attr-defined]
    mask = torch.cat([batch.prefix_mask[owners], batch.suffix_mask[chosen]], dim=1)
    ids = batch.suffix_ids[chosen]
    context = steering(model, injections, start=batch.width) if injections else nullcontext()
    with torch.inference_mode(), context:
        return model(ids.to(device), attention_mask=mask.to(device), past_key_values=cache)


def grid_injections(
    vectors: Sequence[SteeringVector], layer: int, multipliers: Sequence[float], n_rows: int
) -> list[Injection]:
    """Injections steering ``n_rows`` groups of rows ordered (vector, multiplier) within each group.

    Each vector gets one ``Injection`` whose per-row multiplier is zero on the other vectors' rows
    (adding ``0 * v`` leaves a float unchanged), so every cell of the grid shares one forward pass.
    """
    n_vectors, n_mults = len(vectors), len(multipliers)
    values = torch.tensor([float(m) for m in multipliers], dtype=torch.float32)
    injections = []
    for j, vector in enumerate(vectors):
        grid = torch.zeros((n_vectors, n_mults))
        grid[j] = values
        injections.append(Injection(vector, layer, grid.flatten().repeat(n_rows), "from_start"))
    return injections


def suffix_scores(
    model,
    batch: PrefixBatch,
    vectors: Sequence[SteeringVector],
    layer: int,
    multipliers: Sequence[float],
) -> Float[Tensor, "item vector multiplier 2"]:
    """``(p_matching, p_letters_sum)`` for every item x vector x multiplier at one layer, in one pass.

    Rows are ordered item, vector, multiplier (``grid_injections``).
    """
    n_items, n_vectors, n_mults = len(batch.prompts), len(vectors), len(multipliers)
    repeats = n_vectors * n_mults
    rows = torch.arange(n_items).repeat_interleave(repeats)
    last = (batch.suffix_mask.sum(dim=1) - 1)[rows]
    logits = suffix_logits(model, batch, rows, grid_injections(vectors, layer, multipliers, n_items))
    with torch.inference_mode():
        final = logits[torch.arange(rows.shape[0]), last.to(logits.device)]
    prompts = [p for p in batch.prompts for _ in range(repeats)]
    return label_scores(final, prompts).reshape(n_items, n_vectors, n_mults, 2)
