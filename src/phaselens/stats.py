"""Statistics across runs: seed lists, intervals over seeds, Pearson r with its guards."""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np

from .errors import StatsError, StatsWarning

MIN_POINTS = 3
#: bootstrap resamples, the one default of every n_boot= in phaselens
N_BOOT = 1000


def seed_list(seeds: Any, *, minimum: int = 1, error: type[Exception] = ValueError) -> list[int]:
    """The seeds of a repeated random run: ``seeds`` a count (``range(seeds)``) or a list of distinct ints,
    at least ``minimum`` of them; anything else raises ``error`` naming what was given."""
    if isinstance(seeds, bool):
        raise error(f"seeds must be a count or a list of ints, got {seeds!r}")
    if isinstance(seeds, (int, np.integer)):
        if seeds < minimum:
            raise error(f"seeds must be >= {minimum}, got {seeds}")
        return list(range(int(seeds)))
    if isinstance(seeds, (str, bytes, float)) or not hasattr(seeds, "__iter__"):
        raise error(f"seeds must be a count or a list of ints, got {seeds!r}")
    out = []
    for s in seeds:
        if isinstance(s, bool) or not isinstance(s, (int, np.integer)):
            raise error(f"seeds must be ints, got {s!r} in {seeds!r}")
        out.append(int(s))
    if len(out) < minimum or len(set(out)) != len(out):
        raise error(f"seeds must be a list of at least {minimum} distinct ints, got {seeds!r}")
    return out


def seed_interval(values: Any, level: float = 0.95) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean, lo, hi) over the first axis of ``values [S, ...]`` (one entry per seed): the Student-t
    interval ``mean +- t_{S-1} * sd / sqrt(S)``. NaN bounds for a single seed."""
    from scipy import stats

    v = np.asarray(values, dtype=float)
    s = v.shape[0]
    mean = v.mean(0)
    if s < 2:
        nan = np.full_like(mean, np.nan)
        return mean, nan, nan
    half = stats.t.ppf(0.5 + level / 2, s - 1) * v.std(0, ddof=1) / math.sqrt(s)
    return mean, mean - half, mean + half


def pearson(x: Any, y: Any, *, what: str = "x and y") -> tuple[float, float]:
    """(Pearson r, two-sided p) by ``scipy.stats.pearsonr``; NaN with a :class:`StatsWarning` when
    there are fewer than 3 points or either input is constant."""
    from scipy import stats

    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise StatsError(f"{what}: need two 1-D arrays of the same length, got shapes {x.shape} and {y.shape}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise StatsError(f"{what}: values must be finite")
    if len(x) < MIN_POINTS:
        warnings.warn(f"Pearson r of {what} needs at least {MIN_POINTS} points, got {len(x)}: r and p are NaN "
                      "(add (model, task) pairs)", StatsWarning, stacklevel=2)
        return math.nan, math.nan
    for name, v in (("first", x), ("second", y)):
        if np.all(v == v[0]):
            warnings.warn(f"Pearson r of {what} is undefined: the {name} coordinate is constant ({v[0]:g} for all "
                          f"{len(v)} points); r and p are NaN", StatsWarning, stacklevel=2)
            return math.nan, math.nan
    r, p = stats.pearsonr(x, y)
    return float(r), float(p)


