"""Figures of the causal probes and the collapse study. No metric is computed here beyond
reading the result objects' own aggregates."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import plotly.graph_objects as go

from .core import DECISIVE_COLOR, SILENT_COLOR

if TYPE_CHECKING:
    from ..interventions import AblationResult, NoiseResult
    from ..stats import CollapseStudy


def _shade_phases(fig: go.Figure, transition: int | None, n_blocks: int, row: int | None = None, col: int | None = None) -> None:
    if transition is None:
        return
    kw = {} if row is None else {"row": row, "col": col}
    kw["annotation_bgcolor"] = "rgba(255,255,255,0.75)"  # legible over curves and bands
    fig.add_vrect(x0=-0.5, x1=transition - 0.5, fillcolor=SILENT_COLOR, line_width=0, annotation_text="silent phase",
                  annotation_position="top left", **kw)
    fig.add_vrect(x0=transition - 0.5, x1=n_blocks - 0.5, fillcolor=DECISIVE_COLOR, line_width=0,
                  annotation_text="decisive phase", annotation_position="top right", **kw)


def noise_sensitivity(result: "NoiseResult", *, interval: str = "seed", metric: str = "margin") -> go.Figure:
    """Final margin (or accuracy) against the block that got the noise, one line per eps, with the
    interval over seeds (``interval="seed"``) or over items (``"item"``); the clean value dashed;
    the dense phases shaded."""
    import plotly.colors as pc

    vals = result.margin if metric == "margin" else result.accuracy
    ci = result.seed_ci(metric) if interval == "seed" else result.item_ci(metric)
    clean = (result.clean_margins if metric == "margin" else result.clean_correct).mean()
    x = np.asarray(result.blocks)
    cols = pc.sample_colorscale("Plasma", [i / max(len(result.eps) - 1, 1) * 0.85 for i in range(len(result.eps))])
    fig = go.Figure()
    for e, (eps, c) in enumerate(zip(result.eps, cols)):
        lo, hi = ci[0, :, e], ci[1, :, e]
        if np.isfinite(lo).all():
            fig.add_trace(go.Scatter(x=np.r_[x, x[::-1]], y=np.r_[hi, lo[::-1]], fill="toself", fillcolor=c.replace("rgb", "rgba").replace(")", ",0.18)"),
                                     mode="lines", line=dict(width=0), hoverinfo="skip", showlegend=False))
        hover = [f"noise at block {b} ({ph})<br>eps {eps:g}<br>final {metric} {v:.3f} [{a:.3f}, {h:.3f}]"
                 f"<br>clean {clean:.3f}<br>N={result.n_items} items, {len(result.seeds)} seeds"
                 for b, ph, v, a, h in zip(x, result.phases, vals[:, e], lo, hi)]
        fig.add_trace(go.Scatter(x=x, y=vals[:, e], mode="lines+markers", name=f"eps = {eps:g}", line=dict(color=c),
                                 hovertext=hover, hoverinfo="text"))
    # the clean value is a legend entry, not a label on the line: a label there sat on the phase labels whenever the
    # clean margin was near the top of the axis
    fig.add_trace(go.Scatter(x=[-0.5, result.n_blocks - 0.5], y=[clean, clean], mode="lines", name=f"no noise ({clean:.3f})",
                             line=dict(color="black", width=1, dash="dash"), hoverinfo="name"))
    _shade_phases(fig, result.transition, result.n_blocks)
    where = "seeds (t interval)" if interval == "seed" else "items (bootstrap)"
    fig.update_layout(
        title=(f"Final {'Decision Margin' if metric == 'margin' else 'accuracy'} after noise at one block: "
               f"{result.model} on {result.task} ({result.n_items} items, {len(result.seeds)} seeds; 95% interval over {where})"),
        xaxis_title="block whose output gets the noise (original index)",
        yaxis_title="final margin (logits)" if metric == "margin" else "final accuracy", template="plotly_white")
    return fig


def ablation_drops(result: "AblationResult") -> go.Figure:
    """Left: the final-margin drop of each single-block ablation with its bootstrap 95% interval, bars
    coloured by phase. Right (when pairs were ablated): the pair-drop matrix, singles on the diagonal."""
    from plotly.subplots import make_subplots

    bl, mat = result.pair_matrix()
    two = len(bl) > 0
    fig = make_subplots(rows=1, cols=2 if two else 1, column_widths=[0.6, 0.4] if two else None,
                        subplot_titles=["single blocks", "pairs (diagonal: single)"] if two else None)
    x = np.asarray(result.singles)
    d, ci = result.single_drop, result.single_ci()
    ph = ["silent" if result.transition is not None and b < result.transition else
          "decisive" if result.transition is not None else "no transition" for b in x]
    color = {"silent": "rgb(110,110,110)", "decisive": "rgb(44,160,44)", "no transition": "rgb(31,119,180)"}
    hover = [f"{result.mode}-ablate block {b} ({p})<br>margin drop {v:.3f} [{a:.3f}, {h:.3f}]"
             f"<br>accuracy {acc:.3f} (clean {result.clean_correct.mean():.3f})<br>N={result.n_items}"
             for b, p, v, a, h, acc in zip(x, ph, d, ci[0], ci[1], result.single_correct.mean(1))]
    fig.add_trace(go.Bar(x=x, y=d, marker_color=[color[p] for p in ph], hovertext=hover, hoverinfo="text", showlegend=False,
                         error_y=dict(type="data", symmetric=False, array=ci[1] - d, arrayminus=d - ci[0])), row=1, col=1)
    if result.transition is not None:
        fig.add_vline(x=result.transition - 0.5, line=dict(color="green", dash="dash"), row=1, col=1,
                      annotation_text=f"transition: block {result.transition}")
    fig.update_xaxes(title_text="ablated block (original index)", row=1, col=1)
    fig.update_yaxes(title_text="final margin drop (clean - ablated, logits)", row=1, col=1)
    if two:
        labels = [str(b) for b in bl]
        hov = [[f"blocks {a} + {b}<br>margin drop {v:.3f}" if math.isfinite(v) else "not measured" for b, v in zip(bl, row)]
               for a, row in zip(bl, mat)]
        fig.add_trace(go.Heatmap(z=mat, x=labels, y=labels, colorscale="Reds", hovertext=hov, hoverinfo="text",
                                 colorbar=dict(title="drop"), texttemplate="%{z:.2f}" if len(bl) <= 12 else None), row=1, col=2)
        fig.update_xaxes(title_text="block", type="category", row=1, col=2)
        fig.update_yaxes(title_text="block", type="category", autorange="reversed", row=1, col=2)
    fig.update_layout(title=(f"{result.mode.capitalize()}-ablation: final-margin drop, {result.model} on {result.task} "
                             f"({result.n_items} items, 95% bootstrap CI)"), template="plotly_white")
    return fig


def collapse_scatter(study: "CollapseStudy") -> go.Figure:
    """Transition fraction against collapse ratio, one marker per (model, task), least-squares line, r in the title."""
    fig = go.Figure()
    used = study.used
    hover = [f"{q.model} on {q.task}<br>transition block {q.transition} of {q.n_blocks} ({q.fraction:.3f})"
             f"<br>collapse ratio {q.collapse_ratio:.3f}<br>dense accuracy {q.dense_accuracy:.3f}<br>criterion {q.criterion}"
             for q in used]
    fig.add_trace(go.Scatter(x=study.x, y=study.y, mode="markers+text", text=[f"{q.model}/{q.task}" for q in used],
                             textposition="top center", marker=dict(size=11), hovertext=hover, hoverinfo="text", name="pairs"))
    fit = study.fit()
    if fit is not None:
        xs = np.linspace(float(study.x.min()), float(study.x.max()), 20)
        fig.add_trace(go.Scatter(x=xs, y=fit[0] * xs + fit[1], mode="lines", line=dict(dash="dash"),
                                 name=f"fit: y = {fit[0]:.2f} x + {fit[1]:.2f}"))
    if len(used):  # room for the point labels: they were cut at the plot's edges
        xs_, ys_ = np.asarray(study.x, dtype=float), np.asarray(study.y, dtype=float)
        px = max(float(np.ptp(xs_)) * 0.25, 0.02)
        py = max(float(np.ptp(ys_)) * 0.15, 0.02)
        fig.update_xaxes(range=[float(xs_.min()) - px, float(xs_.max()) + px])
        fig.update_yaxes(range=[float(ys_.min()) - py, float(ys_.max()) + py])
    rr = "r undefined" if math.isnan(study.r) else f"Pearson r = {study.r:+.2f} (p = {study.p:.2g})"
    left = f"; {len(study.excluded)} pair(s) left out" if study.excluded else ""
    fig.update_layout(title=f"Transition depth vs collapse ratio ({study.criterion}): {rr}, n = {study.n}{left}",
                      xaxis_title="transition block / number of blocks", yaxis_title="collapse ratio (share of blocks cut)",
                      template="plotly_white")
    return fig
