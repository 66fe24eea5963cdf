"""Recovering pruned models: Ghosted Layers (closed-form least squares) and its rivals."""

from .boundary import BoundaryError, boundary_error
from .fit import MIN_TOKENS_PER_DIM, Recovered, fit_recovery, load_recovery
from .hadamard import hadamard
from .solvers import METHODS, ridge_solve, solve
from .stats import SpanStats, span_stats

__all__ = ["METHODS", "MIN_TOKENS_PER_DIM", "BoundaryError", "Recovered", "SpanStats", "boundary_error", "fit_recovery",
           "hadamard", "load_recovery", "ridge_solve", "solve", "span_stats"]
