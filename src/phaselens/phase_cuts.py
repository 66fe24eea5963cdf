"""The phase-cut experiment: which phase can a layer-pruned model lose, and which recovery holds it?

:func:`compare_phase_cuts` finds the silent -> decisive transition ``l*`` once, on the dense
model, then cuts ``n`` contiguous blocks

* inside the **silent** phase ``[0, l*)`` (by default the ``n`` blocks just before ``l*``),
* inside the **decisive** phase ``[l*, L)`` (by default the ``n`` blocks from ``l*`` on),
* at **random** (the control): for each seed, ``n`` contiguous blocks starting at a block
  drawn uniformly from ``0..L-n`` (seeded with ``numpy.random.default_rng(seed)``). A random
  span is contiguous, like the phase cuts, so the three are comparable; it may lie in either
  phase or straddle the transition, and may coincide with a phase cut.

Each cut is recovered with every method (identity = plain pruning, Ghosted Layers, and its
rivals). All operators are fitted from the float64 statistics ``X^T X``, ``X^T Y`` of the
distinct cut spans, accumulated in one pass of the dense model over the calibration text
(two passes when a random span starts at block 0 and ReplaceMe is asked for, since
ReplaceMe's branch statistics need a block before the span). For every (cut, method) it
records the margin curve on the original block axis, the final-layer margin and accuracy
with bootstrap 95% intervals over items, the fitted boundary error (from the statistics),
optionally the boundary error measured on held-out text, and held-out perplexity.

With ``out=DIR`` every finished (cut, method) unit is written at once (atomically) and a
rerun skips finished units, giving identical results.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from . import metrics
from .stats import seed_list
from .calibration import heldout_texts, load_calibration, n_tokens
from .perplexity import perplexity
from .phases import transition_index
from .pruning import select_blocks
from .recovery import METHODS, fit_recoveries, span_stats
from .recovery.fit import MIN_TOKENS_PER_DIM, SpanStats, boundary_error
from .resume import check_or_write_args, digest, write_atomic
from .runtime import Replay
from .tasks import Task, load_task
from .trace import N_BOOT, Transition, decision_trace, transition_from_trace
from .view import ModelView, as_view, first_change

#: Recovery methods compared by default (every method phaselens has).
DEFAULT_METHODS: tuple[str, ...] = ("identity", "ghosted", "scalar", "diagonal", "symmetric", "linearpatch", "replaceme")
#: Methods whose operator acts on the whole residual stream at the cut (ReplaceMe acts on an MLP branch).
WHOLE_STREAM: tuple[str, ...] = ("identity", "ghosted", "scalar", "diagonal", "symmetric", "linearpatch")
CUT_KINDS: tuple[str, ...] = ("silent", "decisive", "random")
_PREFIX = "phase_cuts"


class PhaseCutsError(ValueError):
    """The phase-cut experiment cannot run as asked; the message says why and what to change."""


@dataclass(frozen=True)
class Cut:
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


def _arr(x: Any, dtype=float) -> np.ndarray:
    return np.asarray(x, dtype=dtype)


@dataclass
class CutResult:
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

    def to_dict(self) -> dict[str, Any]:
        out = {}
        for k, v in self.__dict__.items():
            out[k] = v.tolist() if isinstance(v, np.ndarray) else v
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CutResult":
        d = dict(d)
        d["curve_blocks"] = _arr(d["curve_blocks"], int)
        for k in ("margins", "margin_ci", "accuracy", "accuracy_ci", "item_margins", "item_correct"):
            d[k] = _arr(d[k])
        d["blocks"] = [int(b) for b in d["blocks"]]
        return cls(**d)


@dataclass
class PhaseCuts:
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

    def cut(self, kind: str, seed: int | None = None) -> Cut:
        for c in self.cuts:
            if c.kind == kind and (kind != "random" or c.seed == seed):
                return c
        raise KeyError(f"no {kind} cut{'' if seed is None else f' with seed {seed}'}; cuts: {[c.key for c in self.cuts]}")

    def unit(self, kind: str, method: str, seed: int | None = None) -> CutResult:
        """The result of cut ``kind`` (``seed`` for a random cut) recovered with ``method``."""
        if kind == "random" and seed is None:
            raise KeyError(f"random cuts need seed= (one of {self.seeds})")
        for u in self.units:
            if u.cut == kind and u.method == method and (kind != "random" or u.seed == seed):
                return u
        for s in self.skipped:
            if s["method"] == method and s["cut"] == (kind if seed is None else f"{kind}-s{seed}"):
                raise KeyError(f"{method} was not fitted for the {kind} cut: {s['reason']}")
        raise KeyError(f"no result for cut {kind!r} (seed {seed}) with method {method!r}")

    def _random_units(self, method: str) -> list[CutResult]:
        return [u for s in self.seeds for u in self.units if u.cut == "random" and u.seed == s and u.method == method]

    def random_summary(self, method: str, metric: str = "margin") -> dict[str, float]:
        """The random control over seeds for ``method``: mean final ``metric`` ("margin" or
        "accuracy") over seeds, a 95% interval from a two-level bootstrap (seeds and items both
        resampled with replacement, items paired across seeds), and the range across seeds."""
        us = self._random_units(method)
        if not us:
            raise KeyError(f"no random cuts with method {method!r}")
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
                raise KeyError(f"no random cuts with method {method!r}")
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
            raise ValueError(f"metric must be 'margin' or 'accuracy', got {metric!r}")
        va = self._item_values(a, method, metric)
        vb = self._item_values(b, method_b or method, metric)
        diff = va - vb
        idx = metrics.bootstrap_indices(len(diff), self.n_boot, self.seed)
        lo, hi = metrics.bootstrap_ci(diff[:, None], idx)[:, 0]
        return {"a": a, "b": b, "method": method, "method_b": method_b or method, "metric": metric,
                "difference": float(diff.mean()), "lo": float(lo), "hi": float(hi), "n_items": len(diff)}

    # -- tables ---------------------------------------------------------------------------
    def to_pandas(self, aggregate: bool = False):
        """One row per cut x seed x method (a first row for the dense model).

        ``aggregate=True``: one row per cut kind x method; the random rows give the mean over
        seeds with the two-level bootstrap interval of :meth:`random_summary`.
        """
        import pandas as pd

        tr = self.transition.trace
        rows = [{"cut": "dense", "seed": None, "blocks": "", "start": None, "end": None, "method": "none",
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
                rows.append({"cut": "random", "seed": None, "blocks": f"{len(us)} random spans of {self.n}", "start": None,
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
            rows.append({"cut": u.cut, "seed": u.seed, "blocks": _fmt(u.blocks), "start": u.blocks[0], "end": u.blocks[-1] + 1,
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
        s, d = self.cut("silent"), self.cut("decisive")
        skip = "; ".join(f"{x['method']} at {x['cut']} ({x['reason']})" for x in self.skipped)
        skip = f" Not fitted: {skip}." if skip else ""
        return (
            f"{self.model} on {self.task} ({self.format}, {self.n_items} items): the dense model's decisive phase begins "
            f"at block {t.layer} of {self.n_blocks} (final margin {self.dense_margin:.3f}, accuracy {self.dense_accuracy:.3f}, "
            f"held-out perplexity {self.dense_perplexity:.2f}). Cut {self.n} contiguous blocks in the silent phase "
            f"({_fmt(s.blocks)}), in the decisive phase ({_fmt(d.blocks)}) and at {len(self.seeds)} random positions "
            f"(seeds {self.seeds}); recovered each cut with {', '.join(self.methods)}, fitted on {self.calibration_tokens} "
            f"calibration tokens ({self.calibration_passages} passages); final-layer margin and accuracy with bootstrap "
            f"95% intervals over items, perplexity on {self.perplexity_passages} held-out passages.{skip}"
        )

    # -- figures --------------------------------------------------------------------------
    def plot(self, metric: str = "margin", **kw):
        """Plotly figure: final-layer ``metric`` (margin or accuracy) with 95% error bars, per cut x method."""
        from .plots.phase_cuts import phase_cut_finals

        return phase_cut_finals(self, metric=metric, **kw)

    def plot_curves(self, methods: Sequence[str] | None = None, seeds: Sequence[int] | None = None, **kw):
        """Plotly figure: margin curves on the original block axis, one panel per cut, dense curve in each."""
        from .plots.phase_cuts import phase_cut_curves

        return phase_cut_curves(self, methods=methods, seeds=seeds, **kw)

    # -- storage --------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "task": self.task, "format": self.format, "n_blocks": self.n_blocks, "n": self.n,
                "placement": self.placement, "methods": list(self.methods), "seeds": list(self.seeds),
                "transition": self.transition.to_dict(), "dense_perplexity": self.dense_perplexity,
                "cuts": [{"kind": c.kind, "start": c.start, "n": c.n, "seed": c.seed} for c in self.cuts],
                "units": [u.to_dict() for u in self.units], "skipped": list(self.skipped),
                "calibration_tokens": self.calibration_tokens, "calibration_passages": self.calibration_passages,
                "perplexity_passages": self.perplexity_passages, "n_boot": self.n_boot, "seed": self.seed,
                "answers": np.asarray(self.answers).tolist()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PhaseCuts":
        return cls(d["model"], d["task"], d["format"], d["n_blocks"], d["n"], d["placement"], list(d["methods"]),
                   [int(s) for s in d["seeds"]], Transition.from_dict(d["transition"]), d["dense_perplexity"],
                   [Cut(c["kind"], c["start"], c["n"], c["seed"]) for c in d["cuts"]],
                   [CutResult.from_dict(u) for u in d["units"]], list(d.get("skipped", [])),
                   d.get("calibration_tokens", 0), d.get("calibration_passages", 0), d.get("perplexity_passages", 0),
                   d.get("n_boot", N_BOOT), d.get("seed", 0), _arr(d.get("answers", []), int))


def _fmt(blocks: Iterable[int]) -> str:
    b = list(blocks)
    return "" if not b else (f"{b[0]}" if len(b) == 1 else f"{b[0]}-{b[-1]}")


# -- the experiment -------------------------------------------------------------------------


def phase_cuts(view: Any, transition: Transition, n: int, *, placement: Any = "adjacent",
               seeds: Sequence[int] = (0,)) -> list[Cut]:
    """The cuts of the experiment on the dense ``view`` from its ``transition``: silent, decisive
    (placed by :func:`phaselens.select_blocks`), one random contiguous span per seed.

    Raises :class:`PhaseCutsError` when there is no transition or a phase has fewer than ``n`` blocks.
    """
    L = transition.trace.n_blocks
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n < L:
        raise PhaseCutsError(f"n must be an int in 1..{L - 1} (the model has {L} blocks), got {n!r}")
    n = int(n)
    if transition.layer is None:
        raise PhaseCutsError(f"the dense model has no silent -> decisive transition, so there is no phase to cut: {transition.reason}")
    ls = transition.layer
    def nb(k: int) -> str:
        return f"{k} block" + ("" if k == 1 else "s")

    sizes = f"the silent phase is blocks 0-{ls - 1} ({nb(ls)}) and the decisive phase blocks {ls}-{L - 1} ({nb(L - ls)})" \
        if ls > 0 else f"the silent phase is empty (the margin is positive from block 0) and the decisive phase has {nb(L)}"
    small = [p for p, size in (("silent", ls), ("decisive", L - ls)) if size < n]
    if small:
        most = min(ls, L - ls)
        fix = f"use n <= {most}" if most >= 1 else "this model and task have an empty phase, so no phase cut exists"
        raise PhaseCutsError(f"cannot cut n={n} contiguous blocks inside the {' and '.join(small)} phase: {sizes} "
                             f"(transition at block {ls}, 95% CI {transition.ci}); {fix}")
    where = _placements(placement)
    out = []
    for kind in ("silent", "decisive"):
        try:
            blocks = select_blocks(view, n, kind, placement=where[kind], transition=transition)  # type: ignore[arg-type]
        except ValueError as e:
            raise PhaseCutsError(f"the {kind} cut: {e}") from None
        if list(blocks) != list(range(blocks[0], blocks[0] + n)):
            raise PhaseCutsError(f"the {kind} cut {blocks} is not contiguous")
        out.append(Cut(kind, int(blocks[0]), n))
    for s in seeds:
        out.append(Cut("random", random_start(L, n, int(s)), n, int(s)))
    return out


def _placements(placement: Any) -> dict[str, str | int]:
    """``{"silent": p, "decisive": q}`` from one placement name (both phases), a pair ``(p, q)`` or a dict."""
    if isinstance(placement, str):
        return {"silent": placement, "decisive": placement}
    if isinstance(placement, dict) and set(placement) == {"silent", "decisive"}:
        return dict(placement)
    if isinstance(placement, (list, tuple)) and len(placement) == 2:
        return {"silent": placement[0], "decisive": placement[1]}
    if isinstance(placement, (int, np.integer)) and not isinstance(placement, bool):
        raise PhaseCutsError(f"placement={placement}: a block index can start a cut in one phase only; pass a pair "
                             f"(silent, decisive), e.g. placement=({placement}, 'adjacent')")
    raise PhaseCutsError(f"placement must be 'adjacent', 'far', 'center', or a pair (silent, decisive) of those or "
                         f"block indices, got {placement!r}")


def random_start(n_blocks: int, n: int, seed: int) -> int:
    """First block of the random control cut of ``seed``: uniform on ``0..n_blocks - n``."""
    return int(np.random.default_rng(seed).integers(0, n_blocks - n + 1))


def _all_stats(base, todo: list[tuple[Cut, str]], texts: list[str], seq_len: int, batch_size: int) -> dict[tuple[int, int], SpanStats]:
    """Statistics of every distinct span in ``todo`` from as few dense passes as possible."""
    spans = sorted({c.span for c, _ in todo})
    if not spans:
        return {}
    branch = sorted({c.span for c, m in todo if m == "replaceme"})
    if not branch:
        return span_stats(base, spans, texts, seq_len=seq_len, batch_size=batch_size)
    at_zero = [sp for sp in spans if sp[0] == 0]
    rest = [sp for sp in spans if sp[0] > 0]
    out = span_stats(base, rest, texts, branch=True, seq_len=seq_len, batch_size=batch_size)
    if at_zero:  # ReplaceMe's statistics need a block before the span: these get a plain pass
        out.update(span_stats(base, at_zero, texts, seq_len=seq_len, batch_size=batch_size))
    return out


def _write(path: Path, doc: dict[str, Any]) -> None:
    write_atomic(path, json.dumps(doc))


def _unit_path(folder: Path, cut: Cut, method: str) -> Path:
    return folder / f"{_PREFIX}_unit_{cut.key}_{cut.start}-{cut.start + cut.n}_{method}.json"


def compare_phase_cuts(
    model: Any,
    task: Any,
    n: int,
    *,
    methods: Sequence[str] = DEFAULT_METHODS,
    seeds: int | Sequence[int] = 5,
    placement: Any = "adjacent",
    calibration: Any = None,
    perplexity_texts: Any = None,
    lam: float | None = None,
    measure_boundary: bool = False,
    out: str | Path | None = None,
    seq_len: int = 256,
    batch_size: int = 8,
    n_boot: int = N_BOOT,
    seed: int = 0,
    reuse_prefix: bool = True,
    progress: bool = False,
) -> PhaseCuts:
    """Cut ``n`` contiguous blocks inside the silent phase, inside the decisive phase and at random;
    recover each cut with each method; measure the decision and perplexity of every combination.

    Args:
        model: the *dense* model (a :class:`~phaselens.Model` or anything ``load_model`` takes).
        task: the task whose phases are cut (a :class:`~phaselens.Task` or spec).
        n: blocks per cut.
        methods: recovery methods (``"identity"`` is plain pruning). ReplaceMe cannot recover a
            cut that starts at block 0: that combination is listed in ``result.skipped``.
        seeds: number of random control cuts (seeds ``0..seeds-1``) or a list of seeds.
        placement: where the phase cuts sit: ``"adjacent"`` to the transition (default), ``"far"``
            from it, ``"center"`` of the phase; or a pair ``(silent, decisive)`` of those or of block
            indices (the first cut block), e.g. ``(3, "adjacent")``.
        calibration: text the operators are fitted on (default: the bundled fit passages).
        perplexity_texts: text perplexity is measured on (default: the bundled held-out passages).
        lam: ridge of the least-squares fits (default: a tiny multiple of ``tr(X^T X)/d``).
        measure_boundary: also measure each recovered model's boundary error on the held-out text
            (two extra passes per unit).
        out: folder; every finished (cut, method) is written there and a rerun skips it.
        n_boot, seed: bootstrap resamples and their seed (the same resamples for every unit, so
            intervals of different cuts are paired).
        reuse_prefix: compute each recovered model only from its first changed block, replaying the
            dense model's stored block inputs before it (the same numbers, less time).

    Returns:
        a :class:`PhaseCuts`.
    """
    view = as_view(model)
    if view.removed or view.operators or view.branch_operators:
        raise PhaseCutsError(f"compare_phase_cuts needs the dense model, got the pruned view {view.name}; pass view.base")
    base = view.base
    L = base.n_layers
    t = task if isinstance(task, Task) else load_task(task)
    methods = list(methods)
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise PhaseCutsError(f"unknown recovery method(s) {bad}; choose from {METHODS}" if bad else "methods is empty")
    if len(set(methods)) != len(methods):
        raise PhaseCutsError(f"methods {methods} repeat a method; list each once")
    seed_ids = seed_list(seeds, minimum=0, error=PhaseCutsError)
    cal = load_calibration(calibration)
    ppl_texts = heldout_texts() if perplexity_texts is None else load_calibration(perplexity_texts)
    folder = Path(out) if out is not None else None
    args = {"model": base.name, "fingerprint": base.fingerprint, "task": t.name, "format": t.format, "n_items": len(t),
            "items": digest([[it.id, it.question, list(it.options), it.answer] for it in t.items]),
            "n": int(n) if isinstance(n, (int, np.integer)) else str(n), "placement": json.loads(json.dumps(placement)), "calibration": digest(cal),
            "perplexity_texts": digest(ppl_texts), "lam": lam, "seq_len": seq_len, "batch_size": batch_size,
            "n_boot": n_boot, "seed": seed, "measure_boundary": measure_boundary}
    if folder is not None:
        check_or_write_args(folder / f"{_PREFIX}_args.json", args, "a phase-cut run", PhaseCutsError)
    dense_file = folder / f"{_PREFIX}_dense.json" if folder is not None else None

    replay = Replay(L) if reuse_prefix else None
    dense_view = ModelView(base)
    recorded = False

    def record_dense(check: bool) -> tuple[Transition, float]:
        nonlocal recorded
        if replay is not None:
            replay.frozen = False
            replay.begin(0)
        trace = decision_trace(dense_view, t, n_boot=n_boot, seed=seed, replay=replay, progress=progress)
        tr = transition_from_trace(trace, n_boot=n_boot, seed=seed)
        if check:  # fail before the perplexity pass when the cuts cannot be made
            phase_cuts(dense_view, tr, n, placement=placement, seeds=seed_ids)
        ppl = perplexity(dense_view, ppl_texts, seq_len=seq_len, batch_size=batch_size, replay=replay)
        if replay is not None:
            replay.frozen = True  # from here on, replay the dense prefixes and record nothing
        recorded = True
        return tr, ppl

    if dense_file is not None and dense_file.exists():
        d = json.loads(dense_file.read_text())
        tr, dense_ppl = Transition.from_dict(d["transition"]), float(d["perplexity"])
    else:
        tr, dense_ppl = record_dense(True)
        if dense_file is not None:
            _write(dense_file, {"transition": tr.to_dict(), "perplexity": dense_ppl})

    cuts = phase_cuts(dense_view, tr, n, placement=placement, seeds=seed_ids)
    n = cuts[0].n
    skipped, plan = [], []
    for c in cuts:
        for m in methods:
            if m == "replaceme" and c.start == 0:
                skipped.append({"cut": c.key, "method": m, "reason": "ReplaceMe regresses the MLP branch of the block "
                                "before the cut, and this cut starts at block 0"})
            else:
                plan.append((c, m))
    done: dict[tuple[str, str], CutResult] = {}
    if folder is not None:
        for c, m in plan:
            p = _unit_path(folder, c, m)
            if p.exists():
                done[(c.key, m)] = CutResult.from_dict(json.loads(p.read_text()))
    todo = [(c, m) for c, m in plan if (c.key, m) not in done]
    n_cal = n_tokens(base, cal, seq_len)
    if todo:
        if n_cal < MIN_TOKENS_PER_DIM * base.d_model and any(m != "identity" for _, m in todo):
            warnings.warn(f"only {n_cal} calibration tokens for a {base.d_model}-wide model: an unconstrained d x d "
                          f"operator will fit them too well; pass at least {MIN_TOKENS_PER_DIM * base.d_model} tokens",
                          stacklevel=2)
        stats = _all_stats(base, todo, cal, seq_len, batch_size)
        if replay is not None and not recorded:
            record_dense(False)
        for c, m in todo:
            rec = fit_recoveries(ModelView(base, tuple(c.blocks)), [m], lam=lam, stats={c.span: stats[c.span]})[m]
            lam_used = float(rec.lam[c.span])
            if replay is not None:
                replay.begin(first_change(dense_view, rec))
            trace = decision_trace(rec, t, n_boot=n_boot, seed=seed, replay=replay, progress=progress)
            ppl = perplexity(rec, ppl_texts, seq_len=seq_len, batch_size=batch_size, replay=replay)
            measured = None
            if measure_boundary:
                measured = float(boundary_error(rec, ppl_texts, seq_len=seq_len, batch_size=batch_size).relative[0])
            pos = transition_index(trace.margins)
            correct = (trace.logits[-1].argmax(-1) == _answers_of(t)).astype(float)
            fe = rec.fit_error
            u = CutResult(c.kind, c.seed, c.blocks, m, np.asarray(trace.blocks), trace.margins, trace.margin_ci,
                          trace.accuracy, trace.accuracy_ci, trace.item_margins[:, -1].copy(), correct,
                          float(fe.mse[0]), float(fe.relative[0]), measured, float(ppl),
                          None if pos is None else int(trace.blocks[pos]), lam_used, int(stats[c.span].n))
            done[(c.key, m)] = u
            if folder is not None:
                _write(_unit_path(folder, c, m), u.to_dict())
    units = [done[(c.key, m)] for c, m in plan]
    return PhaseCuts(base.name, t.name, t.format, L, n, placement, methods, seed_ids, tr, dense_ppl, cuts, units, skipped,
                     n_cal, len(cal), len(ppl_texts), n_boot, seed, _answers_of(t))


def _answers_of(task: Task) -> np.ndarray:
    return np.asarray([it.answer for it in task.items])


__all__ = ["CUT_KINDS", "DEFAULT_METHODS", "WHOLE_STREAM", "Cut", "CutResult", "PhaseCuts", "PhaseCutsError",
           "compare_phase_cuts", "phase_cuts", "random_start"]
