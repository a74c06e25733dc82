"""Extraction of CAA vectors: caa_lens against steering-vectors, a CAA-reference loop and the limit.

Two workloads, one JSON line each: all layers, and a single middle layer (where ``stop_at_layer``
lets caa_lens skip the upper half of the model). Contenders, all on the default model, the CAA
refusal generate set, and the same batch size where they batch:

- ``caa_lens``: ``caa_lens.methods.caa_vector`` (shared prompt once into a KV cache, then the answer
  tokens of both sides; stops after the last layer read).
- ``steering_vectors``: ``steering_vectors.train_steering_vector`` 0.12.2 on a separate plain HF copy
  of the model, reading the same token (the answer letter) through per-sample negative indices.
- ``reference_loop``: the CAA reference's style: batch 1, the full model, two passes per pair,
  ``output_hidden_states``. HF's last hidden state is *after* the final norm, so the last block's
  output is read with a forward hook, as the reference's block wrappers did.
- ``limit``: one bare batched HF forward pass (no hooks) over exactly the unique tokens, each pair
  packed in one row as prefix + positive answer + negative answer with a 4-D attention mask (the
  negative answer cannot see the positive one) and explicit position ids, the model cut after the
  last layer read (no final norm, no unembedding). It produces the same vectors, so it is checked too.

The two slow peers' costs are additive over their own batches (steering-vectors: consecutive pairs,
right-padded to the batch's longest prompt; the reference loop: one prompt at a time), so in the full
run each is timed on a few of its batches, evenly spaced, and scaled by their share of the padded
tokens; the record's ``scale`` and ``note`` say so (``--peer-batches 999 --reference-pairs 999`` times
them on everything). Every contender's vectors are compared with
caa_lens's on the same pairs (largest per-layer relative difference).
"""

import contextlib
import time
from collections.abc import Sequence

import common
import torch
from common import Contender, log


def format_pairs(tokenizer, dataset) -> list:
    from caa_lens.extraction import pair_prompts

    return [pair_prompts(tokenizer, item) for item in dataset]


def token_counts(pairs: list) -> tuple[int, int]:
    """(tokens of every full prompt, unique tokens: shared prefix once + each side's answer tokens)."""
    full = unique = 0
    for pos, neg in pairs:
        shared = _shared(pos, neg)
        full += len(pos) + len(neg)
        unique += shared + (pos.answer_position + 1 - shared) + (neg.answer_position + 1 - shared)
    return full, unique


def _shared(pos, neg) -> int:
    n = 0
    for a, b in zip(pos.token_ids, neg.token_ids, strict=False):
        if a != b:
            break
        n += 1
    return min(n, pos.answer_position, neg.answer_position)


# --------------------------------------------------------------------------- contenders


def run_caa_lens(bridge, dataset, layers, batch_size: int) -> torch.Tensor:
    from caa_lens.methods import caa_vector

    # The plain mean: the peers compute it, so the comparison is of like with like.
    vector = caa_vector(
        bridge, dataset, layers=layers, batch_size=batch_size, progress=False, method="mean_difference"
    )
    return vector.directions


def run_steering_vectors(hf, tokenizer, dataset, layers: Sequence[int], batch_size: int) -> torch.Tensor:
    from steering_vectors import SteeringVectorTrainingSample, train_steering_vector

    samples = []
    for pos, neg in format_pairs(tokenizer, dataset):
        # Negative indices survive steering-vectors' padding adjustment: the letter is the 2nd-last token.
        samples.append(
            SteeringVectorTrainingSample(
                pos.text, neg.text, pos.answer_position - len(pos), neg.answer_position - len(neg)
            )
        )
    vector = train_steering_vector(
        hf, tokenizer, samples, layers=list(layers), layer_type="decoder_block", batch_size=batch_size
    )
    return torch.stack([vector.layer_activations[layer] for layer in layers]).float()


