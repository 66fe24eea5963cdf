"""The iterative pruning sweep: cut one block at a time, re-measure everything after each cut.

Every step records the full decision trace, the transition, final accuracy and held-out
perplexity of the current model, then scores its surviving blocks by the criterion and
cuts the chosen one. With ``out=DIR`` each finished step is written at once
(``DIR/step_NNN.json``); running again with the same arguments continues after the last
finished step with identical results. Passes after a cut recompute only from the first
block whose input changed: the stored inputs of the unchanged prefix are replayed
(:class:`~phaselens.runtime.Replay`).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..calibration import heldout_texts, load_calibration
from ..perplexity import perplexity
from ..resume import check_or_write_args, digest, write_atomic
from ..runtime import Replay
from ..tasks import Task, load_task
from ..trace import DecisionTrace, Transition, decision_trace, transition_from_trace
from ..view import ModelView, as_view, first_change
from .criteria import angular_distances, block_influence, sleb_scores

SWEEP_CRITERIA = ("bi", "angular", "sleb", "random")


@dataclass
class SweepStep:
    """The model after ``len(removed)`` cuts, and the cut chosen next."""

    step: int
    removed: list[int]
    ratio: float
    trace: DecisionTrace
    transition: Transition
    accuracy: float
    margin: float
    perplexity: float
    scores: dict[int, float]
    next_cut: int | None

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.step, "removed": self.removed, "ratio": self.ratio, "transition": self.transition.to_dict(),
                "accuracy": self.accuracy, "margin": self.margin, "perplexity": self.perplexity,
                "scores": {str(k): v for k, v in self.scores.items()}, "next_cut": self.next_cut}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SweepStep":
        tr = transition_from_dict(d["transition"])
        return cls(d["step"], list(d["removed"]), d["ratio"], tr.trace, tr, d["accuracy"], d["margin"], d["perplexity"],
                   {int(k): v for k, v in d["scores"].items()}, d["next_cut"])


def transition_from_dict(d: dict[str, Any]) -> Transition:
    return Transition.from_dict(d)


@dataclass
class Sweep:
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

    def plot(self, **kw):
        from ..plots import sweep_margins

        return sweep_margins(self, **kw)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "task": self.task, "criterion": self.criterion, "recovery": self.recovery,
                "n_blocks": self.n_blocks, "chance": self.chance, "collapse_ratio": self.collapse_ratio,
                "start_accuracy": self.start_accuracy, "steps": [s.to_dict() for s in self.steps]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Sweep":
        return cls(d["model"], d["task"], d["criterion"], d["recovery"], d["n_blocks"], d["chance"],
                   [SweepStep.from_dict(s) for s in d["steps"]], d.get("start_accuracy"))


def _chance(task: Task) -> float:
    return float(np.mean([1.0 / it.n_options for it in task.items]))


def _scores(view: ModelView, criterion: str, calibration: list[str], replay: Replay | None, seed: int, step: int) -> dict[int, float]:
    if criterion == "bi":
        return block_influence(view, calibration, replay=replay)
    if criterion == "angular":
        return angular_distances(view, 1, calibration, replay=replay)
    if criterion == "sleb":
        return sleb_scores(view, calibration)
    rng = random.Random(f"{seed}:{step}")
    return {b: rng.random() for b in view.kept}


def iterative_prune(
    model: Any,
    task: Any,
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
) -> Sweep:
    """Cut ``steps`` blocks one at a time (default: until one block is left).

    Args:
        criterion: ``"bi"``, ``"angular"`` (n = 1), ``"sleb"`` or ``"random"`` (seeded), recomputed on
            the current pruned model at every step; the block with the lowest score is cut.
        recovery: ``None`` or a method of :func:`phaselens.fit_recovery` refitted after every cut (on
            ``calibration``); ``"replaceme"`` cannot recover a cut at block 0 and raises if the criterion
            picks it.
        out: a folder; each finished step is written there, and a rerun resumes from it.
        calibration: text the criterion (and recovery) are computed on (default: bundled fit passages).
        perplexity_texts: held-out text for perplexity (default: the bundled held-out passages).
        reuse_prefix: replay unchanged prefixes instead of recomputing them (the same numbers, bit for
            bit). It keeps every block's input for every batch of the task, the calibration text and
            the perplexity text: about ``(L + 1) x tokens x d`` values in the model's dtype (about 2 GB for
            SmolLM2 on the whole bundled corpus); ``False`` trades that memory for time.
        seed: seeds the bootstrap intervals and the ``"random"`` criterion.

    Returns:
        a :class:`Sweep`: ``steps[k]`` is the model after ``k`` cuts (trace, transition, accuracy,
        margin, perplexity, the criterion's scores and the next cut); ``collapse_ratio`` as in DESIGN.md.
    """
    if criterion not in SWEEP_CRITERIA:
        raise ValueError(f"iterative criterion must be one of {SWEEP_CRITERIA}, got {criterion!r}")
    view = as_view(model)
    base = view.base
    task = task if isinstance(task, Task) else load_task(task)
    L = base.n_layers
    steps = L - 1 - len(view.removed) if steps is None else steps
    if not 0 <= steps <= L - 1 - len(view.removed):
        raise ValueError(f"steps must be in 0..{L - 1 - len(view.removed)}, got {steps}")
    if recovery is not None:
        from ..recovery import METHODS

        if recovery not in METHODS:
            raise ValueError(f"unknown recovery method {recovery!r}; choose from {METHODS} or None")
    if view.operators or view.branch_operators:
        raise ValueError("iterative_prune starts from a dense or plainly pruned model; pass recovery= to refit "
                         "a recovery after every cut instead of a recovered view")
    cal = load_calibration(calibration)
    ppl_texts = heldout_texts() if perplexity_texts is None else load_calibration(perplexity_texts)
    args = {"model": base.name, "fingerprint": base.fingerprint, "task": task.name, "format": task.format,
            "n_items": len(task), "items": digest([[it.question, list(it.options), it.answer] for it in task.items]),
            "criterion": criterion, "recovery": recovery, "seed": seed, "n_boot": n_boot,
            "start_removed": list(view.removed), "calibration": digest(cal), "perplexity_texts": digest(ppl_texts)}
    sweep = Sweep(base.name, task.name, criterion, recovery, L, _chance(task))
    folder = Path(out) if out is not None else None
    if folder is not None:
        check_or_write_args(folder / "sweep.json", args, "a sweep run")
        sweep.steps = _load_steps(folder)
    if view.removed:  # the collapse threshold is relative to the dense model
        sweep.start_accuracy = _dense_accuracy(base, task, folder, n_boot, seed)
    replay = Replay(L) if reuse_prefix else None
    sweep.steps = sweep.steps[: steps + 1]
    removed = list(view.removed) if not sweep.steps else list(sweep.steps[-1].removed) + [sweep.steps[-1].next_cut]
    prev: ModelView | None = None
    for k in range(len(sweep.steps), steps + 1):
        cur = _make_view(base, removed, recovery, cal)
        if replay is not None:
            replay.begin(first_change(prev, cur) if prev is not None else 0)
        trace = decision_trace(cur, task, n_boot=n_boot, seed=seed, replay=replay, progress=progress)
        tr = transition_from_trace(trace, n_boot=n_boot, seed=seed)
        ppl = perplexity(cur, ppl_texts, replay=replay)
        last = cur.n_layers == 1  # the next cut is chosen even after the last step, so a rerun can extend the sweep
        scores = {} if last else _scores(cur, criterion, cal, replay, seed, k)
        cut = None if last else min(scores, key=lambda b: (scores[b], b))
        step = SweepStep(k, sorted(removed), len(removed) / L, trace, tr, float(trace.accuracy[-1]), float(trace.margins[-1]),
                         ppl, scores, cut)
        sweep.steps.append(step)
        if folder is not None:
            write_atomic(folder / f"step_{k:03d}.json", json.dumps(step.to_dict()))
        if cut is not None and k < steps:
            removed = removed + [cut]
        prev = cur
    return sweep


def _make_view(base, removed: list[int], recovery: str | None, cal: list[str]) -> ModelView:
    view = ModelView(base, tuple(removed))
    if recovery is None or recovery == "identity" or not removed:
        return view
    from ..recovery import fit_recovery

    return fit_recovery(view, cal, recovery)


def _dense_accuracy(base, task: Task, folder: Path | None, n_boot: int, seed: int) -> float:
    f = folder / "dense.json" if folder is not None else None
    if f is not None and f.exists():
        return float(json.loads(f.read_text())["accuracy"])
    acc = float(decision_trace(base, task, n_boot=n_boot, seed=seed).accuracy[-1])
    if f is not None:
        write_atomic(f, json.dumps({"accuracy": acc}))
    return acc


def _load_steps(folder: Path) -> list[SweepStep]:
    out = []
    k = 0
    while (folder / f"step_{k:03d}.json").exists():
        out.append(SweepStep.from_dict(json.loads((folder / f"step_{k:03d}.json").read_text())))
        k += 1
    return out


def load_sweep(folder: str | Path) -> Sweep:
    """The steps of a sweep written with ``out=folder`` (finished or interrupted)."""
    folder = Path(folder)
    args = json.loads((folder / "sweep.json").read_text())
    steps = _load_steps(folder)
    if not steps:
        raise ValueError(f"{folder} has no finished steps")
    n_opts = np.isfinite(steps[0].trace.logits[-1]).sum(-1)
    chance = float(np.mean(1.0 / n_opts))
    dense = folder / "dense.json"
    start_acc = float(json.loads(dense.read_text())["accuracy"]) if dense.exists() else None
    return Sweep(args["model"], args["task"], args["criterion"], args["recovery"], steps[0].trace.n_blocks, chance, steps,
                 start_acc)
