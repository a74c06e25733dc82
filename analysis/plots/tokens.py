"""Figure of a token view (``caa_lens.views``): one bar per token, coloured by the projection of the
model's own residual onto the steering vector, with what the steering adds drawn apart."""

from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure

from caa_lens.views import TokenProjection, colour_limit

__all__ = ["plot_projection"]


def plot_projection(projection: TokenProjection, ax: Axes | None = None) -> Figure:
    """A static figure: one bar per token coloured by the projection of the model's own residual.

    What the steering adds at this layer and site is drawn apart, as a hatched outline stacked on
    each steered bar (``injected``), so the filled bars never include it. Generation and the start
    of steering are marked. The y range ignores the first token (an outlier bar is clipped and
    labelled). In a notebook the returned figure is shown once, as the cell's value.
    """
    p, values, injected = projection, projection.projections.numpy(), projection.injected.numpy()
    n = len(values)
    if ax is None:
        import matplotlib.pyplot as plt  # pyplot sets up Jupyter's display of Figure objects

        fig = plt.figure(figsize=(min(max(0.22 * n + 2, 6), 40), 3.6), layout="constrained")
        plt.close(fig)  # out of pyplot's registry: not shown a second time at cell end, no leak in loops
        ax = fig.add_subplot()
    norm = TwoSlopeNorm(0.0, -colour_limit(p.projections), colour_limit(p.projections))
    ax.bar(range(n), values, color=[colormaps["RdBu_r"](norm(x)) for x in values])
    shown = [values[1:]]
    if (injected != 0).any():
        at = injected.nonzero()[0]
        ax.bar(
            at,
            injected[at],
            bottom=values[at],
            fill=False,
            edgecolor="0.2",
            hatch="///",
            lw=0.6,
            label="injected (m v·v/||v||)",
        )
        shown.append((values + injected)[1:])
    low = min(0.0, *(float(x.min(initial=0)) for x in shown))
    high = max(0.0, *(float(x.max(initial=0)) for x in shown))
    pad = 0.1 * (high - low or 1.0)
    ax.set_ylim(low - pad, high + pad)
    if n and not low - pad <= values[0] <= high + pad:
        at_first = high if values[0] > 0 else low
        ax.annotate(f"{values[0]:.3g}", (0, at_first), ha="left", fontsize=7, bbox={"fc": "white", "lw": 0})
    if p.n_prompt < n:
        ax.axvspan(p.n_prompt - 0.5, n - 0.5, color="0.9", zorder=0, label="generated")
    if p.steer_start is not None:
        ax.axvline(p.steer_start - 0.5, color="tab:orange", ls="--", lw=1.5, label="steering starts")
    ax.axhline(0, color="0.5", lw=0.5)
    # Whitespace made visible; "$" escaped so matplotlib does not read "$...$" as mathtext.
    labels = [t.replace("\n", "\\n").replace(" ", "\u00b7").replace("$", r"\$") or "∅" for t in p.tokens]
    ax.set_xticks(range(n), labels, rotation=90, fontsize=7)
    ax.set_xlim(-0.6, n - 0.4)
    ax.set_ylabel("own <resid, v> / ||v||")
    ax.set_title(
        f"Model's own residual (read unsteered) projected on the steering vector, layer {p.layer} ({p.site})"
    )
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper left", fontsize=7)
    root = ax.get_figure(root=True)  # the root figure, even from a subfigure
    assert isinstance(root, Figure)
    return root
