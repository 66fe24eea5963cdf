"""Shared pieces of every phaselens figure: colours, phase shading, titles, HTML export.

No computation of metrics happens here (nor anywhere in :mod:`phaselens.plots`). The figure
functions themselves live in :mod:`.trace` (per-layer decision metrics), :mod:`.similarity`
(CKA) and :mod:`.pruning` (sweeps, boundary errors).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable

import plotly.graph_objects as go

from ..errors import PlotError
from ..files import check_writable, write_text

if TYPE_CHECKING:
    from ..trace import DecisionTrace, Transition

SILENT_COLOR = "rgba(120,120,120,0.12)"
DECISIVE_COLOR = "rgba(44,160,44,0.10)"
TRANSITION_COLOR = "rgb(44,160,44)"
TEMPLATE = "plotly_white"
#: curve colours, in order (Plotly's qualitative palette, colour-blind friendlier first entries).
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")


def rgba(color: str, alpha: float) -> str:
    """``"#1f77b4"`` / ``"rgb(31,119,180)"`` -> ``"rgba(31,119,180,alpha)"``."""
    c = color.strip()
    if c.startswith("#") and len(c) == 7:
        r, g, b = (int(c[i:i + 2], 16) for i in (1, 3, 5))
    elif c.startswith("rgb"):
        r, g, b = (int(float(v)) for v in c[c.index("(") + 1:c.index(")")].split(",")[:3])
    else:
        import plotly.colors as pc

        r, g, b = (int(v) for v in pc.unlabel_rgb(pc.convert_colors_to_same_type(c, "rgb")[0][0]))
    return f"rgba({r},{g},{b},{alpha})"


def colors(n: int, given: Iterable[str] | None = None) -> list[str]:
    """``n`` curve colours: ``given`` if any, else the palette (a Viridis ramp past 10 curves)."""
    if given is not None:
        out = list(given)
        if len(out) < n:
            raise PlotError(f"{n} curves but only {len(out)} colours given")
        return out[:n]
    if n <= len(PALETTE):
        return list(PALETTE[:n])
    import plotly.colors as pc

    return pc.sample_colorscale("Viridis", [i / (n - 1) for i in range(n)])


def format_label(trace: "DecisionTrace") -> str:
    return trace.format + (", reformulated as letters" if getattr(trace, "reformulated", False) else "")


def shade_phases(fig: go.Figure, transition: "Transition | None", n_blocks: int, *, row: int | None = None,
                 col: int | None = None, labels: bool = True) -> go.Figure:
    """Shade the silent phase grey and the decisive phase green; a dashed line at the transition.

    ``transition.layer is None`` (no decisive phase) shades nothing but says so in a note.
    """
    if transition is None:
        return fig
    where = {} if row is None else {"row": row, "col": col}
    if transition.layer is None:
        if labels:
            fig.add_annotation(text="no transition: the final margin is not positive", xref="paper", yref="paper",
                               x=0.0, y=1.0, xanchor="left", yanchor="bottom", showarrow=False, font=dict(color="gray"))
        return fig
    ll = transition.layer
    where = {**where, "annotation_bgcolor": "rgba(255,255,255,0.75)"} if labels else where
    fig.add_vrect(x0=-0.5, x1=ll - 0.5, fillcolor=SILENT_COLOR, line_width=0, layer="below",
                  annotation_text="silent phase" if labels else None, annotation_position="top left", **where)
    fig.add_vrect(x0=ll - 0.5, x1=n_blocks - 0.5, fillcolor=DECISIVE_COLOR, line_width=0, layer="below",
                  annotation_text="decisive phase" if labels else None, annotation_position="top right", **where)
    ci = f" (95% CI {transition.ci[0]}-{transition.ci[1]})" if transition.ci else ""
    fig.add_vline(x=ll - 0.5, line=dict(color=TRANSITION_COLOR, dash="dash"),
                  annotation_text=f"transition: block {ll}{ci}" if labels else None,
                  annotation_position="bottom left" if ll > n_blocks / 2 else "bottom right", **where)
    return fig


def block_axis(fig: go.Figure, n_blocks: int, **kw: Any) -> go.Figure:
    """The x axis of per-block figures: original block indices ``0..n_blocks-1``."""
    fig.update_xaxes(range=[-0.6, n_blocks - 0.4], dtick=1 if n_blocks <= 32 else None, **kw)
    return fig


def finish(fig: go.Figure, title: str, **layout: Any) -> go.Figure:
    fig.update_layout(title=dict(text=title, x=0.01, xanchor="left"), template=TEMPLATE,
                      legend=dict(orientation="h", yanchor="top", y=-0.16, xanchor="left", x=0), **layout)
    return fig


def save_html(fig: Any, path: str, *, offline: bool = True) -> None:
    """Write a self-contained HTML page (Plotly's JavaScript embedded when ``offline``), atomically."""
    check_writable(path, "file", what="path", error=PlotError)
    write_text(path, fig.to_html(include_plotlyjs=True if offline else "cdn", full_html=True))
