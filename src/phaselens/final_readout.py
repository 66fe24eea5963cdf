"""What noise injection and ablation share: running a task's prompts with per-pass edits and reading the
final option logits, over a clean pass recorded once (its prefix is replayed before each edited block), and the
resumable folder (``out=``) that keeps each edited pass's answers as one unit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch

from . import checks, metrics
from .encoding import encode_task
from .errors import InterventionError
from .readout import check_context
from .records import Record
from .resume import RunFolder, load_or_compute, run_folder
from .runner import Batch, Plan, PrefixCache, Read, Runner
from .stats import N_BOOT  # noqa: F401  (one default; re-exported for older imports)
from .tasks import Task, load_task
from .trace import transition_point, view_identity
from .types import ModelLike, TaskLike
from .view import ModelView, as_view



@dataclass
class AnswersUnit(Record):
    """One model's answers to one task: ``margins [N]`` final-layer margin and ``correct [N]`` (0/1) per item."""

    margins: np.ndarray
    correct: np.ndarray


class FinalRunner:
    """Runs a view over a task's prompts with per-batch edits; returns the final option logits ``[N, K]``.

    A first clean pass records every block's input per batch (:class:`~phaselens.runner.PrefixCache`); later
    passes replay the stored input of the first edited block and recompute only from there.
    """

    def __init__(self, view: ModelView, task: Task, *, batch_size: int | None = None, max_tokens: int | None = None,
                 reuse_prefix: bool = True, progress: bool = False) -> None:
        if task.format == "continuation":
            raise InterventionError(
                f"{task.name} is in the continuation format; noise injection and ablation read the decision "
                "position of letters/cloze items. Load the task with format='cloze' or 'letters'")
        self.view, self.base = view, view.base
        self.enc = encode_task(task, self.base.tokenizer)
        check_context(self.base, self.enc, task)
        self.lengths = [len(p) for p in self.enc.prompts]
        self.cache = PrefixCache() if reuse_prefix else None
        self.runner = Runner(view, cache=self.cache)
        self.kw = dict(batch_size=batch_size, max_tokens=max_tokens)
        self.progress = progress
        self._clean: torch.Tensor | None = None

    @property
    def n_items(self) -> int:
        return self.enc.n_items

    def clean(self) -> torch.Tensor:
        """``[N, K]`` final option logits of the unedited view (records the prefix cache)."""
        if self._clean is None:
            self._clean = self._run(None)
            if self.cache is not None:
                self.cache.recording = False
        return self._clean

    def run(self, edits: Callable[[Batch], Plan]) -> torch.Tensor:
        """``[N, K]`` final option logits with ``edits(batch)`` applied to each pass."""
        self.clean()
        return self._run(edits)

    @torch.inference_mode()
    def _run(self, edits: Callable[[Batch], Plan] | None) -> torch.Tensor:
        base, enc = self.base, self.enc
        last = base.n_blocks - 1  # a skipped last block passes its input through, so its output is the final state
        z = torch.empty(enc.n_items, enc.n_options)
        for batch, out in self.runner.passes(enc.prompts, {"h": Read((last,), "out", "last")}, edits=edits, **self.kw):
            sel = torch.tensor(batch.rows)
            z[sel] = base.readout(out["h"][last].to(base.device), enc.option_ids[sel].to(base.device)).float().cpu()
        return z.masked_fill(~enc.option_mask, float("-inf"))

    def mean_updates(self, blocks: Sequence[int]) -> dict[int, torch.Tensor]:
        """``{b: [d] float64}``: mean of ``h_out - h_in`` over every real prompt token, on the unedited view."""
        d = self.base.d_model
        sums = {b: torch.zeros(d, dtype=torch.float64) for b in blocks}
        n_tok = 0
        reads = {"in": Read(tuple(blocks), "in", "tokens", fn=lambda b, h: h.double().sum(0).cpu()),
                 "out": Read(tuple(blocks), "out", "tokens", fn=lambda b, h: h.double().sum(0).cpu())}
        for batch, out in Runner(self.view).passes(self.enc.prompts, reads, **self.kw):
            for b in blocks:
                sums[b] += out["out"][b] - out["in"][b]
            n_tok += int(batch.mask.sum())
        return {b: s / n_tok for b, s in sums.items()}


def final_folder(out: Any, run: str, view: ModelView, task: Task, what: str):
    """The resumable folder ``out/.phaselens/<run>/`` of an intervention (``None``: a no-op context). Its identity is
    the model and the task's prompts (:func:`~phaselens.trace.view_identity`); each unit is named by the edit it
    holds, so a rerun with more blocks, seeds or scales reuses the units it shares with a finished run."""
    return run_folder(out, run, view_identity(view, task), what)


