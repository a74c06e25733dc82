"""A token view built by hand (no model): the renderers and the figure are tested on known values."""

import torch

from caa_lens.views import TokenProjection


def hand_made_projection(tokens, values, n_prompt=2, start=1) -> TokenProjection:
    """Tokens ``tokens`` with projections ``values``, steered from ``start`` at 0.75 per token."""
    n = len(tokens)
    steered = torch.arange(n) >= start
    return TokenProjection(
        tuple(tokens),
        tuple(range(n)),
        torch.tensor(values, dtype=torch.float64),
        torch.zeros(n, dtype=torch.float64),
        n_prompt,
        steered,
        1,
        "resid_post",
        1.5,
        torch.where(steered, 0.75, 0.0).double(),
    )
