"""Figures of lenses: how faithful each lens is per block (``lens_kl``)."""

from __future__ import annotations

from typing import Any

import numpy as np
import plotly.graph_objects as go

from .core import colors


def lens_kl_curves(kls: dict[str, Any], blocks: Any = None, *, title: str | None = None) -> go.Figure:
    """``{lens name: [L] mean KL(final || lens) in nats}`` per block on one axis (log scale), as
    :func:`phaselens.lens_kl` returns them; ``blocks`` the original block index of each value (default ``0..L-1``)."""
    fig = go.Figure()
    for (name, kl), col in zip(kls.items(), colors(len(kls))):
        kl = np.asarray(kl, dtype=float)
        x = np.arange(len(kl)) if blocks is None else np.asarray(blocks)
        keep = kl > 0  # the last row (the model's own output) is exactly 0
        fig.add_trace(go.Scatter(x=x[keep], y=kl[keep], mode="lines+markers", name=name, line=dict(color=col),
                                 hovertemplate=f"<b>{name}</b><br>block %{{x}}<br>KL %{{y:.4f}} nats<extra></extra>"))
    fig.update_layout(title=title or "Lens faithfulness: mean KL(final distribution || lens) on held-out tokens",
                      xaxis_title="block", yaxis_title="KL (nats, log scale)", yaxis_type="log", template="plotly_white")
    return fig
