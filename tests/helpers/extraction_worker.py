"""Run in a subprocess: a checkpointed extraction on the tiny model, killed and resumed by tests."""

import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from caa_lens.data import ContrastiveDataset, make_item
from caa_lens.extraction import extract_contrastive
from caa_lens.tiny import tiny_model


def dataset(n_pairs: int) -> ContrastiveDataset:
    items = tuple(
        make_item(
            f"Question {i} about the weather {'today' * (i % 5)}?\n\nChoices:\n (A) Sunny\n (B) Rainy",
            "(A)" if i % 2 else "(B)",
            "(B)" if i % 2 else "(A)",
        )
        for i in range(n_pairs)
    )
    return ContrastiveDataset(f"worker-{n_pairs}", items)


torch.set_num_threads(1)  # as the test process (conftest): fixed reduction order, no oversubscription


def main(out: Path, checkpoint: str, n_pairs: int) -> None:
    acts = extract_contrastive(
        tiny_model(),
        dataset(n_pairs),
        batch_size=1,
        keep_examples=True,
        progress=False,
        checkpoint=checkpoint if checkpoint != "-" else None,
    )
    assert acts.examples is not None
    save_file(
        {"sums": acts.positive_sum - acts.negative_sum, "positive": acts.examples.positive.contiguous()},
        str(out),
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]))
