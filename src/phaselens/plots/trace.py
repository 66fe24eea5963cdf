"""Per-layer decision figures: margin, accuracy, bias and convergence KL, option frequency.

Every function takes result objects (:class:`~phaselens.DecisionTrace`, :class:`~phaselens.Transition`,
a sweep step, a :class:`~phaselens.Sweep`, or a list / ``{name: result}`` dict of them) and draws
what they hold. The x axis is always the *original* block index, so a dense model and its pruned
or recovered views share one axis (a pruned curve simply has no point at a cut block).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Literal

import numpy as np
import plotly.graph_objects as go

from ..errors import PlotError

from .core import block_axis, colors as _colors, finish, format_label, rgba, shade_phases


@dataclass
class Curve:
    """One curve to draw: a trace, its label, and its own transition (if the input had one)."""

    label: str
    trace: Any  # DecisionTrace
    transition: Any = None  # Transition | None


_TRACE_FIELDS = ("model", "n_blocks", "blocks", "logits", "answers", "mask", "option_chars")


def is_trace(obj: Any) -> bool:
    """Whether ``obj`` is a decision trace (has :class:`~phaselens.DecisionTrace`'s fields); the plots take result
    objects and never import the modules that compute them."""
    return all(hasattr(obj, a) for a in _TRACE_FIELDS)


def is_transition(obj: Any) -> bool:
    """Whether ``obj`` is a :class:`~phaselens.Transition`: a trace with its transition ``layer`` and ``ci``."""
    return is_trace(getattr(obj, "trace", None)) and hasattr(obj, "layer") and hasattr(obj, "ci") and not hasattr(obj, "ratio")


def _one(obj: Any, label: str | None) -> list[Curve]:
    if is_trace(obj):
        return [Curve(label or obj.model, obj)]
    if is_transition(obj):
        return [Curve(label or obj.trace.model, obj.trace, obj)]
    if hasattr(obj, "steps") and hasattr(obj, "criterion"):  # a Sweep: one curve per step
        return [c for s in obj.steps for c in _one(s, None)]
    if hasattr(obj, "trace") and hasattr(obj, "ratio"):  # a SweepStep
        return [Curve(label or f"{len(obj.removed)} cut ({obj.ratio:.0%} pruned)", obj.trace, getattr(obj, "transition", None))]
    if is_trace(getattr(obj, "trace", None)):
        return [Curve(label or obj.trace.model, obj.trace, getattr(obj, "transition", None))]
    raise PlotError(
        f"cannot draw a {type(obj).__name__}: pass DecisionTrace / Transition objects (or a sweep, or a list or "
        "{name: result} dict of them)"
    )


def curves(results: Any, names: Iterable[str] | None = None) -> list[Curve]:
    """Normalise ``results`` (one result, a list, or a ``{name: result}`` dict) into :class:`Curve` s."""
    if isinstance(results, dict):
        items = list(results.items())
    elif isinstance(results, (list, tuple)):
        items = [(None, r) for r in results]
    else:
        items = [(None, results)]
    names = list(names) if names is not None else None
    if names is not None and len(names) != len(items):
        raise PlotError(f"{len(items)} results but {len(names)} names")
    out: list[Curve] = []
    for i, (key, r) in enumerate(items):
        out += _one(r, names[i] if names is not None else key)
    if not out:
        raise PlotError("nothing to draw: no traces given")
    seen: dict[str, int] = {}
    for c in out:  # duplicate labels would merge in the legend
        seen[c.label] = seen.get(c.label, 0) + 1
        if seen[c.label] > 1:
            c.label = f"{c.label} ({seen[c.label]})"
    return out


def pick_transition(cs: list[Curve], transition: Any) -> Any:
    """``"auto"``: the transition of the first dense curve that has one (else the first one at all)."""
    if transition != "auto":
        if transition is not None and not hasattr(transition, "layer"):
            raise PlotError(f"transition must be a Transition, 'auto' or None, got {type(transition).__name__}")
        return transition
    with_tr = [c for c in cs if c.transition is not None]
    dense = [c for c in with_tr if c.trace.n_read == c.trace.n_blocks]
    return (dense or with_tr or [Curve("", None)])[0].transition


def _header(t: Any) -> str:
    return f"{t.model} on {t.task} ({format_label(t)}, N={t.n_items} items)"


def _common_title(cs: list[Curve], what: str) -> str:
    t0 = cs[0].trace
    models = {c.trace.model for c in cs}
    tasks = {c.trace.task for c in cs}
    if len(cs) == 1:
        return f"{what}: {t0.model} on {t0.task} ({format_label(t0)}, {t0.n_items} items)"
    task = t0.task if len(tasks) == 1 else ", ".join(sorted(tasks))
    base = t0.model.split(" -")[0]
    who = base if all(m.split(" -")[0] == base for m in models) else f"{len(models)} models"
    return f"{what}: {who} on {task}, {len(cs)} curves"


def _band(fig: go.Figure, x: np.ndarray, lo: np.ndarray, hi: np.ndarray, color: str, label: str, group: str, **where: Any) -> None:
    fig.add_trace(go.Scatter(x=np.r_[x, x[::-1]], y=np.r_[hi, lo[::-1]], fill="toself", fillcolor=rgba(color, 0.16),
                             mode="lines", line=dict(width=0), hoverinfo="skip", showlegend=False, legendgroup=group,
                             name=f"{label} 95% CI"), **where)


def _n_blocks(cs: list[Curve]) -> int:
    return max(int(c.trace.n_blocks) for c in cs)


def margin_curves(results: Any, *, transition: Any = "auto", names: Iterable[str] | None = None,
                  colors: Iterable[str] | None = None, bands: bool = True, title: str | None = None) -> go.Figure:
    """Decision Margin per block of several results on one original-block axis, with bootstrap 95% bands.

    Args:
        results: traces / transitions / sweep steps / a sweep, as a list or ``{name: result}`` dict
            (dense vs pruned, the ratios of a sweep, several recovery methods...).
        transition: a :class:`~phaselens.Transition` whose silent and decisive phases are shaded and
            whose transition block is marked; ``"auto"`` (default) takes the first dense result's own
            transition; ``None`` shades nothing.
        names: legend labels (default: the model names, or ``"k cut (r% pruned)"`` for sweep steps).
        bands: draw each curve's bootstrap 95% interval over items.

    Hover text gives the exact margin, its interval, the accuracy with item counts, and the model/task.
    """
    cs = curves(results, names)
    tr = pick_transition(cs, transition)
    fig = go.Figure()
    L = _n_blocks(cs)
    shade_phases(fig, tr, L)
    for c, col in zip(cs, _colors(len(cs), colors)):
        t = c.trace
        x = np.asarray(t.blocks)
        lo, hi = np.asarray(t.margin_ci, float)
        if bands:
            _band(fig, x, lo, hi, col, c.label, c.label)
        n = t.n_items
        hover = [
            f"<b>{c.label}</b><br>{_header(t)}<br>block {b} (layer {j + 1} of {t.n_read} kept)<br>"
            f"margin {m:.4f} (95% CI {a:.4f} to {z:.4f})<br>accuracy {acc:.4f} ({round(acc * n)}/{n} items)"
            for j, (b, m, a, z, acc) in enumerate(zip(x, t.margins, lo, hi, t.accuracy))
        ]
        fig.add_trace(go.Scatter(x=x, y=t.margins, mode="lines+markers", name=c.label, legendgroup=c.label,
                                 line=dict(color=col), marker=dict(size=5), hovertext=hover, hoverinfo="text"))
    fig.add_hline(y=0, line=dict(color="black", width=1, dash="dot"))
    block_axis(fig, L, title="block (original index)")
    fig.update_yaxes(title="Decision Margin: correct option minus best other (logits)")
    return finish(fig, title or _common_title(cs, "Decision Margin per block"), hovermode="closest")


def margin_curve(trace: Any, transition: Any = None, fig: go.Figure | None = None, name: str | None = None,
                 color: str | None = None, **kw: Any) -> go.Figure:
    """One margin curve with its bootstrap 95% band; phases shaded when ``transition`` is given.

    ``fig`` adds the curve to an existing figure (prefer :func:`margin_curves` for several).
    """
    new = margin_curves([trace], transition=transition, names=[name] if name else None,
                        colors=[color] if color else None, **kw)
    if fig is None:
        return new
    for tr in new.data:
        fig.add_trace(tr)
    return fig


def _chance(t: Any) -> float | None:
    """Mean over items of 1/K_i (items with fewer options have -inf logits in the unused slots)."""
    z = np.asarray(t.logits, dtype=float)
    if z.ndim != 3 or z.shape[1] == 0:
        return None
    k = np.isfinite(z[-1]).sum(-1)
    return float(np.mean(1.0 / np.maximum(k, 1)))


def accuracy_curves(results: Any, *, transition: Any = "auto", names: Iterable[str] | None = None,
                    colors: Iterable[str] | None = None, bands: bool = True, chance: bool = True,
                    title: str | None = None) -> go.Figure:
    """Accuracy of the option-restricted readout per block (bootstrap 95% bands), chance level dotted."""
    cs = curves(results, names)
    tr = pick_transition(cs, transition)
    fig = go.Figure()
    L = _n_blocks(cs)
    shade_phases(fig, tr, L)
    for c, col in zip(cs, _colors(len(cs), colors)):
        t = c.trace
        x = np.asarray(t.blocks)
        lo, hi = np.asarray(t.accuracy_ci, float)
        if bands:
            _band(fig, x, lo, hi, col, c.label, c.label)
        n = t.n_items
        hover = [f"<b>{c.label}</b><br>{_header(t)}<br>block {b}<br>accuracy {a:.4f} ({round(a * n)}/{n} items)<br>"
                 f"95% CI {l_:.4f} to {h:.4f}" for b, a, l_, h in zip(x, t.accuracy, lo, hi)]
        fig.add_trace(go.Scatter(x=x, y=t.accuracy, mode="lines+markers", name=c.label, legendgroup=c.label,
                                 line=dict(color=col), marker=dict(size=5), hovertext=hover, hoverinfo="text"))
    if chance:
        ch = _chance(cs[0].trace)
        if ch is not None:
            fig.add_hline(y=ch, line=dict(color="gray", width=1, dash="dot"), annotation_text=f"chance {ch:.3f}",
                          annotation_position="bottom left")
    block_axis(fig, L, title="block (original index)")
    fig.update_yaxes(title="accuracy (share of items whose top option is correct)", range=[-0.02, 1.02])
    return finish(fig, title or _common_title(cs, "Accuracy per block"), hovermode="closest")


def kl_curves(results: Any, *, transition: Any = "auto", names: Iterable[str] | None = None,
              colors: Iterable[str] | None = None, title: str | None = None) -> go.Figure:
    """Two panels per block: bias KL ``KL(OF_l || answer key)`` and convergence KL ``mean_i KL(final || block l)``."""
    from plotly.subplots import make_subplots

    cs = curves(results, names)
    tr = pick_transition(cs, transition)
    L = _n_blocks(cs)
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.12, subplot_titles=(
        "bias KL: option frequency vs the answer key (positional bias)",
        "convergence KL: final block's option distribution vs this block's (mean over items)"))
    shade_phases(fig, tr, L, row=1, col=1)
    shade_phases(fig, tr, L, row=2, col=1, labels=False)
    for c, col in zip(cs, _colors(len(cs), colors)):
        t = c.trace
        x = np.asarray(t.blocks)
        for row, (y, what) in enumerate(((t.bias_kl, "bias KL"), (t.convergence_kl, "convergence KL")), start=1):
            hover = [f"<b>{c.label}</b><br>{_header(t)}<br>block {b}<br>{what} {v:.5f} nats" for b, v in zip(x, y)]
            fig.add_trace(go.Scatter(x=x, y=y, mode="lines+markers", name=c.label, legendgroup=c.label,
                                     showlegend=row == 1, line=dict(color=col), marker=dict(size=5),
                                     hovertext=hover, hoverinfo="text"), row=row, col=1)
    block_axis(fig, L)
    fig.update_xaxes(title="block (original index)", row=2, col=1)
    fig.update_yaxes(title="KL (nats)", rangemode="tozero")
    return finish(fig, title or _common_title(cs, "Bias KL and convergence KL per block"), hovermode="closest",
                  height=620)


def option_frequency(result: Any, kind: Literal["stacked", "area", "radar"] = "stacked", *, transition: Any = "auto",
                     title: str | None = None) -> go.Figure:
    """Option Frequency ``OF_l[k]`` per block: the share of items whose top option is slot ``k``.

    Args:
        result: one trace / transition / sweep step.
        kind: ``"stacked"`` bars per block, ``"area"`` (stacked areas), or ``"radar"`` (one polygon
            per block, chosen with a slider; the answer key's slot shares dashed for reference).

    The answer key (share of items whose *correct* answer is each slot) is the unbiased target:
    dotted lines in the stacked views, a dashed polygon in the radar.
    """
    cs = curves(result)
    if len(cs) != 1:
        raise PlotError(f"option_frequency draws one result, got {len(cs)}; call it once per result")
    c = cs[0]
    t = c.trace
    of = np.asarray(t.option_frequency, float)
    prior = np.asarray(t.answer_prior, float)
    labels = t.slot_labels
    n = t.n_items
    x = np.asarray(t.blocks)
    cols = _colors(len(labels))
    if kind == "radar":
        return _radar(c, of, prior, labels, x, n, title)
    if kind not in ("stacked", "area"):
        raise PlotError(f"kind must be 'stacked', 'area' or 'radar', got {kind!r}")
    fig = go.Figure()
    L = int(t.n_blocks)
    tr = pick_transition(cs, transition)
    shade_phases(fig, tr, L)
    for k, (lab, col) in enumerate(zip(labels, cols)):
        hover = [f"{_header(t)}<br>block {b}<br>slot {lab} is the top option for {v:.4f} of items "
                 f"({round(v * n)}/{n})<br>answer key: slot {lab} is correct for {prior[k]:.4f} ({round(prior[k] * n)}/{n})"
                 for b, v in zip(x, of[:, k])]
        name = f"{lab} (answer key {prior[k]:.0%})"
        if kind == "stacked":
            fig.add_trace(go.Bar(x=x, y=of[:, k], name=name, marker_color=col, hovertext=hover, hoverinfo="text"))
        else:
            fig.add_trace(go.Scatter(x=x, y=of[:, k], name=name, mode="lines", stackgroup="of", line=dict(color=col, width=0.5),
                                     fillcolor=rgba(col, 0.6), hovertext=hover, hoverinfo="text"))
    for k, cum in enumerate(np.cumsum(prior)[:-1]):
        fig.add_hline(y=float(cum), line=dict(color="black", width=1, dash="dot"), opacity=0.6)
    block_axis(fig, L, title="block (original index)")
    fig.update_yaxes(title="share of items whose top option is this slot", range=[0, 1])
    sub = "dotted: the answer key's cumulative slot shares"
    finish(fig, title or f"{_common_title(cs, 'Option frequency per block')}<br><sup>{sub}</sup>",
           barmode="stack", bargap=0.1, hovermode="closest")
    return fig.update_layout(legend_traceorder="normal")


def _radar(c: Curve, of: np.ndarray, prior: np.ndarray, labels: list[str], x: np.ndarray, n: int, title: str | None) -> go.Figure:
    t = c.trace
    theta = labels + labels[:1]
    fig = go.Figure()
    last = len(x) - 1
    for j, b in enumerate(x):
        r = np.r_[of[j], of[j][:1]]
        hover = [f"{_header(t)}<br>block {b}<br>slot {lab}: top option for {v:.4f} of items ({round(v * n)}/{n})"
                 for lab, v in zip(theta, r)]
        fig.add_trace(go.Scatterpolar(r=r, theta=theta, fill="toself", name=f"block {b}", visible=j == last,
                                      line=dict(color="#1f77b4"), hovertext=hover, hoverinfo="text"))
    hover = [f"answer key: slot {lab} correct for {v:.4f} of items ({round(v * n)}/{n})" for lab, v in zip(theta, np.r_[prior, prior[:1]])]
    fig.add_trace(go.Scatterpolar(r=np.r_[prior, prior[:1]], theta=theta, name="answer key", mode="lines",
                                  line=dict(color="black", dash="dash"), hovertext=hover, hoverinfo="text"))
    steps = [dict(method="update", label=str(b), args=[{"visible": [i == j for i in range(len(x))] + [True]},
                                                         {"title.text": _radar_title(t, b, title)}])
             for j, b in enumerate(x)]
    fig.update_layout(
        sliders=[dict(active=last, steps=steps, currentvalue=dict(prefix="block "), pad=dict(t=30))],
        polar=dict(radialaxis=dict(range=[0, max(1e-9, float(max(of.max(), prior.max()))) * 1.05], tickformat=".0%",
                                   angle=90 - 180 / len(labels), tickangle=90 - 180 / len(labels), tickfont=dict(size=9)),
                   angularaxis=dict(rotation=90, direction="clockwise")),
        height=520,
    )
    finish(fig, _radar_title(t, x[last], title), showlegend=True)
    return fig.update_layout(legend=dict(orientation="v", x=1.02, y=1, xanchor="left", yanchor="top"))


def _radar_title(t: Any, block: int, title: str | None) -> str:
    return title or (f"Option frequency at block {block} (slider: block): {t.model} on {t.task} "
                     f"({format_label(t)}, {t.n_items} items)")
