"""The recovery comparison (Ghosted Layers paper, main table): one contiguous cut recovered by every method, task
accuracy and held-out perplexity of each, and each method's effect against Ghosted Layers.

:func:`compare_recovery` cuts ``blocks`` (or ``n`` blocks chosen by ``criterion``) from the dense model, fits every
method on the same calibration tokens, and measures on the same held-out passages and task items:

* per passage, the next-token NLL summed over its predicted tokens and their count (:func:`~phaselens.passage_nll`),
  so perplexity ``exp(sum NLL / sum tokens)`` can be resampled **paired over passages**;
* per item, the final-layer margin and correctness, resampled **paired over items**.

:meth:`RecoveryComparison.effects` gives, for every method other than the reference (``"ghosted"``),
``method − ghosted`` perplexity and ``ghosted − method`` accuracy per task (positive: Ghosted Layers is better).

With ``n=`` a method that cannot recover the chosen cut (ReplaceMe at a cut that starts at block 0) is left out and
named, with its reason, in :attr:`RecoveryComparison.skipped`; a given ``blocks=`` cut it cannot recover is an error.
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from .. import checks
from ..calibration import check_seq_len, heldout_texts, load_calibration
from ..effects import Effect, hierarchical_effect, paired_effect
from ..errors import EffectError, NotFoundError, RecoveryError
from ..final_readout import AnswersUnit
from ..perplexity import passage_nll
from ..pruning import CRITERIA, prune, select_blocks
from ..records import Record
from ..resume import digest, load_or_compute, run_folder
from ..recovery import METHODS, fit_recovery, get_method
from ..results import Result
from ..runner import PrefixCache
from ..tasks import Task, load_task
from ..trace import N_BOOT, decision_trace, prompts_digest
from ..types import ModelLike
from ..view import as_view, fmt_blocks, spans_of

#: the method every other is compared against
REFERENCE = "ghosted"


@dataclass
class RecoveryTask(Record):
    """One task measured on the dense model and on every recovered model.

    Shapes: ``M`` methods (in :attr:`RecoveryComparison.methods` order), ``N`` items.

    Attributes:
        margins, correct: ``[M, N]`` final-layer margin and correctness (0/1) per method and item.
        dense_margins, dense_correct: ``[N]`` the same for the dense model.
        item_ids: the items' ids (the paired contrasts align on them).
    """

    task: str
    format: str
    item_ids: list
    margins: np.ndarray
    correct: np.ndarray
    dense_margins: np.ndarray
    dense_correct: np.ndarray

    @property
    def n_items(self) -> int:
        return int(self.dense_margins.shape[0])


@dataclass
class RecoveryComparison(Result):
    """Every recovery method on one contiguous cut of one model: accuracy per task and held-out perplexity.

    Shapes: ``M`` methods, ``P`` held-out passages.

    Attributes:
        blocks: the cut blocks (original indices); ``criterion`` how they were chosen (``"given"`` when passed).
        methods: the recovery methods (``"identity"`` = plain pruning).
        nll, tokens: ``[M, P]`` per-passage summed next-token NLL and ``[P]`` predicted tokens per passage;
            ``dense_nll [P]`` for the dense model.
        fit_relative_error: ``[M]`` each operator's relative boundary error on the calibration tokens.
        tasks: one :class:`RecoveryTask` per task.
        skipped: ``{method: why}`` for each asked-for method left out because it cannot recover the cut chosen by
            ``criterion`` (ReplaceMe at a cut that starts at block 0); not in :attr:`methods`, no numbers.
    """

    version = 2  # version 1 had no skipped (read as no method skipped)

    model: str
    n_blocks: int
    blocks: list
    criterion: str
    methods: list
    nll: np.ndarray
    tokens: np.ndarray
    dense_nll: np.ndarray
    fit_relative_error: np.ndarray
    tasks: list = field(default_factory=list)
    calibration_passages: int = 0
    n_boot: int = N_BOOT
    seed: int = 0
    skipped: dict = field(default_factory=dict)

    @classmethod
    def upgrade(cls, doc, version):
        if version == 1:  # written before methods could be skipped: none was
            return {**doc, "skipped": {}, "__v__": 2}
        return None

    # -- access ---------------------------------------------------------------------------
    def _m(self, method: str) -> int:
        if method in self.skipped:
            raise NotFoundError(f"method {method!r} was skipped: {self.skipped[method]}")
        if method not in self.methods:
            raise NotFoundError(f"method {method!r} was not compared; methods: {self.methods}")
        return self.methods.index(method)

    def _t(self, task: str | None) -> RecoveryTask:
        if task is None:
            return self.tasks[0]
        for t in self.tasks:
            if t.task == task:
                return t
        raise NotFoundError(f"no task {task!r}; tasks: {[t.task for t in self.tasks]}")

    @property
    def cut(self) -> str:
        """The cut blocks as runs, e.g. ``"3,12-17,25"`` (a criterion's cut need not be contiguous)."""
        return fmt_blocks(self.blocks)

    @property
    def n_passages(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def dense_perplexity(self) -> float:
        return float(math.exp(self.dense_nll.sum() / self.tokens.sum()))

    def perplexity(self, method: str) -> float:
        """Held-out perplexity of ``method``: ``exp(sum NLL / sum tokens)`` over the passages."""
        return float(math.exp(self.nll[self._m(method)].sum() / self.tokens.sum()))

    def accuracy(self, method: str, task: str | None = None) -> float:
        """Final-layer accuracy of ``method`` on ``task`` (default the first)."""
        return float(self._t(task).correct[self._m(method)].mean())

    # -- effects --------------------------------------------------------------------------
    def effects(self, reference: str = REFERENCE, *, n_boot: int | None = None, boot_seed: int | None = None,
                level: float = 0.95) -> list[Effect]:
        """Each method against ``reference``: ``method − reference`` perplexity (paired percentile bootstrap over
        held-out passages, each passage's NLL and token count resampled together) and, per task,
        ``reference − method`` accuracy (paired bootstrap over items). Positive means ``reference`` is better;
        both predict ``"positive"``."""
        if reference not in self.methods:
            raise EffectError(f"the reference arm {reference!r} was not compared (methods {self.methods}); pass "
                              "reference= one of them")
        n_boot = self.n_boot if n_boot is None else n_boot
        boot_seed = self.seed if boot_seed is None else boot_seed
        kw = dict(predicted="positive", level=level, n_boot=n_boot, boot_seed=boot_seed, model=self.model)
        r = self._m(reference)
        out = []
        for m in self.methods:
            if m == reference:
                continue
            k = self._m(m)
            arms = {m: self.nll[k], reference: self.nll[r], "tokens": self.tokens.astype(float)}
            out.append(hierarchical_effect(
                arms, name=f"{m} − {reference} perplexity", dims=("passages",), require=(), task="held-out text",
                statistic=lambda mm, m=m: np.exp(mm[m] / mm["tokens"]) - np.exp(mm[reference] / mm["tokens"]), **kw))
            for t in self.tasks:
                out.append(paired_effect(t.correct[r].astype(float), t.correct[k].astype(float),
                                         name=f"{reference} − {m} accuracy", arms=(reference, m), task=t.task,
                                         format=t.format, **kw))
        return out

    # -- tables and figures ---------------------------------------------------------------
    def to_pandas(self):
        """One row per (method, task): accuracy, mean final margin, perplexity, fit error (dense rows first)."""
        import pandas as pd

        rows = []
        for t in self.tasks:
            rows.append({"method": "dense", "task": t.task, "accuracy": float(t.dense_correct.mean()),
                         "margin": float(t.dense_margins.mean()), "perplexity": self.dense_perplexity,
                         "fit_relative_error": 0.0, "n_items": t.n_items, "n_passages": self.n_passages})
            for k, m in enumerate(self.methods):
                rows.append({"method": m, "task": t.task, "accuracy": float(t.correct[k].mean()),
                             "margin": float(t.margins[k].mean()), "perplexity": self.perplexity(m),
                             "fit_relative_error": float(self.fit_relative_error[k]), "n_items": t.n_items,
                             "n_passages": self.n_passages})
        df = pd.DataFrame(rows)
        df["model"], df["cut"] = self.model, self.cut
        return df

    def summary(self) -> str:
        tasks = "; ".join(f"{t.task} ({t.format}, {t.n_items} items): " + ", ".join(
            f"{m} {t.correct[k].mean():.3f}" for k, m in enumerate(self.methods)) + f" (dense {t.dense_correct.mean():.3f})"
            for t in self.tasks)
        ppl = ", ".join(f"{m} {self.perplexity(m):.2f}" for m in self.methods)
        skipped = "".join(f" Skipped {m}: {why}." for m, why in self.skipped.items())
        return (f"{self.model}: cut blocks {self.cut} ({len(self.blocks)} of {self.n_blocks}, {self.criterion}), "
                f"recovered with {', '.join(self.methods)} on {self.calibration_passages} calibration passages. "
                f"Final-layer accuracy: {tasks}. Held-out perplexity on {self.n_passages} passages: {ppl} "
                f"(dense {self.dense_perplexity:.2f}).{skipped}")

    def plot(self, **kw: Any):
        """Plotly figure: accuracy per task and held-out perplexity (log), one bar per method, dense dotted."""
        from ..plots.recovery import recovery_comparison_figure

        return recovery_comparison_figure(self, **kw)


def refusals(methods: Sequence[str], blocks: Sequence[int]) -> dict[str, str]:
    """``{method: why}`` for each of ``methods`` that cannot recover the cut ``blocks`` (``refuses`` of a span of
    the cut; ReplaceMe at a cut that starts at block 0)."""
    out = {}
    for m in methods:
        for span in spans_of(list(blocks)):
            why = get_method(m).refuses(span)
            if why:
                out[m] = f"span {span}: {why}"
                break
    return out


@dataclass
class CutUnit(Record):
    """A resumable comparison's cut: the blocks, how they were chosen, the methods left out (and why)."""

    blocks: list
    criterion: str
    skipped: dict


@dataclass
class HeldoutUnit(Record):
    """One model's held-out text: ``nll [P]`` summed next-token NLL per passage, ``tokens [P]`` predicted tokens,
    ``fit_relative_error`` its operator's relative boundary error on the calibration tokens (0 for the dense model)."""

    nll: np.ndarray
    tokens: np.ndarray
    fit_relative_error: float


# The fitted views and held-out NLL of the latest cuts of the current model, keyed by content: one cut compared on
# several tasks in separate calls (a study's one job per task, in any order) fits and scores the held-out text once.
# An entry is filled as its parts are asked for (a resumed comparison asks only for what its folder lacks).
# Only the current model's entries are kept, so no other model stays in memory through them; at most _FITS_KEPT
# cuts and _FITS_BYTES of operators (the newest entry always stays).
_FITS: OrderedDict[tuple, dict] = OrderedDict()
_FITS_KEPT = 64
_FITS_BYTES = 1 << 30
_FITS_OWNER: list[int] = [0]


def _operator_bytes(views: dict | None) -> int:
    return sum(w.numel() * w.element_size() for v in (views or {}).values()
               for w in (*v.operators.values(), *v.branch_operators.values()))


class _DenseFirst(PrefixCache):
    """The prefix cache of one cut's models on one text (a task's prompts, the held-out passages): the first model
    that runs (the dense one, or the first still to be measured when a resumed comparison read the dense numbers back)
    records every block's input, and every later model of the cut replays the inputs of the blocks before the cut
    (the views differ from there on, so recording theirs would only churn the store)."""

    def __init__(self) -> None:
        super().__init__()
        self.used = False

    def next_model(self) -> "_DenseFirst":
        """Set the cache for the next model's passes: recording for the first, replaying after."""
        self.recording, self.used = not self.used, True
        return self


class _CutFits:
    """The fitted views and held-out NLL of one cut, from the kept entry when the model (fingerprint, device,
    dtype), cut, methods (and their registered objects), calibration text, held-out text and batching are the same;
    each part is computed the first time it is asked for."""

    def __init__(self, base: Any, cut: list[int], methods: list[str], cal: list[str], held: list[str],
                 **texts: Any) -> None:
        if _FITS_OWNER[0] != id(base):
            _FITS.clear()
            _FITS_OWNER[0] = id(base)
        key = (base.fingerprint, str(base.device), str(base.dtype), tuple(cut),
               tuple((m, id(METHODS.get(m))) for m in methods), digest(list(cal)), digest(list(held)),
               tuple(sorted(texts.items())))
        self.entry = _FITS.pop(key, None) or {"views": None, "held": {}}
        _FITS[key] = self.entry
        self.base, self.cut, self.methods, self.cal, self.held, self.texts = base, cut, methods, cal, held, texts
        self._evict()

    @staticmethod
    def _evict() -> None:
        while len(_FITS) > 1 and (len(_FITS) > _FITS_KEPT
                                  or sum(_operator_bytes(e["views"]) for e in _FITS.values()) > _FITS_BYTES):
            _FITS.popitem(last=False)

    def view(self, name: str) -> Any:
        """The dense model (``"dense"``) or the cut recovered by method ``name`` (every method fitted at once)."""
        if name == "dense":
            return self.base
        if self.entry["views"] is None:
            self.entry["views"] = dict(fit_recovery(prune(self.base, self.cut), self.cal, self.methods, **self.texts))
            self._evict()
        return self.entry["views"][name]

    def heldout(self, name: str, cache: _DenseFirst | None = None) -> HeldoutUnit:
        """``name``'s per-passage held-out NLL, token counts and fit error (``cache``: the cut's models' prefix cache
        on the held-out text, when its passes may replay the dense prefix)."""
        held = self.entry["held"]
        if name not in held:
            view = self.view(name)
            nll, tokens = passage_nll(view, self.held, cache=cache.next_model() if cache is not None else None,
                                      **self.texts)
            fe = 0.0 if name == "dense" else float(view.fit_error.relative[0])
            held[name] = HeldoutUnit(nll=nll, tokens=tokens, fit_relative_error=fe)
        u = held[name]
        return HeldoutUnit(nll=u.nll.copy(), tokens=u.tokens.copy(), fit_relative_error=u.fit_relative_error)

    def remember(self, name: str, unit: HeldoutUnit) -> None:
        """Keep ``name``'s held-out numbers read back from a folder, for this cut's other comparisons."""
        self.entry["held"].setdefault(name, unit)


def _recovery_args(base: Any, given: list[int] | None, n: int | None, criterion: str, methods: list[str],
                   cal: list[str], held: list[str], seq_len: int) -> dict[str, Any]:
    """The identity of a resumable comparison's folder: the model (weights, where it computes), the cut asked for,
    the methods (and the classes registered under their names) and the texts. Not the tasks: each task's units are
    named by its prompts, so comparisons of one cut on other tasks share the folder (its cut and held-out units)."""
    return {"model": base.name, "fingerprint": base.fingerprint, "device": str(base.device), "dtype": str(base.dtype),
            "blocks": given,
            "n": None if n is None else int(n), "criterion": None if n is None else criterion,
            "methods": [[m, f"{type(get_method(m)).__module__}.{type(get_method(m)).__qualname__}"] for m in methods],
            "calibration": digest(list(cal)), "heldout": digest(list(held)), "seq_len": seq_len}


def compare_recovery(
    model: ModelLike,
    tasks: Any,
    blocks: Any = None,
    *,
    n: int | None = None,
    criterion: str = "angular",
    methods: Sequence[str] | None = None,
    calibration: Any = None,
    heldout: Any = None,
    seq_len: int = 256,
    batch_size: int | None = None,
    max_tokens: int | None = None,
    n_boot: int = N_BOOT,
    boot_seed: int = 0,
    out: str | os.PathLike | None = None,
    reuse_prefix: bool = True,
) -> RecoveryComparison:
    """Cut ``blocks`` (or ``n`` blocks chosen by ``criterion`` on the calibration text) from the dense ``model``,
    recover the cut with every method, and measure each on ``tasks`` and on held-out text.

    Args:
        tasks: a task (or spec) or a list of them.
        blocks: the blocks to cut (``checks.block_list`` grammar: ``"3-5"``, ``[3, 4, 5]``); or ``n=``.
        methods: registered recovery methods (default every built-in; ``"identity"`` is plain pruning). With ``n=``,
            one that cannot recover the chosen cut is left out and named in ``skipped`` (an error when every one is);
            with ``blocks=``, it is an error.
        calibration, heldout: fit text and held-out text (default: the bundled passages).
        n_boot, boot_seed: the effects' bootstrap replicates and seed.
        out: a folder that makes the comparison resumable: the chosen cut, each model's held-out NLL and each
            (model, task)'s answers are saved in ``out/.phaselens/recovery/`` as they finish, so a killed run redoes
            only what was unfinished (the operators are fitted again when a recovered model is still to be measured).
            A comparison of the same cut on other tasks may use the same folder: it reads the cut and the held-out
            numbers back and adds its tasks' answers.
        reuse_prefix: on each task and on the held-out text, the recovered models replay the dense model's block
            inputs before the cut's first block (a :class:`~phaselens.runner.PrefixCache`; the same numbers, a shorter
            forward per model).

    Returns:
        a :class:`RecoveryComparison`.
    """
    if (blocks is None) == (n is None):
        raise RecoveryError("pass exactly one of blocks= (e.g. '10-15') and n= (blocks chosen by criterion=)")
    checks.bootstrap(n_boot, boot_seed, RecoveryError, seed_name="boot_seed")
    checks.batching(batch_size, max_tokens, RecoveryError)
    checks.flag("reuse_prefix", reuse_prefix, error=RecoveryError)
    check_seq_len(seq_len)
    if out is not None and not isinstance(out, (str, os.PathLike)):
        raise RecoveryError(f"out must be a folder path (str or os.PathLike) or None, got {type(out).__name__}")
    if methods is None:
        from .phase_cuts_result import DEFAULT_METHODS

        methods = list(DEFAULT_METHODS)
    methods = [methods] if isinstance(methods, str) else list(methods)
    methods = list(METHODS.check(methods))
    if len(set(methods)) != len(methods):
        raise RecoveryError(f"methods {methods} repeat a method; list each once")
    view = as_view(model)
    if view.removed or view.operators or view.branch_operators:
        raise RecoveryError(f"compare_recovery needs the dense model, got the pruned view {view.name}; pass view.base")
    base = view.base
    ts = [t if isinstance(t, Task) else load_task(t) for t in (tasks if isinstance(tasks, (list, tuple)) else [tasks])]
    if not ts:
        raise RecoveryError("tasks is empty: pass a task or a list of tasks")
    cal = load_calibration(calibration)
    held = heldout_texts() if heldout is None else load_calibration(heldout)
    given = None
    if blocks is not None:
        given = sorted(set(checks.block_list(blocks, "blocks", RecoveryError)))
        bad = [b for b in given if not 0 <= b < base.n_blocks]
        if bad or not given:
            raise RecoveryError(f"blocks {blocks!r}: {bad or 'none'} outside 0..{base.n_blocks - 1}")
    else:
        checks.integer("n", n, minimum=1, error=RecoveryError, what="blocks to cut")
    args = _recovery_args(base, given, n, criterion, methods, cal, held, seq_len) if out is not None else {}
    with run_folder(out, "recovery", args, "a recovery comparison") as folder:

        def unit(name: str, compute: Any) -> Any:  # a finished unit of the folder, or computed (and saved)
            return load_or_compute(folder, name, compute)

        if given is not None:
            chosen = CutUnit(blocks=given, criterion="given", skipped={})
        else:
            key = _cut_key(base, int(n), criterion, cal, methods)
            chosen = _keep_cut(key, unit("cut", lambda: _choose(key, base, int(n), criterion, cal, methods)))
        cut, how, skipped = list(chosen.blocks), chosen.criterion, dict(chosen.skipped)
        methods = [m for m in methods if m not in skipped]
        fits = _CutFits(base, cut, methods, cal, held, seq_len=seq_len, batch_size=batch_size, max_tokens=max_tokens)
        names = ["dense", *methods]
        held_cache = _DenseFirst() if reuse_prefix else None
        heldout_units = [unit(f"heldout_{v}", lambda v=v: fits.heldout(v, held_cache)) for v in names]
        del held_cache  # freed before the tasks' caches fill (each may take up to its memory bound)
        for v, u in zip(names, heldout_units):
            fits.remember(v, u)
        out_tasks = []
        for t in ts:
            # only the model's own answer is compared: one readout per view, not one per block (the same numbers as a
            # full trace's last column, at a fraction of its cost in the continuation format)
            tid = prompts_digest(t)
            cache = _DenseFirst() if reuse_prefix else None
            ans = [unit(f"task_{tid}_{v}", lambda v=v, t=t: _answers(fits.view(v), t, n_boot, boot_seed, max_tokens,
                                                                      cache))
                   for v in names]
            out_tasks.append(RecoveryTask(task=t.name, format=t.format, item_ids=[it.id for it in t.items],
                                          margins=np.stack([a.margins for a in ans[1:]]),
                                          correct=np.stack([a.correct for a in ans[1:]]),
                                          dense_margins=ans[0].margins.copy(), dense_correct=ans[0].correct.copy()))
    return RecoveryComparison(model=base.name, n_blocks=base.n_blocks, blocks=cut, criterion=how, methods=methods,
                              nll=np.stack([u.nll for u in heldout_units[1:]]), tokens=heldout_units[0].tokens.copy(),
                              dense_nll=heldout_units[0].nll.copy(),
                              fit_relative_error=np.array([u.fit_relative_error for u in heldout_units[1:]]),
                              tasks=out_tasks, calibration_passages=len(cal), n_boot=n_boot, seed=boot_seed,
                              skipped=skipped)


# The latest cuts chosen by a criterion, keyed by content (model fingerprint, n, criterion and its registered object,
# calibration text, methods): a cut's other task jobs in a study do not select it again (BI and angular distance
# read every calibration passage; SLEB keeps its own path).
_CUTS: OrderedDict[tuple, CutUnit] = OrderedDict()
_CUTS_KEPT = 256


def _cut_key(base: Any, n: int, criterion: str, cal: list[str], methods: list[str]) -> tuple:
    return (base.fingerprint, str(base.device), str(base.dtype), n, criterion, id(CRITERIA.get(criterion)),
            digest(list(cal)), tuple(methods))


def _keep_cut(key: tuple, chosen: CutUnit) -> CutUnit:
    """Keep ``chosen`` as the newest kept cut (at most ``_CUTS_KEPT``); it is returned."""
    _CUTS.pop(key, None)
    _CUTS[key] = chosen
    while len(_CUTS) > _CUTS_KEPT:
        _CUTS.popitem(last=False)
    return chosen


def recovery_criteria() -> tuple[str, ...]:
    """The criteria a recovery comparison may choose its cut by (``n=``): those that need neither a task nor a seed."""
    return tuple(n for n, c in CRITERIA.items() if not c.needs_task and not c.uses_seed)


def _choose(key: tuple, base: Any, n: int, criterion: str, cal: list[str], methods: list[str]) -> CutUnit:
    """``n`` blocks chosen by ``criterion`` on ``cal``, and the methods that cannot recover them (an error when none
    can); the cut kept under ``key`` when there is one."""
    hit = _CUTS.get(key)
    if hit is not None:
        return CutUnit(blocks=list(hit.blocks), criterion=hit.criterion, skipped=dict(hit.skipped))
    cut = [int(b) for b in select_blocks(base, n, criterion, calibration=cal)]
    skipped = refusals(methods, cut)
    if len(skipped) == len(methods):
        raise RecoveryError(f"no method of {methods} can recover the cut {cut} chosen by {criterion}: "
                            + "; ".join(f"{m} ({why})" for m, why in skipped.items()))
    return CutUnit(blocks=cut, criterion=criterion, skipped=skipped)


def _answers(view: Any, t: Task, n_boot: int, boot_seed: int, max_tokens: int | None,
             cache: _DenseFirst | None = None) -> AnswersUnit:
    """``view``'s final-layer margin and correctness on every item of ``t``."""
    if cache is not None:
        cache.next_model()
    tr = decision_trace(view, t, n_boot=n_boot, boot_seed=boot_seed, max_tokens=max_tokens, blocks="last", cache=cache)
    return AnswersUnit(margins=tr.item_margins[:, -1].copy(), correct=tr.correct[:, -1].astype(float))


__all__ = ["AnswersUnit", "CutUnit", "HeldoutUnit", "REFERENCE", "RecoveryComparison", "RecoveryTask", "compare_recovery", "recovery_criteria", "refusals"]
