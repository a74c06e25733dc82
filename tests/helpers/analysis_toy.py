"""Small constructed inputs shared by the analysis tests: a toy A/B dataset and planted activations."""

import torch

from caa_lens.data import ContrastiveDataset, make_item
from caa_lens.extraction import ContrastiveActivations, PairActivations

QUESTIONS = (
    "Is it sunny?",
    "Do you like rain?",
    "Should we go out?",
    "Is the sky blue?",
    "Will it rain tomorrow?",
    "Do you love the ocean?",
)


def toy_dataset(n: int = 12, name: str = "toy") -> ContrastiveDataset:
    """``n`` A/B items on the tiny tokenizer's vocabulary; the matching letter alternates A, B."""
    items = []
    for i in range(n):
        text = f"{QUESTIONS[i % len(QUESTIONS)]} ({i})\n\nChoices:\n (A) yes\n (B) no"
        items.append(make_item(text, "(A)", "(B)") if i % 2 == 0 else make_item(text, "(B)", "(A)"))
    return ContrastiveDataset(name, tuple(items))


def planted_examples(
    n_pairs: int,
    d: int = 16,
    n_layers: int = 2,
    behaviour_scale: float = 4.0,
    letter_scale: float = 0.0,
    noise: float = 1.0,
    seed: int = 0,
) -> tuple[PairActivations, torch.Tensor, torch.Tensor]:
    """Activations with a planted behaviour direction (+/- along ``u``) and letter direction (``w``).

    Letters are random (balanced in expectation), so a probe for the letter is at chance unless
    ``letter_scale`` plants it. Returns the examples and the two unit directions.
    """
    generator = torch.Generator().manual_seed(seed)
    u = torch.zeros(d)
    u[0] = 1.0
    w = torch.zeros(d)
    w[1] = 1.0
    letters = torch.randint(2, (n_pairs,), generator=generator)  # matching letter: 0 = A, 1 = B

    def side(sign: float, letter: torch.Tensor) -> torch.Tensor:
        base = torch.randn(n_pairs, n_layers, d, generator=generator) * noise
        shift = sign * behaviour_scale * u + (2 * letter.float() - 1)[:, None] * letter_scale * w
        return base + shift[:, None, :]

    positive = side(1.0, letters)
    negative = side(-1.0, 1 - letters)
    names = ("A", "B")
    return (
        PairActivations(
            positive,
            negative,
            tuple(names[int(x)] for x in letters),
            tuple(names[1 - int(x)] for x in letters),
        ),
        u,
        w,
    )


def activations_from(
    examples: PairActivations, layers: tuple[int, ...], name: str = "planted"
) -> ContrastiveActivations:
    """A ContrastiveActivations wrapping constructed examples (sums computed from them)."""
    return ContrastiveActivations(
        layers,
        "resid_post",
        "answer",
        name,
        "0",
        examples.positive.shape[0],
        examples.positive.sum(0),
        examples.negative.sum(0),
        examples,
    )
