"""Token-level views: how strongly each token's residual stream points along a steering vector.

``token_projections`` generates a (steered) continuation of a prompt, then runs one forward pass over
prompt + generated tokens under the same injections and reads the residual stream at the vector's
layer: each token gets the scalar projection ``<resid, v> / ||v||`` and the cosine.

What the read sees: ``run_with_cache`` appends its cache hook after the steering hooks on the hook
point, and hooks run in registration order, so reading the steered site gives the value *after* the
injection: at steered positions the projection is ``m * ||v||`` above the same tokens read unsteered,
elsewhere identical (tested). ``continuation=`` with ``injections=()`` reads a steered text through the
unsteered model. Renderers: ``show`` (inline in Jupyter), ``render_html`` / ``save_html`` (offline HTML),
``plot_projection`` (static matplotlib).
"""

import html
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import torch
from circuitsvis.tokens import colored_tokens
from circuitsvis.utils.render import RenderedHTML
from jaxtyping import Bool, Float
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure
from torch import Tensor

from caa_lens.files import atomic_write_bytes
from caa_lens.generation import generate
from caa_lens.hooks import check_layer, hook_name, stop_layer_for
from caa_lens.outputs import check_output_file
from caa_lens.prompts import FormattedPrompt, format_prompt
from caa_lens.steering import MODES, Injection, steer_start_columns, steering
from caa_lens.vectors import SteeringVector


@dataclass(frozen=True, eq=False)
class TokenProjection:
    """Per-token projections of the residual stream onto a steering vector.

    Attributes:
        tokens, token_ids: each token decoded on its own, and its id (prompt, then generated tokens).
        projections: ``<resid(t), v> / ||v||`` at ``layer``/``site`` (after any injection there).
        cosines: ``<resid(t), v> / (||resid(t)|| ||v||)``.
        n_prompt: the first ``n_prompt`` tokens are the prompt, the rest were generated.
        steered: True where an injection added something (at any of the injections' layers).
        layer, site: the residual stream read (``site``: ``resid_pre``, ``resid_mid`` or ``resid_post``).
        vector_norm: ``||v||`` at ``layer``.
    """

    tokens: tuple[str, ...]
    token_ids: tuple[int, ...]
    projections: Float[Tensor, " pos"]
    cosines: Float[Tensor, " pos"]
    n_prompt: int
    steered: Bool[Tensor, " pos"]
    layer: int
    site: str
    vector_norm: float

    def __post_init__(self) -> None:
        sizes = {len(x) for x in (self.tokens, self.token_ids, self.projections, self.cosines, self.steered)}
        if len(sizes) != 1 or not 0 <= self.n_prompt <= len(self.tokens):
            raise ValueError("tokens, ids, projections, cosines and steered need one entry per token")

    @property
    def generated(self) -> Bool[Tensor, " pos"]:
        """True at generated tokens."""
        return torch.arange(len(self.tokens)) >= self.n_prompt

    @property
    def steer_start(self) -> int | None:
        """The first steered position, or ``None`` when nothing was steered."""
        where = self.steered.nonzero()
        return int(where[0, 0]) if len(where) else None


def _as_prompt(model, prompt: str | FormattedPrompt | Sequence[int]) -> FormattedPrompt:
    if isinstance(prompt, FormattedPrompt):
        return prompt
    if isinstance(prompt, str):
        return format_prompt(model.tokenizer, prompt)
    ids = tuple(int(t) for t in prompt)
    if not ids:
        raise ValueError("the prompt has no tokens")
    # Raw ids carry no template, so there is no end of the user turn: CAA steers from the last token.
    return FormattedPrompt(ids, model.tokenizer.decode(list(ids)), len(ids) - 1, None)


def _steered_mask(injections: tuple[Injection, ...], prompt: FormattedPrompt, length: int) -> Tensor:
    """Positions each injection's mode adds to (the rules of ``caa_lens.steering``)."""
    positions, mask = torch.arange(length), torch.zeros(length, dtype=torch.bool)
    for injection in injections:
        start = steer_start_columns([prompt], [0], injection.mode)[0]
        if injection.mode == "all":
            mask[:] = True
        elif injection.mode == "front":
            width = injection.vector.at(injection.layer).reshape(-1, injection.vector.provenance.d_model)
            mask |= (positions >= start) & (positions < start + width.shape[0])
        else:
            mask |= positions >= start
    return mask


