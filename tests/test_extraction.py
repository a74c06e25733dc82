"""Extraction: parity with an independent plain loop, prefix sharing exactness, and flat memory."""

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from caa_lens.data import ContrastiveDataset, load_behaviour_dataset, make_item
from caa_lens.extraction import extract_contrastive, pair_prompts, read_position

HELPER = Path(__file__).parent / "helpers" / "extraction_peak_memory.py"


def reference_mean_difference(model, dataset, n_layers: int) -> torch.Tensor:
    """The CAA reference's way: batch 1, the full HF model, two passes per pair, hidden states read out.

    Independent of caa_lens's hooks and KV-cache sharing: tokens from the chat template, the answer
    letter found by decoding tokens, activations from HF ``output_hidden_states`` (plus a plain torch
    hook for the last layer, whose HF hidden state has the final norm applied).
    """
    hf = model.original_model
    tokenizer = model.tokenizer
    captured = {}
    handle = hf.model.layers[n_layers - 1].register_forward_hook(
        lambda module, args, output: captured.__setitem__(
            "last", output[0] if isinstance(output, tuple) else output
        )
    )
    total = torch.zeros(n_layers, model.cfg.d_model, dtype=torch.float64)
    try:
        for item in dataset:
            for sign, answer in ((1, item.matching), (-1, item.not_matching)):
                text = tokenizer.apply_chat_template(
                    [{"role": "user", "content": item.question}], add_generation_prompt=True, tokenize=False
                )
                ids = tokenizer(text + answer, add_special_tokens=False).input_ids
                tokens = tokenizer.convert_ids_to_tokens(ids)
                letter = max(i for i, tok in enumerate(tokens) if tok.strip("Ġ") == answer.strip("() "))
                with torch.inference_mode():
                    hidden = hf(torch.tensor([ids]), output_hidden_states=True).hidden_states
                stack = [hidden[layer + 1][0, letter] for layer in range(n_layers - 1)]
                stack.append(captured["last"][0, letter])
                total += sign * torch.stack(stack).double()
    finally:
        handle.remove()
    return (total / len(dataset)).float()


def relative_error(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).norm(dim=-1) / b.norm(dim=-1)


def synthetic(n: int) -> ContrastiveDataset:
    items = tuple(
        make_item(
            f"Item {i} of {n}. Is it sunny?\n\nChoices:\n (A) Yes\n (B) No",
            *(("(A)", "(B)")[:: 1 if i % 2 else -1]),
        )
        for i in range(n)
    )
    return ContrastiveDataset(f"synthetic-{n}", items)


def test_examples_equal_full_recompute(tiny):
    """Prefix sharing is exact: each kept activation equals a separate full forward pass."""
    data = synthetic(7)
    acts = extract_contrastive(tiny, data, batch_size=3, keep_examples=True, progress=False)
    names = [f"blocks.{layer}.hook_resid_post" for layer in range(4)]
    for index, item in enumerate(data):
        for side, prompt in zip(
            (acts.examples.positive, acts.examples.negative), pair_prompts(tiny.tokenizer, item), strict=True
        ):
            _, cache = tiny.run_with_cache(torch.tensor([prompt.token_ids]), names_filter=names)
            position = read_position(prompt, "answer")
            full = torch.stack([cache[name][0, position] for name in names])
            torch.testing.assert_close(side[index], full, rtol=1e-5, atol=1e-6)
    assert acts.examples.positive_labels == tuple(item.matching_letter for item in data)


def test_pairs_that_share_nothing_equal_full_recompute(tiny):
    """A rule reading position 0 leaves no shared prefix: the batch runs whole sequences, no cache."""
    data = synthetic(3)

    def first(prompt):
        return 0

    acts = extract_contrastive(
        tiny, data, position_rule=first, batch_size=2, keep_examples=True, progress=False
    )
    names = [f"blocks.{layer}.hook_resid_post" for layer in range(4)]
    for index, item in enumerate(data):
        positive, _ = pair_prompts(tiny.tokenizer, item)
        _, cache = tiny.run_with_cache(torch.tensor([positive.token_ids]), names_filter=names)
        full = torch.stack([cache[name][0, 0] for name in names])
        torch.testing.assert_close(acts.examples.positive[index], full, rtol=1e-5, atol=1e-6)


def test_batch_sizes_agree(tiny):
    data = synthetic(9)
    one = extract_contrastive(tiny, data, batch_size=1, progress=False).mean_difference
    for batch_size in (2, 4, 9):
        other = extract_contrastive(tiny, data, batch_size=batch_size, progress=False).mean_difference
        assert relative_error(other, one).max() < 1e-5


def test_layer_subset_and_sites(tiny):
    data = synthetic(4)
    full = extract_contrastive(tiny, data, progress=False)
    part = extract_contrastive(tiny, data, layers=[2, 0], progress=False)
    assert part.layers == (0, 2)
    torch.testing.assert_close(part.mean_difference, full.mean_difference[[0, 2]])
    pre = extract_contrastive(tiny, data, layers=[1], site="resid_pre", progress=False)
    torch.testing.assert_close(pre.mean_difference[0], full.mean_difference[0], rtol=1e-5, atol=1e-6)


