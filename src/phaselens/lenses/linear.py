"""The linear (closed-form) lens: least squares from ``h_l`` to ``h_{L-1}`` with a bias.

``T_l(h) = [h, 1] W_l``, ``W_l = argmin ||[X_l, 1] W - Y||^2 (+ ridge)``, ``X_l = h_l`` (the output of block
``l``) and ``Y = h_{L-1}`` (the output of the last block) at every non-padding calibration token. That is the
Ghosted-Layers operator of the span ``[l+1, L)`` with a bias row, so it is fitted by the recovery code itself:
:func:`~phaselens.recovery.stats.span_stats` gathers the float64 statistics (``O(d^2)`` memory per block, one
pass of the model through the runner) and :func:`~phaselens.recovery.solvers.ridge_solve` solves the normal
equations, shrinking towards the identity ``[I; 0]`` or zero as the recovery default does
(:data:`~phaselens.recovery.solvers.RIDGE_TARGET`).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from ..calibration import load_calibration, n_tokens
from ..errors import LensError, SingularFitWarning
from ..recovery.solvers import check_target, choose_lam, ridge_solve
from ..recovery.stats import span_stats
from .base import AffineLensKind, Lens, gather_max_tokens, register_lens


def fit_linear(base: Any, calibration: Any = None, *, lam: float | None = None, target: str | None = None,
               seq_len: int = 256, batch_size: int | None = None, max_tokens: int | None = None) -> Lens:
    """The linear lens of ``base`` (a dense :class:`~phaselens.Model`) on ``calibration`` (``None``: the bundled fit
    passages). ``lam``/``target``: the ridge and what it shrinks towards (see :func:`~phaselens.recovery.ridge_solve`)."""
    target = check_target(target)
    choose_lam(torch.eye(1, dtype=torch.float64), lam)  # validates lam before any model work
    L, d = base.n_blocks, base.d_model
    if L < 2:
        raise LensError(f"{base.name} has one block; the linear lens has nothing to translate (use lens='logit')")
    texts = load_calibration(calibration)
    n = n_tokens(base, texts, seq_len)
    if n < d + 1:
        raise LensError(f"the linear lens of {base.name} needs at least {d + 1} calibration tokens (hidden size {d} plus "
                        f"the bias), but the calibration text gives {n} (at seq_len={seq_len}); pass more text, or "
                        "calibration=None for the bundled corpus")
    max_tokens = gather_max_tokens(base, max_tokens)
    spans = [(b + 1, L) for b in range(L - 1)]
    stats = span_stats(base, spans, texts, seq_len=seq_len, batch_size=batch_size, max_tokens=max_tokens)
    weights, biases, lams = {}, {}, {}
    for b in range(L - 1):
        A1, C1 = stats[(b + 1, L)].affine()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", SingularFitWarning)
            if target == "identity":  # W = [I; 0] + (A1 + lam)^-1 (C1 - A1 [I; 0]), and A1 [I; 0] is A1's first d columns
                W, lams[b] = ridge_solve(A1, C1 - A1[:, :d], lam, target="zero")
                W[:d].diagonal().add_(1.0)
            else:
                W, lams[b] = ridge_solve(A1, C1, lam, target="zero")
        for w in caught:
            warnings.warn(f"linear lens, block {b}: {w.message}", w.category, stacklevel=2)
        weights[b] = W[:d].float().cpu()
        biases[b] = W[d].float().cpu()
    info = {"n_tokens": n, "seq_len": seq_len, "target": target, "lam": {str(b): v for b, v in lams.items()},
            "calibration": "bundled fit passages" if calibration is None else f"{len(texts)} passages"}
    return Lens("linear", base.name, base.fingerprint, L, d, weights, biases, info)


@register_lens("linear")
class LinearKind(AffineLensKind):
    """Closed-form least squares from ``h_l`` to ``h_{L-1}`` (:func:`fit_linear`); deterministic (``seed`` unused)."""

    options = ("lam", "target", "seq_len", "batch_size", "max_tokens")

    def fit(self, model: Any, calibration: Any = None, *, seed: int = 0, **opts: Any) -> Lens:
        bad = sorted(set(opts) - set(self.options))
        if bad:
            raise LensError(f"fit_lens(kind='linear') does not take {bad}; it takes {sorted(self.options)}")
        return fit_linear(model, calibration, **opts)