def token_projections(
    model,
    prompt: str | FormattedPrompt | Sequence[int],
    vector: SteeringVector,
    layer: int,
    injections: Injection | Sequence[Injection] = (),
    *,
    site: str | None = None,
    max_new_tokens: int = 40,
    continuation: Sequence[int] | None = None,
    temperature: float = 0.0,
    seed: int = 0,
) -> TokenProjection:
    """Project each token's residual stream onto ``vector`` for a prompt and its steered generation.

    Args:
        model: a TransformerBridge in raw mode.
        prompt: a ``FormattedPrompt``, a user message (formatted with the model's template) or raw
            token ids (steered from their last token, as nothing marks a user turn).
        vector: the direction to project onto; ``vector.at(layer)`` must be 1-D (not ActAdd's).
        layer: the block whose residual stream is read.
        injections: steering applied both while generating and during the read.
        site: the residual site read; ``None`` means the vector's own site.
        max_new_tokens: the most tokens generated (0: the prompt only).
        continuation: fixed tokens to read instead of generating (e.g. a steered generation read
            with ``injections=()``).
        temperature: 0 for greedy decoding, else sampling with ``seed``.
        seed: the sampling seed.

    >>> from caa_lens.tiny import tiny_model
    >>> from caa_lens.vectors import SteeringVector, make_provenance
    >>> model = tiny_model()
    >>> prov = make_provenance(model, "resid_post", "answer", "caa", "doc", "0", 1, torch.float32)
    >>> v = SteeringVector(torch.ones(1, 64), (1,), prov)
    >>> view = token_projections(model, "Is it sunny?", v, 1, Injection(v, 1, 4.0), max_new_tokens=3)
    >>> len(view.tokens) == len(view.projections) == view.n_prompt + 3
    True
    """
    layer = check_layer(model, layer)
    direction = vector.at(layer)
    if direction.dim() != 1:
        raise ValueError("cannot project onto a positional (ActAdd) vector: pick one position's direction")
    norm = float(direction.double().norm())
    if norm == 0:
        raise ValueError(f"the vector is zero at layer {layer}: projections onto it are undefined")
    site = site or vector.provenance.site
    name = hook_name(model, layer, site)
    injections = (injections,) if isinstance(injections, Injection) else tuple(injections)
    formatted = _as_prompt(model, prompt)
    if continuation is None:
        result = generate(model, [formatted], injections, max_new_tokens, temperature=temperature, seed=seed)
        continuation = result.token_ids[0]
    ids = formatted.token_ids + tuple(int(t) for t in continuation)

    with torch.inference_mode(), ExitStack() as stack:
        # One context per mode, anchored exactly as ``generate`` anchors it, so the read pass is
        # steered at the same positions as the generation was (batch of one: no padding offset).
        for mode in MODES:
            group = [injection for injection in injections if injection.mode == mode]
            if group:
                stack.enter_context(steering(model, group, start=steer_start_columns([formatted], [0], mode)))
        # Injections go through the steering context only: run_with_cache(fwd_hooks=...) ignores hooks.
        tokens_in, stop = torch.tensor([ids], device=model.cfg.device), stop_layer_for((layer,))
        _, cache = model.run_with_cache(tokens_in, names_filter=[name], stop_at_layer=stop)
    resid = cache[name][0].double().cpu()  # [pos, d_model]; float64 sums keep the m * ||v|| shift exact
    dots = resid @ direction.double().cpu()
    # A zero residual (never seen in practice) gets cosine 0 rather than NaN.
    cosines = dots / (resid.norm(dim=-1) * norm).clamp_min(torch.finfo(torch.float64).tiny)
    tokens = tuple(model.tokenizer.decode([t]) for t in ids)
    steered = _steered_mask(injections, formatted, len(ids))
    return TokenProjection(tokens, ids, dots / norm, cosines, len(formatted), steered, layer, site, norm)


def _colour_limit(values: Tensor) -> float:
    # All tokens but the first: an attention sink, it can be 100x the rest and wash every token out.
    rest = values[1:] if len(values) > 1 else values
    return float(rest.abs().max().clamp_min(1e-6))


