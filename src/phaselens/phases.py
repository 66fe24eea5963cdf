"""The silent -> decisive transition (DESIGN.md, "Transition point").

``l* = min { l : DM_m > 0 for every m >= l }``; ``None`` when the last margin is not
positive. Silent phase = blocks ``[0, l*)``, decisive phase = ``[l*, L)``.
"""

from __future__ import annotations

import numpy as np


def transition_index(margins: np.ndarray) -> int | None:
    """Position (0-based, along ``margins``) where the decisive phase begins, or ``None``."""
    m = np.asarray(margins, dtype=float)
    if m.size == 0 or not m[-1] > 0:
        return None
    nonpos = np.flatnonzero(~(m > 0))
    return int(nonpos[-1] + 1) if nonpos.size else 0


def transition_indices(margins: np.ndarray) -> np.ndarray:
    """Vectorised :func:`transition_index` over rows of ``margins [B, L]``; -1 for ``None``."""
    m = np.asarray(margins, dtype=float)
    L = m.shape[1]
    nonpos = ~(m > 0)
    # index of the last non-positive entry per row (or -1 when all positive)
    last = np.where(nonpos.any(1), L - 1 - np.argmax(nonpos[:, ::-1], axis=1), -1)
    out = last + 1
    out[nonpos[:, -1]] = -1
    return out


def jump_index(margins: np.ndarray) -> int | None:
    """Position ``l >= 1`` of the largest rise ``DM_l - DM_{l-1}`` (``None`` for one layer)."""
    m = np.asarray(margins, dtype=float)
    if m.size < 2:
        return None
    return int(np.argmax(np.diff(m)) + 1)


def transition_ci(item_margins: np.ndarray, idx: np.ndarray, level: float = 0.95) -> tuple[tuple[float, float] | None, float]:
    """Bootstrap percentile interval of ``l*`` (positions) and the share of resamples with no transition.

    Args:
        item_margins: ``[N, L]`` per-item margins.
        idx: ``[B, N]`` resampled item indices.
    """
    per = transition_indices(item_margins[idx].mean(1))
    ok = per[per >= 0]
    undefined = float(1 - ok.size / per.size)
    if ok.size == 0:
        return None, undefined
    a = (1 - level) / 2
    lo, hi = np.quantile(ok, [a, 1 - a])
    return (float(lo), float(hi)), undefined
