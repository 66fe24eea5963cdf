"""Plotly figures from result objects. No computation of metrics happens here."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import plotly.graph_objects as go

if TYPE_CHECKING:
    from .trace import DecisionTrace, Transition

SILENT_COLOR = "rgba(120,120,120,0.12)"
DECISIVE_COLOR = "rgba(44,160,44,0.10)"


def _title(trace: "DecisionTrace", what: str) -> str:
    fmt = trace.format + (", reformulated as letters" if trace.reformulated else "")
    return f"{what}: {trace.model} on {trace.task} ({fmt}, {trace.n_items} items)"


def margin_curve(trace: "DecisionTrace", transition: "Transition | None" = None, fig: go.Figure | None = None,
                 name: str | None = None, color: str | None = None) -> go.Figure:
    """Decision Margin per block with its bootstrap 95% band; phases shaded when a transition is given.

    The x axis is the *original* block index, so dense and pruned curves share one axis.
    """
    x = np.asarray(trace.blocks)
    lo, hi = trace.margin_ci
    fig = fig or go.Figure()
    label = name or trace.model
    fig.add_trace(go.Scatter(x=np.r_[x, x[::-1]], y=np.r_[hi, lo[::-1]], fill="toself", fillcolor=color or "rgba(31,119,180,0.2)",
                             line=dict(width=0), hoverinfo="skip", showlegend=False, name=f"{label} 95% CI"))
    hover = [f"block {b}<br>margin {m:.3f} [{a:.3f}, {c:.3f}]<br>accuracy {acc:.3f}<br>N={trace.n_items}"
             for b, m, a, c, acc in zip(x, trace.margins, lo, hi, trace.accuracy)]
    fig.add_trace(go.Scatter(x=x, y=trace.margins, mode="lines+markers", name=label, hovertext=hover, hoverinfo="text",
                             line=dict(color=color) if color else None))
    fig.add_hline(y=0, line=dict(color="black", width=1, dash="dot"))
    if transition is not None and transition.layer is not None:
        L = trace.n_blocks
        fig.add_vrect(x0=-0.5, x1=transition.layer - 0.5, fillcolor=SILENT_COLOR, line_width=0,
                      annotation_text="silent phase", annotation_position="top left")
        fig.add_vrect(x0=transition.layer - 0.5, x1=L - 0.5, fillcolor=DECISIVE_COLOR, line_width=0,
                      annotation_text="decisive phase", annotation_position="top right")
        fig.add_vline(x=transition.layer - 0.5, line=dict(color="green", dash="dash"),
                      annotation_text=f"transition: block {transition.layer}")
    fig.update_layout(title=_title(trace, "Decision Margin per block"), xaxis_title="block (original index)",
                      yaxis_title="margin: correct option minus best other (logits)", template="plotly_white",
                      hovermode="closest")
    return fig


def save_html(fig: Any, path: str, *, offline: bool = True) -> None:
    """Write a self-contained HTML page (Plotly's JavaScript embedded when ``offline``)."""
    fig.write_html(path, include_plotlyjs=True if offline else "cdn", full_html=True)
