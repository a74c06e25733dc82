"""Hook names: the one place in caa_lens that builds TransformerLens hook-name strings.

Everything else asks this module for a name, so a typo or an out-of-range layer fails here, with a
message naming the layer and the model, instead of silently registering a hook that never fires.
"""

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal, get_args

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

__all__ = [
    "RESIDUAL_SITES",
    "ResidualSite",
    "check_layer",
    "check_layers",
    "check_site",
    "hook_name",
    "n_layers",
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
