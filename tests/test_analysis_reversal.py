"""analysis.reversal: the paired effects of an insertion, the verdict on held-out items only (undoing the
steering vs pushing the behaviour), and the Pareto front."""

import pytest
import torch

from analysis.reversal import judge_reversal, pareto_front, reversal_effects


def items_of(*values) -> list[torch.Tensor]:
    return [torch.tensor(v, dtype=torch.float64) for v in values]


UNSTEERED = [0.40, 0.45, 0.50, 0.42, 0.48, 0.44, 0.46, 0.41]
STEERED = [u + 0.3 for u in UNSTEERED]


@pytest.mark.parametrize("direction", [1.0, -1.0])
def test_heldout_interval_covering_zero_is_not_a_reversal(direction):
    # The insertion moves the steered items up and down by the same amounts: the interval covers 0.
    noise = [0.05, -0.05, 0.04, -0.04, 0.06, -0.06, 0.02, -0.02]
    d = direction
    unsteered, steered = (torch.tensor([0.5 + d * (x - 0.5) for x in v]) for v in (UNSTEERED, STEERED))
    inserted = steered + torch.tensor(noise)
    table = reversal_effects(d, unsteered, steered, inserted, unsteered, n_resamples=500).assign(
        split="heldout"
    )
    row = table.set_index("quantity").loc["reversal"]
    assert row.low < 0 < row.high
    reversed_, verdict = judge_reversal(table)
    assert not reversed_ and verdict.startswith("not reversed")
    assert table.set_index("quantity").loc["steering", "mean"] == pytest.approx(0.3)


def test_judge_reversal_tells_undoing_from_pushing():
    unsteered, steered = items_of(UNSTEERED, STEERED)
    jitter = torch.tensor([0.01, -0.01, 0.02, -0.02, 0.0, 0.01, -0.01, 0.0], dtype=torch.float64)
    undone = steered - 0.2 + jitter

    def judged(unsteered_inserted):
        table = reversal_effects(1.0, unsteered, steered, undone, unsteered_inserted, n_resamples=500)
        return judge_reversal(table.assign(split="heldout"))

    reversed_, verdict = judged(unsteered)  # the insertion does nothing without steering
    assert reversed_ and "undoes steering" in verdict and "67% undone" in verdict
    reversed_, verdict = judged(unsteered - 0.2 - jitter)  # it moves the unsteered model as much
    assert reversed_ and "pushes the behaviour rather than undoing the steering" in verdict
    # The search split alone never establishes anything.
    table = reversal_effects(1.0, unsteered, steered, undone, unsteered, n_resamples=500)
    assert judge_reversal(table.assign(split="search")) == (False, judge_reversal(None)[1])
    no_steering = reversal_effects(1.0, unsteered, unsteered + jitter, undone, unsteered, n_resamples=500)
    reversed_, verdict = judge_reversal(no_steering.assign(split="heldout"))
    assert not reversed_ and "nothing to reverse" in verdict


def test_pareto_front():
    points = {(1,): (0.5, 3.0), (2,): (0.4, 2.0), (3,): (0.3, 2.5), (4,): (0.1, 1.0)}
    assert pareto_front(points) == [(1,), (2,), (4,)]
