"""caa_lens.multipliers: multipliers that cannot overflow float32 against the vectors they scale, checked
before any model runs, and the checked injections of the whole-dataset scorers."""

import dataclasses
import re

import pytest
import torch

from caa_lens.multipliers import (
    FLOAT32_MAX,
    check_injection_multipliers,
    check_multipliers,
    scoring_injections,
)
from caa_lens.provenance import make_provenance
from caa_lens.steering import Injection
from caa_lens.vectors import SteeringVector


@pytest.fixture(scope="module")
def setting(tiny):
    """(unused, two random vectors 'first' and 'second'): the vectors of the sweep safety tests."""
    provenance = make_provenance(tiny, "resid_post", "answer", "random", "test", "0", 1, torch.float32)
    generator = torch.Generator().manual_seed(0)
    vectors = {
        name: SteeringVector(torch.randn(4, 64, generator=generator), (0, 1, 2, 3), provenance)
        for name in ("first", "second")
    }
    return None, vectors


@pytest.fixture(scope="module")
def norm_four(tiny) -> SteeringVector:
    """Norm 1 at layers 0, 1 and 3, norm 4 at layer 2: the largest norm and where it is are known."""
    provenance = make_provenance(tiny, "resid_post", "answer", "random", "test", "0", 1, torch.float32)
    directions = torch.zeros(4, 64)
    directions[:, 0] = torch.tensor([1.0, 1.0, 4.0, 1.0])
    return SteeringVector(directions, (0, 1, 2, 3), provenance)


def test_check_multipliers(setting):
    _, vectors = setting
    assert check_multipliers([-2, 0, 2.5]) == (-2.0, 0.0, 2.5)
    assert check_multipliers((1e37,), vectors) == (1e37,)
    assert check_multipliers([1.0, 1.0], vectors["first"], distinct=False) == (1.0, 1.0)
    norm = max(float(v.norms().max()) for v in vectors.values())
    limit = float(torch.finfo(torch.float32).max) / norm
    assert check_multipliers([-0.99 * limit], list(vectors.values()))
    for bad, message in [
        ([], "no multipliers"),
        ([1.0, float("inf")], "finite"),
        ([1.0, 1.0], "distinct"),
        ([1e300], "largest float32"),
    ]:
        with pytest.raises(ValueError, match=message):
            check_multipliers(bad)
    with pytest.raises(ValueError, match=r"vector '(first|second)' at layer \d"):
        check_multipliers([1.01 * limit], vectors)
    with pytest.raises(ValueError, match="the vector at layer"):
        check_multipliers([1e38], vectors["first"])


def test_float32_max_is_the_largest_finite_float32():
    assert FLOAT32_MAX == 3.4028234663852886e38
    assert torch.isinf(torch.tensor(FLOAT32_MAX, dtype=torch.float64).mul(2).float())