def test_answer_rule_requires_answer(tiny):
    with pytest.raises(ValueError, match="needs an answer"):
        from caa_lens.prompts import format_prompt

        read_position(format_prompt(tiny.tokenizer, "Hi"), "answer")


@pytest.mark.slow
@pytest.mark.shared_data
def test_parity_with_plain_loop_on_default_model(default_model, shared_data):
    """Every layer's vector equals the reference-style plain loop to 1e-5 relative, on real data."""
    data = load_behaviour_dataset(shared_data / "caa" / "generate" / "refusal" / "generate_dataset.json")
    data = data.select(range(16), ":first16")
    n_layers = default_model.cfg.n_layers
    ours = extract_contrastive(default_model, data, batch_size=16, progress=False).mean_difference
    reference = reference_mean_difference(default_model, data, n_layers)
    errors = relative_error(ours, reference)
    assert errors.max() < 1e-5, errors
    unbatched = extract_contrastive(default_model, data, batch_size=1, progress=False).mean_difference
    assert relative_error(unbatched, reference).max() < 1e-5


def peak_rss(n_pairs: int) -> int:
    result = subprocess.run(
        [sys.executable, str(HELPER), str(n_pairs)], capture_output=True, text=True, check=True
    )
    return int(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_memory_does_not_grow_with_pairs():
    """Peak resident memory of extraction at 1000 pairs stays within 50 MB of 100 pairs (fresh processes)."""
    growth = peak_rss(1000) - peak_rss(100)
    assert growth < 50 * 2**20, f"peak memory grew by {growth / 2**20:.1f} MB from 100 to 1000 pairs"


@pytest.mark.parametrize("batch_size", [0, -3])
def test_non_positive_batch_size_is_refused_before_any_work(tiny, batch_size):
    """Batch 0 ended in a bare range() error; batch -3 processed no pair and returned zero sums."""
    with pytest.raises(ValueError, match=r"batch_size must be a positive integer \(pairs per forward pass\)"):
        extract_contrastive(tiny, synthetic(4), batch_size=batch_size, progress=False)


def test_example_dtype_must_be_a_float_dtype(tiny):
    with pytest.raises(ValueError, match="example_dtype must be a floating torch dtype"):
        extract_contrastive(tiny, synthetic(2), keep_examples=True, example_dtype=torch.int8, progress=False)


def test_activations_record_their_settings(tiny):
    acts = extract_contrastive(tiny, synthetic(3), layers=[0], batch_size=2, style="plain", progress=False)
    assert acts.settings == {"batch_size": 2, "system": None, "style": "plain"}
    assert acts.n_pairs == 3


def test_a_checkpoint_of_other_weights_is_not_continued(tiny, tmp_path, monkeypatch):
    """The run key includes the weights fingerprint: a same-shaped model's checkpoint is refused."""
    from caa_lens import extraction
    from caa_lens.resume import CheckpointMismatchError
    from caa_lens.tiny import tiny_model

    checkpoint = tmp_path / "run.ckpt"
    real = extraction.save_state

    def killed_after_saving(*args):
        real(*args)
        raise KeyboardInterrupt

    monkeypatch.setattr(extraction, "save_state", killed_after_saving)
    with pytest.raises(KeyboardInterrupt):
        extract_contrastive(
            tiny_model(seed=1), synthetic(4), batch_size=2, checkpoint=checkpoint, progress=False
        )
    monkeypatch.undo()
    assert checkpoint.exists()
    with pytest.raises(CheckpointMismatchError, match="different settings"):
        extract_contrastive(tiny, synthetic(4), batch_size=2, checkpoint=checkpoint, progress=False)


# ---------------------------------------------------------------------------------------------- per-label sums


def unbalanced(n_a: int, n_b: int, yes_no: bool = False) -> ContrastiveDataset:
    """Real items whose matching answer is the first option for ``n_a`` of them, interleaved."""
    labels = ["A"] * n_a + ["B"] * n_b
    labels = labels[::2] + labels[1::2]  # mix them, so that batches hold both labels
    items = []
    for i, label in enumerate(labels):
        if yes_no:
            answers = ("Yes", "No") if label == "A" else ("No", "Yes")
            items.append(make_item(f"Item {i}: is the sky blue?", *answers))
        else:
            answers = ("(A)", "(B)") if label == "A" else ("(B)", "(A)")
            items.append(make_item(f"Item {i}. Is it sunny?\n\nChoices:\n (A) Yes\n (B) No", *answers))
    return ContrastiveDataset(f"unbalanced-{n_a}-{n_b}", tuple(items))


@pytest.mark.parametrize("yes_no", [False, True])
def test_label_sums_equal_the_per_example_sums(tiny, yes_no):
    """Per matching label, the float64 sums equal the kept examples summed by label, and add up to the
    side sums; the labels are the answer labels (A/B or No/Yes), sorted, with their pair counts."""
    data = unbalanced(7, 3, yes_no)
    acts = extract_contrastive(tiny, data, layers=[0, 2], batch_size=4, keep_examples=True, progress=False)
    assert acts.labels == (("No", "Yes") if yes_no else ("A", "B"))
    assert acts.label_counts == ((3, 7) if yes_no else (7, 3))
    assert acts.label_sums is not None and acts.label_sums.dtype == torch.float64
    assert acts.label_sums.shape == (2, 2, 2, 64)
    examples = acts.examples
    assert examples is not None
    for k, label in enumerate(acts.labels):
        rows = torch.tensor([x == label for x in examples.positive_labels])
        assert int(rows.sum()) == acts.label_counts[k]
        torch.testing.assert_close(acts.label_sums[k, 0], examples.positive[rows].double().sum(0))
        torch.testing.assert_close(acts.label_sums[k, 1], examples.negative[rows].double().sum(0))
    torch.testing.assert_close(acts.label_sums[:, 0].sum(0).float(), acts.positive_sum)
    torch.testing.assert_close(acts.label_sums[:, 1].sum(0).float(), acts.negative_sum)
    # Memory stays flat without examples: the same per-label sums, from sums alone.
    flat = extract_contrastive(tiny, data, layers=[0, 2], batch_size=4, progress=False)
    assert flat.examples is None and torch.equal(flat.label_sums, acts.label_sums)


def test_label_sums_resume_bit_identically(tiny, tmp_path, monkeypatch):
    """Killed after two batches and resumed: per-label sums, side sums and examples equal an
    uninterrupted run's exactly (the per-label sums ride in the checkpoint's kept slot)."""
    from caa_lens import extraction

    data = unbalanced(5, 4)
    kwargs = {"layers": [1, 3], "batch_size": 2, "keep_examples": True, "example_dtype": torch.float16}
    whole = extract_contrastive(tiny, data, progress=False, **kwargs)
    checkpoint = tmp_path / "run.ckpt"
    real, calls = extraction.save_state, []

    def killed_after_two(*args):
        real(*args)
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(extraction, "save_state", killed_after_two)
    with pytest.raises(KeyboardInterrupt):
        extract_contrastive(tiny, data, checkpoint=checkpoint, progress=False, **kwargs)
    monkeypatch.undo()
    resumed = extract_contrastive(tiny, data, checkpoint=checkpoint, progress=False, **kwargs)
    assert not checkpoint.exists()
    assert torch.equal(resumed.label_sums, whole.label_sums)
    assert torch.equal(resumed.positive_sum, whole.positive_sum)
    assert torch.equal(resumed.negative_sum, whole.negative_sum)
    assert resumed.examples is not None and whole.examples is not None
    assert resumed.examples.positive.dtype == torch.float16
    assert torch.equal(resumed.examples.positive, whole.examples.positive)
    assert torch.equal(resumed.examples.negative, whole.examples.negative)
    assert (resumed.labels, resumed.label_counts) == (whole.labels, whole.label_counts)


def test_a_checkpoint_without_label_sums_is_refused(tiny, tmp_path, monkeypatch):
    """A checkpoint in the layout before per-label sums cannot be continued: its run key differs (the
    layout is part of the settings), and a state under the current key without label rows is refused."""
    from caa_lens import extraction
    from caa_lens.resume import CheckpointMismatchError, ExtractionState, save_state

    data, checkpoint, seen = unbalanced(2, 2), tmp_path / "old.ckpt", []

    def record_and_stop(path, key, settings, state):
        seen.append((key, settings))
        raise KeyboardInterrupt

    monkeypatch.setattr(extraction, "save_state", record_and_stop)
    with pytest.raises(KeyboardInterrupt):
        extract_contrastive(tiny, data, layers=[0], checkpoint=checkpoint, progress=False)
    monkeypatch.undo()
    ((key, settings),) = seen
    assert settings["layout"] == "label-sums-in-kept/1"
    save_state(
        checkpoint, key, settings, ExtractionState(1, torch.zeros(2, 1, 64, dtype=torch.float64), (), None)
    )
    with pytest.raises(CheckpointMismatchError, match=r"no per-label sums .* delete it and rerun"):
        extract_contrastive(tiny, data, layers=[0], checkpoint=checkpoint, progress=False)


def test_activations_check_their_label_fields(tiny):
    acts = extract_contrastive(tiny, unbalanced(2, 1), layers=[0], progress=False)
    with pytest.raises(ValueError, match="add up to n_pairs=3"):
        replace(acts, label_counts=(2, 2))
    with pytest.raises(ValueError, match="one row and one count per matching label"):
        replace(acts, labels=("A",), label_counts=(3,))
    with pytest.raises(ValueError, match="give all three or none"):
        replace(acts, label_sums=None)
    assert replace(acts, label_sums=None, labels=(), label_counts=()).label_sums is None
