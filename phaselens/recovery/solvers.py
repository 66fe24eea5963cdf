"""Closed-form operators for a cut span, from float64 sufficient statistics.

With ``X [n, d]`` what entered the span and ``Y [n, d]`` what left it (in the dense model),
every method needs only ``A = X^T X`` and ``C = X^T Y`` (``d x d``), accumulated batch by batch:

``ghosted``     ``W = (A + lam I)^-1 C``  (unconstrained least squares, Ghosted Layers)
``identity``    ``W = I``  (plain pruning)
``scalar``      ``W = alpha I``, ``alpha = tr C / tr A``
``diagonal``    ``W = diag(C_jj / A_jj)``  (per-channel magnitude compensation)
``symmetric``   ``W = W^T`` minimising ``||XW - Y||``: solves ``A W + W A = C + C^T``
``linearpatch`` ``W = H diag(s) H^T``: a (block) Hadamard rotation ``H`` with a channel scale
                ``s_j = (H^T C H)_jj / (H^T A H)_jj`` fitted in the rotated basis (LinearPatch)

ReplaceMe regresses the MLP branch of the block before the cut instead; its statistics are
the same two products for ``X = M`` (branch output) and ``Y = h_out - h_in + M``.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

METHODS: tuple[str, ...] = ("ghosted", "identity", "scalar", "diagonal", "symmetric", "linearpatch", "replaceme")
#: ``lam=None`` uses ``LAM_SCALE * tr(A) / d``: negligible next to the data, keeps a rank-deficient fit finite.
LAM_SCALE = 1e-8


class SingularFitWarning(UserWarning):
    """The normal equations were singular; a larger ridge ``lam`` was used (the message gives it)."""


def default_lam(A: torch.Tensor) -> float:
    return LAM_SCALE * float(torch.trace(A)) / A.shape[0]


def ridge_solve(A: torch.Tensor, C: torch.Tensor, lam: float | None = None) -> tuple[torch.Tensor, float]:
    """``(A + lam I)^-1 C`` in float64 by Cholesky; on failure raise ``lam`` x100 until it succeeds
    and warn with the value used. Returns ``(W, lam)``."""
    A, C = A.double(), C.double()
    d = A.shape[0]
    lam0 = default_lam(A) if lam is None else float(lam)
    scale = max(float(torch.trace(A)) / d, 1e-30)
    lam_used = lam0
    eye = torch.eye(d, dtype=A.dtype, device=A.device)
    for _ in range(12):
        L, info = torch.linalg.cholesky_ex(A + lam_used * eye)
        if int(info) == 0:
            W = torch.cholesky_solve(C, L)
            if torch.isfinite(W).all():
                if lam_used != lam0:
                    warnings.warn(
                        f"the normal equations X^T X are singular (too few or degenerate calibration tokens); "
                        f"fell back to ridge with lam={lam_used:.3g} (= {lam_used / scale:.1e} x tr(X^T X)/d). "
                        "Pass more calibration text, or lam= to choose it yourself.",
                        SingularFitWarning,
                        stacklevel=3,
                    )
                return W, lam_used
        lam_used = max(lam_used * 100, 1e-10 * scale)
    raise np.linalg.LinAlgError("could not solve the normal equations even with a large ridge; check the calibration data")


def hadamard(d: int, *, dtype=torch.float64) -> torch.Tensor:
    """An orthonormal ``d x d`` rotation: Sylvester Hadamard if ``d`` is a power of two, else block
    diagonal with Hadamard blocks of the largest power of two dividing ``d``."""
    p = d & -d  # largest power of two dividing d
    h = torch.ones(1, 1, dtype=dtype)
    while h.shape[0] < p:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    h = h / np.sqrt(p)
    return torch.block_diag(*([h] * (d // p)))


def solve(method: str, A: torch.Tensor, C: torch.Tensor, lam: float | None = None) -> tuple[torch.Tensor, float]:
    """The operator ``W [d, d]`` (float64) of ``method`` from ``A = X^T X``, ``C = X^T Y``; returns ``(W, lam)``."""
    A, C = A.double(), C.double()
    d = A.shape[0]
    eye = torch.eye(d, dtype=torch.float64, device=A.device)
    if method in ("ghosted", "replaceme"):
        return ridge_solve(A, C, lam)
    if method == "identity":
        return eye, 0.0
    if method == "scalar":
        return eye * (torch.trace(C) / torch.trace(A)), 0.0
    if method == "diagonal":
        return torch.diag(torch.diagonal(C) / torch.diagonal(A).clamp_min(1e-30)), 0.0
    if method == "symmetric":
        lam_ = default_lam(A) if lam is None else float(lam)
        evals, Q = torch.linalg.eigh(A + lam_ * eye)
        S = Q.T @ (C + C.T) @ Q
        W = Q @ (S / (evals[:, None] + evals[None, :]).clamp_min(1e-300)) @ Q.T
        return (W + W.T) / 2, lam_
    if method == "linearpatch":
        H = hadamard(d).to(A.device)
        a = torch.diagonal(H.T @ A @ H)
        c = torch.diagonal(H.T @ C @ H)
        return H @ torch.diag(c / a.clamp_min(1e-30)) @ H.T, 0.0
    raise ValueError(f"unknown recovery method {method!r}; choose one of {METHODS}")
