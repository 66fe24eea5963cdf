"""The ``recovery`` study run kind: one job is :func:`~phaselens.compare_recovery` on the job's task (the Ghosted
Layers paper's main table: one cut recovered by every method, accuracy on the task and held-out perplexity).

The cut is ``blocks`` (the block-list grammar: ``"20-26"``) or ``prune``: a share of the blocks in ``(0, 1)``,
rounded to the nearest whole block with halves up (25% of 28 blocks is 7, 12.5% of 28 is 4, 25% of 18 is 5), or a
number of blocks ``>= 1``, chosen by ``criterion`` (default ``"angular"``, as LLM-Streamline) on the calibration
text. The index gets each method's accuracy and perplexity and Ghosted Layers' paired difference against its best
rival (:func:`recovery_scalars`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .. import checks
from ..calibration import load_calibration
from ..errors import EffectError, RunFolderError, StudyError
from ..experiments import DEFAULT_METHODS
from ..experiments.recovery_comparison import (REFERENCE, RecoveryComparison, compare_recovery, recovery_criteria,
                                               refusals)
from ..resume import digest
from ..view import as_view
from .runs import (_TEXTS, HELDOUT_KEYS, RunKind, choices, cut_size, int_at_least, is_ratio, pop_texts,
                   register_run)


def recovery_scalars(r: RecoveryComparison) -> dict[str, Any]:
    """The index numbers of a recovery job (its first task): ``accuracy_<method>``, ``perplexity_<method>``,
    ``dense_accuracy``, ``dense_perplexity``, ``cut_n``, ``cut`` (the blocks, ``"20-26"`` or ``"3,7,9"``),
    ``n_items``, ``n_passages``; and, when ``"ghosted"`` was compared with another method, its best rival by
    accuracy (``rival_accuracy``: the other method of highest accuracy) with ``ghosted_gain_accuracy`` (ghosted −
    rival accuracy, paired over items) and by perplexity (``rival_perplexity``: lowest perplexity) with
    ``ghosted_gain_perplexity`` (rival − ghosted perplexity, paired over passages), each with ``_lo`` / ``_hi``
    (the effects' bootstrap interval; NaN when an arm is too small for an effect). Positive gains: Ghosted Layers
    is better. A method the result skipped (it cannot recover the chosen cut: :attr:`RecoveryComparison.skipped`)
    has NaN accuracy and perplexity and is no rival."""
    t = r.tasks[0]
    b = list(r.blocks)
    contiguous = b == list(range(b[0], b[-1] + 1))
    out: dict[str, Any] = {"n_blocks": int(r.n_blocks), "cut_n": len(b), "criterion": r.criterion,
                           "cut": f"{b[0]}-{b[-1]}" if contiguous and len(b) > 1 else ",".join(map(str, b)),
                           "n_items": t.n_items, "n_passages": r.n_passages,
                           "dense_accuracy": float(t.dense_correct.mean()), "dense_perplexity": r.dense_perplexity}
    for m in r.methods:
        out[f"accuracy_{m}"] = r.accuracy(m, t.task)
        out[f"perplexity_{m}"] = r.perplexity(m)
    for m in r.skipped:
        out[f"accuracy_{m}"] = out[f"perplexity_{m}"] = float("nan")
    rivals = [m for m in r.methods if m != REFERENCE]
    if REFERENCE not in r.methods or not rivals:
        return out
    best_acc = max(rivals, key=lambda m: (r.accuracy(m, t.task), -rivals.index(m)))
    best_ppl = min(rivals, key=lambda m: (r.perplexity(m), rivals.index(m)))
    out["rival_accuracy"], out["rival_perplexity"] = best_acc, best_ppl
    out["ghosted_gain_accuracy"] = r.accuracy(REFERENCE, t.task) - r.accuracy(best_acc, t.task)
    out["ghosted_gain_perplexity"] = r.perplexity(best_ppl) - r.perplexity(REFERENCE)
    for key in ("ghosted_gain_accuracy", "ghosted_gain_perplexity"):
        out[f"{key}_lo"] = out[f"{key}_hi"] = float("nan")
    try:
        effects = {e.name: e for e in r.effects()}
    except EffectError:  # fewer than 5 passages or items: the differences stand without an interval
        return out
    for key, name in (("ghosted_gain_accuracy", f"{REFERENCE} − {best_acc} accuracy"),
                      ("ghosted_gain_perplexity", f"{best_ppl} − {REFERENCE} perplexity")):
        e = effects.get(name)
        if e is not None:
            out[f"{key}_lo"], out[f"{key}_hi"] = float(e.lo), float(e.hi)
    return out


@register_run("recovery")
class RecoveryRun(RunKind):
    """``compare_recovery(model, [task], blocks | n=cut_size(prune), criterion=, methods=, ...)``."""

    fixed = ("model", "tasks", "n", "boot_seed", "out")
    listy = ("blocks", "methods", "calibration", *HELDOUT_KEYS)
    study = {**_TEXTS, "prune": (lambda v: is_ratio(v) or int_at_least(1)(v), None)}

    def fn(self):
        return compare_recovery

    def choices(self):
        return {**choices(), "criterion": recovery_criteria()}

    def check(self, params, where):
        super().check(params, where)
        if ("blocks" in params) == ("prune" in params):
            raise StudyError(f"{where}: give blocks (the cut, e.g. \"20-26\") or prune (a share of the blocks in (0, 1), "
                             "or a number of blocks, chosen by criterion), exactly one of them")
        if params.get("blocks") == "last":
            raise StudyError(f"{where}.blocks = 'last' is not a cut; give block indices, e.g. \"20-26\"")
        if "criterion" in params and "blocks" in params:
            raise StudyError(f"{where}: criterion chooses the cut of prune; with blocks given it has nothing to choose")
        if params.get("methods") is not None and len(set(params["methods"])) != len(params["methods"]):
            raise StudyError(f"{where}.methods = {params['methods']!r} repeats a method; list each once")
        if "blocks" in params:  # a given cut is known now: a method that cannot recover it is refused before any load
            cut = sorted(set(checks.block_list(params["blocks"], "blocks", StudyError)))
            bad = refusals(list(params.get("methods") or DEFAULT_METHODS), cut)
            if bad:
                raise StudyError(f"{where}: blocks = {params['blocks']!r} cannot be recovered by "
                                 + "; ".join(f"{m} ({why})" for m, why in bad.items())
                                 + "; leave those methods out or cut other blocks")

    def run(self, model, task, seed, params, scratch):
        """``compare_recovery(n=cut_size(prune), criterion=)``: a method refusing the chosen cut (ReplaceMe at a cut
        that starts at block 0, which BI or SLEB may choose) is left out of this job, and named in the result's
        ``skipped``, instead of failing it. Resumable: the cut, each model's held-out NLL and answers are saved as
        they finish in a folder of the cut's own (its task jobs share it), or the job's scratch folder when a job of
        the same cut on another task holds that one."""
        p = dict(params)
        cal, held = pop_texts(p)
        share, crit = p.pop("prune", None), p.pop("criterion", "angular")
        methods = list(p.pop("methods", None) or DEFAULT_METHODS)
        base = as_view(model).base
        kw = dict(boot_seed=seed, calibration=load_calibration(cal), heldout=held, methods=methods, **p)
        if share is not None:
            kw.update(n=cut_size(share, base.n_blocks), criterion=crit)
        # one folder per cut, shared by its jobs on every task (beside the jobs' own folders in the study's scratch
        # root): a cut's later task jobs read its selection and held-out numbers back, in any process, in any order
        shared = Path(scratch).parent / "recovery" / digest([base.fingerprint, str(base.device), str(base.dtype), params])
        try:
            return compare_recovery(model, [task], out=shared, **kw)
        except RunFolderError:  # held by this cut's job on another task running beside this one: a folder of its own
            return compare_recovery(model, [task], out=scratch, **kw)

    def scalars(self, r):
        return recovery_scalars(r)


__all__ = ["RecoveryRun", "cut_size", "recovery_criteria", "recovery_scalars"]
