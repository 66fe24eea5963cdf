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
from ..errors import PhaseCutsError
from ..perplexity import perplexity
from ..phases import transition_index
from ..pruning import select_blocks
from ..recovery import METHODS, fit_recovery, span_stats
from ..recovery.boundary import boundary_error
from ..recovery.fit import MIN_TOKENS_PER_DIM
from ..recovery.stats import SpanStats
from ..results import Record
from ..resume import digest, run_folder
from ..runner import PrefixCache
from ..stats import seed_list
from ..tasks import Task, load_task
from ..trace import N_BOOT, Transition, decision_trace
from ..view import ModelView, as_view
from .phase_cuts_result import CUT_KINDS, DEFAULT_METHODS, WHOLE_STREAM, Cut, CutResult, PhaseCuts
from ..types import ModelLike, TaskLike
from ..runner.layered import scheduled  # schedule= / act_budget= / act_store= (issue 24)

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
            raise PhaseCutsError(f"the {kind} cut: {e}") from e
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


def _all_stats(base, todo: list[tuple[Cut, str]], texts: list[str], seq_len: int,
               batch_size: int | None) -> dict[tuple[int, int], SpanStats]:
    """Statistics of every distinct span in ``todo`` from as few dense passes as possible."""
    spans = sorted({c.span for c, _ in todo})
    if not spans:
        return {}
    lp = any(m == "linearpatch" for _, m in todo)
    kw = dict(seq_len=seq_len, batch_size=batch_size, linearpatch=lp)
    if not any(m == "replaceme" for _, m in todo):
        return span_stats(base, spans, texts, **kw)
    at_zero = [sp for sp in spans if sp[0] == 0]
    rest = [sp for sp in spans if sp[0] > 0]
    out = span_stats(base, rest, texts, branch=True, **kw) if rest else {}
    if at_zero:  # ReplaceMe's statistics need a block before the span: these get a plain pass
        out.update(span_stats(base, at_zero, texts, **kw))
    return out


def _unit_name(cut: Cut, method: str) -> str:
    return f"unit_{cut.key}_{cut.start}-{cut.start + cut.n}_{method}"


@dataclass
class PhaseCutsDense(Record):
    transition: Transition
    perplexity: float


