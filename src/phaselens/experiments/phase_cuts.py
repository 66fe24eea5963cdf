"""The phase-cut experiment: which phase can a layer-pruned model lose, and which recovery holds it?

:func:`compare_phase_cuts` finds the silent -> decisive transition ``l*`` once, on the dense
model, then cuts ``n`` contiguous blocks

* inside the **silent** phase ``[0, l*)`` and inside the **decisive** phase ``[l*, L)``, by default at
  several placements in each (``placement="spread"``): adjacent to the transition (the ``n`` blocks just
  before ``l*`` / from ``l*`` on), the centre of the phase and its far end, each distinct one once,
* at **random** (the control): for each seed, ``n`` contiguous blocks starting at a block
  drawn uniformly from ``0..L-n`` (seeded with ``numpy.random.default_rng(seed)``). A random
  span is contiguous, like the phase cuts, so the three are comparable; it may lie in either
  phase or straddle the transition, and may coincide with a phase cut.

Each cut is recovered with every method (identity = plain pruning, Ghosted Layers, and its
rivals). All operators are fitted from the float64 statistics ``X^T X``, ``X^T Y`` of the
distinct cut spans, accumulated in one pass of the dense model over the calibration text
(two passes when a random span starts at block 0 and a method acting on the MLP branch,
ReplaceMe, is asked for, since branch statistics need a block before the span). For every (cut, method) it
records the margin curve on the original block axis, the final-layer margin and accuracy
with bootstrap 95% intervals over items, the fitted boundary error (from the statistics),
optionally the boundary error measured on held-out text, and held-out perplexity.

With ``out=DIR`` every finished (cut, method) unit is written at once into the run's state folder
(``DIR/.phaselens/phase_cuts/``, :mod:`phaselens.resume`) and a rerun skips finished units, giving
identical results.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .. import checks
from ..calibration import check_seq_len, heldout_texts, load_calibration, n_tokens
from ..deprecation import warn_renamed
from ..errors import PhaseCutsError, PruningError, RecoveryError
from ..lenses import resolve_lens
from ..perplexity import perplexity
from ..phases import transition_index
from ..pruning import select_blocks
from ..pruning.criteria import check_placement_arg
from ..recovery import METHODS, fit_recovery, get_method, span_stats
from ..recovery.method import needs_of
from ..recovery.boundary import boundary_error
from ..recovery.fit import MIN_TOKENS_PER_DIM
from ..recovery.stats import SpanStats, feasible_needs
from ..results import Record
from ..resume import digest, load_or_compute, run_folder
from ..runner import PrefixCache
from ..stats import seed_list
from ..tasks import Task, load_task
from ..trace import N_BOOT, Transition, decision_trace
from ..view import ModelView, as_view
from .phase_cuts_result import CUT_KINDS, DEFAULT_METHODS, SPREAD, WHOLE_STREAM, Cut, CutResult, PhaseCuts
from ..types import ModelLike, TaskLike
from ..runner.layered import scheduled  # schedule= / act_budget= / act_store= (issue 24)

# -- the experiment -------------------------------------------------------------------------


def phase_cuts(view: Any, transition: Transition, n: int, *, placement: Any = "adjacent",
               seeds: Sequence[int] = (0,)) -> list[Cut]:
    """The cuts of the experiment on the dense ``view`` from its ``transition``: silent, decisive
    (placed by :func:`phaselens.select_blocks`; ``placement="spread"``: every distinct one of adjacent, center and
    far in the phase, in that order), one random contiguous span per seed.

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
        named: dict[Any, int] = {}
        # "spread": adjacent, far, then center; a placement that coincides with an earlier one (a short phase) is
        # cut once, under the earlier name
        for name in (("adjacent", "far", "center") if where[kind] == "spread" else (where[kind],)):
            try:
                blocks = select_blocks(view, n, kind, placement=name, transition=transition)  # type: ignore[arg-type]
            except ValueError as e:
                raise PhaseCutsError(f"the {kind} cut: {e}") from e
            if list(blocks) != list(range(blocks[0], blocks[0] + n)):
                raise PhaseCutsError(f"the {kind} cut {blocks} is not contiguous")
            if int(blocks[0]) not in named.values():
                named[name] = int(blocks[0])
        order = [p for p in SPREAD if p in named] + [p for p in named if p not in SPREAD]
        out.extend(Cut(kind, named[p], n) for p in order)
    for s in seeds:
        out.append(Cut("random", random_start(L, n, int(s)), n, int(s)))
    return out


