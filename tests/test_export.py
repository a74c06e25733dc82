"""llama.cpp control-vector export: file format, round trip, layer mapping and refusals."""

import copy
import json
import struct

import gguf
import numpy as np
import pytest
import torch
from transformers import LlamaForCausalLM

from caa_lens.export import (
    ControlVectorError,
    control_vector_metadata,
    export_control_vector_gguf,
    llama_cpp_layer,
    load_control_vector_gguf,
)
from caa_lens.provenance import make_provenance
from caa_lens.vectors import SteeringVector


def make_vector(model, layers=(1, 2, 3), site: str = "resid_post", pos: int | None = None, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    shape = (len(layers), 64) if pos is None else (len(layers), pos, 64)
    provenance = make_provenance(model, site, "answer", "mean_difference", "demo", "0" * 16, 4, torch.float32)
    return SteeringVector(torch.randn(shape, generator=generator), tuple(layers), provenance)


def write_raw(path, tensors: dict[str, np.ndarray], arch: str = "controlvector") -> None:
    writer = gguf.GGUFWriter(path, arch)
    writer.add_string("controlvector.model_hint", "llama")
    for name, values in tensors.items():
        writer.add_tensor(name, values)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


# ---------------------------------------------------------------------------------------------- format


def test_round_trip_applies_the_multiplier(tiny, tmp_path):
    vector = make_vector(tiny)
    path = export_control_vector_gguf(vector, tmp_path / "v.gguf", multiplier=-2.5)
    loaded = load_control_vector_gguf(path)
    assert list(loaded) == [1, 2, 3]
    for layer, values in loaded.items():
        assert values.dtype == torch.float32 and values.shape == (64,)
        assert torch.equal(values, vector.at(layer) * -2.5)


def test_file_is_what_llama_cpp_reads(tiny, tmp_path):
    vector = make_vector(tiny, layers=(3, 1))
    path = export_control_vector_gguf(vector, tmp_path / "v.gguf", multiplier=4.0, model_hint="llama")
    raw = path.read_bytes()
    magic, version, n_tensors, n_kv = struct.unpack("<4sIQQ", raw[:24])
    assert (magic, version, n_tensors) == (b"GGUF", 3, 2)
    reader = gguf.GGUFReader(path)
    assert reader.get_field("general.architecture").contents() == "controlvector"
    assert reader.get_field("controlvector.model_hint").contents() == "llama"
    assert reader.get_field("controlvector.layer_count").contents() == 2
    assert n_kv == len(reader.fields) - 3  # the reader adds GGUF.version/tensor_count/kv_count
    assert [t.name for t in reader.tensors] == ["direction.1", "direction.3"]
    for tensor in reader.tensors:
        assert tensor.tensor_type == gguf.GGMLQuantizationType.F32
        assert list(tensor.shape) == [64] and tensor.n_elements == 64
    meta = control_vector_metadata(path)
    assert meta["model_hint"] == "llama" and meta["layer_count"] == 2
    provenance = meta["provenance"]
    assert provenance["multiplier"] == 4.0 and provenance["site"] == "resid_post"
    assert provenance["layers"] == {"direction.3": "resid_post[3]", "direction.1": "resid_post[1]"}
    assert provenance["model_name"] == vector.provenance.model_name


def test_export_is_atomic_and_overwrites(tiny, tmp_path):
    path = tmp_path / "out" / "v.gguf"
    export_control_vector_gguf(make_vector(tiny, seed=1), path)
    export_control_vector_gguf(make_vector(tiny, seed=2), path)
    assert [p.name for p in path.parent.iterdir()] == ["v.gguf"]
    assert torch.equal(load_control_vector_gguf(path)[2], make_vector(tiny, seed=2).at(2))


def test_half_precision_vectors_are_written_as_float32(tiny, tmp_path):
    vector = make_vector(tiny)
    half = SteeringVector(vector.directions.half(), vector.layers, vector.provenance)
    loaded = load_control_vector_gguf(export_control_vector_gguf(half, tmp_path / "h.gguf"))
    assert torch.equal(loaded[1], half.at(1).float())


# ---------------------------------------------------------------------------------------------- mapping


def test_layer_index_mapping():
    assert [llama_cpp_layer("resid_post", layer) for layer in (1, 2, 29)] == [1, 2, 29]
    assert [llama_cpp_layer("resid_pre", layer) for layer in (2, 3, 29)] == [1, 2, 28]
    with pytest.raises(ControlVectorError, match="layer 0"):
        llama_cpp_layer("resid_post", 0)
    for layer in (0, 1):
        with pytest.raises(ControlVectorError, match="never steers"):
            llama_cpp_layer("resid_pre", layer)
    with pytest.raises(ControlVectorError, match="resid_mid"):
        llama_cpp_layer("resid_mid", 5)
    with pytest.raises(ControlVectorError, match="unknown hook site"):
        llama_cpp_layer("attn_out", 5)


def test_resid_pre_vectors_map_one_block_down(tiny, tmp_path):
    vector = make_vector(tiny, layers=(2, 3), site="resid_pre")
    path = export_control_vector_gguf(vector, tmp_path / "pre.gguf")
    assert [t.name for t in gguf.GGUFReader(path).tensors] == ["direction.1", "direction.2"]
    loaded = load_control_vector_gguf(path)  # keyed by resid_post layer: resid_pre[L] is resid_post[L-1]
    assert torch.equal(loaded[1], vector.at(2)) and torch.equal(loaded[2], vector.at(3))


@pytest.fixture(scope="module")
def plain_hf(tiny):
    """An unbridged HF copy of the tiny model (same config and seed, so the same weights)."""
    state = torch.random.get_rng_state()
    torch.manual_seed(0)
    try:
        model = LlamaForCausalLM(copy.deepcopy(tiny.original_model.config)).eval()
    finally:
        torch.random.set_rng_state(state)
    return model


def llama_cpp_logits(model, directions: dict[int, torch.Tensor], ids: torch.Tensor) -> torch.Tensor:
    """Emulate llama.cpp: ``direction.{i}`` is added to the output of block ``i`` at every position.

    (Every llama.cpp model graph ends block ``il`` with ``build_cvec(cur, il)``, which adds
    ``tensors[il]``, filled from ``direction.{il}``.)
    """

    def add(values):
        def hook(module, args, output):
            if isinstance(output, tuple):
                return (output[0] + values, *output[1:])
            return output + values

        return hook

    handles = [model.model.layers[i].register_forward_hook(add(v)) for i, v in directions.items()]
    try:
        with torch.inference_mode():
            return model(ids).logits
    finally:
        for handle in handles:
            handle.remove()


@pytest.mark.parametrize(("site", "layers"), [("resid_post", (1, 3)), ("resid_pre", (2, 3))])
def test_llama_cpp_application_equals_caa_lens_steering(tiny, plain_hf, tmp_path, site, layers):
    """The exported file, applied the way llama.cpp applies it, steers exactly like caa_lens's hooks."""
    vector = make_vector(tiny, layers=layers, site=site)
    multiplier = 3.0
    directions = load_control_vector_gguf(export_control_vector_gguf(vector, tmp_path / "v.gguf", multiplier))
    ids = torch.tensor(
        [tiny.tokenizer("<s>[INST] Will it rain? [/INST] (A)", add_special_tokens=False).input_ids]
    )

    def add(values):
        def hook(activation, hook):
            return activation + values

        return hook

    hooks = [(f"blocks.{layer}.hook_{site}", add(multiplier * vector.at(layer))) for layer in layers]
    with torch.inference_mode(), tiny.hooks(fwd_hooks=hooks):
        steered = tiny(ids)
    with torch.inference_mode():
        unsteered = tiny(ids)
    emulated = llama_cpp_logits(plain_hf, directions, ids)
    assert (steered - unsteered).abs().max() > 1e-3  # the vector does something
    assert torch.allclose(emulated, steered, atol=1e-5, rtol=1e-5)
    # the convention this module rejects (resid_post[L] -> direction.{L+1}) would steer one block late
    shifted = {layer + 1: values for layer, values in directions.items() if layer + 1 < tiny.cfg.n_layers}
    assert not torch.allclose(llama_cpp_logits(plain_hf, shifted, ids), steered, atol=1e-3)


# ---------------------------------------------------------------------------------------------- refusals


def test_refuses_positional_vectors(tiny, tmp_path):
    with pytest.raises(ControlVectorError, match="positional"):
        export_control_vector_gguf(make_vector(tiny, layers=(1,), pos=3), tmp_path / "a.gguf")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("site", "layers", "message"),
    [
        ("resid_post", (0, 1), "resid_post\\[0\\]"),
        ("resid_pre", (1, 2), "resid_pre\\[1\\]"),
        ("resid_mid", (2,), "resid_mid"),
    ],
)
def test_refuses_layers_llama_cpp_cannot_steer(tiny, tmp_path, site, layers, message):
    with pytest.raises(ControlVectorError, match=message):
        export_control_vector_gguf(make_vector(tiny, layers=layers, site=site), tmp_path / "v.gguf")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("multiplier", [float("nan"), float("inf"), 1e38])
