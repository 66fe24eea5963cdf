"""``decision_trace`` and ``transition_point``: the per-layer metrics and the phase boundary."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

from . import metrics
from .lens import option_logits
from .phases import jump_index, transition_ci, transition_index
from .tasks import Task, load_task
from .view import as_view

N_BOOT = 1000


class _Figures:
    """Per-block figures of a trace or a transition (the transition adds phase shading)."""

    def plot(self, **kw):
        """The margin curve with its bootstrap band (:func:`phaselens.plots.margin_curves`); a
        :class:`Transition` also shades the silent and decisive phases and marks the transition."""
        from .plots import margin_curves

        return margin_curves([self], **kw)

    plot_margin = plot

    def plot_accuracy(self, **kw):
        """Accuracy per block with bootstrap bands and chance level (:func:`phaselens.plots.accuracy_curves`)."""
        from .plots import accuracy_curves

        return accuracy_curves([self], **kw)

    def plot_kl(self, **kw):
        """Bias KL and convergence KL per block (:func:`phaselens.plots.kl_curves`)."""
        from .plots import kl_curves

        return kl_curves([self], **kw)

    def plot_option_frequency(self, kind: str = "stacked", **kw):
        """Option frequency per block: ``kind="stacked"``, ``"area"`` or ``"radar"`` (slider over blocks)."""
        from .plots import option_frequency

        return option_frequency(self, kind, **kw)


@dataclass
class DecisionTrace(_Figures):
    """Decision metrics of one model on one task, per surviving block.

    Shapes: ``L`` surviving blocks, ``N`` items, ``K`` option slots.

    Attributes:
        blocks: ``[L]`` original block index of each row (pruned models skip some).
        margins: ``[L]`` Decision Margin; ``item_margins`` ``[N, L]`` per item.
        accuracy: ``[L]``; ``option_frequency`` ``[L, K]``; ``bias_kl``, ``convergence_kl`` ``[L]``.
        margin_ci, accuracy_ci: ``[2, L]`` bootstrap 95% intervals over items.
        answer_prior: ``[K]`` share of items whose answer is each slot.
        logits: ``[L, N, K]`` the option logits everything was computed from.
    """

    model: str
    task: str
    format: str
    n_blocks: int
    blocks: np.ndarray
    margins: np.ndarray
    item_margins: np.ndarray
    accuracy: np.ndarray
    option_frequency: np.ndarray
    bias_kl: np.ndarray
    convergence_kl: np.ndarray
    margin_ci: np.ndarray
    accuracy_ci: np.ndarray
    answer_prior: np.ndarray
    logits: np.ndarray = field(repr=False)
    item_ids: list[str] = field(default_factory=list, repr=False)
    seed: int = 0
    reformulated: bool = False

    @property
    def n_layers(self) -> int:
        return len(self.blocks)

    @property
    def n_items(self) -> int:
        return int(self.item_margins.shape[0])

    @property
    def slot_labels(self) -> list[str]:
        return [chr(ord("A") + k) if k < 26 else str(k) for k in range(self.option_frequency.shape[1])]

    def to_pandas(self):
        """One row per surviving block: margin (+ CI), accuracy (+ CI), KLs, option frequencies."""
        import pandas as pd

        df = pd.DataFrame(
            {
                "layer": np.arange(self.n_layers),
                "block": self.blocks,
                "margin": self.margins,
                "margin_lo": self.margin_ci[0],
                "margin_hi": self.margin_ci[1],
                "accuracy": self.accuracy,
                "accuracy_lo": self.accuracy_ci[0],
                "accuracy_hi": self.accuracy_ci[1],
                "bias_kl": self.bias_kl,
                "convergence_kl": self.convergence_kl,
            }
        )
        for k, lab in enumerate(self.slot_labels):
            df[f"of_{lab}"] = self.option_frequency[:, k]
        return df

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DecisionTrace":
        kw = {}
        for f in fields(cls):
            v = d[f.name] if f.name in d else None
            if v is None and f.name in ("item_ids",):
                v = []
            kw[f.name] = np.asarray(v, dtype=float) if isinstance(v, list) and f.name not in ("item_ids",) else v
        kw["blocks"] = np.asarray(kw["blocks"], dtype=int)
        return cls(**kw)


@dataclass
class Transition(_Figures):
    """Where the decisive phase begins.

    Attributes:
        layer: original block index where the decisive phase begins, or ``None``.
        reason: why ``layer`` is ``None`` (the model cannot do the task), else ``""``.
        jump_layer: block with the largest margin rise ``DM_l - DM_{l-1}``.
        ci: bootstrap 95% interval for ``layer`` over items (original block indices).
        ci_undefined: share of bootstrap resamples in which no transition exists.
        silent, decisive: the two phases as ranges of original block indices.
    """

    layer: int | None
    reason: str
    jump_layer: int | None
    ci: tuple[int, int] | None
    ci_undefined: float
    silent: range | None
    decisive: range | None
    trace: DecisionTrace = field(repr=False)

    @property
    def margins(self) -> np.ndarray:
        return self.trace.margins

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
            return f"{t.model} on {t.task} ({t.format}): no transition. {self.reason}"
        ci = f"{self.ci[0]}-{self.ci[1]}" if self.ci else "n/a"
        return (
            f"{t.model} on {t.task} ({t.format}, {t.n_items} items): decisive phase begins at block "
            f"{self.layer} of {t.n_blocks} (95% CI {ci}; largest jump at block {self.jump_layer}); "
            f"final margin {t.margins[-1]:.3f}, final accuracy {t.accuracy[-1]:.3f}"
        )

    def to_dict(self) -> dict[str, Any]:
        rng = lambda r: None if r is None else [r.start, r.stop]  # noqa: E731
        return {
            "layer": self.layer,
            "reason": self.reason,
            "jump_layer": self.jump_layer,
            "ci": None if self.ci is None else list(self.ci),
            "ci_undefined": self.ci_undefined,
            "silent": rng(self.silent),
            "decisive": rng(self.decisive),
            "trace": self.trace.to_dict(),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Transition":
        rng = lambda r: None if r is None else range(*r)  # noqa: E731
        return cls(d["layer"], d["reason"], d["jump_layer"], None if d["ci"] is None else tuple(d["ci"]),
                   d["ci_undefined"], rng(d["silent"]), rng(d["decisive"]), DecisionTrace.from_dict(d["trace"]))


def _resolve_task(task: Any) -> Task:
    return task if isinstance(task, Task) else load_task(task)


def decision_trace(
    model: Any,
    task: Any,
    *,
    batch_size: int | None = None,
    device: str | None = None,
    n_boot: int = N_BOOT,
    seed: int = 0,
    progress: bool = False,
    replay=None,
) -> DecisionTrace:
    """Option-restricted logit lens of every surviving block of ``model`` on ``task``.

    Args:
        model: a :class:`~phaselens.Model`, a pruned/recovered view, or anything ``load_model`` takes.
        task: a :class:`~phaselens.Task` or anything ``load_task`` takes.
        batch_size: prompts per forward pass (default 16 on CPU, 64 on GPU).
        device: used only when ``model`` is a spec to be loaded.
        n_boot: bootstrap resamples for the intervals; ``seed`` seeds them.
    """
    if device is not None and isinstance(model, str):
        from .models import load_model

        model = load_model(model, device=device)
    view = as_view(model)
    t = _resolve_task(task)
    ol = option_logits(view, t, batch_size=batch_size, progress=progress, replay=replay)
    z, ans = ol.z, ol.answers
    im = metrics.item_margins(z, ans)
    acc_items = (metrics.predictions(z) == ans[None]).double().T.numpy()  # [N, L]
    idx = metrics.bootstrap_indices(len(ans), n_boot, seed)
    return DecisionTrace(
        model=view.name,
        task=t.name,
        format=t.format,
        n_blocks=view.base.n_layers,
        blocks=np.asarray(ol.blocks),
        margins=im.mean(0),
        item_margins=im,
        accuracy=metrics.accuracy(z, ans),
        option_frequency=metrics.option_frequency(z),
        bias_kl=metrics.bias_kl(z, ans),
        convergence_kl=metrics.convergence_kl(z),
        margin_ci=metrics.bootstrap_ci(im, idx),
        accuracy_ci=metrics.bootstrap_ci(acc_items, idx),
        answer_prior=metrics.answer_prior(ans, z.shape[-1]),
        logits=z.numpy(),
        item_ids=[it.id for it in t.items],
        seed=seed,
        reformulated=t.reformulated,
    )


def transition_from_trace(trace: DecisionTrace, *, n_boot: int = N_BOOT, seed: int = 0) -> Transition:
    """The :class:`Transition` of an existing trace (no model run)."""
    blocks = trace.blocks
    pos = transition_index(trace.margins)
    jump = jump_index(trace.margins)
    idx = metrics.bootstrap_indices(trace.n_items, n_boot, seed)
    ci_pos, undefined = transition_ci(trace.item_margins, idx)
    ci = None if ci_pos is None else (int(blocks[int(np.floor(ci_pos[0]))]), int(blocks[int(np.ceil(ci_pos[1]))]))
    if pos is None:
        reason = (
            f"the final-layer margin is {trace.margins[-1]:.3f} <= 0 (final accuracy {trace.accuracy[-1]:.2f}): "
            "the model does not pick the correct option ahead of the others, so it cannot do this task "
            "in this format and there is no decisive phase."
        )
        return Transition(None, reason, None if jump is None else int(blocks[jump]), ci, undefined, None, None, trace)
    layer = int(blocks[pos])
    return Transition(
        layer, "", None if jump is None else int(blocks[jump]), ci, undefined,
        range(0, layer), range(layer, trace.n_blocks), trace,
    )


def transition_point(model: Any, task: Any, **kw: Any) -> Transition:
    """Find the silent -> decisive transition of ``model`` on ``task``.

    ``model`` and ``task`` may be objects or specs: ``transition_point("smollm2-135m", "capitals")``.
    Keyword arguments go to :func:`decision_trace`.
    """
    trace = decision_trace(model, task, **kw)
    return transition_from_trace(trace, n_boot=kw.get("n_boot", N_BOOT), seed=kw.get("seed", 0))