def _placements(placement: Any) -> dict[str, str | int]:
    """``{"silent": p, "decisive": q}`` from one placement name (both phases), a pair ``(p, q)`` or a dict;
    ``"spread"`` stands for every distinct one of :data:`SPREAD` in that phase."""
    if isinstance(placement, str):
        return {"silent": placement, "decisive": placement}
    if isinstance(placement, dict) and set(placement) == {"silent", "decisive"}:
        return dict(placement)
    if isinstance(placement, (list, tuple)) and len(placement) == 2:
        return {"silent": placement[0], "decisive": placement[1]}
    if isinstance(placement, (int, np.integer)) and not isinstance(placement, bool):
        raise PhaseCutsError(f"placement={placement}: a block index can start a cut in one phase only; pass a pair "
                             f"(silent, decisive), e.g. placement=({placement}, 'adjacent')")
    raise PhaseCutsError(f"placement must be 'spread', 'adjacent', 'far', 'center', or a pair (silent, decisive) of "
                         f"those or block indices, got {placement!r}")


def random_start(n_blocks: int, n: int, seed: int) -> int:
    """First block of the random control cut of ``seed``: uniform on ``0..n_blocks - n``."""
    return int(np.random.default_rng(seed).integers(0, n_blocks - n + 1))


def _all_stats(base, todo: list[tuple[Cut, str]], texts: list[str], seq_len: int, batch_size: int | None,
               max_tokens: int | None = None) -> dict[tuple[int, int], SpanStats]:
    """Statistics of every distinct span in ``todo`` from as few dense passes as possible: every span gets the
    union of the methods' declared needs, less what cannot be gathered for it (one pass per distinct set)."""
    spans = sorted({c.span for c, _ in todo})
    need = needs_of(sorted({m for _, m in todo})) if todo else frozenset()
    groups: dict[frozenset[str], list[tuple[int, int]]] = {}
    for sp in spans:
        groups.setdefault(feasible_needs(sp, need), []).append(sp)
    out: dict[tuple[int, int], SpanStats] = {}
    for nd, group in sorted(groups.items(), key=lambda g: -len(g[0])):
        out.update(span_stats(base, group, texts, needs=nd, seq_len=seq_len, batch_size=batch_size,
                              max_tokens=max_tokens))
    return out


def _unit_name(cut: Cut, method: str) -> str:
    return f"unit_{cut.key}_{cut.start}-{cut.start + cut.n}_{method}"


@dataclass
class PhaseCutsDense(Record):
    transition: Transition
    perplexity: float


@dataclass
class _Setup:
    """Everything :func:`compare_phase_cuts` was asked for, checked and loaded."""

    base: Any
    task: Task
    lens: Any
    n: int
    methods: list[str]
    seeds: list[int]
    placement: Any
    calibration: list[str]
    heldout: list[str]
    lam: float | None
    measure_boundary: bool
    seq_len: int
    batch_size: int | None
    max_tokens: int | None
    n_boot: int
    boot_seed: int
    progress: bool
    cache: PrefixCache | None

    def run_args(self) -> dict[str, Any]:
        """What identifies the run in its state folder (the keys of earlier releases, so old folders resume)."""
        t, n = self.task, self.n
        args = {"model": self.base.name, "fingerprint": self.base.fingerprint, "task": t.name, "format": t.format,
                "n_items": len(t), "items": digest([[it.id, it.question, list(it.options), it.answer] for it in t.items]),
                "n": int(n) if isinstance(n, (int, np.integer)) else str(n), "placement": self.placement,
                "calibration": digest(self.calibration), "perplexity_texts": digest(self.heldout), "lam": self.lam,
                "seq_len": self.seq_len, "n_boot": self.n_boot, "seed": self.boot_seed,
                "measure_boundary": self.measure_boundary}
        if self.lens.kind != "logit":
            args["lens"] = self.lens.digest
        if self.max_tokens is not None:
            args["max_tokens"] = self.max_tokens
        return args


def _check_methods(methods: Any) -> list[str]:
    """``methods`` as a list of registered recovery methods, each once."""
    if isinstance(methods, str):
        methods = [methods]
    try:
        methods = list(METHODS.check(methods, allow_empty=True))
    except RecoveryError as e:
        raise PhaseCutsError(str(e)) from None
    if not methods:
        raise PhaseCutsError(f"methods is empty; choose from {METHODS.names()}")
    if len(set(methods)) != len(methods):
        raise PhaseCutsError(f"methods {methods} repeat a method; list each once")
    return methods


