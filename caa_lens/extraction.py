"""Reading residual-stream activations of contrastive pairs through hook points, fast.

The positive and negative prompts of a pair share everything up to the answer, so each batch runs
the shared prefix once (into a KV cache, stopping after the last layer needed) and then only the
few answer tokens of both sides on copies of that cache. Mean differences accumulate as float64
running sums, so memory does not grow with the number of pairs; per-example activations are kept
only when asked for. Each matching answer label (``A``/``B``, ``Yes``/``No``) also gets its own float64
sums, so the letter-balanced mean difference and the letter axis (``caa_lens.methods``) need no
per-example storage either.
"""

import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from caa_lens.data import ContrastiveDataset, ContrastiveItem, answer_label
from caa_lens.hooks import check_layers, check_site, hook_name, stop_layer_for
from caa_lens.identity import model_identity
from caa_lens.prefix import encode, run_suffixes
from caa_lens.prompts import FormattedPrompt, PromptStyle, check_fits, format_prompt, pad_token_id, right_pad
from caa_lens.resume import CheckpointMismatchError, ExtractionState, load_state, run_key, save_state

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

__all__ = [
    "ContrastiveActivations",
    "PairActivations",
    "PositionRule",
    "check_batch_size",
    "extract_contrastive",
    "pair_prompts",
    "read_position",
    "rule_name",
]

PositionRule = Literal["answer", "last"] | Callable[[FormattedPrompt], int]


@dataclass(frozen=True, eq=False)
class PairActivations:
    """Per-example activations at the read position: ``[pair, layer, d_model]`` for each side."""

    positive: Float[Tensor, "pair layer d_model"]
    negative: Float[Tensor, "pair layer d_model"]
    positive_labels: tuple[str, ...]
    negative_labels: tuple[str, ...]

    def at_layer_indices(self, indices: Sequence[int]) -> "PairActivations":
        """The same examples restricted to positions ``indices`` of the layer axis."""
        index = torch.tensor(list(indices), dtype=torch.long)
        return PairActivations(
            self.positive.index_select(1, index),
            self.negative.index_select(1, index),
            self.positive_labels,
            self.negative_labels,
        )


@dataclass(frozen=True, eq=False)
class ContrastiveActivations:
    """The result of an extraction: summed activations per side, and optionally every example's."""

    layers: tuple[int, ...]
    site: str
    position_rule: str
    dataset: str
    dataset_hash: str
    n_pairs: int
    positive_sum: Float[Tensor, "layer d_model"]
    negative_sum: Float[Tensor, "layer d_model"]
    examples: PairActivations | None
    # The settings that changed the values (batch size, system prompt, prompt style), recorded in the
    # provenance of the vectors built from these activations.
    settings: dict[str, object] = field(default_factory=dict)
    # Per matching answer label (``labels``, sorted; ``label_counts`` pairs each): the float64 sums of
    # the positive (``[:, 0]``) and negative (``[:, 1]``) activations of the pairs whose matching answer
    # has that label. The letter-balanced mean and the letter axis are built from them
    # (``caa_lens.letter_balance.label_means``). None for activations assembled by hand or by older code.
    label_sums: Float[Tensor, "label 2 layer d_model"] | None = None
    labels: tuple[str, ...] = ()
    label_counts: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.label_sums is None:
            if self.labels or self.label_counts:
                raise ValueError("labels and label_counts describe label_sums: give all three or none")
            return
        if not len(self.labels) == len(self.label_counts) == self.label_sums.shape[0]:
            raise ValueError(
                f"label_sums has {self.label_sums.shape[0]} rows for labels {self.labels} with counts "
                f"{self.label_counts}: give one row and one count per matching label"
            )
        if sum(self.label_counts) != self.n_pairs or min(self.label_counts, default=0) < 1:
            raise ValueError(
                f"label_counts {self.label_counts} must be positive and add up to n_pairs={self.n_pairs}"
            )

    @property
    def mean_difference(self) -> Float[Tensor, "layer d_model"]:
        """The plain mean over pairs of positive minus negative (CAA's vector; holds the letter if the
        matching labels are unbalanced)."""
        return (self.positive_sum - self.negative_sum) / self.n_pairs