def test_refuses_non_finite_values(tiny, tmp_path, multiplier):
    with pytest.raises(ControlVectorError, match="multiplier"):
        export_control_vector_gguf(make_vector(tiny), tmp_path / "v.gguf", multiplier=multiplier)
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------------------------------------- reader


def test_reader_sums_repeated_layers_like_llama_cpp(tmp_path):
    path = tmp_path / "r.gguf"
    write_raw(path, {"direction.1": np.ones(8, np.float32), "direction.01": np.full(8, 2.0, np.float32)})
    assert torch.equal(load_control_vector_gguf(path)[1], torch.full((8,), 3.0))


@pytest.mark.parametrize(
    ("tensors", "arch", "message"),
    [
        ({"direction.0": np.ones(8, np.float32)}, "controlvector", "N >= 1"),
        ({"direction.x": np.ones(8, np.float32)}, "controlvector", "direction.N"),
        ({"token_embd.weight": np.ones(8, np.float32)}, "controlvector", "direction.N"),
        ({"direction.1": np.ones(8, np.float16)}, "controlvector", "float32"),
        ({"direction.1": np.ones((2, 4), np.float32)}, "controlvector", "1-D"),
        (
            {"direction.1": np.ones(8, np.float32), "direction.2": np.ones(4, np.float32)},
            "controlvector",
            "earlier",
        ),
        ({"direction.1": np.ones(8, np.float32)}, "llama", "architecture"),
        ({}, "controlvector", "no direction tensors"),
    ],
)
def test_reader_refuses_what_llama_cpp_refuses(tmp_path, tensors, arch, message):
    path = tmp_path / "bad.gguf"
    write_raw(path, tensors, arch)
    with pytest.raises(ControlVectorError, match=message):
        load_control_vector_gguf(path)


