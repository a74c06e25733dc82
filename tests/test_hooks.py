import pytest

from caa_lens.hooks import check_layers, hook_name, stop_layer_for


def test_hook_names_validated(tiny):
    assert hook_name(tiny, 0) == "blocks.0.hook_resid_post"
    assert hook_name(tiny, -1, "resid_pre") == "blocks.3.hook_resid_pre"
    assert hook_name(tiny, 2, "resid_mid") in tiny.hook_dict


@pytest.mark.parametrize("layer", [4, -5, 100])
def test_layer_out_of_range(tiny, layer):
    with pytest.raises(ValueError, match=f"layer {layer} is out of range: the model has 4 layers"):
        hook_name(tiny, layer)


def test_unknown_site(tiny):
    with pytest.raises(ValueError, match="unknown hook site 'resid_final'"):
        hook_name(tiny, 0, "resid_final")


def test_layer_selection(tiny):
    assert check_layers(tiny, None) == (0, 1, 2, 3)
    assert check_layers(tiny, [3, 1, 1, -1]) == (1, 3)
    assert check_layers(tiny, 2) == (2,)
    with pytest.raises(ValueError, match="no layers"):
        check_layers(tiny, [])
    with pytest.raises(TypeError):
        check_layers(tiny, [1.5])  # type: ignore[list-item]
    assert stop_layer_for((1, 3)) == 4
