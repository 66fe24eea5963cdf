"""Figures of lenses: how faithful each lens is per block (``lens_kl``), and the logit-lens picture of one prompt
(``lens_heatmap``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import plotly.graph_objects as go

from .core import colors

if TYPE_CHECKING:
    from ..lenses.heatmap import LensHeatmap


def lens_kl_curves(kls: dict[str, Any], blocks: Any = None, *, title: str | None = None) -> go.Figure:
    """``{lens name: [L] mean KL(final || lens) in nats}`` per block on one axis (log scale), as
    :func:`phaselens.lens_kl` returns them; ``blocks`` the original block index of each value (default ``0..L-1``)."""
    fig = go.Figure()
    for (name, kl), col in zip(kls.items(), colors(len(kls))):
        kl = np.asarray(kl, dtype=float)
        x = np.arange(len(kl)) if blocks is None else np.asarray(blocks)
        keep = kl > 0  # the last row (the model's own output) is exactly 0
        fig.add_trace(go.Scatter(x=x[keep], y=kl[keep], mode="lines+markers", name=name, line=dict(color=col),
                                 hovertemplate=f"<b>{name}</b><br>block %{{x}}<br>KL %{{y:.4f}} nats<extra></extra>"))
    fig.update_layout(title=title or "Lens faithfulness: mean KL(final distribution || lens) on held-out tokens",
                      xaxis_title="block", yaxis_title="KL (nats, log scale)", yaxis_type="log", template="plotly_white")
    return fig


#: white to a middle blue: dark text stays legible in every cell
HEAT_SCALE = [[0.0, "#ffffff"], [0.5, "#c6dbef"], [1.0, "#5b9bd5"]]


def _shown(tok: str) -> str:
    """A token as a cell shows it: whitespace made visible (leading space as ``␣``, newlines as ``\\n``)."""
    t = tok.replace("\n", "\\n").replace("\t", "\\t")
    return "␣" + t[1:] if t.startswith(" ") else (t or "∅")


def lens_heatmap(result: "LensHeatmap", *, max_chars: int = 8, title: str | None = None) -> go.Figure:
    """Positions (x) by blocks (y, original indices, the last row the model's output): each cell the top next token
    through the lens (cut to ``max_chars``), coloured by its probability; the hover lists the top tokens and their
    probabilities, and the token that follows in the prompt."""
    import html

    R, T = result.n_read, result.n_positions
    tops, probs = result.top_tokens, result.top_probs
    text = [[html.escape(_shown(tops[r, t, 0])[:max_chars]) for t in range(T)] for r in range(R)]
    hover = []
    for r, b in enumerate(result.blocks):
        row = []
        for t in range(T):
            nxt = f"next in the prompt: {html.escape(_shown(result.tokens[t + 1]))}<br>" if t + 1 < T else ""
            cands = "<br>".join(f"{j + 1}. {html.escape(_shown(tops[r, t, j]))}  {probs[r, t, j]:.3f}"
                                for j in range(probs.shape[2]))
            row.append(f"block {b}{' (output)' if r == R - 1 else ''}, position {t} "
                       f"({html.escape(_shown(result.tokens[t]))})<br>{nxt}{cands}")
        hover.append(row)
    ticks = [f"{t}: {_shown(tok)[:max_chars]}" for t, tok in enumerate(result.tokens)]
    fig = go.Figure(go.Heatmap(
        z=result.top1_probs, x=list(range(T)), y=list(range(R)), text=text, texttemplate="%{text}",
        textfont=dict(size=10, color="#111"), hovertext=hover, hoverinfo="text", colorscale=HEAT_SCALE, zmin=0, zmax=1,
        colorbar=dict(title=dict(text="top-1 probability", side="right")), xgap=1, ygap=1))
    fig.update_xaxes(tickmode="array", tickvals=list(range(T)), ticktext=[html.escape(t) for t in ticks],
                     tickangle=-45, title_text="prompt position (input token); each cell predicts the next token")
    fig.update_yaxes(tickmode="array", tickvals=list(range(R)), ticktext=[str(b) for b in result.blocks],
                     title_text="block (original index)")
    fig.update_layout(title=dict(text=title or f"{result.lens.capitalize()} lens: top next token per block and position, "
                                 f"{html.escape(result.model)}", x=0.01, xanchor="left"), template="plotly_white",
                      height=max(360, 22 * R + 200), width=max(640, 64 * T + 220), margin=dict(l=80, r=40, t=60, b=140))
    return fig
