"""Effects: a named contrast with its estimate, interval, p-value, predicted direction and design, resampled the
way the data were sampled (issue 21, "Claims you can trust"; DESIGN.md, "Statistics: from numbers to claims").

Constructors:

* :func:`paired_effect` -- two arms measured on the same items, resampled together (items bootstrap).
* :func:`hierarchical_effect` -- arms shaped ``[items, placements, seeds, *rest]``: items crossed with cut
  placements and seeds, every level with at least :data:`~phaselens.resampling.MIN_CLUSTERS` clusters resampled,
  levels with fewer held fixed (each cluster's own effect reported beside the pooled one). A ``statistic`` hook
  maps the replicate means to the contrast, so a statistic such as the transition layer ``l*`` is re-estimated
  inside every replicate; NaN marks a replicate where it is undefined, and their share is reported.
* :func:`correlation_effect` -- Pearson/Spearman r with a Fisher-z interval, or a pair bootstrap (pairs
  resampled within models) for Figure 8.
* :func:`permutation_effect` -- a p-value from relabelling (labels swapped within items, slot labels
  reassigned, pairings shuffled), with a bootstrap interval of the same statistic.

Every bootstrap interval is a **percentile** interval; the bootstrap p-value is its dual
(:func:`~phaselens.resampling.bootstrap_p`), so an interval at level ``1 - a`` excludes 0 when ``p <= a``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from .phases import transition_indices
from .resampling import (
    MIN_CLUSTERS,
    MIN_ITEMS,
    N_BOOT,
    EffectError,
    bootstrap_p,
    check_n_boot,
    crossed_weights,
    percentile_interval,
    permutation_p,
    permutations,
    sign_flips,
    weighted_means,
)
from .results import Result

#: names accepted for a predicted direction, and what they mean
DIRECTIONS = {"positive": 1, "+": 1, ">0": 1, "> 0": 1, "greater": 1, "increase": 1,
              "negative": -1, "-": -1, "<0": -1, "< 0": -1, "less": -1, "decrease": -1}
#: sampled levels of an arm array, in axis order
LEVELS = ("items", "placements", "seeds")

NORMAL = NormalDist()

Statistic = Callable[[dict[str, np.ndarray]], np.ndarray]


def direction(predicted: Any) -> str | None:
    """``"positive"``, ``"negative"`` or ``None`` from a predicted direction (``"+"``, ``"<0"``, ``"less"``, ``1``)."""
    if predicted is None:
        return None
    if isinstance(predicted, (int, np.integer)) and not isinstance(predicted, bool) and predicted in (1, -1):
        return "positive" if predicted == 1 else "negative"
    sign = DIRECTIONS.get(str(predicted).strip().lower()) if isinstance(predicted, str) else None
    if sign is None:
        raise EffectError(f"predicted direction {predicted!r} is not one of 'positive' ('+', '>0', 'greater') or "
                          "'negative' ('-', '<0', 'less')")
    return "positive" if sign == 1 else "negative"


def _fmt(v: float, scale: float) -> str:
    if not math.isfinite(v):
        return "n/a"
    return f"{v:+.2f}" if scale >= 0.1 else f"{v:+.3g}"


def _plural(k: str, v: int) -> str:
    return k[:-1] if v == 1 and k.endswith("s") else k


@dataclass
class Effect(Result):
    """A named contrast: ``estimate`` with its interval ``(lo, hi)`` at ``level``, two-sided ``p``, the
    direction a claim predicts, and the design (``n`` per sampled level; what was ``resampled`` and held ``fixed``).

    Attributes:
        name: what is contrasted, e.g. ``"silent − decisive margin drop"``.
        estimate, lo, hi, p: the point estimate, the interval at ``level`` and the two-sided p-value.
        predicted: ``"positive"``, ``"negative"`` or ``None`` (the direction a claim predicts).
        n: clusters per sampled level, e.g. ``{"items": 24, "placements": 3, "seeds": 3}``.
        resampled, fixed: the levels resampled and the levels held fixed (fewer than 5 clusters).
        method: how the interval and p were obtained.
        ci_method: ``"percentile"`` (bootstrap replicates), ``"fisher"`` (Fisher z, normal theory) or
            ``"jackknife"`` (``estimate ± t se`` with ``n_boot - 1`` degrees of freedom; ``replicates`` are the
            ``n_boot`` leave-one-group-out values).
        se: standard error (bootstrap SD; on the Fisher-z scale for ``ci_method="fisher"``).
        replicates: ``[B]`` bootstrap replicates of the contrast (NaN where the statistic was undefined).
        undefined: share of replicates where the statistic was undefined.
        clusters: each fixed cluster's own effect (few clusters), beside this pooled one.
    """

    name: str
    estimate: float
    lo: float
    hi: float
    p: float
    level: float = 0.95
    predicted: str | None = None
    n: dict = field(default_factory=dict)
    resampled: list = field(default_factory=list)
    fixed: list = field(default_factory=list)
    method: str = ""
    ci_method: str = "percentile"
    se: float = math.nan
    replicates: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    undefined: float = 0.0
    clusters: list = field(default_factory=list, repr=False)
    n_boot: int = 0
    boot_seed: int = 0
    model: str = ""
    task: str = ""
    format: str = ""

    derived = ("ci", "design")

    def __post_init__(self) -> None:
        self.predicted = direction(self.predicted)
        self.replicates = np.asarray(self.replicates, dtype=float)

    @property
    def ci(self) -> tuple[float, float]:
        """``(lo, hi)``."""
        return (self.lo, self.hi)

    @property
    def design(self) -> str:
        """``"24 items × 3 placements × 3 seeds"``."""
        sep = ", " if "pairs" in self.n else " × "
        return sep.join(f"{v} {_plural(k, v)}" for k, v in self.n.items())

    def interval(self, level: float) -> tuple[float, float]:
        """The interval at another ``level`` (Holm-adjusted levels use it): percentile of the replicates, or
        ``tanh(atanh(r) ± z se)`` for a Fisher-z interval."""
        if self.ci_method == "fisher":
            q = NORMAL.inv_cdf(0.5 + level / 2)
            z = math.atanh(self.estimate)
            return math.tanh(z - q * self.se), math.tanh(z + q * self.se)
        if self.ci_method == "jackknife":
            from scipy import stats

            q = float(stats.t.ppf(0.5 + level / 2, self.n_boot - 1))
            return self.estimate - q * self.se, self.estimate + q * self.se
        return percentile_interval(self.replicates, level)

    def mde(self, alpha: float = 0.05, power: float = 0.8) -> float:
        """Smallest effect the design detects with ``power`` at two-sided ``alpha``: ``(z_{1-alpha/2} + z_power) * se``
        (back through ``tanh`` for a Fisher-z effect)."""
        d = (NORMAL.inv_cdf(1 - alpha / 2) + NORMAL.inv_cdf(power)) * self.se
        return math.tanh(d) if self.ci_method == "fisher" else float(d)

    def summary(self) -> str:
        scale = max(abs(v) for v in (self.estimate, self.lo, self.hi) if math.isfinite(v)) if any(
            math.isfinite(v) for v in (self.estimate, self.lo, self.hi)) else 1.0
        p = "p < 0.001" if self.p < 0.001 else f"p = {self.p:.3f}"
        line = (f"{self.name}: {_fmt(self.estimate, scale)} [{_fmt(self.lo, scale)}, {_fmt(self.hi, scale)}], "
                f"{p} ({self.design})")
        extra = []
        if self.fixed:
            extra.append(f"held fixed (fewer than {MIN_CLUSTERS} clusters): {', '.join(self.fixed)}; "
                         "the interval is conditional on the clusters sampled")
        if self.undefined > 0:
            extra.append(f"undefined in {self.undefined:.1%} of replicates")
        for c in self.clusters:
            extra.append("  " + c.summary().splitlines()[0])
        return "\n".join([line, *extra])

    def to_pandas(self):
        import pandas as pd

        rows = []
        for e in (self, *self.clusters):
            rows.append({"name": e.name, "estimate": e.estimate, "lo": e.lo, "hi": e.hi, "p": e.p, "level": e.level,
                         "predicted": e.predicted, **{f"n_{k}": v for k, v in e.n.items()},
                         "resampled": ",".join(e.resampled), "fixed": ",".join(e.fixed), "method": e.method,
                         "undefined": e.undefined})
        return pd.DataFrame(rows)

    def plot(self, **kw: Any):
        import plotly.graph_objects as go  # heavy optional dependency

        rows = [self, *self.clusters]
        fig = go.Figure(go.Scatter(
            x=[e.estimate for e in rows], y=[e.name for e in rows], mode="markers",
            error_x=dict(type="data", symmetric=False, array=[e.hi - e.estimate for e in rows],
                         arrayminus=[e.estimate - e.lo for e in rows])))
        fig.add_vline(x=0, line_dash="dot")
        fig.update_layout(title=self.summary().splitlines()[0], xaxis_title=f"effect ({self.level:.0%} interval)",
                          yaxis=dict(autorange="reversed"), **kw)
        return fig


# ----------------------------------------------------------------------------- validation
def _as_arms(arms: Any, k: int) -> dict[str, np.ndarray]:
    """``{arm: float array}`` with at least ``k`` axes, finite."""
    if isinstance(arms, Mapping):
        out = {str(a): np.asarray(v, dtype=float) for a, v in arms.items()}
    else:
        out = {"contrast": np.asarray(arms, dtype=float)}
    if not out:
        raise EffectError("no arms given: pass {arm name: array [items, ...]}")
    for a, v in out.items():
        if v.ndim < k:
            raise EffectError(f"arm {a!r} has shape {v.shape}, fewer axes than the {k} sampled levels "
                              f"{LEVELS[:k]} it should start with")
        if not np.isfinite(v).all():
            raise EffectError(f"arm {a!r} holds NaN or Inf ({int((~np.isfinite(v)).sum())} values); "
                              "drop or impute them before resampling")
    return out


def _align_items(arms: dict[str, np.ndarray], items: Any) -> dict[str, np.ndarray]:
    """Pair the arms by item id: reorder to the first arm's order; refuse arms measured on different items."""
    if items is None:
        return arms
    ids = items if isinstance(items, Mapping) else {a: items for a in arms}
    ref = next(iter(arms))
    if ref not in ids:
        raise EffectError(f"items= names no item ids for arm {ref!r}; give ids for every arm")
    base = [str(i) for i in ids[ref]]
    if len(set(base)) != len(base):
        raise EffectError(f"arm {ref!r} lists an item twice; item ids must be unique")
    pos = {i: j for j, i in enumerate(base)}
    out = {}
    for a, v in arms.items():
        mine = [str(i) for i in ids.get(a, base)]
        if len(mine) != v.shape[0]:
            raise EffectError(f"arm {a!r} has {v.shape[0]} items but {len(mine)} item ids")
        if set(mine) != set(base) or len(set(mine)) != len(mine):
            only, missing = sorted(set(mine) - set(base)), sorted(set(base) - set(mine))
            raise EffectError(f"arm {a!r} was measured on different items than arm {ref!r} ({len(only)} only in "
                              f"{a!r}, e.g. {only[:3]}; {len(missing)} missing, e.g. {missing[:3]}): a paired "
                              "contrast needs both arms on the same items; measure both arms on one item list")
        out[a] = v[np.argsort([pos[i] for i in mine])]
    return out