def run_reference_loop(hf, tokenizer, dataset, layers: Sequence[int]) -> torch.Tensor:
    """Batch 1, full model, two forward passes per pair, per-pair activations kept (as the reference)."""
    last = len(hf.model.layers) - 1
    captured: dict[str, torch.Tensor] = {}

    def keep_last(module, args, output):
        captured["last"] = output[0] if isinstance(output, tuple) else output

    handle = hf.model.layers[last].register_forward_hook(keep_last) if last in layers else None
    diffs = []
    try:
        with torch.no_grad():
            for pos, neg in format_pairs(tokenizer, dataset):
                sides = []
                for prompt in (pos, neg):
                    out = hf(torch.tensor([prompt.token_ids]), output_hidden_states=True)
                    read = prompt.answer_position
                    acts = [
                        (captured["last"] if layer == last else out.hidden_states[layer + 1])[0, read]
                        for layer in layers
                    ]
                    sides.append(torch.stack(acts))
                diffs.append(sides[0] - sides[1])
    finally:
        if handle is not None:
            handle.remove()
    return torch.stack(diffs).mean(0)


def pack_limit_batches(pairs: list, batch_size: int) -> list[tuple]:
    """Rows of prefix + positive answer + negative answer, sorted by length, with 4-D masks."""
    rows = []
    for pos, neg in pairs:
        shared = _shared(pos, neg)
        s1 = list(pos.token_ids[shared : pos.answer_position + 1])
        s2 = list(neg.token_ids[shared : neg.answer_position + 1])
        ids = list(pos.token_ids[:shared]) + s1 + s2
        positions = list(range(shared + len(s1))) + list(range(shared, shared + len(s2)))
        branch = [0] * shared + [1] * len(s1) + [2] * len(s2)
        rows.append((ids, positions, branch, (shared + len(s1) - 1, len(ids) - 1)))
    rows.sort(key=lambda r: len(r[0]))
    batches = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        width = max(len(r[0]) for r in chunk)
        ids = torch.zeros((len(chunk), width), dtype=torch.long)
        positions = torch.zeros((len(chunk), width), dtype=torch.long)
        branch = torch.full((len(chunk), width), -1, dtype=torch.long)
        for i, (a, p, b, _) in enumerate(chunk):
            ids[i, : len(a)] = torch.tensor(a)
            positions[i, : len(a)] = torch.tensor(p)
            branch[i, : len(a)] = torch.tensor(b)
        q = torch.arange(width)
        causal = q[:, None] >= q[None, :]
        bq, bk = branch[:, :, None], branch[:, None, :]
        real = branch >= 0
        mask = causal[None] & ((bk == 0) | (bk == bq)) & real[:, None, :] & real[:, :, None]
        mask |= torch.eye(width, dtype=torch.bool)[None]  # padding rows attend to themselves: no NaN
        reads = torch.tensor([r[3] for r in chunk])
        batches.append((ids, positions, mask[:, None], reads))
    return batches


@contextlib.contextmanager
def truncated(hf, n_blocks: int):
    """The HF model cut after ``n_blocks`` blocks, final norm removed (restored on exit)."""
    base = hf.model
    blocks, norm = base.layers, base.norm
    base.layers, base.norm = blocks[:n_blocks], torch.nn.Identity()
    try:
        yield base
    finally:
        base.layers, base.norm = blocks, norm


def run_limit(hf, batches: list[tuple], layers: Sequence[int], n_pairs: int) -> torch.Tensor:
    index = torch.tensor(layers)
    total = torch.zeros((len(layers), hf.config.hidden_size), dtype=torch.float64)
    with torch.inference_mode(), truncated(hf, max(layers) + 1) as base:
        for ids, positions, mask, reads in batches:
            out = base(
                input_ids=ids,
                attention_mask=mask,
                position_ids=positions,
                output_hidden_states=True,
                use_cache=False,
            )
            hidden = torch.stack(out.hidden_states[1:], dim=1)[:, index]  # [row, layer, pos, d]
            rows = torch.arange(len(reads))
            diff = hidden[rows, :, reads[:, 0]] - hidden[rows, :, reads[:, 1]]
            total += diff.double().sum(0)
    return (total / n_pairs).float()


# --------------------------------------------------------------------------- workload