def test_reader_refuses_broken_files(tiny, tmp_path):
    garbage = tmp_path / "garbage.gguf"
    garbage.write_bytes(b"not a gguf file at all" * 4)
    with pytest.raises(ControlVectorError, match="not a readable GGUF"):
        load_control_vector_gguf(garbage)
    good = export_control_vector_gguf(make_vector(tiny), tmp_path / "good.gguf")
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(good.read_bytes()[:100])
    with pytest.raises(ControlVectorError):
        load_control_vector_gguf(truncated)
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    with pytest.raises(ControlVectorError):
        load_control_vector_gguf(empty)
    with pytest.raises(FileNotFoundError):
        load_control_vector_gguf(tmp_path / "absent.gguf")


def test_metadata_of_a_foreign_file(tmp_path):
    path = tmp_path / "foreign.gguf"
    write_raw(path, {"direction.4": np.ones(8, np.float32)})
    assert control_vector_metadata(path) == {"model_hint": "llama", "layer_count": None, "provenance": None}
    assert json.dumps(control_vector_metadata(path))  # plain JSON-serialisable values


def test_exported_file_gets_ordinary_permissions(tiny, tmp_path):
    plain = tmp_path / "plain"
    plain.write_bytes(b"")
    path = export_control_vector_gguf(make_vector(tiny), tmp_path / "v.gguf")
    assert path.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777
