"""Token-level views: how strongly each token's residual stream points along a steering vector.

``token_projections`` generates a (steered) continuation of a prompt, then reads the residual stream
at the vector's layer over prompt + generated tokens *without* steering: each token gets the scalar
projection ``<resid, v> / ||v||`` of the model's own residual and its cosine. What the steering adds
at the read site is reported apart, in ``injected`` (``m * <v_inj, v> / ||v||`` per token where an
injection adds at that layer and site, 0 elsewhere), so the two are never confused: reading inside
the steering context would show ``resid + m * v`` at steered tokens, ``m * ||v||`` above the model's
own value by construction. Renderers: ``show`` (inline in Jupyter), ``render_html`` / ``save_html``
(offline HTML); the static matplotlib figure is ``analysis.plots.plot_projection``.
"""

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from circuitsvis.tokens import colored_tokens
from circuitsvis.utils.render import RenderedHTML
from jaxtyping import Bool, Float
from torch import Tensor

from caa_lens.files import atomic_write_bytes
from caa_lens.generation import generate
from caa_lens.hooks import check_layer, check_site, hook_name, stop_layer_for
from caa_lens.outputs import check_output_file
from caa_lens.prompts import FormattedPrompt, format_prompt
from caa_lens.steering import Injection, front_rows, steer_start_columns
from caa_lens.vectors import SteeringVector

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

__all__ = [
    "VIEW_MARKER",
    "TokenProjection",
    "colour_limit",
    "is_token_view_page",
    "render_html",
    "save_html",
    "show",
    "token_projections",
]