def _check_design(arms: dict[str, np.ndarray], dims: Sequence[str], require: Sequence[str],
                  name: str = "") -> tuple[int, ...]:
    """The shared ``[N, P, S]`` of the arms (error naming the arm that differs), at least 5 items, and at least
    2 clusters of every required level."""
    k = len(dims)
    ref, shape = next(iter(arms.items()))
    shape = shape.shape[:k]
    for a, v in arms.items():
        for j, d in enumerate(dims):
            if v.shape[j] != shape[j]:
                raise EffectError(f"arm {a!r} has {v.shape[j]} {d} but arm {ref!r} has {shape[j]}: paired arms must "
                                  f"be measured on the same {d} (pass items= to align items by id)")
        if v.shape[0] < MIN_ITEMS:
            raise EffectError(f"arm {a!r} holds {v.shape[0]} items; an effect needs at least {MIN_ITEMS}")
    for d in require:
        if d in dims and shape[list(dims).index(d)] < 2:
            raise EffectError(f"effect {name!r}: the hierarchy asks for {d} but arm(s) {', '.join(map(repr, arms))} "
                              f"hold {shape[list(dims).index(d)]}: one cut per phase says nothing about where the cut "
                              f"was placed; measure at least 2 {d} or drop it from require=")
    return tuple(shape)


