"""Recovering pruned models: Ghosted Layers (closed-form least squares) and its rivals."""

from .fit import (
    BoundaryError,
    Recovered,
    RecoveryError,
    SpanStats,
    boundary_error,
    fit_recoveries,
    fit_recovery,
    load_recovery,
    span_stats,
)
from .solvers import METHODS, SingularFitWarning, hadamard, ridge_solve, solve

__all__ = [
    "METHODS", "BoundaryError", "Recovered", "RecoveryError", "SingularFitWarning", "SpanStats", "boundary_error",
    "fit_recoveries", "fit_recovery", "hadamard", "load_recovery", "ridge_solve", "solve", "span_stats",
]