@dataclass(frozen=True, eq=False)
class TokenProjection:
    """Per-token projections of the model's own residual stream onto a steering vector.

    Attributes:
        tokens, token_ids: each token decoded on its own, and its id (prompt, then generated tokens).
        projections: ``<resid(t), v> / ||v||`` at ``layer``/``site``, read *without* steering: the
            model's own residual on these tokens (the tokens themselves come from the steered run).
        cosines: ``<resid(t), v> / (||resid(t)|| ||v||)``, of the same unsteered residual.
        n_prompt: the first ``n_prompt`` tokens are the prompt, the rest were generated.
        steered: True where an injection added something (at any of the injections' layers).
        layer, site: the residual stream read (``site``: ``resid_pre``, ``resid_mid`` or ``resid_post``).
        vector_norm: ``||v||`` at ``layer``.
        injected: what the injections add at this very layer and site, projected the same way:
            ``m * <v_inj, v> / ||v||`` (``m * ||v||`` when steering with ``v`` itself) at the tokens
            they steer, 0 elsewhere. Injections at other layers add nothing here (0); their effect
            on this layer reaches it through the network and is in neither field.
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
    injected: Float[Tensor, " pos"]

    def __post_init__(self) -> None:
        fields = (self.tokens, self.token_ids, self.projections, self.cosines, self.steered, self.injected)
        sizes = {len(x) for x in fields}
        if len(sizes) != 1 or not 0 <= self.n_prompt <= len(self.tokens):
            raise ValueError(
                "tokens, ids, projections, cosines, steered and injected need one entry per token"
            )

    @property
    def generated(self) -> Bool[Tensor, " pos"]:
        """True at generated tokens."""
        return torch.arange(len(self.tokens)) >= self.n_prompt

    @property
    def steer_start(self) -> int | None:
        """The first steered position, or ``None`` when nothing was steered."""
        where = self.steered.nonzero()
        return int(where[0, 0]) if len(where) else None


def _as_prompt(model: "TransformerBridge", prompt: str | FormattedPrompt | Sequence[int]) -> FormattedPrompt:
    if isinstance(prompt, FormattedPrompt):
        return prompt
    if isinstance(prompt, str):
        return format_prompt(model.tokenizer, prompt)
    ids = tuple(int(t) for t in prompt)
    if not ids:
        raise ValueError("the prompt has no tokens")
    # Raw ids carry no template: CAA steers from the last token (nothing marks the end of a user
    # turn), and the whole sequence after a leading BOS is the user's text (ActAdd's anchor).
    bos = getattr(model.tokenizer, "bos_token_id", None)
    user_start = 1 if ids[0] == bos and len(ids) > 1 else 0
    return FormattedPrompt(ids, model.tokenizer.decode(list(ids)), len(ids) - 1, None, user_start)


def _injection_mask(
    model: "TransformerBridge", injection: Injection, prompt: FormattedPrompt, length: int
) -> Tensor:
    """Positions one injection adds to (the rules of ``caa_lens.steering``, batch of one)."""
    positions = torch.arange(length)
    if injection.mode == "all":
        return torch.ones(length, dtype=torch.bool)
    start = steer_start_columns([prompt], [0], injection.mode)[0]
    if injection.mode == "front":
        width = front_rows(injection, model.tokenizer).shape[0]
        return (positions >= start) & (positions < start + width)
    return positions >= start


def _stream(layer: int, site: str) -> tuple[int, str]:
    """One key per residual tensor: block L's output is block L+1's input (the same tensor)."""
    return (layer + 1, "resid_pre") if site == "resid_post" else (layer, site)


def _one_multiplier(injection: Injection) -> float:
    multiplier = injection.multiplier
    if isinstance(multiplier, Tensor):
        if multiplier.numel() != 1:
            raise ValueError(
                f"token_projections reads one prompt: give each injection one multiplier, "
                f"not a tensor of {multiplier.numel()}"
            )
        return float(multiplier.reshape(-1)[0])
    return float(multiplier)


def _injected(
    model: "TransformerBridge",
    injections: tuple[Injection, ...],
    prompt: FormattedPrompt,
    length: int,
    read: tuple[int, str],
    unit: Float[Tensor, " d_model"],
) -> Float[Tensor, " pos"]:
    """``m * <v_inj, unit>`` at the positions where an injection adds at the read residual, else 0."""
    injected = torch.zeros(length, dtype=torch.float64)
    for injection in injections:
        if _stream(check_layer(model, injection.layer), check_site(injection.site or "")) != read:
            continue
        m = _one_multiplier(injection)
        if injection.mode == "front":
            rows = front_rows(injection, model.tokenizer).double().cpu() @ unit  # one value per row
            start = steer_start_columns([prompt], [0], "front")[0]
            covered = max(0, min(len(rows), length - start))  # the rows that land on these tokens
            injected[start : start + covered] += m * rows[:covered]
        else:
            mask = _injection_mask(model, injection, prompt, length)
            injected[mask] += m * float(injection.vector.at(injection.layer).double().cpu() @ unit)
    return injected


def token_projections(
    model: "TransformerBridge",
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
    """Project each token's own residual onto ``vector`` for a prompt and its steered generation.

    The tokens come from the steered generation; the residual is then read on those tokens with no
    steering, and what the injections add at the read site is reported apart (``injected``). Call it
    outside any steering context, or that context's steering is in the read.

    Args:
        model: a TransformerBridge in raw mode.
        prompt: a ``FormattedPrompt``, a user message (formatted with the model's template) or raw
            token ids (steered from their last token, as nothing marks a user turn; ActAdd starts
            after a leading BOS).
        vector: the direction to project onto; ``vector.at(layer)`` must be 1-D (not ActAdd's).
        layer: the block whose residual stream is read.
        injections: the steering that generates the continuation (and that ``steered`` and
            ``injected`` describe); a tensor multiplier must hold one value.
        site: the residual site read; ``None`` means the vector's own site.
        max_new_tokens: the most tokens generated (0: the prompt only).
        continuation: fixed tokens to read instead of generating (e.g. an earlier steered generation,
            with the injections that made it).
        temperature: 0 for greedy decoding, else sampling with ``seed``.
        seed: the sampling seed.

    >>> from caa_lens.tiny import tiny_model
    >>> from caa_lens.vectors import SteeringVector
    >>> from caa_lens.provenance import make_provenance
    >>> model = tiny_model()
    >>> prov = make_provenance(model, "resid_post", "answer", "caa", "doc", "0", 1, torch.float32)
    >>> v = SteeringVector(torch.ones(1, 64), (1,), prov)
    >>> view = token_projections(model, "Is it sunny?", v, 1, Injection(v, 1, 4.0), max_new_tokens=3)
    >>> len(view.tokens) == len(view.projections) == view.n_prompt + 3
    True
    >>> round(float(view.injected[-1]) / view.vector_norm, 6)  # m * ||v|| where v itself is added
    4.0
    """
    layer = check_layer(model, layer)
    direction = vector.at(layer)
    if direction.dim() != 1:
        raise ValueError("cannot project onto a positional (ActAdd) vector: pick one position's direction")
    norm = float(direction.double().norm())
    if norm == 0:
        raise ValueError(f"the vector is zero at layer {layer}: projections onto it are undefined")
    site = check_site(site or vector.provenance.site)
    name = hook_name(model, layer, site)
    injections = (injections,) if isinstance(injections, Injection) else tuple(injections)
    for injection in injections:
        _one_multiplier(injection)  # refused before anything is generated
    formatted = _as_prompt(model, prompt)
    if continuation is None:
        result = generate(model, [formatted], injections, max_new_tokens, temperature=temperature, seed=seed)
        continuation = result.token_ids[0]
    ids = formatted.token_ids + tuple(int(t) for t in continuation)

    # The read runs outside any steering context: the model's own residual on the steered tokens.
    with torch.inference_mode():
        tokens_in, stop = torch.tensor([ids], device=model.cfg.device), stop_layer_for((layer,))
        _, cache = model.run_with_cache(tokens_in, names_filter=[name], stop_at_layer=stop)
    resid = cache[name][0].double().cpu()  # [pos, d_model]; float64 keeps the projections exact
    unit = direction.double().cpu() / norm
    dots = resid @ unit
    # A zero residual (never seen in practice) gets cosine 0 rather than NaN.
    cosines = dots / resid.norm(dim=-1).clamp_min(torch.finfo(torch.float64).tiny)
    tokens = tuple(model.tokenizer.decode([t]) for t in ids)
    steered = torch.zeros(len(ids), dtype=torch.bool)
    for injection in injections:
        steered |= _injection_mask(model, injection, formatted, len(ids))
    injected = _injected(model, injections, formatted, len(ids), _stream(layer, site), unit)
    return TokenProjection(tokens, ids, dots, cosines, len(formatted), steered, layer, site, norm, injected)


def colour_limit(values: Tensor) -> float:
    """The symmetric colour range of a view: the largest |value| past the first token."""
    # All tokens but the first: an attention sink, it can be 100x the rest and wash every token out.
    rest = values[1:] if len(values) > 1 else values
    return float(rest.abs().max().clamp_min(1e-6))


def _injected_note(p: TokenProjection) -> str:
    """What the caption says about the injected part (left out of the colours)."""
    if p.steer_start is None:
        return "not steered"
    steered = f"steered from token {p.steer_start}"
    values = p.injected[p.injected != 0]
    if not len(values):
        return f"{steered} (at other layers or sites: nothing is added to this residual)"
    low, high = float(values.min()), float(values.max())
    amount = f"{low:.3g}" if math.isclose(low, high, rel_tol=1e-6) else f"{low:.3g} to {high:.3g}"
    return f"{steered}; the injection adds {amount} per steered token here, not included in the colours"


def show(projection: TokenProjection) -> RenderedHTML:
    """The view as a circuitsvis ``RenderedHTML`` (displays inline in Jupyter), offline in both sources."""
    p, limit = projection, colour_limit(projection.projections)
    # Tokens travel as JSON inside an inline <script>: "</script" or "<!--" in a token would end or
    # derail it. A zero-width space keeps the text looking the same while breaking the sequence.
    tokens = [t.replace("</", "<\u200b/").replace("<!--", "<\u200b!--") for t in p.tokens]
    rendered = colored_tokens(tokens, p.projections.tolist(), min_value=-limit, max_value=limit)
    caption = (
        f"<p style='font-family:sans-serif;font-size:13px'>Projection of the model's own residual "
        f"(read without steering) onto the steering vector, layer {p.layer} ({html.escape(p.site)}), "
        f"||v|| = {p.vector_norm:.3g}: prompt = tokens 0-{p.n_prompt - 1}, generated = tokens "
        f"{p.n_prompt}-{len(p.tokens) - 1}, {html.escape(_injected_note(p))}.</p>"
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
