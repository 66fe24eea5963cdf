"""Closed-form operators for a cut span, from float64 sufficient statistics.

With ``X [n, d]`` what entered the span and ``Y [n, d]`` what left it (in the dense model),
every method needs only ``A = X^T X`` and ``C = X^T Y`` (``d x d``), accumulated batch by batch:

``ghosted``     ``W = W0 + (A + lam I)^-1 (C - A W0)``  (least squares, Ghosted Layers), the ridge shrinking
                towards ``W0``: the identity (``target="identity"``, the official Ghosted Layers code's
                ``W = I + X^+ (Y - X)``, "skip the span") or zero (``target="zero"``: ``(A + lam I)^-1 C``).
                Both are plain least squares when ``lam = 0``; :data:`RIDGE_TARGET` is the default
``identity``    ``W = I``  (plain pruning)
``scalar``      ``W = alpha I``, ``alpha = tr C / tr A``
``diagonal``    ``W = diag(C_jj / A_jj)``  (per-channel magnitude compensation)
``symmetric``   ``W = W^T`` minimising ``||XW - Y||``: solves ``A W + W A = C + C^T``
``linearpatch`` ``W = H diag(s) H^T``: LinearPatch (chenxinrui-tsinghua/LinearPatch, ``get_scale_params``):
                ``H`` a full Hadamard rotation of order ``d`` (:mod:`~phaselens.recovery.hadamard`) and the
                magnitude ratio ``s_j = mean|(Y H)_j| / mean|(X H)_j|`` per rotated channel, the means taken
                over each calibration passage's tokens and the ratios averaged over passages, as the
                reference does with one passage per batch (statistics ``abs_ratio``, not ``A``/``C``)

ReplaceMe regresses the MLP branch of the block before the cut instead; its statistics are
the same two products for ``X = M`` (branch output) and ``Y = h_out - h_in + M``.

The maths lives here; each method is a registered :class:`~phaselens.recovery.method.RecoveryMethod`
(:mod:`phaselens.recovery.method`) that declares its statistics and calls these functions.
"""

from __future__ import annotations

import importlib
import warnings

import numpy as np
import torch

from ..errors import RecoveryError, SingularFitWarning
from .hadamard import hadamard


#: ``lam=None`` uses ``LAM_SCALE * tr(A) / d``: negligible next to the data, keeps a rank-deficient fit finite.
LAM_SCALE = 1e-10
#: ``A = X^T X`` counts as singular when its smallest eigenvalue is below ``SINGULAR_RTOL * tr(A) / d``
#: (fewer tokens than channels, duplicated or constant channels).
SINGULAR_RTOL = 1e-10
#: The ridge a singular fit falls back to (when ``lam`` was not given): ``LAM_FALLBACK * tr(A) / d``.
LAM_FALLBACK = 1e-4
#: What the ridge of ``ghosted`` (and the linear lens) shrinks towards by default: ``"identity"`` or ``"zero"``.
#: Chosen from held-out boundary error and perplexity at 8 and 32 calibration passages on the embedded
#: models (analyses/ridge_target.py; the figures are in analyses/HISTORY.md).
RIDGE_TARGET = "identity"
TARGETS = ("identity", "zero")


def default_lam(A: torch.Tensor) -> float:
    return LAM_SCALE * float(torch.trace(A)) / A.shape[0]


def is_singular(A: torch.Tensor) -> bool:
    """True when ``A`` (symmetric PSD, ``d x d``) is numerically rank deficient."""
    A = A.double()
    scale = float(torch.trace(A)) / A.shape[0]
    if not scale > 0:
        return True
    # smallest eigenvalue <= t  <=>  A - t I is not positive definite: one Cholesky (d^3/3 multiplications, BLAS 3)
    # answers what a full eigvalsh (several times slower) would
    t = SINGULAR_RTOL * scale
    _, info = torch.linalg.cholesky_ex(A - t * torch.eye(A.shape[0], dtype=A.dtype, device=A.device))
    return int(info) != 0


def _warn_singular(lam_used: float, scale: float) -> None:
    warnings.warn(
        f"the normal equations X^T X are singular (fewer calibration tokens than channels, or duplicated/"
        f"constant inputs); fell back to ridge with lam={lam_used:.3g} (= {lam_used / scale:.1e} x tr(X^T X)/d). "
        "Pass more calibration text, or lam= to choose it yourself.",
        SingularFitWarning,
        stacklevel=4,
    )


def choose_lam(A: torch.Tensor, lam: float | None = None) -> tuple[float, bool]:
    """``(lam to use, whether that is a fallback the user must be warned about)`` for ``A = X^T X``.

    ``lam=None``: ``LAM_SCALE * tr(A)/d`` (plain least squares up to float error), or
    ``LAM_FALLBACK * tr(A)/d`` when ``A`` is singular. A given ``lam`` is used as is, unless it is too
    small to make a singular ``A`` invertible (``lam=0``): then the fallback is used.
    """
    if lam is not None and (isinstance(lam, bool) or not isinstance(lam, (int, float, np.integer, np.floating))
                            or not np.isfinite(lam) or lam < 0):
        raise RecoveryError(f"lam must be a finite number >= 0 (or None for the default), got {lam!r}")
    A = A.double()
    scale = max(float(torch.trace(A)) / A.shape[0], 1e-30)
    singular = is_singular(A)
    if lam is None:
        return (LAM_FALLBACK * scale, True) if singular else (default_lam(A), False)
    if singular and lam <= SINGULAR_RTOL * scale:
        return LAM_FALLBACK * scale, True
    return float(lam), False


