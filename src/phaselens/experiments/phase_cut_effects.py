"""The effects of the phase-cut experiment (issue 21): the silent − decisive drop after plain pruning and after a
recovery, and the interaction ``(rec − plain)_decisive − (rec − plain)_silent``.

Design: items crossed with cut placements (adjacent, center, far; the same items are measured at every placement).
Items are resampled (an item keeps all its cuts together); the placements, at most 3 per phase and so fewer than
:data:`~phaselens.resampling.MIN_CLUSTERS`, are **held fixed**: each placement's own effect is reported beside the
pooled fixed-effect estimate (the equal-weight mean over placements, items resampled jointly).

The phases are an estimate too: inside every bootstrap replicate ``l*`` is re-estimated from the replicate's
mean dense margin curve, and a cut counts as silent in that replicate when it ends at or before ``l*_b``, decisive
when it starts at or after ``l*_b`` (a cut straddling ``l*_b`` counts as neither). A replicate with no transition,
or with no cut left in one phase, is undefined (NaN); their share is reported.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from ..effects import Effect, hierarchical_effect, transition_layer
from ..errors import EffectError
from .phase_cuts_result import SPREAD

if TYPE_CHECKING:
    from .phase_cuts_result import CutResult, PhaseCuts

PLAIN = "identity"


def phase_masks(lstar: np.ndarray, starts: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``silent, decisive [B, C]``: whether cut ``c`` (blocks ``[starts[c], starts[c] + n)``) lies inside the silent
    phase ``[0, l*_b)`` / the decisive phase ``[l*_b, L)`` of replicate ``b`` (both False where ``l*_b`` is NaN)."""
    ls = np.asarray(lstar, dtype=float)[:, None]
    st = np.asarray(starts, dtype=float)[None, :]
    ok = np.isfinite(ls)
    return ok & (st + n <= ls), ok & (st >= ls)


def _masked_mean(v: np.ndarray, mask: np.ndarray) -> np.ndarray:
    k = mask.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(k > 0, (v * mask).sum(1) / np.maximum(k, 1), np.nan)


def phase_statistic(starts: Sequence[int], n: int, value: Callable[[dict[str, np.ndarray]], np.ndarray],
                    sign: int, record: dict | None = None) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
    """The statistic hook: ``sign * (mean over silent cuts − mean over decisive cuts)`` of ``value(means) [B, C]``,
    the phases re-estimated from ``means["dense"] [B, L]`` in every replicate. ``record`` (optional) receives the
    share of replicates with no transition and with ``l*`` moved, for the last call with more than one replicate."""
    starts = np.asarray(starts, dtype=int)

    def stat(means: dict[str, np.ndarray]) -> np.ndarray:
        lstar = transition_layer(means["dense"])
        silent, decisive = phase_masks(lstar, starts, n)
        v = value(means)
        out = sign * (_masked_mean(v, silent) - _masked_mean(v, decisive))
        if record is not None:
            if lstar.size == 1:
                record["lstar"] = lstar[0]
            else:
                record["no_transition"] = float(np.isnan(lstar).mean())
                record["moved"] = float((np.isfinite(lstar) & (lstar != record.get("lstar", np.nan))).mean())
        return out

    return stat


def placement_table(pc: "PhaseCuts", methods: Sequence[str]) -> dict[str, dict[str, "CutResult"]]:
    """``{placement: {"silent"/"decisive" + "/" + method: unit}}`` for the placements at which both phases have a cut
    with every one of ``methods`` fitted (the units the effects pair)."""
    out: dict[str, dict[str, Any]] = {}
    for place in [p for p in SPREAD] + sorted({pc.placement_of(c) for c in pc.cuts if c.kind != "random"} - set(SPREAD)):
        row = {}
        for kind in ("silent", "decisive"):
            for m in methods:
                u = pc.find_unit(kind, m, place)
                if u is not None:
                    row[f"{kind}/{m}"] = u
        if len(row) == 2 * len(methods):
            out[place] = row
    return out


def _check_placements(pc: "PhaseCuts", methods: Sequence[str], what: str) -> None:
    """At least 2 placements in each phase arm, else an :class:`EffectError` naming the arm."""
    for kind in ("silent", "decisive"):
        have = [p for p in dict.fromkeys(pc.placement_of(c) for c in pc.cuts if c.kind == kind)
                if all(pc.find_unit(kind, m, p) is not None for m in methods)]
        if len(have) < 2:
            why = "; ".join(pc.placement_notes) or f"placement={pc.placement!r}"
            lo, hi = pc.phase_bounds(kind)
            if hi - lo < 2:
                fix = (f"the {kind} phase has {hi - lo} block, so no two placements exist for this model and task "
                       "(a different task, format or model may have a longer phase)")
            else:
                fix = "rerun compare_phase_cuts with placement='spread'" + (
                    f" and n <= {hi - lo - 1}, so the {kind} phase has room for 2 placements"
                    if hi - lo - pc.n + 1 < 2 else "")
            raise EffectError(
                f"{what}: arm {kind!r} ({', '.join(methods)}) holds {len(have)} placement(s) {have} but the hierarchy "
                f"asks for at least 2 (items crossed with placements): one cut per phase says nothing about where the "
                f"cut was placed ({why}). {fix[0].upper() + fix[1:]}")


