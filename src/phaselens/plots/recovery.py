"""Figures of the recovery comparison (:class:`~phaselens.experiments.recovery_comparison.RecoveryComparison`).
No computation of metrics here: the result's accessors give every number."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import plotly.graph_objects as go

if TYPE_CHECKING:
    from ..experiments.recovery_comparison import RecoveryComparison
    from ..experiments.recovery_grid import RecoveryGrid


def recovery_comparison_figure(result: "RecoveryComparison", **layout: Any) -> go.Figure:
    """Left: final-layer accuracy per task, one bar per method (dense dotted); right: held-out perplexity (log)."""
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=("final-layer accuracy", "held-out perplexity (log)"))
    methods = list(result.methods)
    for t in result.tasks:
        acc = [result.accuracy(m, t.task) for m in methods]
        fig.add_trace(go.Bar(x=methods, y=acc, name=f"{t.task} ({t.n_items} items)",
                             hovertext=[f"{m} on {t.task}<br>accuracy {a:.3f}<br>N={t.n_items}" for m, a in zip(methods, acc)],
                             hoverinfo="text"), row=1, col=1)
        fig.add_hline(y=float(t.dense_correct.mean()), line=dict(dash="dot"), row=1, col=1,
                      annotation_text=f"dense {t.task} {float(t.dense_correct.mean()):.2f}")
    ppl = [result.perplexity(m) for m in methods]
    fig.add_trace(go.Bar(x=methods, y=ppl, name="perplexity", showlegend=False,
                         hovertext=[f"{m}<br>perplexity {p:.2f}<br>{result.n_passages} passages" for m, p in zip(methods, ppl)],
                         hoverinfo="text"), row=1, col=2)
    fig.add_hline(y=result.dense_perplexity, line=dict(dash="dot"), row=1, col=2,
                  annotation_text=f"dense {result.dense_perplexity:.1f}")
    fig.update_yaxes(type="log", row=1, col=2)
    fig.update_layout(title=f"Recovery methods after cutting blocks {result.cut} of {result.n_blocks}: "
                            f"{result.model}",
                      barmode="group", template="plotly_white", **layout)
    return fig


def recovery_grid_figure(result: "RecoveryGrid", **layout: Any) -> go.Figure:
    """Top: held-out perplexity (log) per cut, one marker series per method (dense dotted); below: accuracy per task
    and cut. Cuts ordered by size."""
    from plotly.subplots import make_subplots

    df = result.to_pandas().sort_values(["n_cut", "cut"], kind="stable")
    tasks = [c for c in df.columns if c.startswith("accuracy_")]
    fig = make_subplots(rows=1 + len(tasks), cols=1, shared_xaxes=True, vertical_spacing=0.06,
                        subplot_titles=["held-out perplexity (log)"] + [f"accuracy, {t[9:]}" for t in tasks])
    for m, g in df.groupby("method", sort=False):
        style = dict(line=dict(dash="dot", color="gray")) if m == "dense" else {}
        for row, col in enumerate(["perplexity", *tasks], start=1):
            fig.add_trace(go.Scatter(x=g.cut, y=g[col], mode="lines+markers" if m == "dense" else "markers", name=m,
                                     legendgroup=m, showlegend=row == 1, **style,
                                     hovertext=[f"{m}, cut {c} ({n} of {b} blocks)<br>{col} {v:.4g}"
                                                for c, n, b, v in zip(g.cut, g.n_cut, g.n_blocks, g[col])],
                                     hoverinfo="text"), row=row, col=1)
    fig.update_yaxes(type="log", row=1, col=1)
    fig.update_layout(title=f"Recovery across {len(result.cuts)} cuts: {result.model}", template="plotly_white",
                      height=300 * (1 + len(tasks)), **layout)
    return fig