def _statistic(arms: dict[str, np.ndarray], k: int, statistic: Statistic | None) -> Statistic:
    if statistic is not None:
        return statistic
    names = list(arms)
    rest = next(iter(arms.values())).shape[k:]
    if rest:
        raise EffectError(f"the arms have trailing axes {rest} beyond the sampled levels; pass statistic= mapping "
                          "{arm: replicate means [B, ...]} to one number per replicate [B]")
    if len(names) == 1:
        return lambda m: m[names[0]]
    if len(names) == 2:
        return lambda m: m[names[0]] - m[names[1]]
    raise EffectError(f"{len(names)} arms {names} and no statistic=: the default contrast is first − second arm; "
                      "pass statistic= for anything else")


def _apply(stat: Statistic, means: dict[str, np.ndarray], b: int) -> np.ndarray:
    out = np.asarray(stat(means), dtype=float).reshape(-1)
    if out.shape != (b,):
        raise EffectError(f"statistic returned shape {out.shape}; it must map replicate means [B, ...] to [B] "
                          f"(B = {b})")
    return out


# ----------------------------------------------------------------------------- constructors
def hierarchical_effect(
    arms: Mapping[str, Any] | Any,
    *,
    name: str,
    statistic: Statistic | None = None,
    dims: Sequence[str] = LEVELS,
    items: Any = None,
    labels: Mapping[str, Sequence[Any]] | None = None,
    predicted: Any = None,
    require: Sequence[str] = ("placements",),
    min_clusters: int = MIN_CLUSTERS,
    per_cluster: bool = True,
    level: float = 0.95,
    n_boot: int = N_BOOT,
    boot_seed: int = 0,
    model: str = "",
    task: str = "",
    format: str = "",
) -> Effect:
    """Bootstrap effect over a crossed design (percentile interval).

    Args:
        arms: ``{arm: array [items, placements, seeds, *rest]}`` (the leading axes named by ``dims``), all arms
            on the same items (paired: resampled together); or one array, the contrast itself.
        statistic: ``{arm: replicate means [B, *rest]} -> [B]`` (NaN where undefined, e.g. no transition); default
            ``first − second`` arm (or the one array's mean).
        dims: the sampled levels the leading axes hold, e.g. ``("items",)`` for ``[items, layers]``.
        items: item ids (one list for every arm, or ``{arm: ids}``): arms are aligned by id, and arms measured on
            different items are refused.
        labels: ``{level: cluster names}`` for the per-cluster rows (default ``0, 1, ...``).
        predicted: the direction a claim predicts (``"positive"``/``"negative"``).
        require: levels that must hold at least 2 clusters.
        min_clusters: a level with fewer clusters is held fixed; each of its clusters gets its own effect
            (``clusters``) when ``per_cluster``.
    """
    arms = _align_items(_as_arms(arms, len(dims)), items)
    shape = _check_design(arms, dims, require, name)
    check_n_boot(n_boot, level)
    if min_clusters < 2:
        raise EffectError(f"min_clusters must be >= 2, got {min_clusters}")
    resample = [True] + [n >= min_clusters for n in shape[1:]]
    stat = _statistic(arms, len(dims), statistic)
    axes = tuple(range(len(dims)))
    estimate = float(_apply(stat, {a: v.mean(axis=axes)[None] for a, v in arms.items()}, 1)[0])
    weights = crossed_weights(shape, n_boot, np.random.default_rng(boot_seed), resample)
    reps = _apply(stat, {a: weighted_means(v, weights) for a, v in arms.items()}, n_boot)
    fixed = [d for d, r, n in zip(dims, resample, shape) if not r and n > 1]
    effect = _bootstrap_effect(
        name, estimate, reps, level=level, predicted=predicted, n=dict(zip(dims, map(int, shape))),
        resampled=[d for d, r in zip(dims, resample) if r], fixed=fixed,
        method=f"{'paired ' if len(arms) > 1 else ''}bootstrap over {' × '.join(dims)} (percentile)",
        n_boot=n_boot, boot_seed=boot_seed, model=model, task=task, format=format)
    if per_cluster:
        kw = dict(statistic=stat, dims=dims, predicted=predicted, require=(), min_clusters=min_clusters,
                  per_cluster=False, level=level, n_boot=n_boot, boot_seed=boot_seed, model=model, task=task,
                  format=format)
        effect.clusters = _cluster_effects(arms, name, fixed, dims, labels or {}, kw)
    return effect


