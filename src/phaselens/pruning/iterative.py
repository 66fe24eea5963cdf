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

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import checks
from ..calibration import heldout_texts, load_calibration
from ..errors import PruningError, ResultsError
from ..perplexity import perplexity
from ..results import Record, Result
from ..resume import RunFolder, digest, run_folder
from ..runner import PrefixCache
from ..tasks import Task, load_task
from ..trace import DecisionTrace, Transition, check_boot, decision_trace
from ..view import ModelView, as_view
from .criteria import angular_distances, block_influence, sleb_scores
from ..types import ModelLike, TaskLike
from ..runner.layered import scheduled  # schedule= / act_budget= / act_store= (issue 24)

SWEEP_CRITERIA = ("bi", "angular", "sleb", "random")


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


def _scores(view: ModelView, criterion: str, calibration: list[str], cache: PrefixCache | None, seed: int,
            step: int) -> dict[int, float]:
    if criterion == "bi":
        return block_influence(view, calibration, cache=cache)
    if criterion == "angular":
        return angular_distances(view, 1, calibration, cache=cache)
    if criterion == "sleb":
        return sleb_scores(view, calibration)
    rng = random.Random(f"{seed}:{step}")
    return {b: rng.random() for b in view.kept}


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
    perplexity_texts: Any = None,
    reuse_prefix: bool = True,
    seed: int = 0,
    n_boot: int = 200,
    progress: bool = False,
    lens: Any = None,
) -> Sweep:
    """Cut ``steps`` blocks one at a time (default: until one block is left).

    Args:
        criterion: ``"bi"``, ``"angular"`` (n = 1), ``"sleb"`` or ``"random"`` (seeded), recomputed on
            the current pruned model at every step; the block with the lowest score is cut.
        recovery: ``None`` or a method of :func:`phaselens.fit_recovery` refitted after every cut (on
            ``calibration``); ``"replaceme"`` cannot recover a cut at block 0 and raises if the criterion
            picks it.
        out: a folder; each finished step is written to its state (``out/.phaselens/sweep/``), and a rerun
            resumes from it.
        calibration: text the criterion (and recovery) are computed on (default: bundled fit passages).
        perplexity_texts: held-out text for perplexity (default: the bundled held-out passages).
        reuse_prefix: replay unchanged prefixes instead of recomputing them (the same numbers, bit for
            bit). It keeps every block's input for every batch of the task, the calibration text and
            the perplexity text: about ``(L + 1) x tokens x d`` values in the model's dtype (about 2 GB for
            SmolLM2 on the whole bundled corpus); ``False`` trades that memory for time.
        seed: seeds the bootstrap intervals and the ``"random"`` criterion.
        lens: the lens every step's trace is read with (``"logit"``, ``"linear"``, ``"tuned"``, a saved lens's path
            or a :class:`~phaselens.Lens`), fitted on the dense model and applied to each pruned model's blocks.

    Returns:
        a :class:`Sweep`: ``steps[k]`` is the model after ``k`` cuts (trace, transition, accuracy,
        margin, perplexity, the criterion's scores and the next cut); ``collapse_ratio`` as in DESIGN.md.
    """
    if criterion not in SWEEP_CRITERIA:
        raise PruningError(f"iterative criterion must be one of {SWEEP_CRITERIA}, got {criterion!r}")
    check_boot(n_boot, seed)
    checks.integer("steps", steps, minimum=1, optional=True, error=PruningError, what="blocks to cut")
    checks.flag("reuse_prefix", reuse_prefix, error=PruningError)
    checks.out_folder("out", out, error=PruningError)
    view = as_view(model)
    base = view.base
    L = base.n_layers
    most = L - 1 - len(view.removed)
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, (int, np.integer))):
        raise PruningError(f"steps must be an int (blocks to cut) or None, got {steps!r}")
    steps = most if steps is None else int(steps)
    if not 1 <= steps <= most:
        raise PruningError(f"steps must be in 1..{most} (blocks that can be cut from {view.name}), got {steps}")
    if recovery is not None:
        from ..recovery import METHODS

        if recovery not in METHODS:
            raise PruningError(f"unknown recovery method {recovery!r}; choose from {METHODS} or None")
    if view.operators or view.branch_operators:
        raise PruningError("iterative_prune starts from a dense or plainly pruned model; pass recovery= to refit "
                           "a recovery after every cut instead of a recovered view")
    from ..lenses import resolve_lens

    lens_ = resolve_lens(lens, base)
    task = task if isinstance(task, Task) else load_task(task)
    cal = load_calibration(calibration)
    ppl_texts = heldout_texts() if perplexity_texts is None else load_calibration(perplexity_texts)
    args = {"model": base.name, "fingerprint": base.fingerprint, "task": task.name, "format": task.format,
            "n_items": len(task), "items": digest([[it.question, list(it.options), it.answer] for it in task.items]),
            "criterion": criterion, "recovery": recovery, "seed": seed, "n_boot": n_boot,
            "start_removed": list(view.removed), "calibration": digest(cal), "perplexity_texts": digest(ppl_texts)}
    if lens_.kind != "logit":
        args["lens"] = lens_.digest
    sweep = Sweep(base.name, task.name, criterion, recovery, L, _chance(task), lens=lens_.name)
    cache = PrefixCache() if reuse_prefix else None
    with run_folder(out, "sweep", args, "a sweep") as folder:
        sweep.steps = _load_steps(folder) if folder is not None else []
        if view.removed:  # the collapse threshold is relative to the dense model
            sweep.start_accuracy = _dense_accuracy(base, task, folder, n_boot, seed)
        sweep.steps = sweep.steps[: steps + 1]
        removed = list(view.removed) if not sweep.steps else list(sweep.steps[-1].removed) + [sweep.steps[-1].next_cut]
        for k in range(len(sweep.steps), steps + 1):
            cur = _make_view(base, removed, recovery, cal)
            trace = decision_trace(cur, task, n_boot=n_boot, seed=seed, cache=cache, progress=progress, lens=lens_)
            ppl = perplexity(cur, ppl_texts, cache=cache)
            last = cur.n_layers == 1  # the next cut is chosen even after the last step, so a rerun can extend the sweep
            scores = {} if last else _scores(cur, criterion, cal, cache, seed, k)
            cut = None if last else min(scores, key=lambda b: (scores[b], b))
            step = SweepStep(k, sorted(removed), len(removed) / L, trace.transition(), ppl, scores, cut)
            sweep.steps.append(step)
            if folder is not None:
                folder.save(f"step_{k:03d}", step)
            if cut is not None and k < steps:
                removed = removed + [cut]
    return sweep


def _make_view(base, removed: list[int], recovery: str | None, cal: list[str]) -> ModelView:
    view = ModelView(base, tuple(removed))
    if recovery is None or recovery == "identity" or not removed:
        return view
    from ..recovery import fit_recovery

    return fit_recovery(view, cal, recovery)


@dataclass
class SweepDense(Record):
    accuracy: float


def _dense_accuracy(base, task: Task, folder: RunFolder | None, n_boot: int, seed: int) -> float:
    got = folder.load("dense") if folder is not None else None
    if isinstance(got, SweepDense):
        return got.accuracy
    acc = float(decision_trace(base, task, n_boot=n_boot, seed=seed).accuracy[-1])
    if folder is not None:
        folder.save("dense", SweepDense(acc))
    return acc


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
    import json

    if Path(folder).is_file():
        from ..results import load_result

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
