"""Figures of the phase-cut experiment (:class:`~phaselens.phase_cuts.PhaseCuts`). No computation of metrics here."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np
import plotly.graph_objects as go

from ..errors import PlotError

if TYPE_CHECKING:
    from ..phase_cuts import PhaseCuts

CUT_COLORS = {"silent": "#d62728", "decisive": "#2ca02c", "random": "#7f7f7f"}
PLACEMENT_SYMBOLS = {"adjacent": "circle", "center": "square", "far": "triangle-up"}
METHOD_COLORS = ["#1f77b4", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f"]


def _blocks(bl: Sequence[int]) -> str:
    bl = list(bl)
    return f"{bl[0]}" if len(bl) == 1 else f"{bl[0]}-{bl[-1]}"


def _who(r: "PhaseCuts") -> str:
    return f"{r.model} on {r.task} ({r.format}, {r.n_items} items)"


def phase_cut_finals(result: "PhaseCuts", *, metric: str = "margin", show_seeds: bool = True) -> go.Figure:
    """Final-layer margin (or accuracy) with 95% error bars: x = recovery method, one marker series
    per cut (silent and decisive at each of their placements: circle adjacent, square center, triangle far; random
    mean over seeds); single random seeds as small
    open markers; the dense model as a dotted line with its interval shaded."""
    if metric not in ("margin", "accuracy"):
        raise PlotError(f"metric must be 'margin' or 'accuracy', got {metric!r}")
    methods = list(result.methods)
    xi = {m: i for i, m in enumerate(methods)}
    off = {"silent": -0.25, "decisive": 0.0, "random": 0.25}
    fig = go.Figure()
    tr = result.transition.trace
    dense = result.dense_margin if metric == "margin" else result.dense_accuracy
    ci = tr.margin_ci if metric == "margin" else tr.accuracy_ci
    fig.add_hrect(y0=float(ci[0][-1]), y1=float(ci[1][-1]), fillcolor="rgba(0,0,0,0.07)", line_width=0)
    fig.add_hline(y=dense, line=dict(color="black", dash="dot", width=1),
                  annotation_text=f"dense: {dense:.3f}", annotation_position="top left")
    what = "margin" if metric == "margin" else "accuracy"
    for kind in ("silent", "decisive"):
        cuts = [c for c in result.cuts if c.kind == kind]
        width = 0.18 / max(len(cuts), 1)  # the placements of one phase side by side around the phase's offset
        for j, c in enumerate(cuts):
            place = result.placement_of(c)
            us = [u for u in result.units if u.cut == kind and u.blocks == c.blocks]
            if not us:
                continue
            y = np.array([u.final_margin if metric == "margin" else u.final_accuracy for u in us])
            lo = np.array([(u.final_margin_ci if metric == "margin" else u.final_accuracy_ci)[0] for u in us])
            hi = np.array([(u.final_margin_ci if metric == "margin" else u.final_accuracy_ci)[1] for u in us])
            hover = [f"{kind} cut ({place}), blocks {_blocks(u.blocks)}<br>{u.method}<br>final {what} {v:.4f} "
                     f"[{a:.4f}, {b:.4f}]<br>final margin {u.final_margin:.4f}, accuracy {u.final_accuracy:.4f}<br>"
                     f"boundary error (relative) {u.boundary_relative:.4g}<br>held-out perplexity {u.perplexity:.3f}"
                     f"<br>N={result.n_items}" for u, v, a, b in zip(us, y, lo, hi)]
            shift = off[kind] + (j - (len(cuts) - 1) / 2) * width
            label = f"{kind} cut (blocks {_blocks(c.blocks)})" if len(cuts) == 1 else \
                f"{kind} cut, {place} (blocks {_blocks(c.blocks)})"
            fig.add_trace(go.Scatter(x=[xi[u.method] + shift for u in us], y=y, mode="markers",
                                     marker=dict(size=10, color=CUT_COLORS[kind],
                                                 symbol=PLACEMENT_SYMBOLS.get(place, "circle")),
                                     error_y=dict(type="data", symmetric=False, array=hi - y, arrayminus=y - lo),
                                     name=label, hovertext=hover, hoverinfo="text"))
    rand_methods = [m for m in methods if result._random_units(m)]
    if rand_methods:
        sums = [result.random_summary(m, metric) for m in rand_methods]
        y = np.array([s["mean"] for s in sums])
        lo = np.array([s["lo"] for s in sums])
        hi = np.array([s["hi"] for s in sums])
        hover = [f"random cuts ({s['n_seeds']} seeds), mean over seeds<br>{m}<br>final {what} {s['mean']:.4f} "
                 f"[{s['lo']:.4f}, {s['hi']:.4f}] (seeds and items resampled)<br>range over seeds {s['seed_min']:.4f} to "
                 f"{s['seed_max']:.4f}<br>N={result.n_items}" for m, s in zip(rand_methods, sums)]
        fig.add_trace(go.Scatter(x=[xi[m] + off["random"] for m in rand_methods], y=y, mode="markers",
                                 marker=dict(size=10, color=CUT_COLORS["random"], symbol="diamond"),
                                 error_y=dict(type="data", symmetric=False, array=hi - y, arrayminus=y - lo),
                                 name=f"random cuts (mean of {len(result.seeds)} seeds)", hovertext=hover, hoverinfo="text"))
        if show_seeds:
            us = [u for u in result.units if u.cut == "random"]
            ys = [u.final_margin if metric == "margin" else u.final_accuracy for u in us]
            fig.add_trace(go.Scatter(
                x=[xi[u.method] + off["random"] + 0.08 for u in us], y=ys, mode="markers",
                marker=dict(size=5, color=CUT_COLORS["random"], symbol="circle-open"), name="random cut, one seed",
                hovertext=[f"random cut, seed {u.seed}, blocks {_blocks(u.blocks)}<br>{u.method}<br>final {what} {v:.4f}"
                           for u, v in zip(us, ys)], hoverinfo="text"))
    ylab = "final-layer Decision Margin (logits)" if metric == "margin" else "final-layer accuracy"
    fig.update_layout(
        title=f"Final-layer {what} after cutting {result.n} blocks, per placement and recovery: {_who(result)}",
        xaxis=dict(title="recovery method", tickmode="array", tickvals=list(range(len(methods))), ticktext=methods),
        yaxis_title=f"{ylab}, 95% bootstrap interval", template="plotly_white", hovermode="closest",
    )
    return fig


def phase_cut_curves(result: "PhaseCuts", *, methods: Sequence[str] | None = None,
                     seeds: Sequence[int] | None = None) -> go.Figure:
    """Margin curves on the original block axis: one panel per cut (silent, decisive, and the random
    cuts of ``seeds``, default the first), each with the dense curve, one curve per method, and the
    cut blocks shaded."""
    from plotly.subplots import make_subplots

    methods = list(methods or result.methods)
    seeds = list(result.seeds[:1] if seeds is None else seeds)
    panels = [c for c in result.cuts if c.kind != "random"] + [c for s in seeds for c in result.cuts
                                                              if c.kind == "random" and c.seed == s]
    fig = make_subplots(rows=1, cols=len(panels), shared_yaxes=True, horizontal_spacing=0.03,
                        subplot_titles=[f"{c.key} cut" + ("" if c.kind == "random" or len(result.placements(c.kind)) == 1
                                                          else f" ({result.placement_of(c)})") + f": blocks {_blocks(c.blocks)}"
                                        for c in panels])
    dense = result.transition.trace
    colors = {m: METHOD_COLORS[i % len(METHOD_COLORS)] for i, m in enumerate(result.methods)}
    for j, c in enumerate(panels, start=1):
        first = j == 1
        fig.add_trace(go.Scatter(x=dense.blocks, y=dense.margins, mode="lines", line=dict(color="black", width=2, dash="dot"),
                                 name="dense", legendgroup="dense", showlegend=first,
                                 hovertext=[f"dense, block {b}<br>margin {m:.4f}<br>accuracy {a:.3f}<br>N={dense.n_items}"
                                            for b, m, a in zip(dense.blocks, dense.margins, dense.accuracy)], hoverinfo="text"),
                      row=1, col=j)
        for m in methods:
            us = [u for u in result.units if u.cut == c.kind and u.seed == c.seed and u.method == m and u.blocks == c.blocks]
            if not us:
                continue
            u = us[0]
            hover = [f"{c.key} cut {_blocks(c.blocks)}, {m}<br>block {b}<br>margin {v:.4f} [{lo:.4f}, {hi:.4f}]<br>"
                     f"accuracy {a:.3f}<br>N={result.n_items}"
                     for b, v, lo, hi, a in zip(u.curve_blocks, u.margins, u.margin_ci[0], u.margin_ci[1], u.accuracy)]
            fig.add_trace(go.Scatter(x=u.curve_blocks, y=u.margins, mode="lines+markers", marker=dict(size=4),
                                     line=dict(color=colors[m]), name=m, legendgroup=m, showlegend=first,
                                     hovertext=hover, hoverinfo="text"), row=1, col=j)
        fig.add_vrect(x0=c.start - 0.5, x1=c.start + c.n - 0.5, fillcolor=CUT_COLORS[c.kind], opacity=0.15, line_width=0,
                      row=1, col=j)
        if result.transition.layer is not None:
            fig.add_vline(x=result.transition.layer - 0.5, line=dict(color="green", dash="dash", width=1), row=1, col=j)
        fig.add_hline(y=0, line=dict(color="black", width=1, dash="dot"), row=1, col=j)
        fig.update_xaxes(title_text="block (original index)", row=1, col=j)
    fig.update_yaxes(title_text="Decision Margin (logits)", row=1, col=1)
    fig.update_layout(title=f"Margin per block after each cut and recovery (shaded: cut blocks; dashed: dense transition "
                            f"at block {result.transition.layer}): {_who(result)}", template="plotly_white",
                      hovermode="closest")
    return fig


def phase_cut_effects(effects: Sequence, *, title: str = "") -> go.Figure:
    """Forest plot of :meth:`PhaseCuts.effects`: each pooled effect (filled) with its per-placement effects (open)
    below it, interval bars, zero dotted."""
    rows: list = []
    for eff in effects:
        rows.append((eff, True))
        rows.extend((c, False) for c in eff.clusters)
    if not rows:
        raise PlotError("no effects to plot")
    names = [e.name for e, _ in rows]
    fig = go.Figure()
    for pooled in (True, False):
        sel = [(i, e) for i, (e, p) in enumerate(rows) if p == pooled]
        if not sel:
            continue
        fig.add_trace(go.Scatter(
            x=[e.estimate for _, e in sel], y=[names[i] for i, _ in sel], mode="markers",
            marker=dict(size=11 if pooled else 8, color="black" if pooled else "#1f77b4",
                        symbol="diamond" if pooled else "circle-open"),
            error_x=dict(type="data", symmetric=False, array=[e.hi - e.estimate for _, e in sel],
                         arrayminus=[e.estimate - e.lo for _, e in sel]),
            name="pooled over placements (placements fixed)" if pooled else "one placement",
            hovertext=[e.summary().replace("\n", "<br>") for _, e in sel], hoverinfo="text"))
    fig.add_vline(x=0, line=dict(color="black", dash="dot", width=1))
    fig.update_layout(title=title or "Phase-cut effects: pooled and per placement (items resampled, l* re-estimated)",
                      xaxis_title=f"effect ({rows[0][0].level:.0%} percentile interval)",
                      yaxis=dict(autorange="reversed", categoryorder="array", categoryarray=names),
                      template="plotly_white", hovermode="closest")
    return fig
