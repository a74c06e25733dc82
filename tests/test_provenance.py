"""Provenance: recorded settings, and the model checks (name, shape, weights) before a vector is used."""

import dataclasses

import pytest
import torch
from helpers.vector_toys import provenance, vector

from caa_lens.identity import model_identity
from caa_lens.provenance import Provenance, VectorMismatchError, check_compatible, make_provenance
from caa_lens.tiny import tiny_model
from caa_lens.vector_files import (
    load_vector,
    save_vector,
)
from caa_lens.vectors import SteeringVector


@pytest.fixture(scope="module")
def other_seed():
    """A tiny model of exactly the same name, shape and config as the fixture's, with other weights."""
    return tiny_model(seed=1)


def test_a_vector_from_other_weights_is_refused(tiny, tmp_path, other_seed):
    mine, theirs = model_identity(tiny), model_identity(other_seed)
    assert (mine.name, mine.config_hash) == (theirs.name, theirs.config_hash)
    assert mine.weights_hash != theirs.weights_hash
    path = save_vector(vector(tiny), tmp_path / "v.safetensors")
    assert load_vector(path).provenance.model_weights_hash == mine.weights_hash
    with pytest.raises(VectorMismatchError, match="model weights: vector made on weights"):
        load_vector(path, model=other_seed)
    loaded = load_vector(path, model=other_seed, allow_mismatch=True)
    assert any(note.startswith("model weights") for note in loaded.provenance.overrides)
    with pytest.raises(VectorMismatchError, match="model weights"):
        check_compatible(vector(tiny).provenance, theirs, "resid_post")
    with pytest.raises(VectorMismatchError, match="model weights"):
        vector(tiny) + vector(other_seed)


def test_unknown_weights_are_not_compared(tiny, other_seed):
    legacy = dataclasses.replace(provenance(tiny), model_weights_hash="")
    assert check_compatible(legacy, model_identity(other_seed), "resid_post") == ()


def test_settings_round_trip_and_must_be_json(tiny, tmp_path):
    p = make_provenance(
        tiny, "resid_post", "answer", "m", "d", "0", 1, torch.float32, {"batch_size": 4, "layers": (1, 2)}
    )
    assert p.settings == {"batch_size": 4, "layers": [1, 2], "model_dtype": "float32"}
    v = SteeringVector(torch.ones(1, 64), (1,), p)
    assert load_vector(save_vector(v, tmp_path / "v")).provenance == p
    with pytest.raises(ValueError, match="settings must be JSON values"):
        dataclasses.replace(p, settings={"dtype": torch.float16})
    old = {k: v for k, v in p.to_json().items() if k not in ("settings", "model_weights_hash")}
    assert Provenance.from_json(old).settings == {}
