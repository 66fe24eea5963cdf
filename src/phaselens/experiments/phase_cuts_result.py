"""The phase-cut experiment's results: the cuts, one :class:`CutResult` per (cut, method), and :class:`PhaseCuts`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np

from .. import metrics
from ..errors import NotFoundError, PhaseCutsError
from ..recovery.method import METHODS, get_method
from ..results import Record, Result
from ..trace import N_BOOT, Transition

#: Recovery methods compared by default: every built-in method, plain pruning (the methods that fit nothing) first.
DEFAULT_METHODS: tuple[str, ...] = tuple(sorted(METHODS.builtin_names(), key=lambda m: get_method(m).fitted))
#: Built-in methods whose operator acts on the whole residual stream at the cut (``acts_on == "span"``; ReplaceMe
#: acts on an MLP branch).
WHOLE_STREAM: tuple[str, ...] = tuple(m for m in DEFAULT_METHODS if get_method(m).acts_on == "span")
CUT_KINDS: tuple[str, ...] = ("silent", "decisive", "random")
#: the placements of ``placement="spread"``, in the order the cuts of a phase are listed
SPREAD: tuple[str, ...] = ("adjacent", "center", "far")


@dataclass(frozen=True)
class Cut(Record):
    """``n`` contiguous blocks ``[start, start + n)`` (original indices) cut from the dense model."""

    kind: str  # "silent", "decisive" or "random"
    start: int
    n: int
    seed: int | None = None  # random cuts only

    @property
    def blocks(self) -> list[int]:
        return list(range(self.start, self.start + self.n))

    @property
    def span(self) -> tuple[int, int]:
        return (self.start, self.start + self.n)

    @property
    def key(self) -> str:
        return self.kind if self.seed is None else f"{self.kind}-s{self.seed}"

    @property
    def label(self) -> str:
        where = f"{self.start}" if self.n == 1 else f"{self.start}-{self.start + self.n - 1}"
        return f"{self.key} (blocks {where})"


@dataclass
class CutResult(Record):
    """One cut recovered with one method.

    Shapes: ``L'`` surviving blocks, ``N`` items.

    Attributes:
        blocks: the cut blocks (original indices); ``curve_blocks`` ``[L']`` the surviving ones.
        margins, accuracy: ``[L']`` the margin and accuracy curves; ``margin_ci``, ``accuracy_ci``
            ``[2, L']`` bootstrap 95% intervals over items.
        item_margins, item_correct: ``[N]`` final-layer margin and correctness per item (paired
            bootstraps between cuts use them).
        boundary_mse, boundary_relative: the fitted boundary error on the calibration tokens
            (from the statistics): mean squared error of what the first surviving block after the
            cut receives versus the dense model, and that divided by ``mean(Y^2)``.
        boundary_measured: the relative boundary error measured by running the recovered model
            on the held-out text (``None`` unless ``measure_boundary=True``).
        perplexity: held-out perplexity of the recovered model.
        transition: where the decisive phase of the recovered model begins (original index), or ``None``.
    """

    cut: str
    seed: int | None
    blocks: list[int]
    method: str
    curve_blocks: np.ndarray
    margins: np.ndarray
    margin_ci: np.ndarray
    accuracy: np.ndarray
    accuracy_ci: np.ndarray
    item_margins: np.ndarray
    item_correct: np.ndarray
    boundary_mse: float
    boundary_relative: float
    boundary_measured: float | None
    perplexity: float
    transition: int | None
    lam: float
    n_tokens: int

    @property
    def final_margin(self) -> float:
        return float(self.margins[-1])

    @property
    def final_margin_ci(self) -> tuple[float, float]:
        return float(self.margin_ci[0][-1]), float(self.margin_ci[1][-1])

    @property
    def final_accuracy(self) -> float:
        return float(self.accuracy[-1])

    @property
    def final_accuracy_ci(self) -> tuple[float, float]:
        return float(self.accuracy_ci[0][-1]), float(self.accuracy_ci[1][-1])

    @property
    def key(self) -> str:
        return self.cut if self.seed is None else f"{self.cut}-s{self.seed}"


@dataclass
class PhaseCuts(Result):
    """The phase-cut experiment on one model and task.

    Attributes:
        transition: the dense model's :class:`~phaselens.Transition` (its trace is the dense curve).
        dense_perplexity: held-out perplexity of the dense model.
        n: blocks per cut; ``placement`` of the phase cuts; ``seeds`` of the random cuts.
        cuts: every cut made; ``units`` one :class:`CutResult` per (cut, method).
        skipped: ``{"cut", "method", "reason"}`` for combinations that cannot be fitted
            (ReplaceMe at a cut that starts at block 0).
        calibration_tokens, calibration_passages: what the operators were fitted on;
        perplexity_passages: held-out passages perplexity was measured on.
    """

    model: str
    task: str
    format: str
    n_blocks: int
    n: int
    placement: Any  # a name for both phases, or a (silent, decisive) pair
    methods: list[str]
    seeds: list[int]
    transition: Transition
    dense_perplexity: float
    cuts: list[Cut]
    units: list[CutResult]
    skipped: list[dict[str, Any]] = field(default_factory=list)
    calibration_tokens: int = 0
    calibration_passages: int = 0
    perplexity_passages: int = 0
    n_boot: int = N_BOOT
    seed: int = 0
    answers: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=int))  # [N] correct option per item
    lens: str = "logit"  # the lens every curve (and the transition) was read with

    # -- access ---------------------------------------------------------------------------
    @property
    def n_items(self) -> int:
        return self.transition.trace.n_items

    @property
    def dense_margin(self) -> float:
        return float(self.transition.trace.margins[-1])

    @property
    def dense_accuracy(self) -> float:
        return float(self.transition.trace.accuracy[-1])

    # -- placements -------------------------------------------------------------------------
    def phase_bounds(self, kind: str) -> tuple[int, int]:
        """``[lo, hi)``: the blocks of the dense model's ``"silent"`` or ``"decisive"`` phase."""
        ls = int(self.transition.layer)  # a PhaseCuts exists only when there is a transition
        return (0, ls) if kind == "silent" else (ls, self.n_blocks)

    def placement_of(self, cut: Cut | CutResult) -> str:
        """Where a phase cut sits in its phase: ``"adjacent"`` (to the transition), ``"far"``, ``"center"`` (the
        first of these that starts there), else ``"block S"``; ``"seed S"`` for a random cut."""
        kind, start = (cut.kind, cut.start) if isinstance(cut, Cut) else (cut.cut, cut.blocks[0])
        if kind == "random":
            return f"seed {cut.seed}"
        lo, hi = self.phase_bounds(kind)
        near, far = (hi - self.n, lo) if kind == "silent" else (lo, hi - self.n)
        for name, s in (("adjacent", near), ("far", far), ("center", lo + (hi - lo - self.n) // 2)):
            if s == start:
                return name
        return f"block {start}"

    def placements(self, kind: str) -> list[str]:
        """The placements cut in phase ``kind``, in the order of :attr:`cuts`."""
        return [self.placement_of(c) for c in self.cuts if c.kind == kind]

    @property
    def placement_notes(self) -> list[str]:
        """Where a phase is too short for the placements asked (``"spread"``: 3, at least 2 for the effects)."""
        spread = self.placement == "spread" or (isinstance(self.placement, (list, tuple, dict)) and "spread" in (
            list(self.placement.values()) if isinstance(self.placement, dict) else list(self.placement)))
        notes = []
        for kind in ("silent", "decisive"):
            lo, hi = self.phase_bounds(kind)
            have = self.placements(kind)
            room = hi - lo - self.n + 1
            blocks = f"block {lo}" if hi - lo == 1 else f"blocks {lo}-{hi - 1}, {hi - lo} blocks"
            where = f"the {kind} phase ({blocks}) has room for {room} start{'' if room == 1 else 's'} of a " \
                    f"{self.n}-block cut"
            if spread and len(have) < len(SPREAD):
                gone = [p for p in SPREAD if p not in have]
                notes.append(f"{where}: {len(have)} distinct placement(s) {have}, {' and '.join(gone)} coincide{'s' if len(gone) == 1 else ''} with another"
                             + (" (fewer than the 2 the effects need)" if len(have) < 2 else ""))
            elif not spread and len(have) < 2:
                notes.append(f"one placement in the {kind} phase ({have[0]}; placement={self.placement!r}): the "
                             "effects need at least 2 (placement='spread')")
        return notes

    def find_unit(self, kind: str, method: str, placement: str | None = None, seed: int | None = None) -> CutResult | None:
        """The unit of the ``kind`` cut at ``placement`` (default: the first, adjacent when cut) with ``method``,
        or ``None`` (not cut there, or the method refused it)."""
        for u in self.units:
            if u.cut == kind and u.method == method and (kind != "random" or u.seed == seed) and (
                    placement is None or kind == "random" or self.placement_of(u) == placement):
                return u
        return None

    def cut(self, kind: str, seed: int | None = None, placement: str | None = None) -> Cut:
        """The ``kind`` cut (``seed`` for a random one) at ``placement`` (default: the first listed, i.e. the one
        adjacent to the transition when it was cut)."""
        for c in self.cuts:
            if c.kind == kind and (kind != "random" or c.seed == seed) and (
                    placement is None or kind == "random" or self.placement_of(c) == placement):
                return c
        where = "" if placement is None else f" at placement {placement!r} (cut: {self.placements(kind)})"
        raise NotFoundError(f"no {kind} cut{'' if seed is None else f' with seed {seed}'}{where}; cuts: "
                            f"{[c.label for c in self.cuts]}")

    def unit(self, kind: str, method: str, seed: int | None = None, placement: str | None = None) -> CutResult:
        """The result of cut ``kind`` (``seed`` for a random cut; ``placement`` for a phase cut, default the first
        listed, adjacent) recovered with ``method``."""
        if kind == "random" and seed is None:
            raise NotFoundError(f"random cuts need seed= (one of {self.seeds})")
        c = self.cut(kind, seed, placement)
        for u in self.units:
            if u.cut == kind and u.method == method and u.blocks == c.blocks and (kind != "random" or u.seed == seed):
                return u
        for s in self.skipped:
            if s["method"] == method and s["cut"] == c.key and s.get("start", c.start) == c.start:
                raise NotFoundError(f"{method} was not fitted for the {kind} cut (blocks {c.blocks}): {s['reason']}")
        raise NotFoundError(f"no result for cut {kind!r} (seed {seed}, placement {placement}) with method {method!r}")

    def _random_units(self, method: str) -> list[CutResult]:
        return [u for s in self.seeds for u in self.units if u.cut == "random" and u.seed == s and u.method == method]

    def random_summary(self, method: str, metric: str = "margin") -> dict[str, float]:
        """The random control over seeds for ``method``: mean final ``metric`` ("margin" or
        "accuracy") over seeds, a 95% interval from a two-level bootstrap (seeds and items both
        resampled with replacement, items paired across seeds), and the range across seeds."""
        us = self._random_units(method)
        if not us:
            raise NotFoundError(f"no random cuts with method {method!r}")
        M = np.stack([u.item_margins if metric == "margin" else u.item_correct for u in us])  # [S, N]
        rng = np.random.default_rng(self.seed)
        S, N = M.shape
        s_idx = rng.integers(0, S, size=(self.n_boot, S))
        i_idx = rng.integers(0, N, size=(self.n_boot, N))
        per_item = M[s_idx].mean(1)  # [B, N]
        boot = np.take_along_axis(per_item, i_idx, 1).mean(1)
        per_seed = M.mean(1)
        lo, hi = np.quantile(boot, [0.025, 0.975])
        return {"mean": float(per_seed.mean()), "lo": float(lo), "hi": float(hi), "seed_min": float(per_seed.min()),
                "seed_max": float(per_seed.max()), "n_seeds": S}

    def _item_values(self, kind: str, method: str, metric: str) -> np.ndarray:
        tr = self.transition.trace
        if kind == "dense":
            return tr.item_margins[:, -1] if metric == "margin" else (tr.logits[-1].argmax(-1) == self.answers).astype(float)
        if kind == "random":
            us = self._random_units(method)
            if not us:
                raise NotFoundError(f"no random cuts with method {method!r}")
            return np.mean([u.item_margins if metric == "margin" else u.item_correct for u in us], 0)
        u = self.unit(kind, method)
        return u.item_margins if metric == "margin" else u.item_correct

    def contrast(self, a: str = "silent", b: str = "decisive", method: str = "ghosted", metric: str = "margin",
                 method_b: str | None = None) -> dict[str, Any]:
        """Paired bootstrap over items of ``final metric(a) - final metric(b)``.

        ``a``, ``b``: ``"silent"``, ``"decisive"``, ``"random"`` (per item, the mean over seeds;
        only items are resampled) or ``"dense"``. ``metric``: ``"margin"`` or ``"accuracy"``.
        ``method_b`` (default ``method``) compares two methods on one cut, e.g.
        ``contrast("silent", "silent", "ghosted", method_b="identity")``.
        """
        if metric not in ("margin", "accuracy"):
            raise PhaseCutsError(f"metric must be 'margin' or 'accuracy', got {metric!r}")
        va = self._item_values(a, method, metric)
        vb = self._item_values(b, method_b or method, metric)
        diff = va - vb
        idx = metrics.bootstrap_indices(len(diff), self.n_boot, self.seed)
        lo, hi = metrics.bootstrap_ci(diff[:, None], idx)[:, 0]
        return {"a": a, "b": b, "method": method, "method_b": method_b or method, "metric": metric,
                "difference": float(diff.mean()), "lo": float(lo), "hi": float(hi), "n_items": len(diff)}

    # -- effects --------------------------------------------------------------------------
    def effects(self, methods: Sequence[str] | str | None = None, *, metric: str = "margin", n_boot: int | None = None,
                boot_seed: int | None = None, level: float = 0.95) -> list:
        """The headline contrasts as :class:`~phaselens.Effect`: the silent − decisive ``metric`` drop after plain
        pruning, after each recovered method (default ``"ghosted"`` when run, else every fitted method), and the
        interaction ``(rec − plain)_decisive − (rec − plain)_silent``.

        Items crossed with placements: items resampled (paired across every cut), the placements (at most 3 per
        phase, so fewer than 5) held fixed, each placement's own effect in ``Effect.clusters`` beside the pooled
        estimate; ``l*`` is re-estimated in every replicate (``Effect.undefined``: the share with no transition or
        no cut left in a phase). ``n_boot``/``boot_seed`` default to the run's. Needs at least 2 placements per
        phase (``placement="spread"``), else an :class:`~phaselens.errors.EffectError` naming the arm.
        """
        from .phase_cut_effects import phase_cut_effects

        return phase_cut_effects(self, methods, metric=metric, n_boot=n_boot, boot_seed=boot_seed, level=level)

    # -- tables ---------------------------------------------------------------------------
    def to_pandas(self, aggregate: bool = False):
        """One row per cut x seed x method (a first row for the dense model).

        ``aggregate=True``: one row per cut kind x method; the random rows give the mean over
        seeds with the two-level bootstrap interval of :meth:`random_summary`.
        """
        import pandas as pd

        tr = self.transition.trace
        rows = [{"cut": "dense", "seed": None, "placement": None, "blocks": "", "start": None, "end": None, "method": "none",
                 "final_margin": self.dense_margin, "margin_lo": float(tr.margin_ci[0][-1]), "margin_hi": float(tr.margin_ci[1][-1]),
                 "accuracy": self.dense_accuracy, "accuracy_lo": float(tr.accuracy_ci[0][-1]),
                 "accuracy_hi": float(tr.accuracy_ci[1][-1]), "boundary_mse": 0.0, "boundary_relative": 0.0,
                 "boundary_measured": None, "perplexity": self.dense_perplexity, "transition": self.transition.layer,
                 "n_items": self.n_items, "n_seeds": None}]
        done: set[tuple[str, str]] = set()
        for u in self.units:
            if aggregate and u.cut == "random":
                if (u.cut, u.method) in done:
                    continue
                done.add((u.cut, u.method))
                us = self._random_units(u.method)
                m, a = self.random_summary(u.method, "margin"), self.random_summary(u.method, "accuracy")
                meas = [x.boundary_measured for x in us]
                rows.append({"cut": "random", "seed": None, "placement": None, "blocks": f"{len(us)} random spans of {self.n}",
                             "start": None,
                             "end": None, "method": u.method, "final_margin": m["mean"], "margin_lo": m["lo"],
                             "margin_hi": m["hi"], "accuracy": a["mean"], "accuracy_lo": a["lo"], "accuracy_hi": a["hi"],
                             "boundary_mse": float(np.mean([x.boundary_mse for x in us])),
                             "boundary_relative": float(np.mean([x.boundary_relative for x in us])),
                             "boundary_measured": None if None in meas else float(np.mean(meas)),
                             "perplexity": float(np.mean([x.perplexity for x in us])), "transition": None,
                             "n_items": self.n_items, "n_seeds": len(us)})
                continue
            lo, hi = u.final_margin_ci
            alo, ahi = u.final_accuracy_ci
            rows.append({"cut": u.cut, "seed": u.seed, "placement": None if u.cut == "random" else self.placement_of(u),
                         "blocks": _fmt(u.blocks), "start": u.blocks[0], "end": u.blocks[-1] + 1,
                         "method": u.method, "final_margin": u.final_margin, "margin_lo": lo, "margin_hi": hi,
                         "accuracy": u.final_accuracy, "accuracy_lo": alo, "accuracy_hi": ahi, "boundary_mse": u.boundary_mse,
                         "boundary_relative": u.boundary_relative, "boundary_measured": u.boundary_measured,
                         "perplexity": u.perplexity, "transition": u.transition, "n_items": self.n_items,
                         "n_seeds": 1 if u.cut == "random" else None})
        df = pd.DataFrame(rows)
        df["model"], df["task"] = self.model, self.task
        return df

    def summary(self) -> str:
        """What was measured, in words."""
        t = self.transition

        def where(kind: str) -> str:
            cs = [c for c in self.cuts if c.kind == kind]
            if len(cs) == 1:
                return _fmt(cs[0].blocks)
            return "; ".join(f"{self.placement_of(c)} {_fmt(c.blocks)}" for c in cs)

        skip = "; ".join(f"{x['method']} at {x['cut']}" + (f" {x['start']}-{x['start'] + self.n - 1}" if "start" in x
                                                              else "") + f" ({x['reason']})" for x in self.skipped)
        skip = f" Not fitted: {skip}." if skip else ""
        notes = self.placement_notes
        skip += f" Placements: {'; '.join(notes)}." if notes else ""
        return (
            f"{self.model} on {self.task} ({self.format}, {self.n_items} items): the dense model's decisive phase begins "
            f"at block {t.layer} of {self.n_blocks} (final margin {self.dense_margin:.3f}, accuracy {self.dense_accuracy:.3f}, "
            f"held-out perplexity {self.dense_perplexity:.2f}). Cut {self.n} contiguous blocks in the silent phase "
            f"({where('silent')}), in the decisive phase ({where('decisive')}) and at {len(self.seeds)} random positions "
            f"(seeds {self.seeds}); recovered each cut with {', '.join(self.methods)}, fitted on {self.calibration_tokens} "
            f"calibration tokens ({self.calibration_passages} passages); final-layer margin and accuracy with bootstrap "
            f"95% intervals over items, perplexity on {self.perplexity_passages} held-out passages.{skip}"
        )

    # -- figures --------------------------------------------------------------------------
    def plot(self, metric: str = "margin", **kw):
        """Plotly figure: final-layer ``metric`` (margin or accuracy) with 95% error bars, per cut x method."""
        from ..plots.phase_cuts import phase_cut_finals

        return phase_cut_finals(self, metric=metric, **kw)

    def plot_effects(self, methods: Sequence[str] | str | None = None, *, metric: str = "margin", **kw):
        """Plotly figure: :meth:`effects`, each pooled effect with its per-placement effects."""
        from ..plots.phase_cuts import phase_cut_effects

        return phase_cut_effects(self.effects(methods, metric=metric), **kw)

    def figures(self) -> list[tuple[str, Any]]:
        """The report's figures: final values per cut, and the effects when the run has 2 placements per phase."""
        from ..errors import EffectError

        out = [("", self.plot())]
        try:
            out.append(("Effects: pooled over placements (held fixed) and per placement; items resampled, l* "
                        "re-estimated in every replicate.", self.plot_effects()))
        except EffectError:  # one placement per phase (placement_notes says so in the summary)
            pass
        return out

    def plot_curves(self, methods: Sequence[str] | None = None, seeds: Sequence[int] | None = None, **kw):
        """Plotly figure: margin curves on the original block axis, one panel per cut, dense curve in each."""
        from ..plots.phase_cuts import phase_cut_curves

        return phase_cut_curves(self, methods=methods, seeds=seeds, **kw)


def _fmt(blocks: Iterable[int]) -> str:
    b = list(blocks)
    return "" if not b else (f"{b[0]}" if len(b) == 1 else f"{b[0]}-{b[-1]}")