def _places(pc: "PhaseCuts", methods: Sequence[str], what: str) -> dict[str, dict[str, Any]]:
    """:func:`placement_table` after :func:`_check_placements`; at least 2 placements shared by the two phases."""
    _check_placements(pc, methods, what)
    places = placement_table(pc, methods)
    if len(places) < 2:
        raise EffectError(f"{what}: the arms 'silent' and 'decisive' share {len(places)} placement(s) "
                          f"{list(places)} with {', '.join(methods)} fitted, but the hierarchy asks for at least 2")
    return places


def _effect(pc: "PhaseCuts", places: dict[str, dict[str, Any]], methods: Sequence[str],
            get: Callable[[Any], np.ndarray], extra: dict[str, np.ndarray],
            value: Callable[[dict[str, np.ndarray]], np.ndarray], sign: int, *, name: str, predicted: Any,
            n_boot: int, boot_seed: int, level: float) -> Effect:
    """The pooled effect over ``places`` (placements fixed) and one effect per placement (``clusters``).

    Arms handed to :func:`~phaselens.hierarchical_effect` (``dims=("items",)``): ``dense [N, L]`` (the dense
    margins, for ``l*``), ``extra`` (``[N, ...]``) and one ``[N, C]`` per method (``get(unit)`` of every cut)."""
    dense = pc.transition.trace.item_margins  # [N, L]

    def one(sub: dict[str, dict[str, Any]], label: str, record: dict | None) -> Effect:
        cols = [(kind, p) for kind in ("silent", "decisive") for p in sub]
        data = {"dense": dense, **extra}
        for m in methods:
            data[m] = np.stack([get(sub[p][f"{kind}/{m}"]) for kind, p in cols], axis=1)  # [N, C]
        starts = [sub[p][f"{kind}/{methods[0]}"].blocks[0] for kind, p in cols]
        stat = phase_statistic(starts, pc.n, value, sign, record)
        return hierarchical_effect(data, name=label, statistic=stat, dims=("items",), predicted=predicted,
                                   require=(), per_cluster=False, level=level, n_boot=n_boot, boot_seed=boot_seed,
                                   model=pc.model, task=pc.task, format=pc.format)

    rec: dict[str, float] = {}
    pooled = one(places, name, rec)
    clusters = [dataclasses.replace(one({p: row}, f"{name} [placement {p}]", None),
                                    n={"items": pc.n_items, "placements": 1}) for p, row in places.items()]
    how = (f"paired bootstrap over items (percentile), {len(places)} placements per phase held fixed "
           f"({', '.join(places)}); l* re-estimated in every replicate: no transition in {rec.get('no_transition', 0):.1%}"
           f" of replicates, l* moved in {rec.get('moved', 0):.1%}")
    return dataclasses.replace(pooled, n={"items": pc.n_items, "placements": len(places)}, resampled=["items"],
                               fixed=["placements"], method=how, clusters=clusters)


def phase_cut_effects(pc: "PhaseCuts", methods: Sequence[str] | str | None = None, *, metric: str = "margin",
                      n_boot: int | None = None, boot_seed: int | None = None, level: float = 0.95) -> list[Effect]:
    """``[plain main effect, then per recovered method: its main effect and the interaction]`` (see the module
    docstring). ``methods``: the recovered methods (default ``"ghosted"`` if it was run, else every fitted one)."""
    if metric not in ("margin", "accuracy"):
        raise EffectError(f"metric must be 'margin' or 'accuracy', got {metric!r}")
    if PLAIN not in pc.methods:
        raise EffectError(f"the effects compare against plain pruning, but method {PLAIN!r} was not run "
                          f"(methods {pc.methods}); rerun compare_phase_cuts with 'identity' among the methods")
    if methods is None:
        fitted = [m for m in pc.methods if m != PLAIN]
        methods = ["ghosted"] if "ghosted" in fitted else fitted
    methods = [methods] if isinstance(methods, str) else list(methods)
    for m in methods:
        if m not in pc.methods or m == PLAIN:
            raise EffectError(f"recovered method {m!r} is not one of the fitted methods run here "
                              f"{[x for x in pc.methods if x != PLAIN]}")
    n_boot = pc.n_boot if n_boot is None else n_boot
    boot_seed = pc.seed if boot_seed is None else boot_seed
    get = (lambda u: u.item_margins) if metric == "margin" else (lambda u: u.item_correct.astype(float))
    dense_final = (pc.transition.trace.item_margins[:, -1] if metric == "margin"
                   else pc.transition.trace.correct[:, -1].astype(float))
    kw = dict(n_boot=n_boot, boot_seed=boot_seed, level=level)

    out = []
    for method, label in [(PLAIN, "plain pruning")] + [(m, m) for m in methods]:
        what = f"silent − decisive {metric} drop ({label})"
        out.append(_effect(pc, _places(pc, [method], what), [method], get, {"final": dense_final},
                           lambda mm, m=method: mm["final"][:, None] - mm[m], +1, name=what, predicted="positive",
                           **kw))
    for m in methods:
        what = f"({m} − plain)_decisive − ({m} − plain)_silent {metric}"
        out.append(_effect(pc, _places(pc, [PLAIN, m], what), [PLAIN, m], get, {},
                           lambda mm, m=m: mm[m] - mm[PLAIN], -1, name=what, predicted="positive", **kw))
    return out
