"""Run in a fresh process: extract mean-difference vectors from N synthetic pairs, print peak RSS in bytes.

Peak resident memory of the whole process (ru_maxrss) sees torch's CPU allocator, which Python's
tracemalloc does not; comparing two sizes in identical fresh processes cancels the fixed costs.
"""

import resource
import sys

import torch

from caa_lens.data import ContrastiveDataset, make_item
from caa_lens.extraction import extract_contrastive
from caa_lens.tiny import tiny_model

torch.set_num_threads(1)  # as the test process (conftest): fixed reduction order, no oversubscription


def main(n_pairs: int) -> None:
    model = tiny_model()
    items = tuple(
        make_item(
            f"Question {i}: is the sky blue today?\n\nChoices:\n (A) Yes\n (B) No",
            "(A)" if i % 2 else "(B)",
            "(B)" if i % 2 else "(A)",
        )
        for i in range(n_pairs)
    )
    extract_contrastive(
        model, ContrastiveDataset(f"synthetic-{n_pairs}", items), batch_size=16, progress=False
    )
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)


if __name__ == "__main__":
    main(int(sys.argv[1]))