def _cluster_effects(arms, name, fixed, dims, labels, kw) -> list[Effect]:
    """Each cluster of each fixed level on its own (the cluster axis kept, with one cluster)."""
    out = []
    for d in fixed:
        j = list(dims).index(d)
        names = list(labels.get(d, range(arms[next(iter(arms))].shape[j])))
        for c, lab in enumerate(names):
            sub = {a: np.take(v, [c], axis=j) for a, v in arms.items()}
            out.append(hierarchical_effect(sub, name=f"{name} [{_plural(d, 1)} {lab}]", **kw))
    return out


def _bootstrap_effect(name: str, estimate: float, reps: np.ndarray, *, level: float, **kw: Any) -> Effect:
    lo, hi = percentile_interval(reps, level)
    ok = reps[np.isfinite(reps)]
    se = float(ok.std(ddof=1)) if ok.size > 1 else math.nan
    return Effect(name=name, estimate=estimate, lo=lo, hi=hi, p=bootstrap_p(reps), level=level, se=se,
                  replicates=reps, undefined=float(1 - ok.size / max(reps.size, 1)), **kw)


def paired_effect(
    a: Any,
    b: Any,
    *,
    name: str,
    arms: tuple[str, str] = ("a", "b"),
    items: Any = None,
    predicted: Any = None,
    level: float = 0.95,
    n_boot: int = N_BOOT,
    boot_seed: int = 0,
    model: str = "",
    task: str = "",
    format: str = "",
) -> Effect:
    """``mean(a − b)`` over items measured in both arms, items resampled together (paired percentile bootstrap).

    ``a``, ``b``: ``[items]`` (or ``[items, placements(, seeds)]``, then resampled as in
    :func:`hierarchical_effect`); ``items``: one id list for both, or ``(ids_a, ids_b)``, which must hold the
    same items (reordered to ``a``'s order), else an :class:`EffectError` naming the arm.
    """
    if isinstance(items, tuple) and len(items) == 2 and not isinstance(items[0], (str, int, np.integer)):
        items = dict(zip(arms, items))
    ndim = np.ndim(a)
    if ndim < 1 or ndim > 3:
        raise EffectError(f"paired_effect takes arms shaped [items], [items, placements] or [items, placements, "
                          f"seeds]; arm {arms[0]!r} has {ndim} axes")
    return hierarchical_effect({arms[0]: a, arms[1]: b}, name=name, dims=LEVELS[:ndim], items=items,
                               predicted=predicted, require=(), level=level, n_boot=n_boot, boot_seed=boot_seed,
                               model=model, task=task, format=format)