def check_target(target: str | None) -> str:
    """``target`` (``None``: :data:`RIDGE_TARGET`) as one of :data:`TARGETS`; a clear error otherwise."""
    if target is None:
        return RIDGE_TARGET
    if target not in TARGETS:
        raise RecoveryError(f"target must be one of {TARGETS} (what the ridge shrinks towards), got {target!r}")
    return target


def ridge_solve(A: torch.Tensor, C: torch.Tensor, lam: float | None = None, *, target: str | None = None,
                W0: torch.Tensor | None = None) -> tuple[torch.Tensor, float]:
    """``W0 + (A + lam I)^-1 (C - A W0)`` in float64 by Cholesky (``lam`` chosen by :func:`choose_lam`), with
    ``W0`` the identity (``target="identity"``) or zero (``"zero"``; default :data:`RIDGE_TARGET`); ``W0=``
    gives another ``[d, m]`` prior (the linear lens: ``[I; 0]`` for a bias row). A singular ``A`` falls back to
    ridge and warns (:class:`SingularFitWarning`) with the value used. Returns ``(W, lam)``."""
    A, C = A.double(), C.double()
    if W0 is None and check_target(target) == "identity" and C.shape[0] == C.shape[1]:
        W0 = torch.eye(C.shape[0], dtype=torch.float64, device=A.device)
    if W0 is not None:
        W0 = W0.to(A.device, torch.float64)
        W, lam_used = ridge_solve(A, C - A @ W0, lam, target="zero")
        return W + W0, lam_used
    d = A.shape[0]
    scale = max(float(torch.trace(A)) / d, 1e-30)
    lam_used, warn = choose_lam(A, lam)
    eye = torch.eye(d, dtype=A.dtype, device=A.device)
    for _ in range(12):
        L, info = torch.linalg.cholesky_ex(A + lam_used * eye)
        if int(info) == 0:
            W = torch.cholesky_solve(C, L)
            if torch.isfinite(W).all():
                if warn:
                    _warn_singular(lam_used, scale)
                return W, lam_used
        lam_used, warn = max(lam_used * 100, LAM_FALLBACK * scale), True
    raise RecoveryError("could not solve the normal equations even with a large ridge; check the calibration data")


def scalar_solve(A: torch.Tensor, C: torch.Tensor) -> tuple[torch.Tensor, float]:
    """``W = alpha I`` with ``alpha = tr C / tr A`` (``[d, d]`` float64); returns ``(W, 0.0)``."""
    A, C = A.double(), C.double()
    eye = torch.eye(A.shape[0], dtype=torch.float64, device=A.device)
    return eye * (torch.trace(C) / torch.trace(A)), 0.0


def diagonal_solve(A: torch.Tensor, C: torch.Tensor) -> tuple[torch.Tensor, float]:
    """``W = diag(C_jj / A_jj)`` (``[d, d]`` float64); returns ``(W, 0.0)``."""
    A, C = A.double(), C.double()
    return torch.diag(torch.diagonal(C) / torch.diagonal(A).clamp_min(1e-30)), 0.0


def symmetric_solve(A: torch.Tensor, C: torch.Tensor, lam: float | None = None) -> tuple[torch.Tensor, float]:
    """The symmetric ``W [d, d]`` minimising ``||XW - Y||``: solves ``(A + lam I) W + W (A + lam I) = C + C^T``
    in the eigenbasis of ``A``; returns ``(W, lam)`` (``lam`` chosen, and a fallback warned, as :func:`choose_lam`)."""
    A, C = A.double(), C.double()
    d = A.shape[0]
    eye = torch.eye(d, dtype=torch.float64, device=A.device)
    lam_, warn = choose_lam(A, lam)
    if warn:
        _warn_singular(lam_, max(float(torch.trace(A)) / d, 1e-30))
    evals, Q = torch.linalg.eigh(A + lam_ * eye)
    S = Q.T @ (C + C.T) @ Q
    W = Q @ (S / (evals[:, None] + evals[None, :]).clamp_min(1e-300)) @ Q.T
    return (W + W.T) / 2, lam_


def hadamard_scale_solve(abs_ratio: torch.Tensor, device: torch.device | None = None) -> tuple[torch.Tensor, float]:
    """LinearPatch's ``W = H diag(s) H^T`` (``[d, d]`` float64) from the rotated magnitude ratios ``s [d]``;
    returns ``(W, 0.0)``."""
    d = abs_ratio.shape[0]
    device = abs_ratio.device if device is None else device
    H = hadamard(d).to(device)
    return H @ torch.diag(abs_ratio.double().to(device)) @ H.T, 0.0


def __getattr__(name: str):
    # backward compatibility: METHODS (now the registry) and solve() moved to .method, which imports this module
    if name in ("METHODS", "solve"):
        module = importlib.import_module("phaselens.recovery.method" if name == "METHODS" else "phaselens.recovery.stats")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
