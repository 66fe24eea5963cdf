"""Plotly figures from result objects. No computation of metrics happens here."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import plotly.graph_objects as go

if TYPE_CHECKING:
    from ..similarity import CKAResult
    from ..trace import DecisionTrace, Transition

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


def cka_heatmap(result: "CKAResult", *, colorscale: str = "Viridis", zmin: float | None = None, zmax: float | None = 1.0,
                title: str | None = None, annotate: bool | None = None) -> go.Figure:
    """Heatmap of a :class:`~phaselens.similarity.CKAResult`: rows are ``model_a``'s blocks, columns
    ``model_b``'s, both labelled by *original* block index (a pruned model's missing blocks are simply
    absent). ``zmin`` defaults to 0 (debiased CKA can go below 0: then to its minimum). ``annotate`` writes
    the values in the cells (default: when there are at most 16 x 16)."""
    z = np.asarray(result.matrix, dtype=float)
    if zmin is None:
        zmin = min(0.0, float(np.nanmin(z))) if result.debiased and np.isfinite(z).any() else 0.0
    xa = [str(b) for b in result.blocks_b]
    ya = [str(b) for b in result.blocks_a]
    hover = [[f"{result.model_a} block {a}<br>{result.model_b} block {b}<br>CKA {v:.4f}" for b, v in zip(result.blocks_b, row)]
             for a, row in zip(result.blocks_a, z)]
    if annotate is None:
        annotate = max(z.shape) <= 16
    heat = go.Heatmap(z=z, x=xa, y=ya, colorscale=colorscale, zmin=zmin, zmax=zmax, hovertext=hover, hoverinfo="text",
                      colorbar=dict(title="CKA"), texttemplate="%{z:.2f}" if annotate else None)
    fig = go.Figure(heat)
    kind = "debiased linear CKA" if result.debiased else "linear CKA"
    where = "decision positions" if result.positions == "decision" else "all token positions"
    fig.update_layout(
        title=title or f"{kind}: {result.model_a} vs {result.model_b} on {result.source or 'inputs'} ({where}, n={result.n_samples})",
        xaxis=dict(title=f"{result.model_b} block (original index)", type="category"),
        yaxis=dict(title=f"{result.model_a} block (original index)", type="category", autorange="reversed"),
        template="plotly_white",
    )
    return fig


def save_html(fig: Any, path: str, *, offline: bool = True) -> None:
    """Write a self-contained HTML page (Plotly's JavaScript embedded when ``offline``)."""
    fig.write_html(path, include_plotlyjs=True if offline else "cdn", full_html=True)


def boundary_error_channels(errors: list, *, span: int = 0, top: int | None = None) -> go.Figure:
    """Per-channel boundary error of one cut span for several recoveries (log scale)."""
    fig = go.Figure()
    for be in errors:
        y = np.asarray(be.per_channel[span])
        x = np.arange(len(y))
        if top:
            x = np.argsort(-y)[:top]
            y = y[x]
        s, e = be.spans[span]
        fig.add_trace(go.Scatter(x=x, y=y, mode="markers", marker=dict(size=4), name=be.method or "pruned (no recovery)",
                                 hovertemplate="channel %{x}<br>MSE %{y:.4g}<extra>" + (be.method or "none") + "</extra>"))
    fig.update_layout(title=f"Boundary error per channel, cut blocks {s}-{e - 1} of {errors[0].model.split(' -')[0]}",
                      xaxis_title="hidden channel", yaxis_title="mean squared error vs dense (log)", yaxis_type="log",
                      template="plotly_white")
    return fig


def sweep_margins(sweep: Any, *, every: int = 1) -> go.Figure:
    """Margin curves of an iterative sweep on the original-block axis, one per pruning ratio."""
    import plotly.colors as pc

    fig = go.Figure()
    steps = sweep.steps[::every]
    cols = pc.sample_colorscale("Viridis", [i / max(len(steps) - 1, 1) for i in range(len(steps))])
    for s, c in zip(steps, cols):
        t = s.trace
        hover = [f"{len(s.removed)} cut ({s.ratio:.0%})<br>block {b}<br>margin {m:.3f}<br>accuracy {a:.3f}<br>N={t.n_items}"
                 for b, m, a in zip(t.blocks, t.margins, t.accuracy)]
        fig.add_trace(go.Scatter(x=t.blocks, y=t.margins, mode="lines+markers", marker=dict(size=4), line=dict(color=c),
                                 name=f"{s.ratio:.0%} pruned", hovertext=hover, hoverinfo="text"))
    fig.add_hline(y=0, line=dict(color="black", width=1, dash="dot"))
    rec = f", recovery {sweep.recovery}" if sweep.recovery else ""
    fig.update_layout(title=f"Decision Margin under iterative pruning ({sweep.criterion}{rec}): {sweep.model} on {sweep.task}",
                      xaxis_title="block (original index)", yaxis_title="margin (logits)", template="plotly_white")
    return fig