# ----------------------------------------------------------------------------- correlations
def corr(x: np.ndarray, y: np.ndarray, method: str = "pearson") -> np.ndarray:
    """Row-wise correlation of ``x, y [..., n]`` (``"pearson"`` or ``"spearman"``: Pearson of average ranks);
    NaN where a row is constant."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if method == "spearman":
        from scipy import stats as sps  # scipy.stats costs ~0.3 s at import; only Spearman needs it

        x, y = sps.rankdata(x, axis=-1), sps.rankdata(y, axis=-1)
    elif method != "pearson":
        raise EffectError(f"method must be 'pearson' or 'spearman', got {method!r}")
    xc, yc = x - x.mean(-1, keepdims=True), y - y.mean(-1, keepdims=True)
    den = np.sqrt((xc * xc).sum(-1) * (yc * yc).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (xc * yc).sum(-1) / den
    return np.where(den > 1e-12 * np.maximum(np.abs(x).max(-1), 1) ** 2, np.clip(r, -1, 1), np.nan)


def pair_indices(n: int, n_boot: int, rng: np.random.Generator, groups: Any = None,
                 min_clusters: int = MIN_CLUSTERS) -> np.ndarray:
    """``[n_boot, n]`` resampled pair indices: plain pairs; with ``groups`` (e.g. the model of each pair) pairs
    resampled within their group (groups fixed, fewer than ``min_clusters`` groups), or groups resampled and then
    pairs within each drawn group (equal-sized groups)."""
    if groups is None:
        return rng.integers(0, n, size=(n_boot, n))
    g = np.asarray([str(v) for v in groups])
    names, inv = np.unique(g, return_inverse=True)
    members = [np.flatnonzero(inv == k) for k in range(len(names))]
    if len(names) < min_clusters:  # groups fixed: each slot draws from its own group
        out = np.empty((n_boot, n), dtype=int)
        for m in members:
            out[:, m] = m[rng.integers(0, len(m), size=(n_boot, len(m)))]
        return out
    sizes = {len(m) for m in members}
    if len(sizes) != 1:
        raise EffectError(f"resampling {len(names)} groups needs equal-sized groups, got sizes {sorted(sizes)}")
    size = sizes.pop()
    table = np.stack(members)  # [G, size]
    chosen = rng.integers(0, len(names), size=(n_boot, len(names)))  # [B, G]
    within = rng.integers(0, size, size=(n_boot, len(names), size))
    return table[chosen[..., None], within].reshape(n_boot, -1)


def correlation_effect(
    x: Any,
    y: Any,
    *,
    name: str,
    method: str = "pearson",
    interval: str | None = None,
    groups: Any = None,
    predicted: Any = None,
    level: float = 0.95,
    n_boot: int = N_BOOT,
    boot_seed: int = 0,
    min_clusters: int = MIN_CLUSTERS,
    model: str = "",
    task: str = "",
    format: str = "",
) -> Effect:
    """Correlation ``r`` of paired points ``x, y [n]`` (Figure 8: transition layer vs critical pruning ratio).

    ``interval="fisher"`` (default without ``groups``): ``tanh(atanh(r) ± z se)``, ``se = 1/sqrt(n-3)`` (Pearson)
    or ``sqrt(1.06/(n-3))`` (Spearman, Fieller et al.), p from the same normal approximation.
    ``interval="bootstrap"`` (default with ``groups``): percentile pair bootstrap, pairs resampled within groups
    (:func:`pair_indices`).
    """
    x, y = np.asarray(x, dtype=float).ravel(), np.asarray(y, dtype=float).ravel()
    if x.shape != y.shape:
        raise EffectError(f"x and y must pair up: got {x.size} and {y.size} points")
    if x.size < MIN_ITEMS:
        raise EffectError(f"a correlation needs at least {MIN_ITEMS} pairs, got {x.size}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise EffectError("x and y must be finite")
    r = float(corr(x, y, method))
    if not math.isfinite(r):
        raise EffectError("the correlation is undefined: x or y is constant")
    interval = interval or ("fisher" if groups is None else "bootstrap")
    check_n_boot(n_boot, level)  # taken, so checked, whichever interval uses it
    n = {"pairs": int(x.size)}
    if groups is not None:
        n["models"] = len(set(map(str, groups)))
    common = dict(level=level, predicted=predicted, n=n, model=model, task=task, format=format)
    if interval == "fisher":
        se = math.sqrt((1.06 if method == "spearman" else 1.0) / (x.size - 3))
        z = math.atanh(min(max(r, -1 + 1e-15), 1 - 1e-15))
        q = NORMAL.inv_cdf(0.5 + level / 2)
        return Effect(name=name, estimate=r, lo=math.tanh(z - q * se), hi=math.tanh(z + q * se),
                      p=math.erfc(abs(z) / se / math.sqrt(2)), se=se, ci_method="fisher",
                      method=f"{method} r, Fisher-z interval", **common)
    if interval != "bootstrap":
        raise EffectError(f"interval must be 'fisher' or 'bootstrap', got {interval!r}")
    idx = pair_indices(x.size, n_boot, np.random.default_rng(boot_seed), groups, min_clusters)
    reps = corr(x[idx], y[idx], method)
    fixed = ["models"] if groups is not None and n["models"] < min_clusters else []
    resampled = ["pairs"] + (["models"] if groups is not None and not fixed else [])
    return _bootstrap_effect(name, r, reps, resampled=resampled, fixed=fixed, n_boot=n_boot, boot_seed=boot_seed,
                             method=f"{method} r, pair bootstrap{' within models' if groups is not None else ''} "
                                    "(percentile)", **common)


# ----------------------------------------------------------------------------- permutation tests
def _default_perm_statistic(permutation_type: str) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    if permutation_type == "samples":
        return lambda x, y: (x - y).mean(-1)
    if permutation_type == "independent":
        return lambda x, y: x.mean(-1) - y.mean(-1)
    return lambda x, y: corr(x, y)


def permutation_effect(
    x: Any,
    y: Any,
    *,
    name: str,
    permutation_type: str = "samples",
    statistic: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
    predicted: Any = None,
    level: float = 0.95,
    n_resamples: int = N_BOOT,
    n_boot: int = N_BOOT,
    boot_seed: int = 0,
    model: str = "",
    task: str = "",
    format: str = "",
) -> Effect:
    """p-value from a null built by relabelling; interval from a percentile bootstrap of the same statistic.

    ``permutation_type`` (as ``scipy.stats.permutation_test``): ``"samples"`` -- ``x, y [n]`` paired by item, the
    two labels swapped within each item (phase labels, arms); ``"independent"`` -- ``x [n1]``, ``y [n2]``, labels
    reassigned over the pooled values (slot labels); ``"pairings"`` -- ``x, y [n]``, ``y`` shuffled against ``x``
    (item pairing; default statistic Pearson r). ``statistic(x, y)`` reduces the last axis and broadcasts over
    leading replicate axes; default ``mean(x − y)``, ``mean(x) − mean(y)``, ``r``.
    """
    x, y = np.asarray(x, dtype=float).ravel(), np.asarray(y, dtype=float).ravel()
    if permutation_type not in ("samples", "independent", "pairings"):
        raise EffectError(f"permutation_type must be 'samples', 'independent' or 'pairings', got {permutation_type!r}")
    if permutation_type != "independent" and x.size != y.size:
        raise EffectError(f"arm 'y' holds {y.size} items but arm 'x' holds {x.size}: {permutation_type!r} "
                          "relabelling needs both measured on the same items")
    for arm, v in (("x", x), ("y", y)):
        if v.size < MIN_ITEMS:
            raise EffectError(f"arm {arm!r} holds {v.size} items; an effect needs at least {MIN_ITEMS}")
    check_n_boot(n_resamples, level, "n_resamples")
    check_n_boot(n_boot, level)
    stat = statistic or _default_perm_statistic(permutation_type)
    observed = float(np.asarray(stat(x[None], y[None])).reshape(-1)[0])
    rng = np.random.default_rng(boot_seed)
    null = _permutation_null(x, y, stat, permutation_type, n_resamples, rng)
    reps = _permutation_boot(x, y, stat, permutation_type, n_boot, rng)
    lo, hi = percentile_interval(reps, level)
    ok = reps[np.isfinite(reps)]
    n = {"pairs" if permutation_type == "pairings" else "items": int(x.size + (y.size if permutation_type ==
                                                                               "independent" else 0))}
    how = {"samples": "labels swapped within items", "independent": "labels reassigned",
           "pairings": "pairings shuffled"}[permutation_type]
    return Effect(name=name, estimate=observed, lo=lo, hi=hi, p=permutation_p(null, observed), level=level,
                  predicted=predicted, n=n, resampled=[next(iter(n))], method=f"permutation p ({how}, "
                  f"{n_resamples} relabellings); percentile bootstrap interval", se=float(ok.std(ddof=1)),
                  replicates=reps, undefined=float(1 - ok.size / reps.size), n_boot=n_boot, boot_seed=boot_seed,
                  model=model, task=task, format=format)


def _permutation_null(x, y, stat, kind, n_perm, rng) -> np.ndarray:
    if kind == "samples":
        swap = sign_flips(x.size, n_perm, rng)
        return np.asarray(stat(np.where(swap, y, x), np.where(swap, x, y)), dtype=float)
    if kind == "independent":
        pooled = np.concatenate([x, y])
        perm = pooled[permutations(pooled.size, n_perm, rng)]
        return np.asarray(stat(perm[:, :x.size], perm[:, x.size:]), dtype=float)
    return np.asarray(stat(np.broadcast_to(x, (n_perm, x.size)), y[permutations(y.size, n_perm, rng)]), dtype=float)


def _permutation_boot(x, y, stat, kind, n_boot, rng) -> np.ndarray:
    if kind == "independent":
        return np.asarray(stat(x[rng.integers(0, x.size, (n_boot, x.size))],
                               y[rng.integers(0, y.size, (n_boot, y.size))]), dtype=float)
    idx = rng.integers(0, x.size, (n_boot, x.size))
    return np.asarray(stat(x[idx], y[idx]), dtype=float)


# ----------------------------------------------------------------------------- statistic hooks
def transition_layer(mean_margins: np.ndarray) -> np.ndarray:
    """``[B]`` transition position ``l*`` of each row of mean margins ``[B, L]`` (NaN where there is none): the
    hook that re-estimates ``l*`` inside each replicate (:func:`phaselens.phases.transition_indices`)."""
    pos = transition_indices(np.asarray(mean_margins, dtype=float)).astype(float)
    pos[pos < 0] = np.nan
    return pos


# ----------------------------------------------------------------------------- experiments' headline contrasts
def transition_positions(mean_margins: np.ndarray) -> np.ndarray:
    """``[B]`` float position of ``l*`` along the read blocks for each row of ``[B, L]`` (NaN: no transition)."""
    return transition_layer(mean_margins)


def phase_group_means(drops: np.ndarray, block_pos: np.ndarray, lstar: np.ndarray) -> dict[str, np.ndarray]:
    """Mean drop of each phase group per replicate.

    Args:
        drops: ``[B, S]`` replicate means of the drop of each probed block.
        block_pos: ``[S]`` position of each probed block along the read blocks (the axis ``l*`` is a position on).
        lstar: ``[B]`` position of ``l*`` per replicate (NaN: none).

    Returns ``{"at": [B], "silent_rest": [B], "decisive_rest": [B]}``: blocks at positions ``l*-1`` and ``l*``,
    before ``l*-1``, after ``l*``; NaN where the group is empty or there is no transition.
    """
    p = np.asarray(block_pos, dtype=float)[None]
    t = np.asarray(lstar, dtype=float)[:, None]
    groups = {"at": (p == t - 1) | (p == t), "silent_rest": p < t - 1, "decisive_rest": p > t}
    out = {}
    with np.errstate(invalid="ignore", divide="ignore"):
        for k, m in groups.items():
            cnt = m.sum(1)
            out[k] = np.where(cnt > 0, (drops * m).sum(1) / np.maximum(cnt, 1), np.nan)
    return out


def rank_effect(drops: Any, blocks: Sequence[int], *, name: str = "", level: float = 0.95, n_boot: int = N_BOOT,
                boot_seed: int = 0, model: str = "", task: str = "", format: str = "") -> Effect:
    """The most damaging block of ``drops [items, S]`` (largest mean drop) and a bootstrap interval on its rank among
    the ``S`` blocks (1 = most damaging), items resampled. ``p`` is NaN: a rank has no null of 0; the share of
    replicates in which the block stays first is in ``method``."""
    d = np.asarray(drops, dtype=float)
    blocks = [int(b) for b in blocks]
    if d.ndim != 2 or d.shape[1] != len(blocks):
        raise EffectError(f"drops must be [items, {len(blocks)} blocks], got shape {d.shape}")
    if len(blocks) < 2:
        raise EffectError("ranking the most damaging block needs at least 2 ablated blocks")
    arms = _as_arms({"drop": d}, 1)
    _check_design(arms, ("items",), ())
    check_n_boot(n_boot, level)
    k = int(np.argmax(d.mean(0)))
    w = crossed_weights((d.shape[0],), n_boot, np.random.default_rng(boot_seed), [True])
    m = weighted_means(d, w)  # [B, S]
    reps = 1.0 + (m > m[:, [k]]).sum(1)
    lo, hi = percentile_interval(reps, level)
    first = float((reps == 1).mean())
    return Effect(name=name or f"rank of block {blocks[k]} (most damaging) among {len(blocks)} blocks", estimate=1.0,
                  lo=lo, hi=hi, p=math.nan, level=level, n={"items": int(d.shape[0])}, resampled=["items"],
                  method=f"bootstrap over items (percentile) of the rank, 1 = most damaging; block {blocks[k]} ranks "
                         f"first in {first:.1%} of replicates", se=float(reps.std(ddof=1)), replicates=reps,
                  n_boot=n_boot, boot_seed=boot_seed, model=model, task=task, format=format)


def phase_split_means(drops: np.ndarray, block_pos: np.ndarray, lstar: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``([B], [B])`` mean drop of the probed silent blocks (position ``< l*``) and decisive blocks (``>= l*``) per
    replicate, from ``drops [B, S]``, ``block_pos [S]``, ``lstar [B]`` (NaN where a phase is empty or no ``l*``)."""
    p = np.asarray(block_pos, dtype=float)[None]
    t = np.asarray(lstar, dtype=float)[:, None]
    out = []
    for m in (p < t, p >= t):
        cnt = m.sum(1)
        out.append(np.where(cnt > 0, (drops * m).sum(1) / np.maximum(cnt, 1), np.nan))
    return out[0], out[1]


