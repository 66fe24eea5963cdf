"""Recovering pruned models: Ghosted Layers (closed-form least squares) and its rivals, each a registered
:class:`RecoveryMethod` (:data:`METHODS`; add one with :func:`register_method`)."""

from ..deprecation import module_getattr
from .boundary import BoundaryErrorResult, boundary_error
from .fit import MIN_TOKENS_PER_DIM, Recovered, fit_recovery, load_recovery
from .hadamard import hadamard
from .method import ACTS_ON, METHODS, NEEDS, RecoveryMethod, get_method, register_method
from .solvers import ridge_solve
from .stats import SpanStats, solve, span_stats

__all__ = ["ACTS_ON", "METHODS", "MIN_TOKENS_PER_DIM", "NEEDS", "BoundaryErrorResult", "RecoveryMethod", "Recovered",
           "SpanStats", "boundary_error", "fit_recovery", "get_method", "hadamard", "load_recovery", "register_method",
           "ridge_solve", "solve", "span_stats"]

__getattr__ = module_getattr(__name__, {"BoundaryError": "phaselens.recovery.boundary:BoundaryErrorResult"})  # old name
