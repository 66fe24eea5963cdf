"""Recovering pruned models: Ghosted Layers (closed-form least squares) and its rivals."""

from ..deprecation import module_getattr
from .boundary import BoundaryErrorResult, boundary_error
from .fit import MIN_TOKENS_PER_DIM, Recovered, fit_recovery, load_recovery
from .hadamard import hadamard
from .solvers import METHODS, ridge_solve, solve
from .stats import SpanStats, span_stats

__all__ = ["METHODS", "MIN_TOKENS_PER_DIM", "BoundaryErrorResult", "Recovered", "SpanStats", "boundary_error", "fit_recovery",
           "hadamard", "load_recovery", "ridge_solve", "solve", "span_stats"]

__getattr__ = module_getattr(__name__, {"BoundaryError": "phaselens.recovery.boundary:BoundaryErrorResult"})  # old name
