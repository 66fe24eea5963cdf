"""``decision_trace`` and ``transition_point``: the per-layer metrics and the phase boundary.

A :class:`DecisionTrace` keeps the raw readout (option logits ``[L, N, K]``, answers, the option mask)
and derives every statistic from it, as tuned-lens' ``PredictionTrajectory`` does; a :class:`Transition`
is a trace plus where its decisive phase begins.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import torch

from . import checks, metrics
from .deprecation import renamed_kwargs, renamed_property
from .errors import PhaselensError
from .lenses.fit import check_lens_arg, resolve_lens
from .loading import load_model
from .phases import jump_index, transition_ci, transition_index
from .readout import check_blocks_arg, option_logits
from .results import Result
from .resume import digest, load_or_compute, run_folder
from .tasks import Task, load_task
from .stats import N_BOOT  # noqa: F401  (one default; re-exported for older imports)
from .trace_figures import TraceFigures
from .types import ModelLike, TaskLike
from .view import as_view
from .runner import PrefixCache
from .runner.layered import scheduled  # schedule= / act_budget= / act_store= (issue 24)

SCORINGS = ("sum", "norm")

#: items per finished unit of a resumable trace (``decision_trace(out=...)``)
TRACE_CHUNK = 256


@dataclass
class DecisionTrace(TraceFigures, Result):
    """The option-restricted readout of one model on one task, per surviving block, and its metrics.

    Shapes: ``L`` surviving blocks, ``N`` items, ``K`` option slots.

    Stored (raw): ``logits [L, N, K]`` (``-inf`` at padded slots; continuation: summed log-likelihoods),
    ``answers [N]``, ``mask [N, K]``, ``blocks [L]`` (original index of each row), ``option_chars [N, K]``
    (the options' lengths in characters, for ``acc_norm``), ``n_boot`` and ``seed`` (the bootstrap's seed, also
    ``boot_seed``) of the intervals. ``n_read`` is ``L`` here (the rows read); ``n_blocks`` the dense model's depth.

    Derived: ``margins [L]`` and ``item_margins [N, L]`` (Decision Margin), ``accuracy [L]``, ``acc_norm [L]``
    (continuation), ``option_frequency [L, K]``, ``bias_kl``, ``convergence_kl [L]``, ``margin_ci``,
    ``accuracy_ci [2, L]`` (bootstrap 95% over items), ``predictions [N, L]``, ``correct [N, L]``,
    ``answer_prior [K]``. ``scoring`` says how margins read continuation scores: ``"sum"`` (summed
    log-likelihood, lm-eval's ``acc``) or ``"norm"`` (divided by the option's length in characters,
    lm-eval's ``acc_norm``); see :meth:`with_scoring`.
    """

    model: str
    task: str
    format: str
    n_blocks: int
    blocks: np.ndarray
    logits: np.ndarray = field(repr=False)
    answers: np.ndarray = field(repr=False)
    mask: np.ndarray = field(repr=False)
    option_chars: np.ndarray = field(repr=False)
    item_ids: list[str] = field(default_factory=list, repr=False)
    n_boot: int = N_BOOT
    seed: int = 0
    reformulated: bool = False
    lens: str = "logit"
    scoring: str = "sum"
    complete: bool = True  # False: only some blocks were read (decision_trace(blocks=...)); no transition
    task_note: str = ""  # how the items were chosen, and where the prompt differs from lm-eval's layout

    derived = ("margins", "margin_ci", "accuracy", "accuracy_ci", "option_frequency", "bias_kl", "convergence_kl",
               "answer_prior", "item_margins")

    def __post_init__(self) -> None:
        self.blocks = np.asarray(self.blocks, dtype=int)
        self.logits = np.asarray(self.logits, dtype=np.float32)
        self.answers = np.asarray(self.answers, dtype=np.int64)
        self.mask = np.asarray(self.mask, dtype=bool)
        self.option_chars = np.asarray(self.option_chars, dtype=np.int64)
        L, N, K = self.logits.shape
        if self.blocks.shape != (L,) or self.answers.shape != (N,) or self.mask.shape != (N, K):
            raise PhaselensError(f"trace of {self.model}: logits {self.logits.shape}, blocks {self.blocks.shape}, answers "
                                 f"{self.answers.shape} and mask {self.mask.shape} do not fit [L, N, K], [L], [N], [N, K]")
        if self.scoring not in SCORINGS:
            raise PhaselensError(f"scoring must be one of {SCORINGS}, got {self.scoring!r}")

    # -- shape
    @property
    def n_read(self) -> int:
        """Rows of the trace: the blocks read (``len(blocks)``); ``n_blocks`` is the dense depth ``L``."""
        return len(self.blocks)

    n_layers = renamed_property("n_layers", "n_read")

    @property
    def boot_seed(self) -> int:
        """The bootstrap's seed (saved as ``seed``)."""
        return self.seed

    @property
    def n_items(self) -> int:
        return int(self.answers.shape[0])

    @property
    def slot_labels(self) -> list[str]:
        return [chr(ord("A") + k) if k < 26 else str(k) for k in range(self.mask.shape[1])]

    # -- derived
    @cached_property
    def scores(self) -> torch.Tensor:
        """``[L, N, K]`` the scores margins are read from (``logits``, or ``logits / option_chars`` for ``"norm"``)."""
        z = torch.from_numpy(self.logits)
        if self.scoring == "norm":
            z = z / torch.from_numpy(np.maximum(self.option_chars, 1)).float()[None]
        return z.masked_fill(~torch.from_numpy(self.mask)[None], float("-inf"))

    @cached_property
    def _boot(self) -> np.ndarray:
        return metrics.bootstrap_indices(self.n_items, self.n_boot, self.seed)

    @cached_property
    def item_margins(self) -> np.ndarray:
        return metrics.item_margins(self.scores, torch.from_numpy(self.answers))

    @cached_property
    def margins(self) -> np.ndarray:
        return self.item_margins.mean(0)

    @cached_property
    def predictions(self) -> np.ndarray:
        """``[N, L]`` argmax option per item and block (first slot on ties)."""
        return metrics.predictions(self.scores).T.numpy()

    @cached_property
    def correct(self) -> np.ndarray:
        """``[N, L]`` 1.0 where the item's argmax option is its answer."""
        return (self.predictions == self.answers[:, None]).astype(float)

    @cached_property
    def accuracy(self) -> np.ndarray:
        return self.correct.mean(0)

    @cached_property
    def acc_norm(self) -> np.ndarray:
        """``[L]`` accuracy of the length-normalised scores (lm-eval's ``acc_norm``): ``logits / option_chars``."""
        return self.with_scoring("norm").accuracy

    @cached_property
    def option_frequency(self) -> np.ndarray:
        return metrics.option_frequency(self.scores)

    @cached_property
    def bias_kl(self) -> np.ndarray:
        return metrics.bias_kl(self.scores, torch.from_numpy(self.answers))

    @cached_property
    def convergence_kl(self) -> np.ndarray:
        return metrics.convergence_kl(self.scores)

    @cached_property
    def margin_ci(self) -> np.ndarray:
        return metrics.bootstrap_ci(self.item_margins, self._boot)

    @cached_property
    def accuracy_ci(self) -> np.ndarray:
        return metrics.bootstrap_ci(self.correct, self._boot)

    @cached_property
    def answer_prior(self) -> np.ndarray:
        return metrics.answer_prior(torch.from_numpy(self.answers), self.mask.shape[1])

    def with_scoring(self, scoring: str) -> "DecisionTrace":
        """The same trace with margins read in ``scoring`` (``"sum"`` or ``"norm"``; continuation traces)."""
        from dataclasses import replace

        if scoring not in SCORINGS:
            raise PhaselensError(f"scoring must be one of {SCORINGS}, got {scoring!r}")
        return self if scoring == self.scoring else replace(self, scoring=scoring)

    @renamed_kwargs(seed="boot_seed")
    def transition(self, *, n_boot: int | None = None, boot_seed: int | None = None) -> "Transition":
        """Where this trace's decisive phase begins (no model run); ``n_boot`` / ``boot_seed`` default to the trace's."""
        if not self.complete:
            raise PhaselensError(f"this trace of {self.model} reads only blocks {self.blocks.tolist()}; a transition needs "
                                 "every surviving block (decision_trace without blocks=)")
        if n_boot is not None:
            checks.check_n_boot(n_boot, n_items=self.n_items)
        if boot_seed is not None:
            checks.integer("boot_seed", boot_seed)
        return Transition(self, self.n_boot if n_boot is None else n_boot, self.seed if boot_seed is None else boot_seed)

    # -- outputs
    def to_pandas(self):
        """One row per surviving block: margin (+ CI), accuracy (+ CI), acc_norm (continuation), KLs, option frequencies."""
        import pandas as pd

        df = pd.DataFrame({
            "layer": np.arange(self.n_read), "block": self.blocks, "margin": self.margins,
            "margin_lo": self.margin_ci[0], "margin_hi": self.margin_ci[1], "accuracy": self.accuracy,
            "accuracy_lo": self.accuracy_ci[0], "accuracy_hi": self.accuracy_ci[1],
        })
        if self.format == "continuation":
            df["acc_norm"] = self.acc_norm
        df["bias_kl"] = self.bias_kl
        df["convergence_kl"] = self.convergence_kl
        for k, lab in enumerate(self.slot_labels):
            df[f"of_{lab}"] = self.option_frequency[:, k]
        return df

    def items(self):
        """One row per item: id, answer, and per block its predicted option and whether it is correct (long format)."""
        import pandas as pd

        N, L = self.predictions.shape
        return pd.DataFrame({
            "item": np.repeat(np.asarray(self.item_ids or [str(i) for i in range(N)], dtype=object), L),
            "answer": np.repeat(self.answers, L), "block": np.tile(self.blocks, N),
            "prediction": self.predictions.ravel(), "correct": self.correct.ravel(), "margin": self.item_margins.ravel(),
        })

    def summary(self) -> str:
        acc = f"final accuracy {self.accuracy[-1]:.3f}"
        if self.format == "continuation":
            acc += f", acc_norm {self.acc_norm[-1]:.3f}"
        note = f" [{self.task_note}]" if self.task_note else ""
        return (f"{self.model} on {self.task} ({self.format}{', reformulated' if self.reformulated else ''}, "
                f"{self.n_items} items, {self.lens} lens): final margin {self.margins[-1]:.3f}, {acc}{note}")


@dataclass
class Transition(TraceFigures, Result):
    """Where the decisive phase begins, derived from ``trace``.

    Attributes:
        layer: original block index where the decisive phase begins, or ``None``.
        reason: why ``layer`` is ``None`` (the model cannot do the task), else ``""``.
        jump_layer: block with the largest margin rise ``DM_l - DM_{l-1}``.
        ci: bootstrap 95% interval for ``layer`` over items (original block indices).
        ci_undefined: share of bootstrap resamples in which no transition exists.
        silent, decisive: the two phases as ranges of original block indices.
    """

    trace: DecisionTrace = field(repr=False)
    n_boot: int = N_BOOT
    seed: int = 0

    derived = ("layer", "reason", "jump_layer", "ci", "ci_undefined", "silent", "decisive")

    def __post_init__(self) -> None:
        tr = self.trace
        blocks = tr.blocks
        pos = transition_index(tr.margins)
        jump = jump_index(tr.margins)
        idx = metrics.bootstrap_indices(tr.n_items, self.n_boot, self.seed)
        ci_pos, self.ci_undefined = transition_ci(tr.item_margins, idx)
        self.ci = None if ci_pos is None else (int(blocks[int(np.floor(ci_pos[0]))]), int(blocks[int(np.ceil(ci_pos[1]))]))
        self.jump_layer = None if jump is None else int(blocks[jump])
        if pos is None:
            self.layer, self.silent, self.decisive = None, None, None
            chance = float(np.mean(1.0 / np.asarray(tr.mask, dtype=bool).sum(1)))
            if tr.accuracy[-1] > chance:  # right more often than chance, but its misses lose by more than its hits win
                self.reason = (
                    f"the mean final-layer margin is {tr.margins[-1]:.3f} <= 0 although final accuracy "
                    f"{tr.accuracy[-1]:.2f} is above chance ({chance:.2f}): the items it gets wrong lose by more than "
                    "those it gets right win, so on average the correct option does not lead at the last layer and, "
                    "by the definition (a mean margin above 0), there is no decisive phase.")
            else:
                self.reason = (
                    f"the final-layer margin is {tr.margins[-1]:.3f} <= 0 (final accuracy {tr.accuracy[-1]:.2f}, "
                    f"chance {chance:.2f}): the model does not pick the correct option ahead of the others, so it "
                    "cannot do this task in this format and there is no decisive phase.")
        else:
            self.layer = int(blocks[pos])
            self.reason = ""
            self.silent, self.decisive = range(0, self.layer), range(self.layer, tr.n_blocks)

    @property
    def margins(self) -> np.ndarray:
        return self.trace.margins

    @property
    def boot_seed(self) -> int:
        """The bootstrap's seed (saved as ``seed``)."""
        return self.seed

    @property
    def fraction(self) -> float | None:
        """``layer / L`` (depth fraction of the dense model), or ``None``."""
        return None if self.layer is None else self.layer / self.trace.n_blocks

    def to_pandas(self):
        df = self.trace.to_pandas()
        df["phase"] = ["decisive" if self.layer is not None and b >= self.layer else "silent" for b in df["block"]]
        return df

    def summary(self) -> str:
        t = self.trace
        if self.layer is None:
            return f"{t.model} on {t.task} ({t.format}, {t.lens} lens): no transition. {self.reason}"
        ci = f"{self.ci[0]}-{self.ci[1]}" if self.ci else "n/a"
        return (
            f"{t.model} on {t.task} ({t.format}{', reformulated' if t.reformulated else ''}, {t.n_items} items, "
            f"{t.lens} lens): decisive phase begins at block {self.layer} of {t.n_blocks} (95% CI {ci}; largest jump "
            f"at block {self.jump_layer}); final margin {t.margins[-1]:.3f}, final accuracy {t.accuracy[-1]:.3f}"
        )



def _resolve_task(task: Any) -> Task:
    return task if isinstance(task, Task) else load_task(task)


def check_boot(n_boot: Any, seed: Any) -> None:
    """``n_boot`` a bootstrap count (:func:`phaselens.checks.check_n_boot`), ``seed`` an int: a clear error otherwise."""
    checks.bootstrap(n_boot, seed)


@scheduled
@renamed_kwargs(seed="boot_seed")
def decision_trace(
    model: ModelLike,
    task: TaskLike,
    *,
    batch_size: int | None = None,
    max_tokens: int | None = None,
    device: str | None = None,
    n_boot: int = N_BOOT,
    boot_seed: int = 0,
    progress: bool = False,
    cache: PrefixCache | None = None,
    blocks: Any = None,
    lens: Any = None,
    out: str | os.PathLike | None = None,
) -> DecisionTrace:
    """Option-restricted logit lens of every surviving block of ``model`` on ``task``.

    Args:
        model: a :class:`~phaselens.Model`, a pruned/recovered view, or anything ``load_model`` takes.
        task: a :class:`~phaselens.Task` or anything ``load_task`` takes.
        batch_size: at most this many sequences per forward pass (default: no cap).
        max_tokens: padded tokens per forward pass (default 4096 on the CPU, 32768 on a GPU).
        device: used only when ``model`` is a spec to be loaded.
        n_boot: bootstrap resamples for the intervals; ``boot_seed`` seeds them (``seed=``: its deprecated name).
        cache: a :class:`~phaselens.runner.PrefixCache` replaying identical prefixes (sweeps, phase cuts).
        blocks: ``None`` (every surviving block), ``"last"`` (only the model's own answer: one readout, what
            lm-evaluation-harness computes, at its cost), or a list of surviving blocks. A trace of some blocks
            has no transition.
        lens: how each block is read: ``None``/``"logit"`` (the logit lens), ``"linear"`` or ``"tuned"`` (fitted on the
            bundled calibration text, or loaded from the cache), a saved lens's path, or a :class:`~phaselens.Lens`
            (:func:`phaselens.fit_lens`). The trace records its kind in ``.lens``.
        out: a folder that makes the trace resumable: the items are read in units of :data:`TRACE_CHUNK`, each
            saved in ``out/.phaselens/trace/`` as it finishes, so a killed run reruns only its unfinished unit. The
            same numbers as without it, up to float rounding of the batches (items are batched within a unit).
    """
    check_boot(n_boot, boot_seed)
    checks.batching(batch_size, max_tokens)
    checks.flag("progress", progress)
    t = _resolve_task(task)  # a bad task, blocks= or lens= fails before a model named by a string loads
    checks.check_n_boot(n_boot, n_items=len(t.items))  # the [n_boot, items] resamples fit in memory
    check_blocks_arg(blocks)
    check_lens_arg(lens)
    if cache is not None and not isinstance(cache, PrefixCache):
        raise PhaselensError(f"cache must be a phaselens.runner.PrefixCache or None, got {type(cache).__name__}")
    if out is not None and not isinstance(out, (str, os.PathLike)):
        raise PhaselensError(f"out must be a folder path (str or os.PathLike) or None, got {type(out).__name__}")
    if device is not None and isinstance(model, str):
        model = load_model(model, device=device)
    view = as_view(model)
    lens_ = resolve_lens(lens, view)  # another model's lens fails before any work

    def read(part: Task) -> DecisionTrace:
        ol = option_logits(view, part, batch_size=batch_size, max_tokens=max_tokens, progress=progress, cache=cache,
                           blocks=blocks, lens=lens_)
        chars = np.zeros(ol.mask.shape, dtype=np.int64)
        for i, it in enumerate(part.items):
            chars[i, : len(it.options)] = [len(o) for o in it.options]
        return DecisionTrace(
            model=view.name, task=t.name, format=t.format, n_blocks=view.base.n_blocks, blocks=np.asarray(ol.blocks),
            logits=ol.z.numpy(), answers=ol.answers.numpy(), mask=ol.mask.numpy(), option_chars=chars,
            item_ids=[it.id for it in part.items], n_boot=n_boot, seed=boot_seed, reformulated=t.reformulated,
            complete=list(ol.blocks) == list(view.kept), lens=lens_.name,
            task_note="; ".join(x for x in (t.selection, t.layout_note and f"prompt: {t.layout_note}") if x),
        )

    if out is None:
        return read(t)
    parts = []
    with run_folder(out, "trace", _trace_args(view, t, blocks, lens_), "a trace") as folder:
        for a in range(0, len(t.items), TRACE_CHUNK):
            parts.append(load_or_compute(folder, f"items_{a:06d}", lambda: read(_items_of(t, a, a + TRACE_CHUNK))))
    return join_items(parts, n_boot=n_boot, seed=boot_seed)


def _items_of(t: Task, a: int, b: int) -> Task:
    """Items ``a:b`` of ``t`` with the prompts they have in the whole task (lm-eval's few-shot sampler draws in
    item order, so a unit keeps the shots the whole task's sampler gave its items)."""
    shots = {"sampler": [t.shots_of(i) for i in range(a, min(b, len(t.items)))]} if t.shots and t.fewshot == "sampler" else {}
    return dataclasses.replace(t, items=t.items[a:b], _shot_cache=shots)


def prompts_digest(t: Task) -> str:
    """A short hash of what ``t`` asks the model: every item's prompt, decision strings and answer (a resumable run's
    folder is refused for another task, item set, layout or few-shot draw)."""
    return digest([[t.prompt(i), t.decision_strings(i), int(it.answer)] for i, it in enumerate(t.items)])


def view_identity(view: Any, t: Task) -> dict[str, Any]:
    """What a resumable run's folder is made with: the model (weights, pruning, recovery operators, where it
    computes) and the task (its items and their prompts). Shared by traces, noise injection and ablation."""
    ops = hashlib.sha256()
    for key, w in sorted({**{f"{s}-{e}": w for (s, e), w in view.operators.items()},
                          **{f"branch{b}": w for b, w in view.branch_operators.items()}}.items()):
        ops.update(key.encode())
        ops.update(w.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    base = view.base
    return {"model": base.name, "fingerprint": base.fingerprint, "device": str(base.device), "dtype": str(base.dtype),
            "removed": list(view.removed), "method": view.method, "operators": ops.hexdigest()[:16],
            "task": t.name, "format": t.format, "n_items": len(t.items), "prompts": prompts_digest(t)}


def _trace_args(view: Any, t: Task, blocks: Any, lens: Any) -> dict[str, Any]:
    """The identity of a resumable trace's folder: :func:`view_identity`, the blocks read, the lens and the unit
    size."""
    return {**view_identity(view, t),
            "blocks": blocks if blocks is None or isinstance(blocks, str) else [int(b) for b in blocks],
            "lens": lens.name if lens.kind == "logit" else lens.digest, "chunk": TRACE_CHUNK}


def join_items(parts: list[DecisionTrace], *, n_boot: int | None = None, seed: int | None = None) -> DecisionTrace:
    """One trace of the items of ``parts`` (traces of one model and task on disjoint items, read at the same blocks),
    in their order; option slots are padded to the widest part (``-inf`` logits, masked out)."""
    if not parts:
        raise PhaselensError("join_items needs at least one trace")
    first = parts[0]
    for p in parts[1:]:
        if (p.model, p.task, p.format, p.lens, p.scoring) != (first.model, first.task, first.format, first.lens, first.scoring) \
                or not np.array_equal(p.blocks, first.blocks):
            raise PhaselensError(f"join_items: {p.model} on {p.task} ({p.lens} lens, blocks {list(p.blocks)}) does not match "
                                 f"{first.model} on {first.task} ({first.lens} lens, blocks {list(first.blocks)}); join "
                                 "traces of one model and task read at the same blocks")
    K = max(p.logits.shape[2] for p in parts)

    def pad(x: np.ndarray, fill: Any, axis: int) -> np.ndarray:
        w = [(0, 0)] * x.ndim
        w[axis] = (0, K - x.shape[axis])
        return np.pad(x, w, constant_values=fill)

    return dataclasses.replace(
        first, logits=np.concatenate([pad(p.logits, -np.inf, 2) for p in parts], axis=1),
        answers=np.concatenate([p.answers for p in parts]), mask=np.concatenate([pad(p.mask, False, 1) for p in parts]),
        option_chars=np.concatenate([pad(p.option_chars, 0, 1) for p in parts]),
        item_ids=[i for p in parts for i in p.item_ids], n_boot=first.n_boot if n_boot is None else n_boot,
        seed=first.seed if seed is None else seed, complete=all(p.complete for p in parts))


def transition_point(model: ModelLike, task: TaskLike, **kw: Any) -> Transition:
    """Find the silent -> decisive transition of ``model`` on ``task``.

    ``model`` and ``task`` may be objects or specs: ``transition_point("smollm2-135m", "capitals")``.
    Keyword arguments go to :func:`decision_trace`.
    """
    return decision_trace(model, task, **kw).transition()
