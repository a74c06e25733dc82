"""Steered generation: tokens per second, steered against unsteered, at batch 1 and batch 8.

One JSON line per batch size. Contenders, each greedy, exactly ``--new-tokens`` new tokens per row
(no early stop at EOS, so every contender does the same work):

- ``caa_lens_unsteered``: ``caa_lens.generation.generate`` with no injection.
- ``caa_lens_steered``: the same loop with one CAA ``Injection`` (refusal vector, middle layer),
  steering every position from the end of the user turn, generated tokens included.
- ``bridge_generate``: the bridge's own unsteered ``model.generate`` (reference).
- ``hf_generate``: the plain Hugging Face model's ``generate`` (reference: no bridge at all).

The prompts are the open-ended refusal test questions in the model's chat template.
"""

import json
import time

import common
import torch
from common import Contender, log


def prompts_for(tokenizer, shared, n: int) -> list:
    from caa_lens.prompts import format_prompt

    questions = json.loads((shared / common.REFUSAL_TEST_OPEN).read_text())
    return [format_prompt(tokenizer, q["question"]) for q in questions[:n]]


def padded(prompts, pad: int):
    from caa_lens.prompts import left_pad

    ids, mask, _ = left_pad([p.token_ids for p in prompts], pad)
    return ids, mask


def main() -> None:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--batch-sizes", default=None, help="comma-separated (default 1,8; quick 1,4)")
    p.add_argument("--new-tokens", type=int, default=None, help="new tokens per row (default 64; quick 16)")
    p.add_argument("--layer", type=int, default=15)
    p.add_argument("--multiplier", type=float, default=4.0)
    p.add_argument("--vector-pairs", type=int, default=16)
    args = p.parse_args()
    common.setup(args)
    quick = args.quick
    new_tokens = args.new_tokens or (16 if quick else 64)
    repeats = args.repeats or 2
    sizes = [int(b) for b in (args.batch_sizes or ("1,4" if quick else "1,8")).split(",")]
    shared = common.shared_data_dir(args.shared_data)

    from caa_lens.generation import generate
    from caa_lens.methods import caa_vector
    from caa_lens.prompts import pad_token_id
    from caa_lens.steering import Injection

    log("loading the default model (bridge) and a plain HF copy")
    model = common.load_bridge(args.device)
    hf, _ = common.load_plain_hf(args.device)
    pad = pad_token_id(model.tokenizer)
    vector = caa_vector(
        model, common.refusal_dataset(shared, args.vector_pairs), layers=[args.layer], progress=False
    )
    injection = Injection(vector, args.layer, args.multiplier)
    all_prompts = prompts_for(model.tokenizer, shared, max(sizes))
    device = torch.device(args.device)
    warm = 4  # new tokens of the warm-up runs

    def ours(prompts, steer: bool, n: int) -> list[list[int]]:
        result = generate(model, prompts, injection if steer else (), max_new_tokens=n, stop_at_eos=False)
        return [list(row) for row in result.token_ids]

    def bridge(prompts, n: int) -> list[list[int]]:
        ids, mask = padded(prompts, pad)
        with torch.inference_mode():
            out = model.generate(
                ids.to(device),
                attention_mask=mask.to(device),
                max_new_tokens=n,
                stop_at_eos=False,
                do_sample=False,
                verbose=False,
            )
        return out[:, ids.shape[1] :].tolist()

    def plain(prompts, n: int) -> list[list[int]]:
        ids, mask = padded(prompts, pad)
        with torch.inference_mode():
            out = hf.generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                max_new_tokens=n,
                min_new_tokens=n,
                do_sample=False,
                pad_token_id=pad,
            )
        return out[:, ids.shape[1] :].tolist()

    for batch in sizes:
        started, load_start = time.perf_counter(), common.cpu_snapshot()
        prompts = all_prompts[:batch]
        contenders = [
            Contender(
                "caa_lens_unsteered",
                lambda prompts=prompts: ours(prompts, False, new_tokens),
                lambda prompts=prompts: ours(prompts, False, warm),
            ),
            Contender(
                "caa_lens_steered",
                lambda prompts=prompts: ours(prompts, True, new_tokens),
                lambda prompts=prompts: ours(prompts, True, warm),
            ),
            Contender(
                "bridge_generate",
                lambda prompts=prompts: bridge(prompts, new_tokens),
                lambda prompts=prompts: bridge(prompts, warm),
                repeats=common.peer_repeats(args),
            ),
            Contender(
                "hf_generate",
                lambda prompts=prompts: plain(prompts, new_tokens),
                lambda prompts=prompts: plain(prompts, warm),
                repeats=common.peer_repeats(args),
            ),
        ]
        log(
            f"generation: batch {batch}, {new_tokens} new tokens, prompts of {[len(x) for x in prompts]} tokens"
        )
        measured = common.measure(contenders, repeats)
        tokens = batch * new_tokens
        throughput = {
            name: (None if m.median is None else round(tokens / m.median, 2)) for name, m in measured.items()
        }
        unsteered, steered = throughput["caa_lens_unsteered"], throughput["caa_lens_steered"]
        relative = None if not unsteered or steered is None else steered / unsteered
        reference = measured["caa_lens_unsteered"].result

        def agreement(name: str, reference=reference, measured=measured) -> float | None:
            other = measured[name].result
            if reference is None or other is None:
                return None
            return sum(a == b for a, b in zip(reference, other, strict=True)) / len(reference)

        common.emit(
            f"generation_batch_{batch}",
            common.mode_of(args),
            {
                "batch": batch,
                "new_tokens": new_tokens,
                "prompt_tokens": [len(x) for x in prompts],
                "layer": args.layer,
                "multiplier": args.multiplier,
                "repeats": repeats,
            },
            measured,
            tokens_per_s=throughput,
            ratios={
                "steered/unsteered tokens_per_s": None if relative is None else round(relative, 4),
                "caa_lens_unsteered/bridge_generate tokens_per_s": common.ratio(
                    measured, "bridge_generate", "caa_lens_unsteered"
                ),
                "caa_lens_unsteered/hf_generate tokens_per_s": common.ratio(
                    measured, "hf_generate", "caa_lens_unsteered"
                ),
            },
            targets=[
                common.target(
                    "steered generation within 5% of unsteered tokens/s (steered/unsteered)", relative, 0.95
                )
            ],
            checks={
                "rows_identical_to_caa_lens_unsteered": {
                    name: agreement(name) for name in ("bridge_generate", "hf_generate")
                },
                "steering_changed_rows": None
                if measured["caa_lens_steered"].result is None or reference is None
                else sum(a != b for a, b in zip(reference, measured["caa_lens_steered"].result, strict=True)),
            },
            device=args.device,
            load_start=load_start,
            started=started,
        )


if __name__ == "__main__":
    main()