def equal_distance_means(drops: np.ndarray, block_pos: np.ndarray, lstar: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``([B], [B])`` the mean drop of blocks ``l*-k`` and of their partners ``l*+k-1`` (``k >= 1``, both probed), per
    replicate: the depth-matched control of the silent-versus-decisive contrast (NaN where no pair exists)."""
    p = np.asarray(block_pos, dtype=float)
    t = np.asarray(lstar, dtype=float)[:, None, None]
    # partner[b, i, j]: block j sits at l* + k - 1 where block i sits at l* - k
    partner = (p[None, :, None] < t) & (p[None, None, :] == 2 * t - p[None, :, None] - 1)
    has = partner.any(2)  # [B, S] silent blocks with a probed partner
    cnt = has.sum(1)
    with np.errstate(invalid="ignore"):
        silent = np.where(cnt > 0, (drops * has).sum(1) / np.maximum(cnt, 1), np.nan)
        dec = np.where(cnt > 0, np.einsum("bij,bj->b", partner, drops) / np.maximum(cnt, 1), np.nan)
    return silent, dec


def bootstrap_effect(name: str, estimate: float, replicates: Any, *, level: float = 0.95, **kw: Any) -> Effect:
    """An :class:`Effect` from an estimate and its bootstrap replicates ``[B]`` (NaN: undefined): percentile
    interval, the dual p (:func:`~phaselens.resampling.bootstrap_p`), SD as ``se``; ``kw`` go to :class:`Effect`."""
    return _bootstrap_effect(name, float(estimate), np.asarray(replicates, dtype=float).reshape(-1), level=level, **kw)


def _within(x: np.ndarray, labels: np.ndarray, method: str) -> np.ndarray:
    """``x [..., n]`` ranked (Spearman) and centred within each label of ``labels [n]``."""
    out = np.empty_like(x, dtype=float)
    for g in np.unique(labels):
        m = labels == g
        v = x[..., m]
        if method == "spearman":
            from scipy import stats as sps  # only Spearman needs scipy

            v = sps.rankdata(v, axis=-1)
        out[..., m] = v - v.mean(-1, keepdims=True)
    return out


def within_correlation_effect(
    x: Any,
    y: Any,
    groups: Any,
    *,
    name: str,
    method: str = "pearson",
    interval: str = "fisher",
    predicted: Any = None,
    level: float = 0.95,
    n_boot: int = N_BOOT,
    boot_seed: int = 0,
    min_clusters: int = MIN_CLUSTERS,
    model: str = "",
    task: str = "",
    format: str = "",
) -> Effect:
    """The pooled within-group correlation of paired points ``x, y [n]`` (e.g. within models, across tasks):
    ``x`` and ``y`` centred within each group (ranked within it first for Spearman), then correlated. Groups with
    one point carry no within-group information and are left out.

    ``interval="fisher"``: ``tanh(atanh(r) ± z se)`` with ``se = sqrt(c / (n - G - 2))`` (``G`` group means
    removed; ``c = 1``, or ``1.06`` for Spearman); ``"bootstrap"``: pairs resampled within their groups (groups
    fixed when fewer than ``min_clusters``), re-centred in each replicate (percentile).
    """
    x, y = np.asarray(x, dtype=float).ravel(), np.asarray(y, dtype=float).ravel()
    g = np.asarray([str(v) for v in groups])
    if not (x.shape == y.shape == g.shape):
        raise EffectError(f"x, y and groups must pair up: got {x.size}, {y.size} and {g.size}")
    names, counts = np.unique(g, return_counts=True)
    keep = np.isin(g, names[counts >= 2])
    x, y, g = x[keep], y[keep], g[keep]
    n_groups = len(set(g))
    if x.size < MIN_ITEMS or x.size - n_groups - 2 < 1:
        raise EffectError(f"a within-group correlation needs at least {MIN_ITEMS} pairs in groups of two or more, and "
                          f"more pairs than groups + 2; got {x.size} pairs in {n_groups} groups")
    xc, yc = _within(x, g, method), _within(y, g, method)
    r = float(corr(xc, yc, "pearson"))
    if not math.isfinite(r):
        raise EffectError("the within-group correlation is undefined: x or y is constant within every group")
    n = {"pairs": int(x.size), "models": n_groups}
    common = dict(level=level, predicted=predicted, n=n, model=model, task=task, format=format)
    if interval == "fisher":
        se = math.sqrt((1.06 if method == "spearman" else 1.0) / (x.size - n_groups - 2))
        z = math.atanh(min(max(r, -1 + 1e-15), 1 - 1e-15))
        q = NORMAL.inv_cdf(0.5 + level / 2)
        return Effect(name=name, estimate=r, lo=math.tanh(z - q * se), hi=math.tanh(z + q * se),
                      p=math.erfc(abs(z) / se / math.sqrt(2)), se=se, ci_method="fisher",
                      method=f"within-group {method} r, Fisher-z interval (n - G - 2 degrees)", **common)
    if interval != "bootstrap":
        raise EffectError(f"interval must be 'fisher' or 'bootstrap', got {interval!r}")
    check_n_boot(n_boot, level)
    idx = pair_indices(x.size, n_boot, np.random.default_rng(boot_seed), g, min_clusters)
    if n_groups < min_clusters:
        labels = g
    else:
        labels = np.arange(x.size) // (x.size // n_groups)  # slot blocks, one per drawn group
    reps = corr(_within(x[idx], labels, method), _within(y[idx], labels, method), "pearson")
    fixed = ["models"] if n_groups < min_clusters else []
    return _bootstrap_effect(name, r, reps, resampled=["pairs"] + ([] if fixed else ["models"]), fixed=fixed,
                             n_boot=n_boot, boot_seed=boot_seed,
                             method=f"within-group {method} r, pair bootstrap within groups (percentile)", **common)


def no_transition_share(item_margins: Any, n_boot: int = N_BOOT, boot_seed: int = 0) -> float:
    """Share of item-bootstrap replicates of ``item_margins [N, L]`` whose mean margin curve has no transition (the
    items are drawn as :func:`hierarchical_effect` draws them with the same ``n_boot`` and ``boot_seed``)."""
    m = np.asarray(item_margins, dtype=float)
    w = crossed_weights((m.shape[0],), n_boot, np.random.default_rng(boot_seed), [True])
    return float(np.isnan(transition_layer(weighted_means(m, w))).mean())