def test_huge_multiplier_against_a_vectors_norm_is_refused_with_the_limit(norm_four):
    limit = FLOAT32_MAX / 4.0
    assert check_multipliers([-0.999 * limit, 0.999 * limit], norm_four) == (-0.999 * limit, 0.999 * limit)
    # 1e38 is a finite float32 (it passes the values-alone check) but 1e38 * 4 is not.
    assert check_multipliers([1e38]) == (1e38,)
    message = (
        "multiplier(s) [1e+38, -9e+37] times the norm 4 of the vector at layer 2 exceed the largest float32 "
        "(3.403e+38): the steered activations would be infinite and every score NaN. "
        "Use |multiplier| < 8.507e+37"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        check_multipliers([1.0, 1e38, -9e37], norm_four)


def test_overflow_message_names_the_largest_norm_by_its_key_or_index(norm_four, setting):
    quarter = dataclasses.replace(norm_four, directions=norm_four.directions / 4)  # norm 1 at layer 2
    with pytest.raises(ValueError, match=r"the norm 4 of vector 'big' at layer 2 exceed"):
        check_multipliers([1e38], {"small": quarter, "big": norm_four})
    with pytest.raises(ValueError, match=r"the norm 4 of vector 1 at layer 2 exceed"):
        check_multipliers([1e38], [quarter, norm_four])
    assert check_multipliers([1e38], [quarter]) == (1e38,)  # 1e38 * 1 fits
    # The random vectors have larger norms (about 8): the message names the largest one.
    _, vectors = setting
    norms = {name: float(v.norms().max()) for name, v in vectors.items()}
    largest = max(norms, key=norms.__getitem__)
    with pytest.raises(ValueError, match=rf"the norm {norms[largest]:.4g} of vector '{largest}' at layer \d"):
        check_multipliers([1e38], {"big": norm_four, **vectors})


def test_values_that_are_not_finite_or_repeat_are_refused():
    with pytest.raises(ValueError, match=r"^multipliers must be finite numbers, got \[nan, -inf\]$"):
        check_multipliers([0.0, float("nan"), float("-inf")])
    with pytest.raises(ValueError, match=r"^multipliers must be distinct; \[2\.0\] appear more than once"):
        check_multipliers([2, 0, 2.0])
    assert check_multipliers([2, 0, 2.0], distinct=False) == (2.0, 0.0, 2.0)
    with pytest.raises(ValueError, match=r"^no multipliers given; give at least one \(0 is the unsteered"):
        check_multipliers(())


def test_injection_multipliers_are_checked_against_their_own_vector(norm_four):
    quarter = dataclasses.replace(norm_four, directions=norm_four.directions / 4)
    # Per-row (tensor) multipliers may repeat; every value is checked.
    check_injection_multipliers(
        [Injection(norm_four, 1, torch.tensor([1.0, 1.0])), Injection(norm_four, 2, 3.0)]
    )
    # 1e38 fits the norm-1 vector (1e38 < 3.4e38) but not norm_four (4e38), even in another injection's row.
    check_injection_multipliers([Injection(quarter, 0, 1e38)])
    # (the float32 tensor holds 1e38 as 9.9999997e37)
    with pytest.raises(
        ValueError, match=r"multiplier\(s\) \[9\.99999\d*e\+37\] times the norm 4 of the vector at"
    ):
        check_injection_multipliers(
            [Injection(quarter, 0, 1e38), Injection(norm_four, 0, torch.tensor([1.0, 1e38]))]
        )


def test_scoring_injections_returns_a_tuple_and_checks_overflow(norm_four):
    one = Injection(norm_four, 1, 2.0)
    assert scoring_injections(one, 8, "scorer") == (one,)
    two = [one, Injection(norm_four, 3, -1.0)]
    assert scoring_injections(two, 1, "scorer") == tuple(two)
    assert scoring_injections((), 1, "scorer") == ()
    with pytest.raises(
        ValueError, match=r"^multiplier\(s\) \[1e\+38\] times the norm 4 of the vector at layer 2"
    ):
        scoring_injections(Injection(norm_four, 1, 1e38), 8, "scorer")


def test_scoring_injections_refuses_a_tensor_multiplier_naming_the_caller(norm_four):
    per_row = Injection(norm_four, 1, torch.tensor([1.0, 2.0]))
    with pytest.raises(
        ValueError, match=r"^likelihood_scores takes float multipliers; use run_sweep for per-row ones$"
    ):
        scoring_injections([Injection(norm_four, 2, 1.0), per_row], 8, "likelihood_scores")
    with pytest.raises(ValueError, match=r"^behaviour_probabilities takes float multipliers"):
        scoring_injections(per_row, 8, "behaviour_probabilities")


@pytest.mark.parametrize("batch_size", [0, -3])
def test_scoring_injections_refuses_batch_size_below_one(norm_four, batch_size):
    with pytest.raises(ValueError, match=rf"^batch_size must be >= 1, got {batch_size}$"):
        scoring_injections(Injection(norm_four, 1, 1.0), batch_size, "scorer")
