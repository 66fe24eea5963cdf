"""Vectorised resampling engines: bootstrap weights over crossed designs, percentile intervals, permutation nulls.

Data of one arm is an array shaped ``[items, placements, seeds, *rest]`` (the leading *sampled* axes, then any
trailing axes a statistic reads, e.g. layers). A bootstrap replicate is a set of integer counts per level,
``w_items [B, N]``, ``w_placements [B, P]``, ``w_seeds [B, S]`` (a level held fixed has all counts 1), and the
replicate's mean is the count-weighted mean over the crossed cells (the "pigeonhole" bootstrap of crossed
designs: items, placements and seeds resampled independently, every item keeping all its cells together):

    mean_b[rest] = sum_{i,p,s} w_i[b,i] w_p[b,p] w_s[b,s] x[i,p,s,rest] / (N P S)

computed as one matrix product over items, then a weighted sum over the (small) other levels, in chunks of
replicates. Intervals are **percentile** intervals everywhere in this module and in :mod:`phaselens.effects`.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from . import checks
from .errors import EffectError

from .stats import N_BOOT

#: fewest bootstrap replicates accepted (and at least ``2 / (1 - level)``)
MIN_BOOT = checks.MIN_BOOT
#: fewest items an arm may hold
MIN_ITEMS = 5
#: a sampled level with fewer clusters than this is held fixed (reported per cluster, pooled beside them)
MIN_CLUSTERS = 5
#: replicates handled per matrix product (bounds the ``[chunk, P, S, *rest]`` intermediate)
CHUNK_CELLS = 1 << 24


def check_n_boot(n_boot: int, level: float, what: str = "n_boot") -> None:
    """Refuse fewer than :data:`MIN_BOOT` replicates, or fewer than ``2 / (1 - level)`` (the tails of the
    percentile interval would hold less than one replicate each), or more than :data:`~phaselens.checks.MAX_BOOT`
    (:func:`phaselens.checks.check_n_boot`, the one check of every bootstrap count)."""
    checks.check_n_boot(n_boot, level=level, name=what, error=EffectError)


def count_weights(n: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """``[n_boot, n]`` resampling counts: how often each of ``n`` units is drawn in each replicate
    (``n`` draws with replacement; every row sums to ``n``)."""
    idx = rng.integers(0, n, size=(n_boot, n))
    flat = idx + n * np.arange(n_boot)[:, None]
    return np.bincount(flat.ravel(), minlength=n_boot * n).reshape(n_boot, n).astype(float)


def crossed_weights(shape: Sequence[int], n_boot: int, rng: np.random.Generator,
                    resample: Sequence[bool]) -> list[np.ndarray]:
    """One ``[n_boot, n_level]`` count matrix per sampled level of ``shape`` (``[N, P, S]`` or a prefix of it);
    a level with ``resample`` False keeps every cluster once (all ones). Drawn in level order from ``rng``."""
    out = []
    for n, r in zip(shape, resample):
        out.append(count_weights(n, n_boot, rng) if r else np.ones((n_boot, n)))
    return out


def weighted_means(x: np.ndarray, weights: Sequence[np.ndarray]) -> np.ndarray:
    """``[B, *rest]``: count-weighted means of ``x [n_1, ..., n_k, *rest]`` over its first ``k = len(weights)``
    axes, one mean per replicate (``weights[j]`` is ``[B, n_j]``)."""
    k = len(weights)
    lead, rest = x.shape[:k], x.shape[k:]
    b = weights[0].shape[0]
    inner = int(np.prod(lead[1:], dtype=int)) * int(np.prod(rest, dtype=int))
    flat = x.reshape(lead[0], -1)
    denom = float(np.prod(lead))
    chunk = max(1, CHUNK_CELLS // max(inner, 1))
    out = np.empty((b, *rest))
    for start in range(0, b, chunk):
        sl = slice(start, start + chunk)
        y = (weights[0][sl] @ flat).reshape(-1, *lead[1:], *rest)  # [c, n_2, ..., n_k, *rest]
        for j in range(1, k):
            shape = [y.shape[0]] + [1] * (k - 1) + [1] * len(rest)
            shape[j] = lead[j]
            y = y * weights[j][sl].reshape(shape)
        out[sl] = y.reshape(y.shape[0], -1, *rest).sum(1) if k > 1 else y
    return out / denom


def percentile_interval(replicates: np.ndarray, level: float) -> tuple[float, float]:
    """``(lo, hi)``: the ``(1-level)/2`` and ``(1+level)/2`` quantiles of the finite replicates (NaN if none)."""
    r = np.asarray(replicates, dtype=float)
    r = r[np.isfinite(r)]
    if r.size == 0:
        return math.nan, math.nan
    a = (1 - level) / 2
    lo, hi = np.quantile(r, [a, 1 - a])
    return float(lo), float(hi)


def bootstrap_p(replicates: np.ndarray) -> float:
    """Two-sided p-value dual to the percentile interval: ``2 * min(#{r <= 0} + 1, #{r >= 0} + 1) / (B + 1)``
    over the finite replicates, capped at 1. A percentile interval at level ``1 - a`` excludes 0 whenever this
    p-value is at most ``a``."""
    r = np.asarray(replicates, dtype=float)
    r = r[np.isfinite(r)]
    if r.size == 0:
        return math.nan
    small = min(int((r <= 0).sum()), int((r >= 0).sum()))
    return float(min(1.0, 2 * (small + 1) / (r.size + 1)))


def sign_flips(n: int, n_perm: int, rng: np.random.Generator) -> np.ndarray:
    """``[n_perm, n]`` booleans: True where a pair's two labels are swapped (each with probability 1/2)."""
    return rng.random((n_perm, n)) < 0.5


def permutations(n: int, n_perm: int, rng: np.random.Generator) -> np.ndarray:
    """``[n_perm, n]`` uniformly random permutations of ``range(n)``."""
    return np.argsort(rng.random((n_perm, n)), axis=1)


def permutation_p(null: np.ndarray, observed: float) -> float:
    """Two-sided p of ``observed`` against a randomised permutation null (``scipy.stats.permutation_test``'s
    convention: ``2 * min(p_less, p_greater)``, each ``(count + 1) / (B + 1)`` with a relative tolerance)."""
    null = np.asarray(null, dtype=float)
    null = null[np.isfinite(null)]
    gamma = abs(1e2 * np.finfo(float).eps * observed)  # scipy's tolerance for ties
    less = ((null <= observed + gamma).sum() + 1) / (null.size + 1)
    greater = ((null >= observed - gamma).sum() + 1) / (null.size + 1)
    return float(min(1.0, 2 * min(less, greater)))