def whole_batches(dataset, pairs: list, batch_size: int, n_batches: int | None) -> tuple:
    """A peer's timing subset: ``n_batches`` of its own batches (consecutive pairs), evenly spaced.

    Returns ``(subset, scale, note)``: the peer's cost is additive over its batches and proportional
    to the padded tokens of each (each batch pads to its longest prompt), so the time on the subset
    times ``scale`` (all padded tokens / the subset's) estimates the time on the whole dataset.
    ``batch_size`` 1 (the reference loop) has no padding: the scale is then a ratio of real tokens.
    """
    starts = list(range(0, len(dataset), batch_size))
    if n_batches is None or n_batches >= len(starts):
        return dataset, 1.0, ""

    def padded(begin: int) -> int:
        chunk = pairs[begin : begin + batch_size]
        if batch_size == 1:
            return sum(len(p) for pair in chunk for p in pair)
        return sum(len(chunk) * max(len(pair[side]) for pair in chunk) for side in (0, 1))

    chosen = [starts[int(i * len(starts) / n_batches)] for i in range(n_batches)]
    indices = [i for begin in chosen for i in range(begin, min(begin + batch_size, len(dataset)))]
    scale = sum(padded(b) for b in starts) / sum(padded(b) for b in chosen)
    what = (
        f"{len(indices)} evenly spaced pairs"
        if batch_size == 1
        else f"{n_batches} of its {len(starts)} batches"
    )
    note = (
        f"timed on {what} ({len(indices)} of {len(dataset)} pairs) and scaled x{scale:.3f} by its share of "
        f"the {'tokens' if batch_size == 1 else 'padded tokens'}: its cost is additive over its batches"
    )
    return dataset.select(indices, f":timing-subset{len(indices)}"), scale, note


def workload(
    name: str,
    args,
    bridge,
    hf,
    tokenizer,
    dataset,
    layers: Sequence[int],
    batch_size: int,
    repeats: int,
    peer_batches: int | None,
    reference_pairs: int | None,
) -> dict:
    started, load_start = time.perf_counter(), common.cpu_snapshot()
    layers = list(layers)
    all_layers = len(layers) == bridge.cfg.n_layers
    chosen = None if all_layers else layers
    t0 = time.perf_counter()
    pairs = format_pairs(tokenizer, dataset)
    formatting_s = time.perf_counter() - t0
    mismatched = sum(list(tokenizer(p.text).input_ids) != list(p.token_ids) for pair in pairs for p in pair)
    full_tokens, unique_tokens = token_counts(pairs)
    batches = pack_limit_batches(pairs, batch_size)
    small = dataset.select(range(min(2, len(dataset))), ":warmup")
    small_batches = pack_limit_batches(pairs[:2], batch_size)
    sv_set, sv_scale, sv_note = whole_batches(dataset, pairs, batch_size, peer_batches)
    ref_set, ref_scale, ref_note = whole_batches(dataset, pairs, 1, reference_pairs)

    contenders = [
        Contender(
            "caa_lens",
            lambda: run_caa_lens(bridge, dataset, chosen, batch_size),
            lambda: run_caa_lens(bridge, small, chosen, batch_size),
        ),
        Contender(
            "limit",
            lambda: run_limit(hf, batches, layers, len(dataset)),
            lambda: run_limit(hf, small_batches, layers, len(small)),
            note="bare HF forward over the unique tokens only (prompt formatting excluded)",
        ),
    ]
    peer_error = common.ensure_steering_vectors(allow_install=not args.no_install)
    if peer_error is None:
        contenders.append(
            Contender(
                "steering_vectors",
                lambda: run_steering_vectors(hf, tokenizer, sv_set, layers, batch_size),
                lambda: run_steering_vectors(hf, tokenizer, small, layers, batch_size),
                repeats=common.peer_repeats(args),
                scale=sv_scale,
                note=sv_note,
            )
        )
    contenders.append(
        Contender(
            "reference_loop",
            lambda: run_reference_loop(hf, tokenizer, ref_set, layers),
            lambda: run_reference_loop(hf, tokenizer, small, layers),
            repeats=common.peer_repeats(args),
            scale=ref_scale,
            note=ref_note,
        )
    )
    log(f"{name}: {len(dataset)} pairs, layers {layers[0]}..{layers[-1]} ({len(layers)}), batch {batch_size}")
    measured = common.measure(contenders, repeats)
    if peer_error is not None:
        measured["steering_vectors"] = common.Measured("steering_vectors", error=peer_error)

    # Same vectors? Each contender against caa_lens on the same pairs (a timing subset gets its own run).
    reference = measured["caa_lens"].result
    differences: dict[str, float | None] = {}
    for other, subset in (("limit", dataset), ("steering_vectors", sv_set), ("reference_loop", ref_set)):
        m = measured.get(other)
        if reference is None or m is None or m.result is None:
            differences[other] = None
            continue
        against = reference if subset is dataset else run_caa_lens(bridge, subset, chosen, batch_size)
        differences[other] = common.max_relative_difference(m.result, against)
    worst = max((d for d in differences.values() if d is not None), default=None)

    vs_peer = common.ratio(measured, "steering_vectors", "caa_lens")
    vs_limit = common.ratio(measured, "caa_lens", "limit")
    return common.emit(
        name,
        common.mode_of(args),
        {
            "pairs": len(dataset),
            "layers": len(layers) if all_layers else layers,
            "batch_size": batch_size,
            "tokens_full_prompts": full_tokens,
            "tokens_unique": unique_tokens,
            "repeats": repeats,
        },
        measured,
        ratios={
            "steering_vectors/caa_lens": vs_peer,
            "reference_loop/caa_lens": common.ratio(measured, "reference_loop", "caa_lens"),
            "caa_lens/limit": vs_limit,
            "steering_vectors/limit": common.ratio(measured, "steering_vectors", "limit"),
        },
        targets=[
            common.target(
                "caa_lens at least 2x faster than steering-vectors (same batch size)", vs_peer, 2.0
            ),
            common.target("caa_lens within 1.25x of the limit", vs_limit, 1.25, at_least=False),
        ],
        checks={
            "max_rel_diff_vs_caa_lens": {
                k: (None if v is None else float(f"{v:.3g}")) for k, v in differences.items()
            },
            "same_vectors": None if worst is None else worst < 1e-4,
            "prompts_tokenised_differently_by_plain_tokenizer": mismatched,
            "prompt_formatting_s": round(formatting_s, 3),
        },
        device=args.device,
        load_start=load_start,
        started=started,
    )