def _setup(model: ModelLike, task: TaskLike, n: int, methods: Any, seeds: Any, placement: Any, calibration: Any,
           heldout: Any, lam: Any, measure_boundary: Any, out: Any, seq_len: Any, batch_size: Any, max_tokens: Any,
           n_boot: Any, boot_seed: Any, reuse_prefix: Any, progress: bool, lens: Any) -> _Setup:
    """Validation: every argument checked (before any model work where possible) and loaded."""
    checks.integer("n", n, minimum=1, error=PhaseCutsError, what="blocks per cut")
    checks.bootstrap(n_boot, boot_seed, PhaseCutsError, seed_name="boot_seed")
    checks.batching(batch_size, max_tokens, PhaseCutsError)
    check_seq_len(seq_len)
    checks.flag("measure_boundary", measure_boundary, error=PhaseCutsError)
    checks.flag("reuse_prefix", reuse_prefix, error=PhaseCutsError)
    checks.number("lam", lam, minimum=0, optional=True, error=PhaseCutsError, what="ridge of the fits")
    checks.out_folder("out", out, error=PhaseCutsError)
    for where in _placements(placement).values():  # a bad placement fails here, not after the dense trace
        if where == "spread":  # every distinct one of SPREAD, each a valid placement of select_blocks
            continue
        try:
            check_placement_arg(where)
        except PruningError as e:
            raise PhaseCutsError(f"placement={placement!r}: {e}") from None
    view = as_view(model)
    if view.removed or view.operators or view.branch_operators:
        raise PhaseCutsError(f"compare_phase_cuts needs the dense model, got the pruned view {view.name}; pass view.base")
    base = view.base
    if n >= base.n_blocks:  # before the dense trace: no cut of n blocks fits in a phase
        raise PhaseCutsError(f"n must be an int in 1..{base.n_blocks - 1} (the model has {base.n_blocks} blocks), got {n}")
    lens_ = resolve_lens(lens, base)
    t = task if isinstance(task, Task) else load_task(task)
    methods = _check_methods(methods)
    seed_ids = seed_list(seeds, minimum=0, error=PhaseCutsError)
    cal = load_calibration(calibration)
    held = heldout_texts() if heldout is None else load_calibration(heldout)
    return _Setup(base=base, task=t, lens=lens_, n=n, methods=methods, seeds=seed_ids, placement=placement,
                  calibration=cal, heldout=held, lam=lam, measure_boundary=measure_boundary, seq_len=seq_len,
                  batch_size=batch_size, max_tokens=max_tokens, n_boot=n_boot, boot_seed=boot_seed, progress=progress,
                  cache=PrefixCache() if reuse_prefix else None)


class _Dense:
    """The dense model's transition and perplexity, recorded once into the prefix cache (when there is one)."""

    def __init__(self, su: _Setup) -> None:
        self.su, self.view, self.recorded = su, ModelView(su.base), False

    def record(self, check: bool) -> tuple[Transition, float]:
        su, cache = self.su, self.su.cache
        if cache is not None:
            cache.recording = True
        tr = decision_trace(self.view, su.task, n_boot=su.n_boot, boot_seed=su.boot_seed, cache=cache, progress=su.progress,
                            lens=su.lens, max_tokens=su.max_tokens).transition()
        if check:  # fail before the perplexity pass when the cuts cannot be made
            phase_cuts(self.view, tr, su.n, placement=su.placement, seeds=su.seeds)
        ppl = perplexity(self.view, su.heldout, seq_len=su.seq_len, batch_size=su.batch_size,
                         max_tokens=su.max_tokens, cache=cache)
        if cache is not None:
            cache.recording = False  # from here on, replay the dense prefixes and record nothing
        self.recorded = True
        return tr, ppl

    def load_or_record(self, folder: Any) -> tuple[Transition, float]:
        def compute() -> PhaseCutsDense:
            tr, ppl = self.record(True)
            return PhaseCutsDense(transition=tr, perplexity=ppl)

        dense = load_or_compute(folder, "dense", compute, lambda got: isinstance(got, PhaseCutsDense))
        return dense.transition, dense.perplexity


def _plan(cuts: list[Cut], methods: list[str]) -> tuple[list[tuple[Cut, str]], list[dict[str, Any]]]:
    """Planning: every (cut, method) to fit, and those a method refuses (with its reason)."""
    plan, skipped = [], []
    for c in cuts:
        for m in methods:
            reason = get_method(m).refuses(c.span)
            if reason:
                skipped.append({"cut": c.key, "method": m, "reason": reason, "start": c.start})
            else:
                plan.append((c, m))
    return plan, skipped


