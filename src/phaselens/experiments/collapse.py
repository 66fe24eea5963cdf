"""The transition-versus-collapse study.

:func:`phaselens.transition_vs_collapse` (:mod:`phaselens.study.collapse`, which runs the sweeps as a study) asks the decision-transition paper's question across several
(model, task) pairs: how does the transition (as a fraction of depth, ``l* / L``) go with the collapse under
iterative pruning (the collapse ratio of :class:`~phaselens.Sweep`)? The paper reports r = -0.96: a later
transition goes with collapse at a *lower* pruning ratio, so the predicted sign is **negative**.
It reports Pearson's ``r`` and its two-sided p-value (``scipy.stats.pearsonr``); :meth:`CollapseStudy.effects` adds
Pearson and Spearman with Fisher-z and pair-bootstrap intervals, over all pairs, within models and across models. With fewer than
3 usable points, or when either coordinate is constant, ``r`` and ``p`` are NaN and a
:class:`StatsWarning` says why: never a number that looks like a correlation but is not one
(two points always give ``r = +-1``).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..deprecation import renamed_kwargs
from ..errors import StatsError, StatsWarning
from ..pruning.iterative import load_sweep, Sweep
from ..results import load_results, Record, Result
from ..effects import Effect, correlation_effect, within_correlation_effect
from ..resampling import MIN_ITEMS
from ..stats import N_BOOT, pearson
from ..trace import Transition

@dataclass
class CollapsePoint(Record):
    """One (model, task): its dense transition and its collapse ratio under an iterative sweep."""

    model: str
    task: str
    criterion: str
    n_blocks: int
    transition: int | None
    collapse_ratio: float | None
    dense_accuracy: float
    source: str = ""

    @property
    def fraction(self) -> float | None:
        """``transition / n_blocks``."""
        return None if self.transition is None else self.transition / self.n_blocks

    @property
    def usable(self) -> bool:
        return self.transition is not None and self.collapse_ratio is not None

    @property
    def reason(self) -> str:
        if self.transition is None:
            return "no dense transition (final margin not positive)"
        if self.collapse_ratio is None:
            return "no collapse within the sweep's steps"
        return ""


@dataclass
class CollapseStudy(Result):
    """Transition depth against collapse ratio across (model, task) pairs.

    Attributes:
        points: every pair; the unusable ones (no transition, no collapse) are listed with a reason
            and left out of ``r``.
        r, p: Pearson r of (``fraction``, ``collapse_ratio``) over usable points and its two-sided p
            (NaN when undefined).
    """

    points: list[CollapsePoint]
    r: float
    p: float
    criterion: str = ""

    @property
    def used(self) -> list[CollapsePoint]:
        return [q for q in self.points if q.usable]

    @property
    def excluded(self) -> list[CollapsePoint]:
        return [q for q in self.points if not q.usable]

    @property
    def n(self) -> int:
        return len(self.used)

    @property
    def x(self) -> np.ndarray:
        """``[n]`` transition fractions of the usable points."""
        return np.asarray([q.fraction for q in self.used], dtype=float)

    @property
    def y(self) -> np.ndarray:
        """``[n]`` collapse ratios of the usable points."""
        return np.asarray([q.collapse_ratio for q in self.used], dtype=float)

    @property
    def n_pairs(self) -> int:
        """Distinct (model, task) pairs among the usable points (a study's seeds give a pair several points)."""
        return len({(q.model, q.task) for q in self.used})

    def pair_means(self) -> tuple[np.ndarray, np.ndarray]:
        """``([n_pairs], [n_pairs])``: the mean fraction and mean collapse ratio of each (model, task) pair: the
        independent units Pearson r is taken over when one pair was swept with several seeds."""
        groups: dict[tuple[str, str], list[CollapsePoint]] = {}
        for q in self.used:
            groups.setdefault((q.model, q.task), []).append(q)
        x = np.asarray([np.mean([q.fraction for q in g]) for g in groups.values()], dtype=float)
        y = np.asarray([np.mean([q.collapse_ratio for q in g]) for g in groups.values()], dtype=float)
        return x, y

    def pair_table(self) -> tuple[list[str], np.ndarray, np.ndarray]:
        """``(model of each pair, [n_pairs] mean fraction, [n_pairs] mean collapse ratio)``, in :meth:`pair_means`'
        order."""
        seen: dict[tuple[str, str], None] = {}
        for q in self.used:
            seen.setdefault((q.model, q.task), None)
        x, y = self.pair_means()
        return [m for m, _ in seen], x, y

    def effects(self, *, level: float = 0.95, n_boot: int = N_BOOT, boot_seed: int = 0) -> list[Effect]:
        """Transition fraction against collapse ratio as effects, with the paper's sign (predicted **negative**: a
        later transition goes with an earlier collapse; the paper reports r = -0.96).

        For each scope that has enough points (at least 5): **all pairs** (one point per (model, task) pair),
        **within models** (each model's pairs centred on the model's means, :func:`~phaselens.effects.within_correlation_effect`;
        models with one pair drop out) and **across models** (one point per model, its pairs' means): Pearson and
        Spearman r, each with a Fisher-z interval and a pair-bootstrap interval (pairs resampled within their
        model; models held fixed when fewer than 5). :meth:`skipped_effects` says which scopes were too small.
        """
        models, x, y = self.pair_table()
        common = dict(predicted="negative", level=level, n_boot=n_boot, boot_seed=boot_seed,
                      model=",".join(dict.fromkeys(models)), task=",".join(dict.fromkeys(q.task for q in self.used)))
        out: list[Effect] = []
        label = "transition fraction vs collapse ratio"
        if x.size >= MIN_ITEMS and np.ptp(x) > 0 and np.ptp(y) > 0:
            for method in ("pearson", "spearman"):
                for interval in ("fisher", "bootstrap"):
                    out.append(correlation_effect(x, y, name=f"{label}: {method} r, all pairs ({interval})",
                                                  method=method, interval=interval,
                                                  groups=models if interval == "bootstrap" else None, **common))
        if self._within_ok(models, x, y):
            for method in ("pearson", "spearman"):
                for interval in ("fisher", "bootstrap"):
                    out.append(within_correlation_effect(x, y, models, name=f"{label}: {method} r, within models "
                                                         f"({interval})", method=method, interval=interval, **common))
        mx, my = self._model_means(models, x, y)
        if mx.size >= MIN_ITEMS and np.ptp(mx) > 0 and np.ptp(my) > 0:
            for method in ("pearson", "spearman"):
                for interval in ("fisher", "bootstrap"):
                    e = correlation_effect(mx, my, name=f"{label}: {method} r, across models ({interval})",
                                           method=method, interval=interval, **common)
                    e.n = {"pairs": int(mx.size), "models": int(mx.size)}
                    out.append(e)
        return out

    @staticmethod
    def _model_means(models: list[str], x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        names = list(dict.fromkeys(models))
        m = np.asarray(models)
        return (np.asarray([x[m == k].mean() for k in names]), np.asarray([y[m == k].mean() for k in names]))

    @staticmethod
    def _within_ok(models: list[str], x: np.ndarray, y: np.ndarray) -> bool:
        m = np.asarray(models)
        multi = [k for k in set(models) if (m == k).sum() >= 2]
        sel = np.isin(m, multi)
        n = int(sel.sum())
        if n < MIN_ITEMS or n - len(multi) - 2 < 1:
            return False
        xs = np.concatenate([x[m == k] - x[m == k].mean() for k in multi])
        ys = np.concatenate([y[m == k] - y[m == k].mean() for k in multi])
        return bool(np.ptp(xs) > 0 and np.ptp(ys) > 0)

    def skipped_effects(self) -> list[str]:
        """Why a scope of :meth:`effects` is missing (too few points), one sentence each."""
        models, x, y = self.pair_table()
        out = []
        if x.size < MIN_ITEMS:
            out.append(f"all pairs: {x.size} usable (model, task) pairs; a correlation effect needs {MIN_ITEMS}")
        if not self._within_ok(models, x, y):
            out.append(f"within models: needs at least {MIN_ITEMS} pairs in models holding two or more pairs, more "
                       "pairs than models + 2, and variation within models")
        mx, _ = self._model_means(models, x, y)
        if mx.size < MIN_ITEMS:
            out.append(f"across models: {mx.size} model(s); a correlation effect needs {MIN_ITEMS}")
        return out

    def fit(self) -> tuple[float, float] | None:
        """(slope, intercept) of the least-squares line ``y = slope x + intercept`` (``None`` if undefined)."""
        if self.n < 2 or np.all(self.x == self.x[0]):
            return None
        slope, icept = np.polyfit(self.x, self.y, 1)
        return float(slope), float(icept)

    def summary(self) -> str:
        rr = "undefined" if math.isnan(self.r) else f"{self.r:+.3f} (p = {self.p:.3g})"
        avg = f" ({self.n} sweeps, each pair's seeds averaged)" if self.n > self.n_pairs else ""
        s = (f"Transition fraction vs collapse ratio over {self.n_pairs} (model, task) pairs{avg}: Pearson r {rr} "
             "(the decision-transition paper predicts r < 0: a later transition, an earlier collapse; it reports "
             "-0.96).")
        if self.excluded:
            out = dict.fromkeys(f"{q.model}/{q.task}: {q.reason}" for q in self.excluded)  # one line per pair, not per seed
            s += " Left out: " + "; ".join(out) + "."
        return s

    def to_pandas(self):
        import pandas as pd

        return pd.DataFrame([{"model": q.model, "task": q.task, "criterion": q.criterion, "n_blocks": q.n_blocks,
                              "transition": q.transition, "fraction": q.fraction, "collapse_ratio": q.collapse_ratio,
                              "dense_accuracy": q.dense_accuracy, "used": q.usable, "reason": q.reason} for q in self.points])

    def plot(self, **kw):
        """Plotly scatter with the least-squares line and r in the title."""
        from ..plots.interventions import collapse_scatter  # lazy: plotly is imported only when a figure is drawn

        return collapse_scatter(self, **kw)


def collapse_point(tr: Any, sweep: Any, source: str = "") -> CollapsePoint:
    """The :class:`CollapsePoint` of a dense transition ``tr`` and an iterative ``sweep`` (``source``: where from)."""
    if not isinstance(tr, Transition) or not isinstance(sweep, Sweep):
        raise StatsError(f"expected (Transition, Sweep), got ({type(tr).__name__}, {type(sweep).__name__})")
    if not sweep.steps:
        raise StatsError(f"the sweep of {sweep.model} on {sweep.task} has no steps")
    return CollapsePoint(sweep.model, sweep.task, sweep.criterion, int(tr.trace.n_blocks), tr.layer,
                         sweep.collapse_ratio, float(sweep.dense_accuracy), source)


def _from_folder(path: Path) -> CollapsePoint:
    if (path / ".phaselens" / "sweep" / "args.json").exists() and not any(path.glob("*.json")):
        sw = load_sweep(path)  # an iterative_prune(out=...) folder holding only the sweep's state
        return collapse_point(sw.steps[0].transition, sw, str(path))
    res = load_results(path)
    trs = [v for v in res.values() if isinstance(v, Transition)]
    sws = [v for v in res.values() if isinstance(v, Sweep)]
    if len(sws) != 1:
        raise StatsError(f"{path}: expected one Sweep result (or an iterative_prune out= folder), found {len(sws)}")
    tr = trs[0] if len(trs) == 1 else sws[0].steps[0].transition
    return collapse_point(tr, sws[0], str(path))


def _as_point(r: Any) -> CollapsePoint:
    if isinstance(r, CollapsePoint):
        return r
    if isinstance(r, Sweep):
        if not r.steps:
            raise StatsError(f"the sweep of {r.model} on {r.task} has no steps")
        return collapse_point(r.steps[0].transition, r)
    if isinstance(r, (str, Path)):
        p = Path(r)
        if not p.is_dir():
            raise StatsError(f"results folder not found: {p}")
        return _from_folder(p)
    if isinstance(r, (tuple, list)) and len(r) == 2:
        return collapse_point(r[0], r[1])
    raise StatsError(f"cannot use {type(r).__name__} as a study point: pass (Transition, Sweep) pairs, Sweeps, "
                     "or results folders")


def collapse_points(results: Any) -> list[CollapsePoint]:
    """The points of ``results``: ``(Transition, Sweep)`` pairs, :class:`~phaselens.Sweep` objects (the transition is
    the sweep's dense step), :class:`CollapsePoint` s, or folders (an ``iterative_prune(out=...)`` folder, or a
    results folder holding a Sweep and optionally a Transition); one folder alone may be passed."""
    if isinstance(results, (str, Path)):
        results = [results]
    pts = [_as_point(r) for r in results]
    if not pts:
        raise StatsError("results is empty")
    return pts


def collapse_study(points: Sequence[CollapsePoint]) -> CollapseStudy:
    """The :class:`CollapseStudy` of ``points``: Pearson r of transition fraction against collapse ratio over the
    usable pairs (each unusable point is left out with a :class:`StatsWarning` saying why)."""
    pts = list(points)
    crits = sorted({q.criterion for q in pts})
    for q in pts:
        if not q.usable:
            warnings.warn(f"{q.model} on {q.task} is left out of r: {q.reason}", StatsWarning, stacklevel=3)
    study = CollapseStudy(pts, math.nan, math.nan, ",".join(crits))
    x, y = study.pair_means()  # one point per (model, task) pair (several sweeps of a pair are averaged)
    study.r, study.p = pearson(list(x), list(y), what="transition fraction and collapse ratio")
    return study
