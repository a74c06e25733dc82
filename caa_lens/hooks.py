"""Hook names: the one place in caa_lens that builds TransformerLens hook-name strings.

Everything else asks this module for a name, so a typo or an out-of-range layer fails here, with a
message naming the layer and the model, instead of silently registering a hook that never fires.
"""

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal, get_args

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

__all__ = [
    "REFERENCE_DEPTH",
    "RESIDUAL_SITES",
    "ResidualSite",
    "check_layer",
    "check_layers",
    "check_site",
    "hook_name",
    "layer_at_depth",
    "n_layers",
    "scaled_layers",
    "stop_layer_for",
]

ResidualSite = Literal["resid_pre", "resid_mid", "resid_post"]
RESIDUAL_SITES: tuple[str, ...] = get_args(ResidualSite)


def n_layers(model: "TransformerBridge") -> int:
    """Number of transformer blocks of a TransformerBridge (or anything with ``cfg.n_layers``)."""
    return int(model.cfg.n_layers)


def check_site(site: str) -> ResidualSite:
    """Return ``site`` if it is a residual-stream site, else raise a ValueError listing the valid ones."""
    if site not in RESIDUAL_SITES:
        raise ValueError(f"unknown hook site {site!r}: expected one of {', '.join(RESIDUAL_SITES)}")
    return site  # type: ignore[return-value]


def check_layer(model: "TransformerBridge", layer: int) -> int:
    """Validate a layer index (negative indices count from the end, as in Python)."""
    total = n_layers(model)
    if isinstance(layer, bool) or not isinstance(layer, int):
        raise TypeError(f"layer must be an int, got {type(layer).__name__} {layer!r}")
    if not -total <= layer < total:
        raise ValueError(f"layer {layer} is out of range: the model has {total} layers (0..{total - 1})")
    return layer % total


def check_layers(model: "TransformerBridge", layers: int | Sequence[int] | None) -> tuple[int, ...]:
    """Normalise a layer selection to a sorted tuple of unique valid indices; ``None`` means all layers."""
    if layers is None:
        return tuple(range(n_layers(model)))
    if isinstance(layers, int):
        layers = [layers]
    checked = sorted({check_layer(model, layer) for layer in layers})
    if not checked:
        raise ValueError("no layers selected: pass at least one layer index, or None for all layers")
    return tuple(checked)


def hook_name(model: "TransformerBridge", layer: int, site: str = "resid_post") -> str:
    """The hook-point name for a residual-stream site at ``layer``, checked against ``model.hook_dict``.

    >>> from caa_lens.tiny import tiny_model
    >>> hook_name(tiny_model(), 2)
    'blocks.2.hook_resid_post'
    """
    name = f"blocks.{check_layer(model, layer)}.hook_{check_site(site)}"
    if name not in model.hook_dict:
        raise ValueError(f"hook {name!r} does not exist on this model ({type(model).__name__})")
    return name


def stop_layer_for(layers: tuple[int, ...]) -> int:
    """The ``stop_at_layer`` that runs just enough blocks to read any residual site of ``layers``.

    Block ``max(layers)`` itself runs even for ``resid_pre`` (one block of slack) because a hook on the
    input of the block where the bridge stops is not guaranteed to fire.
    """
    return max(layers) + 1


# The default model's layer count: layer settings written for it (the papers' depths on a 30-layer model)
# are carried to a model of any depth by ``layer_at_depth`` / ``scaled_layers``.
REFERENCE_DEPTH = 30


def layer_at_depth(layer: int, n_layers: int, of: int = REFERENCE_DEPTH) -> int:
    """Layer ``layer`` of an ``of``-layer model at the same depth fraction of an ``n_layers`` one.

    >>> layer_at_depth(12, 30), layer_at_depth(12, 4), layer_at_depth(24, 4)
    (12, 2, 3)
    """
    if n_layers < 1:
        raise ValueError(f"n_layers must be >= 1, got {n_layers}")
    return min(n_layers - 1, int(layer * n_layers / of + 0.5))


def scaled_layers(
    n_layers: int, reference: Sequence[int] = (2, 4, 6, 8, 10), of: int = REFERENCE_DEPTH
) -> tuple[int, ...]:
    """``reference`` layers of an ``of``-layer model at the same depths of an ``n_layers`` one, sorted and
    without repeats (several may land on one layer of a shallow model).

    >>> scaled_layers(30), scaled_layers(4), scaled_layers(48)
    ((2, 4, 6, 8, 10), (0, 1), (3, 6, 10, 13, 16))
    """
    return tuple(sorted({layer_at_depth(layer, n_layers, of) for layer in reference}))