def final_answers(folder: RunFolder | None, unit: str, n_items: int, compute: Callable[[], torch.Tensor],
                  answers: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """``(margins [N], correct [N])`` of one edited pass: read back from ``folder`` when it holds ``unit`` (for the
    same ``N`` items), else ``compute()``'s ``[N, K]`` final option logits, saved as ``unit``."""
    def answered() -> AnswersUnit:
        z = compute()
        return AnswersUnit(margins=final_margins(z, answers), correct=final_correct(z, answers).astype(float))

    got = load_or_compute(folder, unit, answered, lambda u: isinstance(u, AnswersUnit)
                          and u.margins.shape == (n_items,) and u.correct.shape == (n_items,))
    return np.asarray(got.margins, dtype=float), np.asarray(got.correct, dtype=float)


def check_run(n_boot: Any, boot_seed: Any, batch_size: Any, max_tokens: Any, reuse_prefix: Any) -> None:
    """The arguments noise injection and ablation share, checked before any model work."""
    checks.bootstrap(n_boot, boot_seed, InterventionError, "boot_seed")
    checks.batching(batch_size, max_tokens, InterventionError)
    checks.flag("reuse_prefix", reuse_prefix, error=InterventionError)


def final_margins(z: torch.Tensor, answers: torch.Tensor) -> np.ndarray:
    """``[N]`` final margins from ``z [N, K]``."""
    return metrics.item_margins(z[None], answers)[:, 0]


def final_correct(z: torch.Tensor, answers: torch.Tensor) -> np.ndarray:
    return (z.argmax(-1) == answers).numpy()


def resolve(model: ModelLike, task: TaskLike) -> tuple[ModelView, Task]:
    view = as_view(model)
    t = task if isinstance(task, Task) else load_task(task)
    return view, t


def check_blocks(view: ModelView, blocks: Iterable[int] | int | None, what: str) -> list[int]:
    """The blocks to probe: every surviving block by default; a clear error for a pruned, repeated or bad index."""
    if blocks is None:
        return list(view.kept)
    if isinstance(blocks, (int, np.integer)) and not isinstance(blocks, bool):
        blocks = [int(blocks)]
    if isinstance(blocks, (str, bytes)) or not isinstance(blocks, Iterable):
        raise InterventionError(f"{what}: blocks must be a block index or a list of them, got {blocks!r}")
    out: list[int] = []
    for b in blocks:
        if isinstance(b, bool) or not isinstance(b, (int, np.integer)):
            raise InterventionError(f"{what}: block indices must be ints, got {b!r}")
        b = int(b)
        if b not in view.kept:
            gone = " (it is pruned from this view)" if 0 <= b < view.base.n_blocks else ""
            raise InterventionError(f"{what}: block {b} is not a block of {view.name}{gone}; valid: {view.kept}")
        if b in out:
            raise InterventionError(f"{what}: block {b} is listed twice")
        out.append(b)
    if not out:
        raise InterventionError(f"{what}: no blocks given")
    return out


def dense_transition(view: ModelView, task: Task, transition: Any, batch_size: int | None, n_boot: int, seed: int,
                     lens: Any = None, out: Any = None):
    """The given transition, or the view's own on ``task`` read through ``lens`` (a :class:`~phaselens.Lens` or kind),
    its trace resumable in ``out`` when given."""
    if transition is not None:
        layer = getattr(transition, "layer", "missing")
        if not (layer is None or isinstance(layer, (int, np.integer))):
            raise InterventionError(f"transition must be a phaselens Transition (transition_point(...)) or have an int "
                                    f".layer, got {type(transition).__name__}")
        return transition
    return transition_point(view, task, batch_size=batch_size, n_boot=n_boot, boot_seed=seed, lens=lens, out=out)


def dense_item_margins(transition: Any, n_items: int, item_ids: Sequence[str]) -> tuple[np.ndarray | None, list[int] | None]:
    """``(item margins [N, L], read blocks [L])`` of the transition's trace when it was read on the same items
    (so ``l*`` can be re-estimated per bootstrap replicate), else ``(None, None)``."""
    trace = getattr(transition, "trace", None)
    im = getattr(trace, "item_margins", None)
    if trace is None or im is None or not getattr(trace, "complete", True):
        return None, None
    im = np.asarray(im, dtype=float)
    ids = list(getattr(trace, "item_ids", []) or [])
    if im.ndim != 2 or im.shape[0] != n_items or (ids and [str(i) for i in ids] != [str(i) for i in item_ids]):
        return None, None
    if not np.isfinite(im).all():
        return None, None
    return im, [int(b) for b in trace.blocks]


def phase_of(b: int, layer: int | None) -> str:
    if layer is None:
        return "none"
    return "decisive" if b >= layer else "silent"


def boot_ci(values: np.ndarray, idx: np.ndarray, level: float = 0.95) -> np.ndarray:
    """``[2, ...]`` percentile interval of the item mean of ``values [N, ...]``."""
    v = np.asarray(values, dtype=float)
    flat = v.reshape(v.shape[0], -1)
    ci = metrics.bootstrap_ci(flat, idx, level)
    return ci.reshape((2,) + v.shape[1:])
