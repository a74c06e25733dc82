"""Shared fixtures: the tiny random model (unit tests), the real default model and ../shared/data (slow)."""

import os
import sys
from pathlib import Path

import pytest
import torch

# One thread: multi-threaded CPU kernels may split reductions differently from run to run under load,
# which breaks the bit-identical checks, and the tiny model's small ops run faster on one thread.
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("CAA_LENS_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def tiny():
    """The tiny random Llama-style bridge. Tests must leave it unmodified (no hooks left behind)."""
    from caa_lens.tiny import tiny_model

    return tiny_model()


@pytest.fixture(scope="session")
def default_model():
    """The real SmolLM2-135M-Instruct bridge (fetched into the cache on first use)."""
    from caa_lens.models import DEFAULT_MODEL, load_model

    return load_model(DEFAULT_MODEL, device="cpu")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.exists():
        pytest.skip(f"shared reference data not found at {SHARED_DATA} (set CAA_LENS_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def close_figures():
    """Close every matplotlib figure a test left open (only where a test imported pyplot at all)."""
    yield
    if "matplotlib.pyplot" in sys.modules:
        sys.modules["matplotlib.pyplot"].close("all")