def check_batch_size(batch_size: object) -> int:
    """``batch_size`` as an int if it is a positive integer, else a ValueError saying what is expected.

    A batch size of 0 or less used to process no pair at all and save an all-zero vector.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise ValueError(
            f"batch_size must be a positive integer (pairs per forward pass), got {batch_size!r}"
        )
    return int(batch_size)


def rule_name(rule: PositionRule) -> str:
    return rule if isinstance(rule, str) else getattr(rule, "__name__", "custom")


def read_position(prompt: FormattedPrompt, rule: PositionRule) -> int:
    """The token index a position rule reads in one prompt."""
    if rule == "answer":
        if prompt.answer_position is None:
            raise ValueError(f"position rule 'answer' needs an answer in the prompt: {prompt.text[-60:]!r}")
        return prompt.answer_position
    if rule == "last":
        return prompt.last
    if callable(rule):
        position = int(rule(prompt))
        if not 0 <= position < len(prompt):
            raise ValueError(f"position rule returned {position} for a prompt of {len(prompt)} tokens")
        return position
    raise ValueError(f"unknown position rule {rule!r}: expected 'answer', 'last' or a callable")


def pair_prompts(
    tokenizer, item: ContrastiveItem, system: str | None = None, style: PromptStyle = "auto"
) -> tuple[FormattedPrompt, FormattedPrompt]:
    """The positive (matching) and negative prompts of an item, the answer opening the assistant turn."""
    return (
        format_prompt(tokenizer, item.question, item.matching, system, style),
        format_prompt(tokenizer, item.question, item.not_matching, system, style),
    )


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


@dataclass(frozen=True)
class _PlannedPair:
    index: int
    prefix: tuple[int, ...]
    suffixes: tuple[tuple[int, ...], tuple[int, ...]]
    reads: tuple[int, int]  # read index within each side's suffix
    labels: tuple[str, str]


def _plan(
    prompts: tuple[FormattedPrompt, FormattedPrompt], index: int, rule: PositionRule, item: ContrastiveItem
) -> _PlannedPair:
    positive, negative = prompts
    reads = (read_position(positive, rule), read_position(negative, rule))
    # Share at most up to the earlier read position: the read token itself must be in the suffix.
    shared = min(_common_prefix(positive.token_ids, negative.token_ids), *reads)
    suffixes = (positive.token_ids[shared : reads[0] + 1], negative.token_ids[shared : reads[1] + 1])
    labels = (answer_label(item.matching), answer_label(item.not_matching))
    return _PlannedPair(
        index, positive.token_ids[:shared], suffixes, (reads[0] - shared, reads[1] - shared), labels
    )


def _unshared(plan: _PlannedPair) -> _PlannedPair:
    """The same pair with nothing shared: both sides run from their first token."""
    positive, negative = (plan.prefix + suffix for suffix in plan.suffixes)
    reads = (plan.reads[0] + len(plan.prefix), plan.reads[1] + len(plan.prefix))
    return _PlannedPair(plan.index, (), (positive, negative), reads, plan.labels)


def _run_batch(
    model: "TransformerBridge", batch: list[_PlannedPair], names: list[str], stop: int, pad: int
) -> Float[Tensor, "row layer d"]:
    """Activations at the read positions for 2*len(batch) rows (positive, negative interleaved)."""
    from transformer_lens.model_bridge.exceptions import StopAtLayerException

    captured: dict[str, Tensor] = {}

    def keep(name: str):
        def hook(activation: Tensor, hook) -> Tensor:
            captured[name] = activation
            return activation

        return hook

    def keep_and_stop(name: str):
        # The last site read ends the forward pass, the way the bridge's own stop_at_layer does.
        # stop_at_layer alone cannot stop after the final block: reading the last layer then also
        # ran the final norm and the vocabulary-sized unembedding, 14% of an all-layer extraction.
        def hook(activation: Tensor, hook) -> Tensor:
            captured[name] = activation
            raise StopAtLayerException(activation)

        return hook

    has_prefix = all(len(p.prefix) > 0 for p in batch)
    if not has_prefix:  # some pair shares nothing (read at position 0): run full sequences
        batch = [_unshared(p) for p in batch]
    suffixes = [s for p in batch for s in p.suffixes]
    ids, suffix_mask = right_pad(suffixes, pad)
    hooks = [(name, keep(name)) for name in names[:-1]] + [(names[-1], keep_and_stop(names[-1]))]
    if has_prefix:
        # The prefix pass fills the KV cache of every block up to the last site read, then stops.
        with model.hooks(fwd_hooks=[(names[-1], keep_and_stop(names[-1]))]):
            prefix = encode(model, [p.prefix for p in batch], stop, where="extraction prefix pass")
        owners = torch.arange(len(batch)).repeat_interleave(2)  # both sides continue their pair's prefix
        with model.hooks(fwd_hooks=hooks):
            run_suffixes(model, prefix, owners, ids, suffix_mask, stop_at_layer=stop, consume=True)
    else:
        with model.hooks(fwd_hooks=hooks):
            model(ids, attention_mask=suffix_mask, stop_at_layer=stop)
    rows = torch.arange(len(suffixes))
    columns = torch.tensor([r for p in batch for r in p.reads])
    return torch.stack([captured[name][rows, columns] for name in names], dim=1)


# Written into the run key: checkpoints from before per-label sums existed cannot be continued (they
# lack those sums) and are refused with the key-mismatch message, which says to delete them.
_CHECKPOINT_LAYOUT = "label-sums-in-kept/1"


def _checkpoint_state(
    batches_done: int, sums: Tensor, label_sums: Tensor, kept: list[tuple[int, Tensor]]
) -> ExtractionState:
    """The state saved after a batch, the per-label sums riding in the kept-examples slot.

    ``caa_lens.resume`` stores two tensors: the side sums and the kept examples
    ``[example, 2, layer, d_model]``. Per-label sums have the shape of one kept example per label,
    so they go first in that tensor under the indices -1, -2, ... (examples have indices >= 0), all
    in float64: exact for the sums, and a lossless round trip for examples of any float dtype.
    """
    indices = tuple(-1 - k for k in range(label_sums.shape[0])) + tuple(i for i, _ in kept)
    rows = [label_sums] + [a.double()[None] for _, a in kept]
    return ExtractionState(batches_done, sums, indices, torch.cat(rows))


def _restored(
    state: ExtractionState, n_labels: int, example_dtype: torch.dtype, path: Path
) -> tuple[Tensor, Tensor, list[tuple[int, Tensor]]]:
    """Side sums, per-label sums and kept examples from a checkpoint written by ``_checkpoint_state``."""
    markers = tuple(-1 - k for k in range(n_labels))
    if state.kept is None or state.kept_indices[:n_labels] != markers:
        raise CheckpointMismatchError(
            f"{path} holds no per-label sums for this dataset's {n_labels} matching labels; delete it and rerun"
        )
    label_sums = state.kept[:n_labels].double().clone()
    kept = [
        (index, row.to(example_dtype))
        for index, row in zip(state.kept_indices[n_labels:], state.kept[n_labels:].unbind(0), strict=True)
    ]
    return state.sums.clone(), label_sums, kept


def extract_contrastive(
    model: "TransformerBridge",
    dataset: ContrastiveDataset,
    layers: int | Sequence[int] | None = None,
    site: str = "resid_post",
    position_rule: PositionRule = "answer",
    batch_size: int = 16,
    keep_examples: bool = False,
    example_dtype: torch.dtype = torch.float32,
    system: str | None = None,
    style: PromptStyle = "auto",
    progress: bool = True,
    checkpoint: str | Path | None = None,
) -> ContrastiveActivations:
    """Read activations of every pair of ``dataset`` at ``layers`` and sum them per side.

    Args:
        layers: layer indices, or None for all layers.
        site: ``resid_pre``, ``resid_mid`` or ``resid_post``.
        position_rule: ``"answer"`` (the answer-letter token, CAA), ``"last"`` (the final token,
            Patterns paper), or a callable ``FormattedPrompt -> index``.
        keep_examples: also return every example's activations (for PCA, probes, bootstraps),
            stored in ``example_dtype`` (float16 halves the memory). Without them memory stays flat:
            the per-side and per-matching-label sums are all that is kept.
        checkpoint: a file where progress is saved after every batch. If the run is killed, the same
            call continues from it (losing at most the batch in flight) and returns exactly what an
            uninterrupted run returns. The file is removed when the extraction completes. Kept
            examples are stored in it as float64 (the per-label sums share their tensor).

    Raises:
        ValueError: ``batch_size`` is not a positive integer, or another argument is invalid; checked
            before any forward pass.
    """
    batch_size = check_batch_size(batch_size)
    if not isinstance(example_dtype, torch.dtype) or not example_dtype.is_floating_point:
        raise ValueError(f"example_dtype must be a floating torch dtype, got {example_dtype!r}")
    chosen = check_layers(model, layers)
    check_site(site)
    names = [hook_name(model, layer, site) for layer in chosen]
    stop = stop_layer_for(chosen)
    pad = pad_token_id(model.tokenizer)
    plans = []
    for index, item in enumerate(dataset):
        prompts = pair_prompts(model.tokenizer, item, system, style)
        for prompt in prompts:
            check_fits(model, len(prompt), f"{dataset.source or dataset.name}: item {index}")
        plans.append(_plan(prompts, index, position_rule, item))
    # Sorting by prefix length cuts padding; sums are order-independent up to float64 rounding.
    order = sorted(plans, key=lambda p: len(p.prefix))
    labels = tuple(sorted({p.labels[0] for p in plans}))
    label_of = {label: k for k, label in enumerate(labels)}
    d_model = int(model.cfg.d_model)
    identity = model_identity(model)
    settings = {
        "model": identity.config_hash,
        # Two same-shaped models with other weights must not continue each other's checkpoint.
        "weights": identity.weights_hash,
        "dataset": dataset.content_hash,
        "layers": chosen,
        "site": site,
        "rule": rule_name(position_rule),
        "batch_size": batch_size,
        "keep": keep_examples,
        "example_dtype": str(example_dtype),
        "system": system,
        "style": style,
        "layout": _CHECKPOINT_LAYOUT,
    }
    key = run_key(settings)
    state = load_state(Path(checkpoint), key) if checkpoint is not None else None
    sums = torch.zeros((2, len(chosen), d_model), dtype=torch.float64)
    label_sums = torch.zeros((len(labels), 2, len(chosen), d_model), dtype=torch.float64)
    kept: list[tuple[int, Tensor]] = []
    if state is not None:
        assert checkpoint is not None
        sums, label_sums, kept = _restored(state, len(labels), example_dtype, Path(checkpoint))
    done = state.batches_done if state else 0
    starts = list(range(0, len(order), batch_size))
    processed = sum(len(order[start : start + batch_size]) for start in starts[:done])
    bar = tqdm(total=len(order), desc=f"extract {dataset.name}", unit="pair", disable=not progress)
    bar.update(processed)
    with torch.inference_mode():
        for batch_number, start in enumerate(starts[done:], start=done):
            batch = order[start : start + batch_size]
            processed += len(batch)
            acts = _run_batch(model, batch, names, stop, pad).to(torch.float64).cpu()
            sums[0] += acts[0::2].sum(0)
            sums[1] += acts[1::2].sum(0)
            codes = torch.tensor([label_of[p.labels[0]] for p in batch])
            for code in codes.unique().tolist():  # a fixed order of additions: resumes stay bit-identical
                rows = (codes == code).nonzero().flatten()
                label_sums[code, 0] += acts[2 * rows].sum(0)
                label_sums[code, 1] += acts[2 * rows + 1].sum(0)
            if keep_examples:
                kept.extend((p.index, acts[2 * i : 2 * i + 2].to(example_dtype)) for i, p in enumerate(batch))
            if checkpoint is not None:
                progress_state = _checkpoint_state(batch_number + 1, sums, label_sums, kept)
                save_state(Path(checkpoint), key, settings, progress_state)
            bar.update(len(batch))
    bar.close()
    if processed != len(dataset):  # a mean over fewer pairs than n_pairs says would be silently wrong
        raise RuntimeError(
            f"extraction of {dataset.name!r} processed {processed} of its {len(dataset)} pairs "
            f"(batch_size={batch_size}, {done} batches restored from {checkpoint}); delete the checkpoint and rerun"
        )
    examples = None
    if keep_examples:
        stacked = torch.stack([a for _, a in sorted(kept, key=lambda t: t[0])])
        by_index = sorted(plans, key=lambda p: p.index)
        examples = PairActivations(
            stacked[:, 0],
            stacked[:, 1],
            tuple(p.labels[0] for p in by_index),
            tuple(p.labels[1] for p in by_index),
        )
    result = ContrastiveActivations(
        chosen,
        site,
        rule_name(position_rule),
        dataset.name,
        dataset.content_hash,
        len(dataset),
        sums[0].float(),
        sums[1].float(),
        examples,
        {"batch_size": batch_size, "system": system, "style": style},
        label_sums,
        labels,
        tuple(sum(p.labels[0] == label for p in plans) for label in labels),
    )
    if checkpoint is not None:
        Path(checkpoint).unlink(missing_ok=True)
    return result