def main() -> None:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--pairs", type=int, default=None, help="pairs, all layers (default 200; quick 12)")
    p.add_argument(
        "--middle-pairs", type=int, default=None, help="pairs, middle layer (default 100; quick 8)"
    )
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--middle-layer", type=int, default=15)
    p.add_argument(
        "--peer-batches",
        type=int,
        default=None,
        help="steering-vectors is timed on this many of its batches, then scaled (default 3; quick: all)",
    )
    p.add_argument(
        "--reference-pairs",
        type=int,
        default=None,
        help="the batch-1 reference loop is timed on this many pairs, then scaled (default 24; quick 4)",
    )
    p.add_argument("--only", choices=("all_layers", "middle_layer"), default=None)
    args = p.parse_args()
    common.setup(args)
    quick = args.quick
    repeats = args.repeats or 2
    peer_batches = args.peer_batches or (None if quick else 3)
    reference_pairs = args.reference_pairs or (4 if quick else 24)
    shared = common.shared_data_dir(args.shared_data)
    log("loading the default model (bridge) and a plain HF copy")
    bridge = common.load_bridge(args.device)
    hf, tokenizer = common.load_plain_hf(args.device)
    n_layers = int(bridge.cfg.n_layers)
    runs = []
    if args.only in (None, "all_layers"):
        runs.append(("extraction_all_layers", args.pairs or (12 if quick else 200), list(range(n_layers))))
    if args.only in (None, "middle_layer"):
        runs.append(
            (
                f"extraction_layer_{args.middle_layer}",
                args.middle_pairs or (8 if quick else 100),
                [args.middle_layer],
            )
        )
    for name, n_pairs, layers in runs:
        workload(
            name,
            args,
            bridge,
            hf,
            tokenizer,
            common.refusal_dataset(shared, n_pairs),
            layers,
            args.batch_size,
            repeats,
            peer_batches,
            reference_pairs,
        )


if __name__ == "__main__":
    main()
