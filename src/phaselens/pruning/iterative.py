"""The iterative pruning sweep: cut one block at a time, re-measure everything after each cut.

Every step records the full decision trace, the transition, final accuracy and held-out
perplexity of the current model, then scores its surviving blocks by the criterion and
cuts the chosen one. With ``out=DIR`` each finished step is written at once into the run's
state folder (``DIR/.phaselens/sweep/``, see :mod:`phaselens.resume`); running again with the same
arguments continues after the last finished step with identical results, a truncated or foreign
step file is recomputed, and a second run on the same folder is refused. Passes after a cut
recompute only from the first block whose input changed: the prefix cache replays the rest.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import checks
from ..calibration import heldout_texts, load_calibration
from ..deprecation import warn_renamed
from ..effects import Effect, bootstrap_effect
from ..errors import PruningError, ResultsError
from ..resampling import MIN_ITEMS, EffectError, check_n_boot, count_weights
from ..lenses import resolve_lens
from ..perplexity import perplexity
from ..recovery import METHODS, fit_recovery, get_method
from ..results import Record, Result, load_result
from ..resume import RunFolder, digest, load_or_compute, run_folder
from ..runner import PrefixCache
from ..tasks import Task, load_task
from ..trace import DecisionTrace, Transition, check_boot, decision_trace
from ..stats import N_BOOT
from ..view import ModelView, as_view
from .criteria import CRITERIA, sweep_criteria
from ..types import ModelLike, TaskLike
from ..runner.layered import scheduled  # schedule= / act_budget= / act_store= (issue 24)


@dataclass
class SweepStep(Record):
    """The model after ``len(removed)`` cuts, and the cut chosen next."""

    step: int
    removed: list[int]
    ratio: float
    transition: Transition
    perplexity: float
    scores: dict[int, float]
    next_cut: int | None

    @property
    def trace(self) -> DecisionTrace:
        return self.transition.trace

    @property
    def accuracy(self) -> float:
        return float(self.trace.accuracy[-1])

    @property
    def margin(self) -> float:
        return float(self.trace.margins[-1])


@dataclass
class Sweep(Result):
    """An iterative pruning sweep.

    Attributes:
        steps: step ``k`` is the model with ``k`` blocks cut (step 0 is dense).
        chance: mean over items of ``1 / K_i``; ``threshold = chance + 0.5 (dense_acc - chance)``.
    """

    model: str
    task: str
    criterion: str
    recovery: str | None
    n_blocks: int
    chance: float
    steps: list[SweepStep] = field(default_factory=list)
    start_accuracy: float | None = None  # the dense model's accuracy when the sweep started from a pruned view
    lens: str = "logit"  # the lens every step's trace was read with

    @property
    def dense_accuracy(self) -> float:
        """Final-layer accuracy of the dense model (step 0 unless the sweep started from a pruned view)."""
        if self.start_accuracy is not None:
            return self.start_accuracy
        return self.steps[0].accuracy

    @property
    def threshold(self) -> float:
        return self.chance + 0.5 * (self.dense_accuracy - self.chance)

    @property
    def collapse_ratio(self) -> float | None:
        """Smallest pruning ratio whose accuracy falls below the threshold (``None``: never, in these steps)."""
        for s in self.steps:
            if s.accuracy < self.threshold:
                return s.ratio
        return None

    def effects(self, *, level: float = 0.95, n_boot: int = N_BOOT, boot_seed: int = 0) -> list[Effect]:
        """The collapse ratio with a percentile bootstrap interval over items.

        In each replicate the items are resampled (the same draw at every step: one item list), and every step's
        final accuracy, the chance level (mean ``1 / K_i``) and the dense accuracy (step 0; held fixed when the
        sweep started from a pruned view) are recomputed, hence the threshold and the first ratio whose accuracy
        falls below it. A replicate in which accuracy never falls below the threshold within the sweep's steps has
        no collapse ratio: its share is the effect's ``undefined``. ``p`` is NaN (a ratio has no null of 0).
        """
        if not self.steps:
            raise PruningError(f"the sweep of {self.model} on {self.task} has no steps")
        correct = np.stack([np.asarray(s.trace.correct[:, -1], dtype=float) for s in self.steps])  # [steps, N]
        n = correct.shape[1]
        ids = [list(s.trace.item_ids) for s in self.steps]
        if any(i and ids[0] and i != ids[0] for i in ids):
            raise EffectError(f"the steps of the sweep of {self.model} on {self.task} were measured on different "
                              "items; the collapse ratio's bootstrap needs one item list")
        if n < MIN_ITEMS:
            raise EffectError(f"the sweep of {self.model} on {self.task} holds {n} items; an effect needs at least "
                              f"{MIN_ITEMS}")
        check_n_boot(n_boot, level)
        inv_k = 1.0 / np.asarray(self.steps[0].trace.mask, dtype=bool).sum(1)  # [N]
        w = np.vstack([np.ones((1, n)), count_weights(n, n_boot, np.random.default_rng(boot_seed))])  # row 0: sample
        acc = w @ correct.T / n  # [B+1, steps]
        chance = w @ inv_k / n
        dense = np.full(n_boot + 1, self.start_accuracy) if self.start_accuracy is not None else acc[:, 0]
        thr = chance + 0.5 * (dense - chance)
        below = acc < thr[:, None]
        ratios = np.asarray([s.ratio for s in self.steps], dtype=float)
        cr = np.where(below.any(1), ratios[np.argmax(below, axis=1)], np.nan)
        est = self.collapse_ratio
        eff = bootstrap_effect(f"collapse ratio ({self.criterion} sweep)", math.nan if est is None else est, cr[1:],
                               level=level, n={"items": n}, resampled=["items"], n_boot=n_boot, boot_seed=boot_seed,
                               method="bootstrap over items (percentile): step accuracies, chance and threshold "
                                      "recomputed per replicate", model=self.model, task=self.task)
        eff.p = math.nan
        return [eff]

    def to_pandas(self):
        import pandas as pd

        return pd.DataFrame(
            {"step": [s.step for s in self.steps], "ratio": [s.ratio for s in self.steps],
             "cut_next": [s.next_cut for s in self.steps], "removed": [",".join(map(str, s.removed)) for s in self.steps],
             "accuracy": [s.accuracy for s in self.steps], "margin": [s.margin for s in self.steps],
             "transition": [s.transition.layer for s in self.steps], "perplexity": [s.perplexity for s in self.steps]}
        )

    def summary(self) -> str:
        cr = self.collapse_ratio
        return (f"iterative pruning of {self.model} on {self.task} by {self.criterion}"
                f"{f', recovered with {self.recovery}' if self.recovery else ''}: {len(self.steps)} steps, accuracy "
                f"{self.dense_accuracy:.3f} -> {self.steps[-1].accuracy:.3f}; collapse ratio "
                f"{'not reached' if cr is None else f'{cr:.3f}'} (threshold {self.threshold:.3f})")

    def plot(self, **kw):
        from ..plots import sweep_margins

        return sweep_margins(self, **kw)

    def figures(self) -> list[tuple[str, Any]]:
        from .. import plots

        return [("Final accuracy and margin after each cut; the collapse ratio is the first ratio below the threshold.",
                 plots.sweep_accuracy(self)),
                ("Decision Margin per block after each cut (original block axis).", plots.sweep_margins(self))]


def _chance(task: Task) -> float:
    return float(np.mean([1.0 / it.n_options for it in task.items]))


def __getattr__(name: str) -> Any:
    if name == "SWEEP_CRITERIA":  # deprecated: the registry says which criteria a sweep takes
        warn_renamed("SWEEP_CRITERIA", "phaselens.pruning.sweep_criteria()", "phaselens.pruning.iterative")
        return sweep_criteria()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


#: decision_trace's keyword for the bootstrap's seed (``boot_seed`` once the trace takes it, ``seed`` before)


@dataclass
class SweepPlan:
    """A validated sweep: what it runs on and with which settings (the identity of its state folder)."""

    base: Any
    start: list[int]  # the blocks the starting view had removed
    task: Task
    lens: Any
    calibration: list[str]
    heldout: list[str]
    steps: int
    criterion: str
    recovery: str | None
    boot_seed: int
    n_boot: int
    max_tokens: int | None

    def args(self) -> dict[str, Any]:
        """The identity of the run folder (the keys of the saved format: ``seed`` is the bootstrap's seed and
        ``perplexity_texts`` the held-out text)."""
        base, task = self.base, self.task
        args = {"model": base.name, "fingerprint": base.fingerprint, "task": task.name, "format": task.format,
                "n_items": len(task), "items": digest([[it.question, list(it.options), it.answer] for it in task.items]),
                "criterion": self.criterion, "recovery": self.recovery, "seed": self.boot_seed, "n_boot": self.n_boot,
                "start_removed": list(self.start), "calibration": digest(self.calibration),
                "perplexity_texts": digest(self.heldout)}
        if self.lens.kind != "logit":
            args["lens"] = self.lens.digest
        return args

    def trace(self, view: ModelView, cache: PrefixCache | None = None, progress: bool = False) -> DecisionTrace:
        return decision_trace(view, self.task, n_boot=self.n_boot, cache=cache, progress=progress, lens=self.lens,
                              max_tokens=self.max_tokens, boot_seed=self.boot_seed)


@scheduled
def iterative_prune(
    model: ModelLike,
    task: TaskLike,
    *,
    criterion: str = "bi",
    steps: int | None = None,
    recovery: str | None = None,
    out: str | Path | None = None,
    calibration: Any = None,
    heldout: Any = None,
    reuse_prefix: bool = True,
    boot_seed: int = 0,
    n_boot: int = N_BOOT,
    max_tokens: int | None = None,
    progress: bool = False,
    lens: Any = None,
    seed: int | None = None,
    perplexity_texts: Any = None,
) -> Sweep:
    """Cut ``steps`` blocks one at a time (default: until one block is left).

    Args:
        criterion: a criterion of :data:`~phaselens.CRITERIA` usable in a sweep (``"bi"``, ``"angular"``, ``"sleb"``,
            ``"random"`` or a registered one), rescored on the current model at every step; the lowest is cut.
        recovery: ``None`` or a method of :func:`phaselens.fit_recovery` refitted on ``calibration`` after every
            cut; ``"replaceme"`` cannot recover a cut at block 0 and raises if the criterion picks it.
        out: a folder; each finished step is written to its state (``out/.phaselens/sweep/``); a rerun resumes.
        calibration: text the criterion (and recovery) are computed on (default: bundled fit passages).
        heldout: held-out text for perplexity (default: the bundled held-out passages).
        reuse_prefix: replay unchanged prefixes (the same numbers, bit for bit); it keeps every block's input
            of the task, calibration and held-out text (``(L + 1) x tokens x d`` values, about 2 GB for SmolLM2
            on the whole bundled corpus); ``False`` trades that memory for time.
        boot_seed: seeds the bootstrap intervals, and the ``"random"`` criterion's draws (one sweep is one draw).
        n_boot: bootstrap resamples of every step's transition interval.
        max_tokens: padded tokens per forward pass of the traces and perplexities (default: the runner's).
        lens: the lens of every step's trace (``"logit"``, ``"linear"``, ``"tuned"``, a path or a
            :class:`~phaselens.Lens`), fitted on the dense model and applied to each pruned model's blocks.
        seed, perplexity_texts: deprecated names of ``boot_seed`` and ``heldout``.

    Returns:
        a :class:`Sweep`: ``steps[k]`` is the model after ``k`` cuts (trace, transition, accuracy, margin,
        perplexity, the criterion's scores, the next cut); ``collapse_ratio`` as in DESIGN.md.
    """
    boot_seed, heldout = _renamed(boot_seed, seed, heldout, perplexity_texts)
    plan = _plan_sweep(model, task, criterion=criterion, steps=steps, recovery=recovery, out=out,
                       calibration=calibration, heldout=heldout, reuse_prefix=reuse_prefix, boot_seed=boot_seed,
                       n_boot=n_boot, max_tokens=max_tokens, lens=lens)
    sweep = Sweep(model=plan.base.name, task=plan.task.name, criterion=criterion, recovery=recovery,
                  n_blocks=plan.base.n_blocks, chance=_chance(plan.task), lens=plan.lens.name)
    cache = PrefixCache() if reuse_prefix else None
    with run_folder(out, "sweep", plan.args(), "a sweep") as folder:
        sweep.steps = _load_steps(folder) if folder is not None else []
        if plan.start:  # the collapse threshold is relative to the dense model
            sweep.start_accuracy = _dense_accuracy(plan, folder)
        sweep.steps = sweep.steps[: plan.steps + 1]
        last = sweep.steps[-1] if sweep.steps else None
        removed = list(plan.start) if last is None else list(last.removed) + [last.next_cut]
        for k in range(len(sweep.steps), plan.steps + 1):
            step = _sweep_step(plan, k, removed, cache, progress)
            sweep.steps.append(step)
            if folder is not None:
                folder.save(f"step_{k:03d}", step)
            if step.next_cut is not None and k < plan.steps:
                removed = removed + [step.next_cut]
    return sweep


def _renamed(boot_seed: int, seed: int | None, heldout: Any, perplexity_texts: Any) -> tuple[int, Any]:
    """``(boot_seed, heldout)`` with the deprecated ``seed=`` / ``perplexity_texts=`` of iterative_prune folded in."""
    if seed is not None:
        warn_renamed("seed", "boot_seed", "iterative_prune")
        boot_seed = seed
    if perplexity_texts is not None:
        warn_renamed("perplexity_texts", "heldout", "iterative_prune")
        heldout = perplexity_texts if heldout is None else heldout
    return boot_seed, heldout


def _plan_sweep(model: ModelLike, task: TaskLike, *, criterion: str, steps: int | None, recovery: str | None,
                out: Any, calibration: Any, heldout: Any, reuse_prefix: bool, boot_seed: int, n_boot: int,
                max_tokens: int | None, lens: Any) -> SweepPlan:
    """Validate the arguments of :func:`iterative_prune` (nothing runs yet) and load what the sweep runs on."""
    if criterion not in CRITERIA or not CRITERIA.get(criterion).iterative:
        raise PruningError(f"iterative criterion must be one of {sweep_criteria()}, got {criterion!r}")
    check_boot(n_boot, boot_seed)
    checks.integer("steps", steps, minimum=1, optional=True, error=PruningError, what="blocks to cut")
    checks.integer("max_tokens", max_tokens, minimum=1, optional=True, error=PruningError, what="tokens per pass")
    checks.flag("reuse_prefix", reuse_prefix, error=PruningError)
    checks.out_folder("out", out, error=PruningError)
    view = as_view(model)
    base = view.base
    most = base.n_blocks - 1 - len(view.removed)
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, (int, np.integer))):
        raise PruningError(f"steps must be an int (blocks to cut) or None, got {steps!r}")
    steps = most if steps is None else int(steps)
    if not 1 <= steps <= most:
        raise PruningError(f"steps must be in 1..{most} (blocks that can be cut from {view.name}), got {steps}")
    if recovery is not None and (not isinstance(recovery, str) or recovery not in METHODS):
        raise PruningError(f"unknown recovery method {recovery!r}; choose from {METHODS.names()} or None")
    if view.operators or view.branch_operators:
        raise PruningError("iterative_prune starts from a dense or plainly pruned model; pass recovery= to refit "
                           "a recovery after every cut instead of a recovered view")
    return SweepPlan(base=base, start=list(view.removed), lens=resolve_lens(lens, base),
                     task=task if isinstance(task, Task) else load_task(task),
                     calibration=load_calibration(calibration),
                     heldout=heldout_texts() if heldout is None else load_calibration(heldout),
                     steps=steps, criterion=criterion, recovery=recovery, boot_seed=boot_seed, n_boot=n_boot,
                     max_tokens=max_tokens)


def _sweep_step(plan: SweepPlan, k: int, removed: list[int], cache: PrefixCache | None, progress: bool) -> SweepStep:
    """Step ``k``: the model without ``removed`` (recovered if asked), measured, and its next cut chosen."""
    cur = _make_view(plan.base, removed, plan.recovery, plan.calibration)
    trace = plan.trace(cur, cache, progress)
    ppl = perplexity(cur, plan.heldout, cache=cache, max_tokens=plan.max_tokens)
    last = cur.n_kept == 1  # the next cut is chosen even after the last step, so a rerun can extend the sweep
    crit = CRITERIA.get(plan.criterion)
    scores = {} if last else crit.scores(cur, calibration=plan.calibration, seed=plan.boot_seed, step=k, cache=cache)
    cut = None if last else min(scores, key=lambda b: (scores[b], b))
    return SweepStep(step=k, removed=sorted(removed), ratio=len(removed) / plan.base.n_blocks,
                     transition=trace.transition(), perplexity=ppl, scores=scores, next_cut=cut)


def _make_view(base, removed: list[int], recovery: str | None, cal: list[str]) -> ModelView:
    view = ModelView(base, tuple(removed))
    if recovery is None or not get_method(recovery).fitted or not removed:
        return view
    return fit_recovery(view, cal, recovery)


@dataclass
class SweepDense(Record):
    accuracy: float


def _dense_accuracy(plan: SweepPlan, folder: RunFolder | None) -> float:
    def compute() -> SweepDense:
        return SweepDense(float(decision_trace(plan.base, plan.task, n_boot=plan.n_boot, max_tokens=plan.max_tokens,
                                               boot_seed=plan.boot_seed).accuracy[-1]))

    return load_or_compute(folder, "dense", compute, lambda got: isinstance(got, SweepDense)).accuracy


def _load_steps(folder: RunFolder) -> list[SweepStep]:
    """The finished steps 0, 1, ... up to the first missing or unreadable one (recomputed from there)."""
    out = []
    while True:
        st = folder.load(f"step_{len(out):03d}")
        if not isinstance(st, SweepStep):
            return out
        out.append(st)


def load_sweep(folder: str | Path) -> Sweep:
    """The steps of a sweep written with ``out=folder`` (finished or interrupted), or a saved Sweep result file
    (``save_result``; a study's sweep jobs, the points' ``source`` of ``transition_vs_collapse``)."""

    if Path(folder).is_file():
        sw = load_result(folder)
        if not isinstance(sw, Sweep):
            raise ResultsError(f"{folder} holds a {type(sw).__name__}, not a Sweep")
        return sw
    state = Path(folder) / ".phaselens" / "sweep"
    if not (state / "args.json").is_file():
        RunFolder(folder, "sweep", {}, "a sweep")._refuse_legacy()  # an older phaselens' folder: say how to recompute
        raise ResultsError(f"{folder} holds no sweep (no {state / 'args.json'}); pass the out= folder of iterative_prune")
    args = json.loads((state / "args.json").read_text())
    f = RunFolder(folder, "sweep", args, "a sweep")
    steps = _load_steps(f)
    if not steps:
        raise ResultsError(f"{folder} has no finished sweep steps")
    tr = steps[0].trace
    chance = float(np.mean(1.0 / tr.mask.sum(-1)))
    dense = f.load("dense")
    return Sweep(args["model"], args["task"], args["criterion"], args["recovery"], tr.n_blocks, chance, steps,
                 dense.accuracy if isinstance(dense, SweepDense) else None)
