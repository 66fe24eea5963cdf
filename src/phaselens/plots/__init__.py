"""Plotly figures from phaselens result objects. Nothing here computes a metric: every
function takes a result (trace, transition, sweep, CKA, ...) and draws it.

Compute modules never import this package at module level; results import it lazily in
their ``plot()`` methods.

* :mod:`.trace`: :func:`margin_curves` (several curves on the original-block axis, bootstrap
  bands, phases shaded), :func:`accuracy_curves`, :func:`kl_curves`, :func:`option_frequency`
  (stacked bars, stacked areas, or a radar with a slider over blocks);
* :mod:`.similarity`: :func:`cka_heatmap`, :func:`cka_heatmaps` (side by side, one colour scale),
  :func:`cka_contrast` (decision tokens against hidden states per block);
* :mod:`.pruning`: :func:`sweep_margins`, :func:`sweep_accuracy`, :func:`boundary_error_channels`;
* :mod:`.lenses`: :func:`lens_kl_curves` (each lens's faithfulness per block), :func:`lens_heatmap` (the logit-lens
  picture: top next token per position and block);
* :mod:`.core`: colours, phase shading, :func:`save_html`.
"""

from .core import save_html
from .lenses import lens_heatmap, lens_kl_curves
from .pruning import boundary_error_channels, healing_loss, sweep_accuracy, sweep_margins
from .similarity import cka_contrast, cka_heatmap, cka_heatmaps
from .trace import accuracy_curves, kl_curves, margin_curve, margin_curves, option_frequency

__all__ = [
    "accuracy_curves",
    "boundary_error_channels",
    "cka_contrast",
    "cka_heatmap",
    "cka_heatmaps",
    "healing_loss",
    "kl_curves",
    "lens_heatmap",
    "lens_kl_curves",
    "margin_curve",
    "margin_curves",
    "option_frequency",
    "save_html",
    "sweep_accuracy",
    "sweep_margins",
]