def _fit_units(su: _Setup, todo: list[tuple[Cut, str]], dense: _Dense, folder: Any, n_cal: int) -> dict:
    """Fitting: the statistics of every span in one or two dense passes, then each (cut, method) unit, saved
    into ``folder`` as soon as it is done."""
    base, done = su.base, {}
    if not todo:
        return done
    if n_cal < MIN_TOKENS_PER_DIM * base.d_model and any(get_method(m).fitted for _, m in todo):
        warnings.warn(f"only {n_cal} calibration tokens for a {base.d_model}-wide model: an unconstrained d x d "
                      f"operator will fit them too well; pass at least {MIN_TOKENS_PER_DIM * base.d_model} tokens",
                      stacklevel=3)
    stats = _all_stats(base, todo, su.calibration, su.seq_len, su.batch_size, su.max_tokens)
    if su.cache is not None and not dense.recorded:
        dense.record(False)
    for c, m in todo:
        u = _run_unit(su, c, m, stats[c.span])
        done[(c.key, c.start, m)] = u
        if folder is not None:
            folder.save(_unit_name(c, m), u)
    return done


def _run_unit(su: _Setup, c: Cut, m: str, st: SpanStats) -> CutResult:
    """One cut recovered with one method: fitted from ``st``, traced, its perplexity (and boundary) measured."""
    rec = fit_recovery(ModelView(su.base, tuple(c.blocks)), None, m, lam=su.lam, stats={c.span: st})
    trace = decision_trace(rec, su.task, n_boot=su.n_boot, boot_seed=su.boot_seed, cache=su.cache, progress=su.progress,
                           lens=su.lens, max_tokens=su.max_tokens)
    ppl = perplexity(rec, su.heldout, seq_len=su.seq_len, batch_size=su.batch_size, max_tokens=su.max_tokens,
                     cache=su.cache)
    measured = None
    if su.measure_boundary:
        measured = float(boundary_error(rec, su.heldout, seq_len=su.seq_len, batch_size=su.batch_size,
                                        max_tokens=su.max_tokens).relative[0])
    pos = transition_index(trace.margins)
    fe = rec.fit_error
    return CutResult(cut=c.kind, seed=c.seed, blocks=c.blocks, method=m, curve_blocks=np.asarray(trace.blocks),
                     margins=trace.margins, margin_ci=trace.margin_ci, accuracy=trace.accuracy,
                     accuracy_ci=trace.accuracy_ci, item_margins=trace.item_margins[:, -1].copy(),
                     item_correct=trace.correct[:, -1].copy(), boundary_mse=float(fe.mse[0]),
                     boundary_relative=float(fe.relative[0]), boundary_measured=measured, perplexity=float(ppl),
                     transition=None if pos is None else int(trace.blocks[pos]), lam=float(rec.lam[c.span]),
                     n_tokens=int(st.n))


def _renamed(new: Any, old: Any, new_name: str, old_name: str, default: Any) -> Any:
    """The value of a renamed keyword: ``old`` (given under its deprecated name, already warned about) or ``new``."""
    if old is None:
        return new
    if new is not default and new != old:
        raise PhaseCutsError(f"{old_name}= is the old name of {new_name}=; pass only {new_name}=")
    return old


