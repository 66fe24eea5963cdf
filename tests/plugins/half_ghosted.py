"""A recovery method defined outside phaselens (the plugin the registry tests load): Ghosted Layers shrunk halfway
to the identity, ``W = (W_ghosted + I) / 2``. Adding a method is this one file."""

from __future__ import annotations

import torch

import phaselens as pl
from phaselens.recovery import RecoveryMethod, ridge_solve


@pl.register_method("half-ghosted")
class HalfGhosted(RecoveryMethod):
    needs = frozenset({"stream"})  # X^T X and X^T Y of the residual stream at the cut
    acts_on = "span"

    def solve(self, stats, lam=None, *, target=None):
        W, lam_used = ridge_solve(stats.A, stats.C, lam, target=target)
        return (W + torch.eye(W.shape[0], dtype=W.dtype, device=W.device)) / 2, lam_used
