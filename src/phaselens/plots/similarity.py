"""CKA heatmaps: one :class:`~phaselens.CKAResult`, or several side by side on one colour scale; the decision-token
against hidden-state contrast per block."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable

import numpy as np
import plotly.graph_objects as go

from ..errors import PlotError

from .core import TEMPLATE

if TYPE_CHECKING:
    from ..cka_contrast import CKAContrast
    from ..similarity import CKAResult


def _kind(r: "CKAResult") -> str:
    return "debiased linear CKA" if r.debiased else "linear CKA"




def _zrange(results: list["CKAResult"], zmin: float | None, zmax: float | None) -> tuple[float, float]:
    finite = [np.asarray(r.matrix, float)[np.isfinite(r.matrix)] for r in results]
    lowest = min((float(f.min()) for f in finite if f.size), default=0.0)
    if zmin is None:  # debiased CKA can go below 0
        zmin = min(0.0, lowest) if any(r.debiased for r in results) else 0.0
    return float(zmin), float(1.0 if zmax is None else zmax)


def _hover(r: "CKAResult") -> list[list[str]]:
    return [[f"{r.model_a} block {a}<br>{r.model_b} block {b}<br>{_kind(r)} {v:.4f}<br>"
             f"on {r.source or 'inputs'}, {r.where}, n={r.n_samples}" for b, v in zip(r.blocks_b, row)]
            for a, row in zip(r.blocks_a, np.asarray(r.matrix, float))]


def _heat(r: "CKAResult", annotate: bool | None, **kw: Any) -> go.Heatmap:
    z = np.asarray(r.matrix, dtype=float)
    if annotate is None:
        annotate = max(z.shape) <= 16
    return go.Heatmap(z=z, x=[str(b) for b in r.blocks_b], y=[str(b) for b in r.blocks_a], hovertext=_hover(r),
                      hoverinfo="text", texttemplate="%{z:.2f}" if annotate else None, **kw)


def cka_heatmap(result: "CKAResult", *, colorscale: str = "Viridis", zmin: float | None = None, zmax: float | None = 1.0,
                title: str | None = None, annotate: bool | None = None) -> go.Figure:
    """Heatmap of a :class:`~phaselens.similarity.CKAResult`: rows are ``model_a``'s blocks, columns
    ``model_b``'s, both labelled by *original* block index (a pruned model's missing blocks are simply
    absent). ``zmin`` defaults to 0 (debiased CKA can go below 0: then to its minimum). ``annotate`` writes
    the values in the cells (default: when there are at most 16 x 16)."""
    lo, hi = _zrange([result], zmin, zmax)
    fig = go.Figure(_heat(result, annotate, colorscale=colorscale, zmin=lo, zmax=hi, colorbar=dict(title="CKA")))
    r = result
    fig.update_layout(
        title=title or f"{_kind(r)}: {r.model_a} vs {r.model_b} on {r.source or 'inputs'} ({r.where}, n={r.n_samples})",
        xaxis=dict(title=f"{r.model_b} block (original index)", type="category"),
        yaxis=dict(title=f"{r.model_a} block (original index)", type="category", autorange="reversed"),
        template=TEMPLATE,
    )
    return fig


def cka_heatmaps(results: Any, *, titles: Iterable[str] | None = None, colorscale: str = "Viridis",
                 zmin: float | None = None, zmax: float | None = 1.0, title: str | None = None,
                 annotate: bool | None = None) -> go.Figure:
    """Several CKA matrices side by side (e.g. dense vs dense, dense vs pruned) on ONE shared colour scale.

    Args:
        results: a list or ``{name: CKAResult}`` dict; names become panel titles.
        zmin, zmax: the shared colour range (default ``[0, 1]``, lower when a debiased value is negative).
    """
    if isinstance(results, dict):
        names, rs = list(results.keys()), list(results.values())
    else:
        rs = list(results) if isinstance(results, (list, tuple)) else [results]
        names = None
    if not rs:
        raise PlotError("cka_heatmaps needs at least one CKAResult")
    from plotly.subplots import make_subplots

    panel = list(titles) if titles is not None else [f"{r.model_a} vs {r.model_b}" for r in rs] if names is None else names
    if len(panel) != len(rs):
        raise PlotError(f"{len(rs)} CKA results but {len(panel)} titles")
    lo, hi = _zrange(rs, zmin, zmax)
    fig = make_subplots(rows=1, cols=len(rs), subplot_titles=panel, horizontal_spacing=0.08)
    for i, r in enumerate(rs, start=1):
        fig.add_trace(_heat(r, annotate, coloraxis="coloraxis"), row=1, col=i)
        fig.update_xaxes(title=f"{r.model_b} block", type="category", row=1, col=i)
        fig.update_yaxes(title=f"{r.model_a} block" if i == 1 or r.model_a != rs[0].model_a else None, type="category",
                         autorange="reversed", row=1, col=i)
    r0 = rs[0]
    kinds = {_kind(r) for r in rs}
    fig.update_layout(
        coloraxis=dict(colorscale=colorscale, cmin=lo, cmax=hi, colorbar=dict(title="CKA")),
        title=dict(text=title or f"{' / '.join(sorted(kinds))} per block pair (original indices) on {r0.source or 'inputs'} "
                   f"({r0.where}, n={r0.n_samples}); one colour scale", x=0.01, xanchor="left"),
        template=TEMPLATE, height=max(420, 360 + 6 * max(len(r.blocks_a) for r in rs)), width=None,
    )
    return fig


def cka_contrast(result: "CKAContrast", *, title: str | None = None) -> go.Figure:
    """The three CKAs of a :class:`~phaselens.cka_contrast.CKAContrast` per block after the first cut (original
    block index): decision tokens, hidden states and the control tokens, each value with its jackknife standard
    error."""
    r = result
    fig = go.Figure()
    for k, (name, vals, n) in enumerate((("decision tokens", r.decision, f"{r.n_items} items"),
                                         ("hidden states", r.hidden, f"{r.n_tokens} prompt tokens"),
                                         ("control tokens (before the decision token)", r.control,
                                          f"{r.n_items} items"))):
        se = r.jackknife_se(r.jackknife[:, :, k])
        fig.add_trace(go.Scatter(
            x=r.blocks, y=vals, mode="lines+markers", name=f"{name} ({n})",
            error_y=dict(type="data", array=se, visible=True),
            hovertext=[f"block {b}<br>{name}: CKA {v:.4f} ± {s:.4f} (jackknife SE)" for b, v, s in zip(r.blocks, vals, se)],
            hoverinfo="text"))
    fig.update_layout(
        title=title or (f"debiased linear CKA, {r.model_a} vs {r.model_b} (cut {len(r.removed)} blocks) on {r.source}: "
                        "each block after the first cut with itself"),
        xaxis_title="block (original index)", yaxis_title="debiased linear CKA", template=TEMPLATE)
    return fig