@scheduled
def compare_phase_cuts(
    model: ModelLike,
    task: TaskLike,
    n: int,
    *,
    methods: Sequence[str] = DEFAULT_METHODS,
    seeds: int | Sequence[int] = 5,
    placement: Any = "spread",
    calibration: Any = None,
    heldout: Any = None,
    lam: float | None = None,
    measure_boundary: bool = False,
    out: str | Path | None = None,
    seq_len: int = 256,
    batch_size: int | None = None,
    max_tokens: int | None = None,
    n_boot: int = N_BOOT,
    boot_seed: int = 0,
    reuse_prefix: bool = True,
    progress: bool = False,
    lens: Any = None,
    seed: int | None = None,
    perplexity_texts: Any = None,
) -> PhaseCuts:
    """Cut ``n`` contiguous blocks inside the silent phase, inside the decisive phase (at several placements in each)
    and at random;
    recover each cut with each method; measure the decision and perplexity of every combination.

    Args:
        model: the *dense* model (a :class:`~phaselens.Model` or anything ``load_model`` takes).
        task: the task whose phases are cut (a :class:`~phaselens.Task` or spec).
        n: blocks per cut.
        methods: registered recovery methods (:data:`phaselens.METHODS`; ``"identity"`` is plain pruning; add
            your own with :func:`phaselens.register_method`). A cut a method refuses (ReplaceMe at a cut that
            starts at block 0) is listed in ``result.skipped`` with the reason.
        seeds: number of random control cuts (seeds ``0..seeds-1``) or a list of seeds.
        placement: where the phase cuts sit: ``"spread"`` (default): several cuts per phase, ``"adjacent"`` to the
            transition, the ``"center"`` of the phase and its ``"far"`` end, each distinct one once (a phase with
            room for fewer starts gets fewer; :attr:`PhaseCuts.placement_notes` says where); or one of those names
            (one cut per phase; ``"adjacent"`` was the default before 0.4.0), or a pair ``(silent, decisive)`` of
            names or block indices (the first cut block), e.g. ``(3, "adjacent")``. :meth:`PhaseCuts.effects`
            needs at least 2 placements per phase.
        calibration: text the operators are fitted on (default: the bundled fit passages).
        heldout: text perplexity is measured on (default: the bundled held-out passages).
        lam: ridge of the least-squares fits (default: a tiny multiple of ``tr(X^T X)/d``).
        measure_boundary: also measure each recovered model's boundary error on the held-out text
            (two extra passes per unit).
        out: folder; every finished (cut, method) is written there and a rerun skips it.
        batch_size, max_tokens: sequences and padded tokens per forward pass (default: no cap / the runner's).
        n_boot, boot_seed: bootstrap resamples and their seed (the same resamples for every unit, so
            intervals of different cuts are paired).
        reuse_prefix: compute each recovered model only from its first changed block, replaying the
            dense model's stored block inputs before it (the same numbers, less time).
        lens: the lens the transition and every curve are read with (``"logit"``, ``"linear"``, ``"tuned"``, a
            saved lens's path or a :class:`~phaselens.Lens` of the dense model).
        seed, perplexity_texts: deprecated names of ``boot_seed`` and ``heldout``.

    Returns:
        a :class:`PhaseCuts`.
    """
    if seed is not None:
        warn_renamed("seed", "boot_seed", "compare_phase_cuts")
    if perplexity_texts is not None:
        warn_renamed("perplexity_texts", "heldout", "compare_phase_cuts")
    boot_seed = _renamed(boot_seed, seed, "boot_seed", "seed", 0)
    heldout = _renamed(heldout, perplexity_texts, "heldout", "perplexity_texts", None)
    su = _setup(model, task, n, methods, seeds, placement, calibration, heldout, lam, measure_boundary, out, seq_len,
                batch_size, max_tokens, n_boot, boot_seed, reuse_prefix, progress, lens)
    dense = _Dense(su)
    with run_folder(out, "phase_cuts", su.run_args(), "a phase-cut run") as folder:
        tr, dense_ppl = dense.load_or_record(folder)
        cuts = phase_cuts(dense.view, tr, su.n, placement=su.placement, seeds=su.seeds)
        plan, skipped = _plan(cuts, su.methods)
        done = {}
        if folder is not None:
            for c, m in plan:
                u = folder.load(_unit_name(c, m))
                if isinstance(u, CutResult):
                    done[(c.key, c.start, m)] = u
        n_cal = n_tokens(su.base, su.calibration, su.seq_len)
        todo = [(c, m) for c, m in plan if (c.key, c.start, m) not in done]
        done.update(_fit_units(su, todo, dense, folder, n_cal))
    return _assemble(su, tr, dense_ppl, cuts, [done[(c.key, c.start, m)] for c, m in plan], skipped, n_cal)


def _assemble(su: _Setup, tr: Transition, dense_ppl: float, cuts: list[Cut], units: list[CutResult],
              skipped: list[dict[str, Any]], n_cal: int) -> PhaseCuts:
    """Assembly: the :class:`PhaseCuts` of a finished run."""
    t = su.task
    return PhaseCuts(model=su.base.name, task=t.name, format=t.format, n_blocks=su.base.n_blocks, n=cuts[0].n,
                     placement=su.placement, methods=su.methods, seeds=su.seeds, transition=tr,
                     dense_perplexity=dense_ppl, cuts=cuts, units=units, skipped=skipped, calibration_tokens=n_cal,
                     calibration_passages=len(su.calibration), perplexity_passages=len(su.heldout), n_boot=su.n_boot,
                     seed=su.boot_seed, answers=_answers_of(t), lens=su.lens.name)


def _answers_of(task: Task) -> np.ndarray:
    return np.asarray([it.answer for it in task.items])


__all__ = ["CUT_KINDS", "DEFAULT_METHODS", "WHOLE_STREAM", "Cut", "CutResult", "PhaseCuts", "compare_phase_cuts",
           "phase_cuts", "random_start"]