def show(projection: TokenProjection) -> RenderedHTML:
    """The view as a circuitsvis ``RenderedHTML`` (displays inline in Jupyter), offline in both sources."""
    p, limit = projection, _colour_limit(projection.projections)
    # Tokens travel as JSON inside an inline <script>: "</script" or "<!--" in a token would end or
    # derail it. A zero-width space keeps the text looking the same while breaking the sequence.
    tokens = [t.replace("</", "<\u200b/").replace("<!--", "<\u200b!--") for t in p.tokens]
    rendered = colored_tokens(tokens, p.projections.tolist(), min_value=-limit, max_value=limit)
    steer = "not steered" if p.steer_start is None else f"steered from token {p.steer_start}"
    caption = (
        f"<p style='font-family:sans-serif;font-size:13px'>Projection onto the steering vector, layer "
        f"{p.layer} ({html.escape(p.site)}), ||v|| = {p.vector_norm:.3g}: prompt = tokens 0-{p.n_prompt - 1}, "
        f"generated = tokens {p.n_prompt}-{len(p.tokens) - 1}, {steer}.</p>"
    )
    return RenderedHTML(caption + rendered.local_src, caption + rendered.local_src)


def render_html(projection: TokenProjection) -> str:
    """HTML of the view with the JavaScript inlined (``str()`` of circuitsvis output loads it from a CDN)."""
    return show(projection).local_src


def save_html(projection: TokenProjection, path: str | Path) -> Path:
    """Write a standalone HTML page of the view that opens without a network; returns the path."""
    path = check_output_file(path, "token view page", is_token_view_page)
    page = f"<!DOCTYPE html>\n{VIEW_MARKER}\n<html><head><meta charset='utf-8'></head><body>\n"
    atomic_write_bytes(path, (page + f"{render_html(projection)}\n</body></html>\n").encode("utf-8"))
    return path


# The page's second line: it marks a page caa_lens wrote, which a later save may replace.
VIEW_MARKER = "<!-- caa_lens token view -->"


def is_token_view_page(path: str | Path) -> bool:
    """True for an HTML page ``save_html`` wrote."""
    with open(path, "rb") as handle:
        return handle.read(200).startswith(f"<!DOCTYPE html>\n{VIEW_MARKER}\n".encode())


def plot_projection(projection: TokenProjection, ax: Axes | None = None) -> Figure:
    """A static figure: one bar per token coloured by its projection, generation and steering marked.

    The y range ignores the first token (an outlier bar is clipped and labelled). In a notebook the
    returned figure is shown once, as the cell's value.
    """
    p, values = projection, projection.projections.numpy()
    n = len(values)
    if ax is None:
        import matplotlib.pyplot as plt  # pyplot sets up Jupyter's display of Figure objects

        fig = plt.figure(figsize=(min(max(0.22 * n + 2, 6), 40), 3.6), layout="constrained")
        plt.close(fig)  # out of pyplot's registry: not shown a second time at cell end, no leak in loops
        ax = fig.add_subplot()
    norm = TwoSlopeNorm(0.0, -_colour_limit(p.projections), _colour_limit(p.projections))
    ax.bar(range(n), values, color=[colormaps["RdBu_r"](norm(x)) for x in values])
    low, high = min(0.0, float(values[1:].min(initial=0))), max(0.0, float(values[1:].max(initial=0)))
    pad = 0.1 * (high - low or 1.0)
    ax.set_ylim(low - pad, high + pad)
    if n and not low - pad <= values[0] <= high + pad:
        at = high if values[0] > 0 else low
        ax.annotate(f"{values[0]:.3g}", (0, at), ha="left", fontsize=7, bbox={"fc": "white", "lw": 0})
    if p.n_prompt < n:
        ax.axvspan(p.n_prompt - 0.5, n - 0.5, color="0.9", zorder=0, label="generated")
    if p.steer_start is not None:
        ax.axvline(p.steer_start - 0.5, color="tab:orange", ls="--", lw=1.5, label="steering starts")
    ax.axhline(0, color="0.5", lw=0.5)
    # Whitespace made visible; "$" escaped so matplotlib does not read "$...$" as mathtext.
    labels = [t.replace("\n", "\\n").replace(" ", "\u00b7").replace("$", r"\$") or "∅" for t in p.tokens]
    ax.set_xticks(range(n), labels, rotation=90, fontsize=7)
    ax.set_xlim(-0.6, n - 0.4)
    ax.set_ylabel("<resid, v> / ||v||")
    ax.set_title(f"Projection onto the steering vector, layer {p.layer} ({p.site})")
    if p.n_prompt < n or p.steer_start is not None:
        ax.legend(loc="upper left", fontsize=7)
    return ax.figure.figure  # type: ignore[return-value]  # the root figure, even from a subfigure