@scheduled
def compare_phase_cuts(
    model: ModelLike,
    task: TaskLike,
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
    batch_size: int | None = None,
    n_boot: int = N_BOOT,
    seed: int = 0,
    reuse_prefix: bool = True,
    progress: bool = False,
    lens: Any = None,
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
        lens: the lens the transition and every curve are read with (``"logit"``, ``"linear"``, ``"tuned"``, a
            saved lens's path or a :class:`~phaselens.Lens` of the dense model).

    Returns:
        a :class:`PhaseCuts`.
    """
    checks.integer("n", n, minimum=1, error=PhaseCutsError, what="blocks per cut")
    checks.bootstrap(n_boot, seed, PhaseCutsError)
    checks.batching(batch_size, None, PhaseCutsError)
    check_seq_len(seq_len)
    checks.flag("measure_boundary", measure_boundary, error=PhaseCutsError)
    checks.flag("reuse_prefix", reuse_prefix, error=PhaseCutsError)
    checks.number("lam", lam, minimum=0, optional=True, error=PhaseCutsError, what="ridge of the fits")
    checks.out_folder("out", out, error=PhaseCutsError)
    view = as_view(model)
    if view.removed or view.operators or view.branch_operators:
        raise PhaseCutsError(f"compare_phase_cuts needs the dense model, got the pruned view {view.name}; pass view.base")
    base = view.base
    L = base.n_layers
    from ..lenses import resolve_lens

    lens_ = resolve_lens(lens, base)
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
    args = {"model": base.name, "fingerprint": base.fingerprint, "task": t.name, "format": t.format, "n_items": len(t),
            "items": digest([[it.id, it.question, list(it.options), it.answer] for it in t.items]),
            "n": int(n) if isinstance(n, (int, np.integer)) else str(n), "placement": placement, "calibration": digest(cal),
            "perplexity_texts": digest(ppl_texts), "lam": lam, "seq_len": seq_len, "n_boot": n_boot, "seed": seed,
            "measure_boundary": measure_boundary}
    if lens_.kind != "logit":
        args["lens"] = lens_.digest
    cache = PrefixCache() if reuse_prefix else None
    dense_view = ModelView(base)
    recorded = False

    def record_dense(check: bool) -> tuple[Transition, float]:
        nonlocal recorded
        if cache is not None:
            cache.recording = True
        tr = decision_trace(dense_view, t, n_boot=n_boot, seed=seed, cache=cache, progress=progress, lens=lens_).transition()
        if check:  # fail before the perplexity pass when the cuts cannot be made
            phase_cuts(dense_view, tr, n, placement=placement, seeds=seed_ids)
        ppl = perplexity(dense_view, ppl_texts, seq_len=seq_len, batch_size=batch_size, cache=cache)
        if cache is not None:
            cache.recording = False  # from here on, replay the dense prefixes and record nothing
        recorded = True
        return tr, ppl

    with run_folder(out, "phase_cuts", args, "a phase-cut run") as folder:
        dense = folder.load("dense") if folder is not None else None
        if isinstance(dense, PhaseCutsDense):
            tr, dense_ppl = dense.transition, dense.perplexity
        else:
            tr, dense_ppl = record_dense(True)
            if folder is not None:
                folder.save("dense", PhaseCutsDense(tr, dense_ppl))
        cuts = phase_cuts(dense_view, tr, n, placement=placement, seeds=seed_ids)
        n = cuts[0].n
        skipped, plan = [], []
        for c in cuts:
            for m in methods:
                if m == "replaceme" and c.start == 0:
                    skipped.append({"cut": c.key, "method": m, "reason": "ReplaceMe regresses the MLP branch of the "
                                    "block before the cut, and this cut starts at block 0"})
                else:
                    plan.append((c, m))
        done: dict[tuple[str, str], CutResult] = {}
        if folder is not None:
            for c, m in plan:
                u = folder.load(_unit_name(c, m))
                if isinstance(u, CutResult):
                    done[(c.key, m)] = u
        todo = [(c, m) for c, m in plan if (c.key, m) not in done]
        n_cal = n_tokens(base, cal, seq_len)
        if todo:
            if n_cal < MIN_TOKENS_PER_DIM * base.d_model and any(m != "identity" for _, m in todo):
                warnings.warn(f"only {n_cal} calibration tokens for a {base.d_model}-wide model: an unconstrained d x d "
                              f"operator will fit them too well; pass at least {MIN_TOKENS_PER_DIM * base.d_model} tokens",
                              stacklevel=2)
            stats = _all_stats(base, todo, cal, seq_len, batch_size)
            if cache is not None and not recorded:
                record_dense(False)
            for c, m in todo:
                rec = fit_recovery(ModelView(base, tuple(c.blocks)), None, m, lam=lam, stats={c.span: stats[c.span]})
                trace = decision_trace(rec, t, n_boot=n_boot, seed=seed, cache=cache, progress=progress, lens=lens_)
                ppl = perplexity(rec, ppl_texts, seq_len=seq_len, batch_size=batch_size, cache=cache)
                measured = None
                if measure_boundary:
                    measured = float(boundary_error(rec, ppl_texts, seq_len=seq_len, batch_size=batch_size).relative[0])
                pos = transition_index(trace.margins)
                fe = rec.fit_error
                u = CutResult(c.kind, c.seed, c.blocks, m, np.asarray(trace.blocks), trace.margins, trace.margin_ci,
                              trace.accuracy, trace.accuracy_ci, trace.item_margins[:, -1].copy(), trace.correct[:, -1].copy(),
                              float(fe.mse[0]), float(fe.relative[0]), measured, float(ppl),
                              None if pos is None else int(trace.blocks[pos]), float(rec.lam[c.span]), int(stats[c.span].n))
                done[(c.key, m)] = u
                if folder is not None:
                    folder.save(_unit_name(c, m), u)
    units = [done[(c.key, m)] for c, m in plan]
    return PhaseCuts(base.name, t.name, t.format, L, n, placement, methods, seed_ids, tr, dense_ppl, cuts, units, skipped,
                     n_cal, len(cal), len(ppl_texts), n_boot, seed, _answers_of(t), lens_.name)


def _answers_of(task: Task) -> np.ndarray:
    return np.asarray([it.answer for it in task.items])


__all__ = ["CUT_KINDS", "DEFAULT_METHODS", "WHOLE_STREAM", "Cut", "CutResult", "PhaseCuts", "compare_phase_cuts",
           "phase_cuts", "random_start"]
