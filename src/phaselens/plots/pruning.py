"""Pruning and recovery figures: iterative sweeps and boundary errors."""

from __future__ import annotations

from typing import Any

import numpy as np
import plotly.graph_objects as go

from .core import TEMPLATE, block_axis, finish


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
                                 hovertemplate="channel %{x}<br>MSE %{y:.4g}<br>" + f"{be.model}, {be.n_tokens} tokens"
                                 + "<extra>" + (be.method or "none") + "</extra>"))
    s, e = errors[0].spans[span]
    fig.update_layout(title=f"Boundary error per channel, cut blocks {s}-{e - 1} of {errors[0].model.split(' -')[0]}",
                      xaxis_title="hidden channel", yaxis_title="mean squared error vs dense (log)", yaxis_type="log",
                      template=TEMPLATE)
    return fig


def sweep_margins(sweep: Any, *, every: int = 1) -> go.Figure:
    """Margin curves of an iterative sweep on the original-block axis, one per pruning ratio."""
    import plotly.colors as pc

    fig = go.Figure()
    steps = sweep.steps[::every]
    cols = pc.sample_colorscale("Viridis", [i / max(len(steps) - 1, 1) for i in range(len(steps))])
    for s, c in zip(steps, cols):
        t = s.trace
        hover = [f"{len(s.removed)} cut ({s.ratio:.0%})<br>block {b}<br>margin {m:.4f}<br>accuracy {a:.4f} "
                 f"({round(a * t.n_items)}/{t.n_items} items)<br>{t.model} on {t.task}"
                 for b, m, a in zip(t.blocks, t.margins, t.accuracy)]
        fig.add_trace(go.Scatter(x=t.blocks, y=t.margins, mode="lines+markers", marker=dict(size=4), line=dict(color=c),
                                 name=f"{s.ratio:.0%} pruned", hovertext=hover, hoverinfo="text"))
    fig.add_hline(y=0, line=dict(color="black", width=1, dash="dot"))
    rec = f", recovery {sweep.recovery}" if sweep.recovery else ""
    block_axis(fig, sweep.n_blocks, title="block (original index)")
    fig.update_layout(title=f"Decision Margin under iterative pruning ({sweep.criterion}{rec}): {sweep.model} on {sweep.task}",
                      yaxis_title="margin (logits)", template=TEMPLATE)
    return fig


def sweep_accuracy(sweep: Any) -> go.Figure:
    """Final accuracy (and margin) against the pruning ratio, with the collapse threshold and ratio."""
    from plotly.subplots import make_subplots

    st = sweep.steps
    ratio = [s.ratio for s in st]
    n = st[0].trace.n_items if st else 0
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    hover = [f"{len(s.removed)} of {sweep.n_blocks} blocks cut ({s.ratio:.1%})<br>removed: {s.removed}<br>"
             f"accuracy {s.accuracy:.4f} ({round(s.accuracy * n)}/{n} items)<br>final margin {s.margin:.4f}<br>"
             f"held-out perplexity {s.perplexity:.3f}<br>transition: block {s.transition.layer}" for s in st]
    fig.add_trace(go.Scatter(x=ratio, y=[s.accuracy for s in st], mode="lines+markers", name="final accuracy",
                             hovertext=hover, hoverinfo="text", line=dict(color="#1f77b4")), secondary_y=False)
    fig.add_trace(go.Scatter(x=ratio, y=[s.margin for s in st], mode="lines+markers", name="final margin",
                             hovertext=hover, hoverinfo="text", line=dict(color="#ff7f0e", dash="dot")), secondary_y=True)
    if st:
        fig.add_hline(y=sweep.threshold, line=dict(color="red", dash="dash"),
                      annotation_text=f"collapse threshold {sweep.threshold:.3f}", annotation_position="top right")
        fig.add_hline(y=sweep.chance, line=dict(color="gray", dash="dot"), annotation_text=f"chance {sweep.chance:.3f}",
                      annotation_position="bottom right")
    cr = sweep.collapse_ratio if st else None
    if cr is not None:
        fig.add_vline(x=cr, line=dict(color="red", width=1), annotation_text=f"collapse at {cr:.0%}")
    fig.update_xaxes(title="pruning ratio (share of blocks cut)", tickformat=".0%")
    fig.update_yaxes(title="final accuracy", range=[-0.02, 1.02], secondary_y=False)
    fig.update_yaxes(title="final Decision Margin (logits)", secondary_y=True, showgrid=False)
    rec = f", recovery {sweep.recovery}" if sweep.recovery else ""
    return finish(fig, f"Accuracy under iterative pruning ({sweep.criterion}{rec}): {sweep.model} on {sweep.task}, {n} items",
                  hovermode="closest")


__all__ = ["block_axis", "boundary_error_channels", "sweep_accuracy", "sweep_margins"]


def healing_loss(healing: Any) -> go.Figure:
    """The training loss of each step of a :func:`phaselens.heal` run (:class:`~phaselens.Healing`)."""
    steps = list(range(1, len(healing.losses) + 1))
    fig = go.Figure(go.Scatter(x=steps, y=healing.losses, mode="lines+markers", name="training loss"))
    if healing.resumed_from:
        fig.add_vline(x=healing.resumed_from, line=dict(dash="dot"), annotation_text=f"resumed at step {healing.resumed_from}")
    fig.update_layout(title=f"Healing by {healing.method} fine-tuning: {healing.steps} steps of {healing.batch_size} "
                            f"sequences at lr {healing.lr:g} on {healing.data}",
                      xaxis_title="step", yaxis_title="mean cross-entropy of the target tokens")
    return fig
