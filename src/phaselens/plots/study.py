"""Cross-job figures of a study: margin curves as a grid of models x tasks, and the phase-cut contrasts
per model. (Transition against collapse is :func:`~phaselens.plots.interventions.collapse_scatter` of the
study's :class:`~phaselens.CollapseStudy`.) Nothing here computes a metric: the curves and contrasts are
the results' own values."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import plotly.graph_objects as go

from .core import PALETTE, TEMPLATE, TRANSITION_COLOR


def margin_grid(curves: dict[tuple[str, str], list[dict[str, Any]]], *, title: str | None = None) -> go.Figure:
    """Dense Decision Margin per block, one panel per (model, task): rows models, columns tasks.

    ``curves[(model, task)]`` is a list of ``{"label", "blocks", "margins", "transition"}`` (one per seed or job).
    """
    from plotly.subplots import make_subplots

    models = sorted({m for m, _ in curves})
    tasks = sorted({t for _, t in curves})
    # room between rows for the panel titles (a row's x title sat on the next row's panel titles)
    fig = make_subplots(rows=len(models), cols=len(tasks), shared_yaxes=False, horizontal_spacing=0.06,
                        vertical_spacing=min(0.3, 0.45 / len(models)) if len(models) > 1 else 0.1,
                        subplot_titles=[f"{m} / {t}" for m in models for t in tasks])
    for i, m in enumerate(models, 1):
        for j, t in enumerate(tasks, 1):
            for k, c in enumerate(curves.get((m, t), [])):
                color = PALETTE[k % len(PALETTE)]
                x, y = np.asarray(c["blocks"]), np.asarray(c["margins"])
                hover = [f"{m} on {t}, {c['label']}<br>block {b}: margin {v:+.3f}<br>transition "
                         f"{c['transition'] if c['transition'] is not None else 'none'}" for b, v in zip(x, y)]
                fig.add_trace(go.Scatter(x=x, y=y, mode="lines+markers", marker=dict(size=4), line=dict(color=color),
                                         name=c["label"], legendgroup=c["label"], showlegend=(i, j) == (1, 1),
                                         hovertext=hover, hoverinfo="text"), row=i, col=j)
                if c["transition"] is not None:
                    fig.add_vline(x=c["transition"] - 0.5, line=dict(color=TRANSITION_COLOR, width=1, dash="dot"), row=i, col=j)
            fig.add_hline(y=0, line=dict(color="black", width=1), row=i, col=j)
    fig.update_xaxes(title_text="block", row=len(models))  # the bottom row only
    fig.update_yaxes(title_text="margin", col=1)
    fig.update_layout(title=title or "Dense Decision Margin per block (dotted: the transition), models x tasks",
                      template=TEMPLATE, height=max(340, 300 * len(models) + 80))
    return fig


def phase_cut_contrasts(rows: list[dict[str, Any]], *, title: str | None = None) -> go.Figure:
    """Final margin of the silent-phase cut minus the decisive-phase cut, per model (x) and recovery method
    (colour), one marker per job (task, seed) with its paired-bootstrap 95% interval.

    ``rows``: ``{"model", "task", "seed", "method", "difference", "lo", "hi"}``.
    """
    methods = sorted({r["method"] for r in rows}, key=lambda m: (m != "identity", m))
    models = sorted({r["model"] for r in rows})
    fig = go.Figure()
    width = 0.7 / max(1, len(methods))
    for k, meth in enumerate(methods):
        sel = [r for r in rows if r["method"] == meth]
        x = [models.index(r["model"]) - 0.35 + width * (k + 0.5) for r in sel]
        y = [r["difference"] for r in sel]
        up = [r["hi"] - r["difference"] if r["hi"] is not None and not math.isnan(r["hi"]) else 0 for r in sel]
        dn = [r["difference"] - r["lo"] if r["lo"] is not None and not math.isnan(r["lo"]) else 0 for r in sel]
        hover = [f"{r['model']} on {r['task']} (seed {r['seed']}), {meth}<br>silent - decisive final margin "
                 f"{r['difference']:+.3f} [{r['lo']:+.3f}, {r['hi']:+.3f}]" for r in sel]
        label = "plain pruning (identity)" if meth == "identity" else meth
        fig.add_trace(go.Scatter(x=x, y=y, mode="markers", name=label, marker=dict(size=9, color=PALETTE[k % len(PALETTE)]),
                                 error_y=dict(type="data", symmetric=False, array=up, arrayminus=dn),
                                 hovertext=hover, hoverinfo="text"))
    fig.add_hline(y=0, line=dict(color="black", width=1))
    fig.update_layout(title=title or "Phase cuts: final margin after a silent-phase cut minus after a decisive-phase cut "
                                     "(below 0: the silent cut costs more)",
                      xaxis=dict(tickmode="array", tickvals=list(range(len(models))), ticktext=models, title="model"),
                      yaxis_title="silent - decisive final margin (logits)", template=TEMPLATE)
    return fig
