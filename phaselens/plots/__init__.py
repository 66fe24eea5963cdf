"""Plotly figures from phaselens result objects. Nothing here computes a metric: every
function takes a result (trace, transition, sweep, CKA, ...) and draws it.

Compute modules never import this package at module level; results import it lazily in
their ``plot()`` methods.
"""

from .core import boundary_error_channels, cka_heatmap, margin_curve, save_html, sweep_margins

__all__ = ["boundary_error_channels", "cka_heatmap", "margin_curve", "save_html", "sweep_margins"]
