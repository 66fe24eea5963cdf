"""Recovery methods: registered objects that own their behaviour.

A :class:`RecoveryMethod` declares which statistics it needs (``needs``, a subset of :data:`NEEDS`), where its
operator acts (``acts_on``: the whole residual stream at the cut span, or the MLP branch of the block before it),
which cuts it refuses (:meth:`RecoveryMethod.refuses`), and how it solves for its operator from the float64
statistics of one span (:meth:`RecoveryMethod.solve`). :data:`METHODS` holds them; the built-ins are registered
below in the order phaselens always listed them. Add one with :func:`register_method`::

    import phaselens as pl
    from phaselens.recovery import RecoveryMethod, ridge_solve

    @pl.register_method("half-ghosted")
    class HalfGhosted(RecoveryMethod):
        needs = frozenset({"stream"})
        def solve(self, stats, lam=None, *, target=None):
            W, lam = ridge_solve(stats.A, stats.C, lam)
            return (W + torch.eye(W.shape[0], dtype=W.dtype)) / 2, lam
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import torch

from ..errors import RecoveryError
from ..registry import Registry
from .solvers import diagonal_solve, hadamard_scale_solve, ridge_solve, scalar_solve, symmetric_solve

if TYPE_CHECKING:  # stats imports this module
    from .stats import SpanStats

#: The statistics a method may need: ``"stream"`` (``X^T X``, ``X^T Y`` of the residual stream entering and
#: leaving the span), ``"branch"`` (the same products for the MLP branch of the block before the span) and
#: ``"rotated"`` (per-passage magnitude ratios in the Hadamard-rotated basis).
NEEDS: tuple[str, ...] = ("stream", "branch", "rotated")
#: Where an operator acts: ``"span"`` (replaces the cut span on the residual stream) or ``"branch"`` (maps the MLP
#: branch of block ``s - 1``).
ACTS_ON: tuple[str, ...] = ("span", "branch")


class RecoveryMethod:
    """One recovery method. Subclass it, set ``needs`` / ``acts_on`` / ``fitted``, implement :meth:`solve`
    (and :meth:`refuses` if some cuts cannot be recovered), and register it with :func:`register_method`.

    Attributes:
        name: the registered name (set on registration).
        needs: the statistics :meth:`solve` reads (a subset of :data:`NEEDS`).
        acts_on: ``"span"`` (``h -> h @ W`` replaces the cut span) or ``"branch"`` (``W`` maps the MLP branch of
            the block before the span).
        fitted: ``False`` for a method that fits nothing (plain pruning): no operator is stored and no warning
            about too few calibration tokens is given.
    """

    name: str = ""
    needs: frozenset[str] = frozenset({"stream"})
    acts_on: str = "span"
    fitted: bool = True

    def refuses(self, span: tuple[int, int]) -> str | None:
        """Why this method cannot recover the cut span ``[s, e)``, or ``None`` when it can."""
        return None

    def check_span(self, span: tuple[int, int]) -> None:
        """Raise :class:`RecoveryError` when this method cannot recover ``span``."""
        reason = self.refuses(span)
        if reason:
            raise RecoveryError(f"{self.name} cannot recover the cut span {tuple(span)}: {reason}")

    def solve(self, stats: "SpanStats", lam: float | None = None, *,
              target: str | None = None) -> "tuple[torch.Tensor, float] | torch.Tensor":
        """The operator ``W [d, d]`` (float64) for one span from its statistics; ``(W, lam used)`` or ``W``."""
        raise NotImplementedError(f"the recovery method {self.name!r} does not implement solve(stats, lam, target=)")

    def operands(self, stats: "SpanStats") -> tuple[torch.Tensor, torch.Tensor]:
        """``(A, C)`` of the regression the operator solves: the stream's, or the branch's for ``acts_on="branch"``."""
        return (stats.A_branch, stats.C_branch) if self.acts_on == "branch" else (stats.A, stats.C)

    def residual(self, stats: "SpanStats", W: torch.Tensor) -> torch.Tensor:
        """Per-channel sum of squared errors ``[d]`` of ``W`` on the calibration tokens, from the statistics."""
        return stats.residual(W, branch=self.acts_on == "branch")

    def place(self, span: tuple[int, int]) -> "tuple[int, int] | int":
        """Where the operator is stored in a :class:`~phaselens.Recovered`: the span, or block ``s - 1``."""
        return span[0] - 1 if self.acts_on == "branch" else tuple(span)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, needs={sorted(self.needs)}, acts_on={self.acts_on!r})"


METHODS: Registry[RecoveryMethod] = Registry("method", "recovery method", RecoveryError)


def _validate(name: str, m: Any) -> None:
    if not isinstance(m, RecoveryMethod):
        raise RecoveryError(f"recovery method {name!r} must be a phaselens.recovery.RecoveryMethod (subclass it), "
                            f"got {type(m).__name__}")
    bad = set(m.needs) - set(NEEDS)
    if not m.needs or bad:
        raise RecoveryError(f"recovery method {name!r}: needs must be a non-empty subset of {NEEDS}, got {set(m.needs)}")
    if m.acts_on not in ACTS_ON:
        raise RecoveryError(f"recovery method {name!r}: acts_on must be one of {ACTS_ON}, got {m.acts_on!r}")
    if m.acts_on == "branch" and "branch" not in m.needs:
        raise RecoveryError(f"recovery method {name!r} acts on the MLP branch, so it needs 'branch' statistics")


def register_method(name: str, *, replace: bool = False) -> Callable[[Any], Any]:
    """Decorator registering a :class:`RecoveryMethod` subclass (instantiated with no arguments) or instance as
    ``name``; every phaselens function taking a method name (``fit_recovery``, ``compare_phase_cuts``,
    ``iterative_prune``, the CLI's ``--methods``, study specs) then accepts it."""

    def deco(obj: Any) -> Any:
        inst = obj() if isinstance(obj, type) else obj
        _validate(name, inst)
        if not inst.name:
            inst.name = name
        METHODS.add(name, inst, replace=replace)
        return obj

    return deco


def get_method(name: Any) -> RecoveryMethod:
    """The registered method ``name`` (a :class:`RecoveryMethod` passes through)."""
    return name if isinstance(name, RecoveryMethod) else METHODS.get(name)


def fit_operator(method: RecoveryMethod, stats: "SpanStats", lam: float | None = None, *,
                 target: str | None = None) -> tuple[torch.Tensor, float]:
    """``(W [d, d] float64, lam used)`` of ``method`` on one span's statistics (a bare ``W`` counts as ``lam=0``)."""
    out = method.solve(stats, lam, target=target)
    W, lam_used = out if isinstance(out, tuple) else (out, 0.0)
    if not isinstance(W, torch.Tensor) or W.ndim != 2 or W.shape[0] != W.shape[1]:
        raise RecoveryError(f"recovery method {method.name!r}: solve() must return a square [d, d] tensor "
                            f"(or (W, lam)), got {type(W).__name__} {getattr(W, 'shape', '')}")
    return W.double(), float(lam_used)


def needs_of(methods: Any) -> frozenset[str]:
    """The union of the statistics the named methods need."""
    return frozenset().union(*(get_method(m).needs for m in METHODS.check(methods)))


# -- the built-ins, in the order phaselens always listed them ---------------------------------------------------


@register_method("ghosted")
class Ghosted(RecoveryMethod):
    """Ghosted Layers: ``W = W0 + (A + lam I)^-1 (C - A W0)``, least squares with the ridge shrinking to ``target``."""

    def solve(self, stats, lam=None, *, target=None):
        return ridge_solve(stats.A, stats.C, lam, target=target)


@register_method("identity")
class Identity(RecoveryMethod):
    """Plain pruning: ``W = I`` (no operator is stored)."""

    fitted = False

    def solve(self, stats, lam=None, *, target=None):
        return torch.eye(stats.A.shape[0], dtype=torch.float64, device=stats.A.device), 0.0


@register_method("scalar")
class Scalar(RecoveryMethod):
    """``W = alpha I``, ``alpha = tr C / tr A``."""

    def solve(self, stats, lam=None, *, target=None):
        return scalar_solve(stats.A, stats.C)


@register_method("diagonal")
class Diagonal(RecoveryMethod):
    """``W = diag(C_jj / A_jj)``: per-channel magnitude compensation."""

    def solve(self, stats, lam=None, *, target=None):
        return diagonal_solve(stats.A, stats.C)


@register_method("symmetric")
class Symmetric(RecoveryMethod):
    """The symmetric least-squares operator: ``A W + W A = C + C^T``."""

    def solve(self, stats, lam=None, *, target=None):
        return symmetric_solve(stats.A, stats.C, lam)


@register_method("linearpatch")
class LinearPatch(RecoveryMethod):
    """LinearPatch: ``W = H diag(s) H^T`` from the rotated magnitude ratios ``s``."""

    needs = frozenset({"stream", "rotated"})

    def solve(self, stats, lam=None, *, target=None):
        if stats.abs_ratio is None:
            raise RecoveryError("linearpatch needs the rotated magnitude ratios (span_stats(..., methods=['linearpatch']) "
                                "or span_stats(..., needs={'rotated'}))")
        return hadamard_scale_solve(stats.abs_ratio, stats.A.device)


@register_method("replaceme")
class ReplaceMe(RecoveryMethod):
    """ReplaceMe: least squares on the MLP branch of block ``s - 1`` (ridge towards zero: "no change" of a branch is
    not the identity)."""

    needs = frozenset({"stream", "branch"})
    acts_on = "branch"

    def refuses(self, span):
        if span[0] == 0:
            return "ReplaceMe regresses the MLP branch of the block before the cut, and this cut starts at block 0"
        return None

    def check_span(self, span):
        if self.refuses(span):
            raise RecoveryError(f"replaceme needs a block before the cut span {tuple(span)}; it cannot recover a cut "
                                "at block 0")

    def solve(self, stats, lam=None, *, target=None):
        A, C = self.operands(stats)
        if A is None:
            raise RecoveryError("replaceme needs the MLP-branch statistics (span_stats(..., methods=['replaceme']))")
        return ridge_solve(A, C, lam, target="zero")


__all__ = ["ACTS_ON", "METHODS", "NEEDS", "RecoveryMethod", "fit_operator", "get_method", "needs_of", "register_method",
           "solve"]
