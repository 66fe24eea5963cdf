"""Causal probes of the phases: noise injection and block ablation, read at the model's output.

Noise injection (DESIGN.md): at block ``l``, ``h_l <- h_l + eps * sigma(h_l) * N(0, I)`` where
``h_l [T, d]`` is the block's *output* (the residual stream after block ``l``) at every real token
of the prompt and ``sigma(h_l)[t]`` the population standard deviation (``correction=0``) of
``h_l[t]`` over the ``d`` hidden channels. One block at a time; the downstream effect is read as the
final Decision Margin and accuracy (the model's own output logits at the decision position,
restricted to the options).

The noise is a function of ``(seed, block, item)`` only, never of the batch an item lands in:
item ``i``'s standard-normal draw ``[T_i, d]`` comes from a ``torch.Generator`` seeded with
:func:`noise_seed` ``(seed, block, i)`` (:func:`noise_draw`). ``eps`` only scales that draw, so the
same seed uses the same draw at every ``eps`` (common random numbers: differences between ``eps``
values are not blurred by different draws).

Ablation of block ``l`` (``h_in`` its input, ``u_l = h_out - h_in`` its update):

``"skip"``
    the block is removed, ``h_out = h_in``; the same model as :func:`phaselens.prune`.
``"zero"``
    zero-ablation in the mechanistic-interpretability sense: the block's two writes into the
    residual stream (the attention branch and the MLP branch outputs) are set to zero by hooks on
    those modules, the block itself still runs. For a residual block this *is* ``h_out = h_in``,
    so it gives the same numbers as ``"skip"`` (up to float rounding) by a different path; a
    block that is not purely residual would make them differ.
``"mean"``
    mean-ablation: ``h_out = h_in + mean(u_l)``, the block's update replaced by its mean ``[d]``
    over every real prompt token of the task's items, computed on the unablated model.

Every intervention runs through :class:`~phaselens.runtime.Plan` edits on top of the model's own
plan (a pruned or recovered view keeps its cuts), with the unchanged prefix of each forward replayed
from a clean pass (:class:`~phaselens.runtime.Replay`), so only blocks from the first edited one on
are recomputed.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from . import metrics
from .stats import seed_list
from .encoding import batches, encode, pad
from .runtime import Plan, Replay, applied, branch_module, identity, run_decoder
from .tasks import Task, load_task
from .view import ModelView, as_view

ABLATION_MODES = ("skip", "zero", "mean")
N_BOOT = 1000


class InterventionError(ValueError):
    """An intervention cannot run as asked; the message says why and what to pass instead."""


# ----------------------------------------------------------------------------- views with extra edits
@dataclass(eq=False)
class EditedView(ModelView):
    """A :class:`~phaselens.view.ModelView` whose forward also applies ``edits`` (a
    :class:`~phaselens.runtime.Plan`: e.g. noise after a block, a block's update replaced).

    ``plan()`` is the view's own plan merged with ``edits`` (``after`` edits compose, a block
    cannot be replaced twice). Anything that takes a model takes it: ``decision_trace(EditedView(...))``
    traces the intervened model. ``signature()`` includes the edits, so prefix reuse and CKA never
    mistake it for the unedited view.
    """

    edits: Plan = field(default_factory=Plan)

    @classmethod
    def of(cls, model: Any, edits: Plan, label: str = "") -> "EditedView":
        v = as_view(model)
        return cls(v.base, v.removed, dict(v.operators), dict(v.branch_operators), label or v.label, v.method, edits=edits)

    def plan(self) -> Plan:
        return super().plan().merged(self.edits)

    def signature(self) -> dict[int, object]:
        sig = super().signature()
        for kind, d in (("replace", self.edits.replace), ("after", self.edits.after), ("branch", self.edits.branch)):
            for b, fn in d.items():
                sig[b] = (kind, sig.get(b), id(fn))
        return sig


# ----------------------------------------------------------------------------- noise draws
def noise_seed(seed: int, block: int, item: int) -> int:
    """The generator seed of item ``item``'s noise at ``block`` for run ``seed`` (a 63-bit int)."""
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(block), int(item), 0x9E3779B9]).generate_state(2, np.uint32)
    return (int(state[0]) << 31 | int(state[1]) >> 1) & ((1 << 63) - 1)


def noise_draw(seed: int, block: int, item: int, n_tokens: int, d: int) -> torch.Tensor:
    """``[n_tokens, d]`` float32 standard-normal draw of item ``item`` at ``block`` for run ``seed``."""
    g = torch.Generator().manual_seed(noise_seed(seed, block, item))
    return torch.randn(n_tokens, d, generator=g)


def add_noise(h: torch.Tensor, eps: float, noise: torch.Tensor) -> torch.Tensor:
    """``h + eps * sigma(h) * noise`` with ``sigma`` the per-token std over channels (``correction=0``).

    ``h [..., T, d]``, ``noise`` broadcastable to it; computed in float32, returned in ``h``'s dtype.
    """
    x = h.float()
    sigma = x.std(-1, keepdim=True, correction=0)
    return (x + float(eps) * sigma * noise.to(x.device, torch.float32)).to(h.dtype)


# ----------------------------------------------------------------------------- the runner
class _FinalRunner:
    """Runs a view over a task's prompts with per-batch edits; returns the final option logits ``[N, K]``.

    A first clean pass records every block's input per batch (:class:`Replay`); later passes that
    edit nothing before block ``start`` replay the stored input of ``start`` and recompute only the rest.
    """

    def __init__(self, view: ModelView, task: Task, batch_size: int | None, reuse_prefix: bool, progress: bool = False):
        if task.format == "continuation":
            raise InterventionError(
                f"{task.name} is in the continuation format; noise injection and ablation read the decision "
                "position of letters/cloze items. Load the task with format='cloze' or 'letters'"
            )
        self.view, self.base = view, view.base
        self.enc = encode(task, self.base.tokenizer)
        self.lengths = [len(p) for p in self.enc.prompts]
        bs = batch_size or (64 if self.base.device.type == "cuda" else 16)
        if bs < 1:
            raise InterventionError(f"batch_size must be >= 1, got {bs}")
        self.groups = batches(self.lengths, bs)
        self.replay = Replay(self.base.n_layers) if reuse_prefix else None
        self.progress = progress
        self._clean: torch.Tensor | None = None

    @property
    def n_items(self) -> int:
        return self.enc.n_items

    def clean(self) -> torch.Tensor:
        """``[N, K]`` final option logits of the unedited view (records the replay store)."""
        if self._clean is None:
            if self.replay is not None:
                self.replay.frozen = False
                self.replay.begin(0)
            self._clean = self._run(lambda idx: Plan(), 0)
            if self.replay is not None:
                self.replay.frozen = True
        return self._clean

    def run(self, edits: Callable[[list[int]], Plan], start: int, hooks: Callable[[], Any] | None = None) -> torch.Tensor:
        """``[N, K]`` final option logits with ``edits(batch item indices)`` applied; nothing before ``start`` changes."""
        self.clean()
        if self.replay is not None:
            self.replay.begin(start)
        return self._run(edits, start, hooks)

    def _run(self, edits: Callable[[list[int]], Plan], start: int, hooks: Callable[[], Any] | None = None) -> torch.Tensor:
        base, enc = self.base, self.enc
        last = base.n_layers - 1  # a skipped last block passes its input through, so its output is the final state
        z = torch.empty(enc.n_items, enc.n_options)
        box: dict[str, torch.Tensor] = {}
        with torch.inference_mode():
            for idx in self.groups:
                ids, att = pad([enc.prompts[i] for i in idx], base.tokenizer.pad_token_id or 0, base.device)
                pos = att.sum(1) - 1

                def tap(h: torch.Tensor, _pos=pos) -> None:
                    box["h"] = h[torch.arange(h.shape[0], device=h.device), _pos]

                plan = self.view.plan().merged(edits(idx))
                t_in: dict = {}
                t_out: dict = {last: tap}
                if self.replay is not None:
                    key = ("final", tuple(idx), ids.shape[1])
                    plan, t_in, rec_out, _ = self.replay.plan(plan, key)
                    if rec_out:
                        t_out = {last: lambda h, _a=rec_out[last]: (_a(h), tap(h)) and None}
                with contextlib.ExitStack() as stack:
                    if hooks is not None:
                        stack.enter_context(hooks())
                    with applied(base.blocks, plan, tap_in=t_in, tap_out=t_out, returns_tuple=base.returns_tuple):
                        run_decoder(base.decoder, ids, att)
                sel = torch.tensor(idx)
                z[sel] = base.readout(box.pop("h"), enc.option_ids[sel].to(base.device)).float().cpu()
        return z.masked_fill(~enc.option_mask, float("-inf"))

    def mean_updates(self, blocks: Sequence[int]) -> dict[int, torch.Tensor]:
        """``{b: [d] float64}``: mean of ``h_out - h_in`` over every real prompt token, on the unedited view."""
        base, enc = self.base, self.enc
        sums = {b: torch.zeros(base.d_model, dtype=torch.float64) for b in blocks}
        n_tok = 0
        state: dict[str, Any] = {}

        def tin(b: int):
            def f(h: torch.Tensor) -> None:
                state[b] = h.detach().double()
            return f

        def tout(b: int):
            def f(h: torch.Tensor) -> None:
                u = (h.double() - state.pop(b)) * state["mask"]
                sums[b] += u.sum((0, 1)).cpu()
            return f

        with torch.inference_mode():
            for idx in self.groups:
                ids, att = pad([enc.prompts[i] for i in idx], base.tokenizer.pad_token_id or 0, base.device)
                state["mask"] = att[..., None].double()
                n_tok += int(att.sum())
                with applied(base.blocks, self.view.plan(), tap_in={b: tin(b) for b in blocks},
                             tap_out={b: tout(b) for b in blocks}, returns_tuple=base.returns_tuple):
                    run_decoder(base.decoder, ids, att)
        return {b: s / n_tok for b, s in sums.items()}


def _margins(z: torch.Tensor, answers: torch.Tensor) -> np.ndarray:
    """``[N]`` final margins from ``z [N, K]``."""
    return metrics.item_margins(z[None], answers)[:, 0]


def _correct(z: torch.Tensor, answers: torch.Tensor) -> np.ndarray:
    return (z.argmax(-1) == answers).numpy()


def _resolve(model: Any, task: Any) -> tuple[ModelView, Task]:
    view = as_view(model)
    t = task if isinstance(task, Task) else load_task(task)
    return view, t


def _check_blocks(view: ModelView, blocks: Iterable[int] | None, what: str) -> list[int]:
    if blocks is None:
        return list(view.kept)
    if isinstance(blocks, (int, np.integer)):
        blocks = [int(blocks)]
    out: list[int] = []
    for b in blocks:
        if isinstance(b, bool) or not isinstance(b, (int, np.integer)):
            raise InterventionError(f"{what}: block indices must be ints, got {b!r}")
        b = int(b)
        if b not in view.kept:
            gone = " (it is pruned from this view)" if 0 <= b < view.base.n_layers else ""
            raise InterventionError(f"{what}: block {b} is not a block of {view.name}{gone}; valid: {view.kept}")
        if b in out:
            raise InterventionError(f"{what}: block {b} is listed twice")
        out.append(b)
    if not out:
        raise InterventionError(f"{what}: no blocks given")
    return out


def _transition(view: ModelView, task: Task, transition: Any, batch_size: int | None, n_boot: int, seed: int):
    if transition is not None:
        return transition
    from .trace import transition_point

    return transition_point(view, task, batch_size=batch_size, n_boot=n_boot, seed=seed)


def _phase_of(b: int, layer: int | None) -> str:
    if layer is None:
        return "none"
    return "decisive" if b >= layer else "silent"


def _boot_ci(values: np.ndarray, idx: np.ndarray, level: float = 0.95) -> np.ndarray:
    """``[2, ...]`` percentile interval of the item mean of ``values [N, ...]``."""
    v = np.asarray(values, dtype=float)
    flat = v.reshape(v.shape[0], -1)
    ci = metrics.bootstrap_ci(flat, idx, level)
    return ci.reshape((2,) + v.shape[1:])


# ----------------------------------------------------------------------------- noise injection
@dataclass
class NoiseResult:
    """Final Decision Margin and accuracy after noise at one block at a time.

    Shapes: ``B`` injected blocks, ``E`` noise scales, ``S`` seeds, ``N`` items.

    Attributes:
        blocks: ``[B]`` original indices of the blocks whose output got the noise.
        eps: ``[E]`` noise scales (multiples of the per-token std of ``h_l``).
        seeds: ``[S]`` run seeds.
        item_margins: ``[B, E, S, N]`` final margin of each item; ``item_correct`` the same, 0/1.
        clean_margins: ``[N]`` final margin without noise; ``clean_correct`` ``[N]``.
        transition: block where the dense decisive phase begins (``None``: no transition).
        n_blocks: depth of the dense model.
    """

    model: str
    task: str
    n_blocks: int
    blocks: list[int]
    eps: list[float]
    seeds: list[int]
    item_margins: np.ndarray
    item_correct: np.ndarray
    clean_margins: np.ndarray
    clean_correct: np.ndarray
    transition: int | None
    n_boot: int = N_BOOT
    boot_seed: int = 0

    def __post_init__(self) -> None:
        self.item_margins = np.asarray(self.item_margins, dtype=float)
        self.item_correct = np.asarray(self.item_correct, dtype=float)
        self.clean_margins = np.asarray(self.clean_margins, dtype=float)
        self.clean_correct = np.asarray(self.clean_correct, dtype=float)
        self.blocks = [int(b) for b in self.blocks]
        self.eps = [float(e) for e in self.eps]
        self.seeds = [int(s) for s in self.seeds]
        want = (len(self.blocks), len(self.eps), len(self.seeds), len(self.clean_margins))
        if self.item_margins.shape != want or self.item_correct.shape != want:
            raise InterventionError(f"item_margins has shape {self.item_margins.shape}, expected [blocks, eps, seeds, items] = {want}")

    @property
    def n_items(self) -> int:
        return int(self.clean_margins.shape[0])

    @property
    def phases(self) -> list[str]:
        return [_phase_of(b, self.transition) for b in self.blocks]

    # -- aggregates
    @property
    def margin(self) -> np.ndarray:
        """``[B, E]`` final margin, mean over seeds and items."""
        return self.item_margins.mean((2, 3))

    @property
    def accuracy(self) -> np.ndarray:
        """``[B, E]`` final accuracy, mean over seeds and items."""
        return self.item_correct.mean((2, 3))

    def seed_ci(self, what: str = "margin", level: float = 0.95) -> np.ndarray:
        """``[2, B, E]`` Student-t interval of the mean over seeds of the per-seed item means (NaN for one seed)."""
        from .stats import seed_interval

        vals = (self.item_margins if what == "margin" else self.item_correct).mean(3)  # [B, E, S]
        _, lo, hi = seed_interval(np.moveaxis(vals, 2, 0), level)
        return np.stack([lo, hi])

    def item_ci(self, what: str = "margin", level: float = 0.95) -> np.ndarray:
        """``[2, B, E]`` bootstrap interval over items of the seed-averaged per-item values."""
        vals = (self.item_margins if what == "margin" else self.item_correct).mean(2)  # [B, E, N]
        idx = metrics.bootstrap_indices(self.n_items, self.n_boot, self.boot_seed)
        return _boot_ci(np.moveaxis(vals, 2, 0), idx, level)

    def sensitivity(self, level: float = 0.95):
        """Silent versus decisive phase, per ``eps``: the mean drop of the final margin (clean minus noisy,
        averaged over the phase's injected blocks and the seeds) and of accuracy, each with a bootstrap
        interval over items, and the paired difference silent minus decisive. A DataFrame."""
        import pandas as pd

        idx = metrics.bootstrap_indices(self.n_items, self.n_boot, self.boot_seed)
        drop = self.clean_margins[None, None] - self.item_margins.mean(2)  # [B, E, N]
        adrop = self.clean_correct[None, None] - self.item_correct.mean(2)
        ph = np.asarray(self.phases)
        rows = []
        for e, eps in enumerate(self.eps):
            per: dict[str, tuple[np.ndarray, np.ndarray]] = {}
            for phase in ("silent", "decisive", "none"):
                sel = ph == phase
                if not sel.any():
                    continue
                per[phase] = (drop[sel, e].mean(0), adrop[sel, e].mean(0))  # [N]
            for phase, (d, a) in per.items():
                ci, aci = _boot_ci(d, idx, level), _boot_ci(a, idx, level)
                blocks = [b for b, p in zip(self.blocks, self.phases) if p == phase]
                rows.append({"eps": eps, "phase": "all (no transition)" if phase == "none" else phase,
                             "n_blocks": len(blocks), "blocks": _fmt(blocks),
                             "margin_drop": d.mean(), "margin_drop_lo": ci[0], "margin_drop_hi": ci[1],
                             "accuracy_drop": a.mean(), "accuracy_drop_lo": aci[0], "accuracy_drop_hi": aci[1]})
            if len(per) == 2:
                d = per["silent"][0] - per["decisive"][0]
                a = per["silent"][1] - per["decisive"][1]
                ci, aci = _boot_ci(d, idx, level), _boot_ci(a, idx, level)
                rows.append({"eps": eps, "phase": "silent - decisive", "n_blocks": len(self.blocks), "blocks": "",
                             "margin_drop": d.mean(), "margin_drop_lo": ci[0], "margin_drop_hi": ci[1],
                             "accuracy_drop": a.mean(), "accuracy_drop_lo": aci[0], "accuracy_drop_hi": aci[1]})
        return pd.DataFrame(rows)

    def summary(self) -> str:
        """Plain-language silent versus decisive sensitivity, per eps."""
        head = (f"Noise injection on {self.model}, {self.task} ({self.n_items} items, {len(self.seeds)} seeds); "
                f"clean final margin {self.clean_margins.mean():.3f}, accuracy {self.clean_correct.mean():.3f}.")
        if self.transition is None:
            return head + " The dense model has no transition on this task, so there are no phases to compare."
        lines = [head + f" Dense transition at block {self.transition} of {self.n_blocks}."]
        df = self.sensitivity()
        for eps in self.eps:
            sub = df[df.eps == eps].set_index("phase")
            parts = []
            for phase in ("silent", "decisive"):
                if phase in sub.index:
                    r = sub.loc[phase]
                    parts.append(f"{phase} blocks {r.blocks}: margin drop {r.margin_drop:+.3f} "
                                 f"[{r.margin_drop_lo:+.3f}, {r.margin_drop_hi:+.3f}], accuracy drop {r.accuracy_drop:+.3f}")
            line = f"  eps={eps:g}: " + "; ".join(parts)
            if "silent - decisive" in sub.index:
                r = sub.loc["silent - decisive"]
                verdict = ("silent more sensitive" if r.margin_drop_lo > 0 else
                           "decisive more sensitive" if r.margin_drop_hi < 0 else "no clear difference")
                line += (f"; silent - decisive {r.margin_drop:+.3f} [{r.margin_drop_lo:+.3f}, {r.margin_drop_hi:+.3f}]"
                         f" ({verdict})")
            lines.append(line)
        return "\n".join(lines)

    def to_pandas(self):
        """One row per (block, eps): margin and accuracy with intervals over seeds and over items, and drops."""
        import pandas as pd

        m, a = self.margin, self.accuracy
        ms, mi, as_ = self.seed_ci("margin"), self.item_ci("margin"), self.seed_ci("accuracy")
        rows = []
        for i, b in enumerate(self.blocks):
            for e, eps in enumerate(self.eps):
                rows.append({"block": b, "phase": self.phases[i], "eps": eps, "margin": m[i, e],
                             "margin_seed_lo": ms[0, i, e], "margin_seed_hi": ms[1, i, e],
                             "margin_item_lo": mi[0, i, e], "margin_item_hi": mi[1, i, e],
                             "margin_drop": self.clean_margins.mean() - m[i, e], "accuracy": a[i, e],
                             "accuracy_seed_lo": as_[0, i, e], "accuracy_seed_hi": as_[1, i, e],
                             "accuracy_drop": self.clean_correct.mean() - a[i, e]})
        return pd.DataFrame(rows)

    def plot(self, **kw):
        """Plotly figure: final margin against the injected block, one line per eps, phases shaded."""
        from .plots.interventions import noise_sensitivity

        return noise_sensitivity(self, **kw)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "task": self.task, "n_blocks": self.n_blocks, "blocks": self.blocks, "eps": self.eps,
                "seeds": self.seeds, "item_margins": self.item_margins.tolist(), "item_correct": self.item_correct.tolist(),
                "clean_margins": self.clean_margins.tolist(), "clean_correct": self.clean_correct.tolist(),
                "transition": self.transition, "n_boot": self.n_boot, "boot_seed": self.boot_seed}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "NoiseResult":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


def _fmt(blocks: Sequence[int]) -> str:
    from .view import spans_of

    return ",".join(f"{s}" if e == s + 1 else f"{s}-{e - 1}" for s, e in spans_of(tuple(blocks))) or "-"


def _eps_list(eps: Any) -> list[float]:
    vals = [eps] if isinstance(eps, (int, float, np.floating, np.integer)) else list(eps)
    if not vals:
        raise InterventionError("eps: give at least one noise scale")
    out = []
    for e in vals:
        if isinstance(e, bool) or not isinstance(e, (int, float, np.floating, np.integer)):
            raise InterventionError(f"eps must be numbers, got {e!r}")
        if not math.isfinite(float(e)) or float(e) < 0:
            raise InterventionError(f"eps must be finite and >= 0 (a multiple of the per-token std), got {e}")
        out.append(float(e))
    return out


def inject_noise(
    model: Any,
    task: Any,
    blocks: Iterable[int] | int | None = None,
    eps: float | Sequence[float] = (0.1, 0.5, 1.0),
    *,
    seeds: int | Sequence[int] = 5,
    transition: Any = None,
    batch_size: int | None = None,
    reuse_prefix: bool = True,
    n_boot: int = N_BOOT,
    boot_seed: int = 0,
    progress: bool = False,
) -> NoiseResult:
    """Noise at the output of one block at a time; the final margin and accuracy downstream.

    Args:
        model: a model, a pruned/recovered view, or anything ``load_model`` takes.
        task: a letters/cloze :class:`~phaselens.Task` or anything ``load_task`` takes.
        blocks: original indices of the blocks to perturb (default: every surviving block).
        eps: one noise scale or a list: ``h_l <- h_l + eps * sigma(h_l) * N(0, I)``.
        seeds: a count (seeds ``0..S-1``) or a list of seeds; each seed is one independent draw per
            (block, item) (see :func:`noise_draw`).
        transition: the dense :class:`~phaselens.Transition` for the phases (default: computed).
        reuse_prefix: replay the clean prefix before the perturbed block (same numbers, faster).
    """
    view, t = _resolve(model, task)
    blocks = _check_blocks(view, blocks, "inject_noise")
    eps_l, seed_l = _eps_list(eps), seed_list(seeds, minimum=1, error=InterventionError)
    tr = _transition(view, t, transition, batch_size, n_boot, boot_seed)
    runner = _FinalRunner(view, t, batch_size, reuse_prefix, progress)
    answers = runner.enc.answers
    clean = runner.clean()
    d = view.base.d_model
    out_m = np.empty((len(blocks), len(eps_l), len(seed_l), runner.n_items))
    out_c = np.empty_like(out_m)
    lengths = runner.lengths
    todo = list(itertools.product(enumerate(blocks), enumerate(seed_l)))
    if progress:
        from tqdm.auto import tqdm

        todo = tqdm(todo, desc=f"noise {view.name}", leave=False)
    for (i, b), (s, seed) in todo:
        draws: dict[int, torch.Tensor] = {}

        def draw(item: int, _b=b, _seed=seed) -> torch.Tensor:
            if item not in draws:
                draws[item] = noise_draw(_seed, _b, item, lengths[item], d)
            return draws[item]

        for e, eps_v in enumerate(eps_l):
            def edits(idx: list[int], _b=b, _eps=eps_v) -> Plan:
                T = max(lengths[j] for j in idx)
                noise = torch.zeros(len(idx), T, d)
                for r, j in enumerate(idx):
                    noise[r, : lengths[j]] = draw(j)
                return Plan(after={_b: lambda h, _n=noise: add_noise(h, _eps, _n)})

            z = runner.run(edits, start=b)
            out_m[i, e, s] = _margins(z, answers)
            out_c[i, e, s] = _correct(z, answers)
    return NoiseResult(view.name, t.name, view.base.n_layers, blocks, eps_l, seed_l, out_m, out_c,
                       _margins(clean, answers), _correct(clean, answers), tr.layer, n_boot, boot_seed)


# ----------------------------------------------------------------------------- ablation
def attention_branch_module(block: nn.Module) -> nn.Module:
    """The module whose output is the attention branch's write into the residual stream of ``block``:
    ``post_attention_layernorm`` where the block also has a ``pre_feedforward_layernorm`` (Gemma 2/3:
    the norm follows attention), else the attention module (Llama and most others; note that Llama's
    ``post_attention_layernorm`` is the MLP's *input* norm)."""
    from .runtime import _unwrap

    inner = _unwrap(block)
    if isinstance(getattr(inner, "pre_feedforward_layernorm", None), nn.Module):
        mod = getattr(inner, "post_attention_layernorm", None)
        if isinstance(mod, nn.Module):
            return _unwrap(mod)
    for name in ("self_attn", "attn", "attention"):
        mod = getattr(inner, name, None)
        if isinstance(mod, nn.Module):
            return _unwrap(mod)
    raise InterventionError(f"cannot find the attention branch of {type(inner).__name__}; mode='zero' needs .self_attn")


def _zeros_like_out(out: Any) -> Any:
    if isinstance(out, tuple):
        return (torch.zeros_like(out[0]), *out[1:])
    return torch.zeros_like(out)


@contextlib.contextmanager
def zeroed_branches(blocks_modules: list[nn.Module], blocks: Iterable[int]) -> Iterator[None]:
    """Zero the attention-branch and MLP-branch outputs of ``blocks`` for the duration of the ``with``."""
    handles = []
    try:
        for b in blocks:
            for mod in (attention_branch_module(blocks_modules[b]), branch_module(blocks_modules[b])):
                handles.append(mod.register_forward_hook(lambda m, a, out: _zeros_like_out(out)))
        yield
    finally:
        for h in handles:
            h.remove()


def _ablation_edits(mode: str, blocks: tuple[int, ...], means: dict[int, torch.Tensor]) -> Plan:
    if mode == "skip":
        return Plan(replace={b: identity for b in blocks})
    if mode == "mean":
        rep = {}
        for b in blocks:
            mu = means[b]
            rep[b] = lambda h, _mu=mu: (h.float() + _mu.to(h.device, torch.float32)).to(h.dtype)
        return Plan(replace=rep)
    return Plan()


@dataclass
class AblationResult:
    """Final-margin drop when single blocks and pairs of blocks are ablated.

    Drop = clean final margin minus ablated final margin (per item, then the mean over items);
    positive = the ablation hurts the decision.

    Attributes:
        singles: ``[S]`` original indices of the singly ablated blocks.
        pairs: ``[P]`` block pairs ablated together.
        single_margins, single_correct: ``[S, N]`` final margin / 0-1 correctness per item.
        pair_margins, pair_correct: ``[P, N]``.
        clean_margins, clean_correct: ``[N]`` without ablation.
        mode: ``"skip"``, ``"zero"`` or ``"mean"`` (see the module docstring).
        transition: the dense transition block (``None``: no transition).
    """

    model: str
    task: str
    mode: str
    n_blocks: int
    singles: list[int]
    pairs: list[tuple[int, int]]
    single_margins: np.ndarray
    single_correct: np.ndarray
    pair_margins: np.ndarray
    pair_correct: np.ndarray
    clean_margins: np.ndarray
    clean_correct: np.ndarray
    transition: int | None
    n_boot: int = N_BOOT
    boot_seed: int = 0

    def __post_init__(self) -> None:
        n = len(self.clean_margins)
        self.singles = [int(b) for b in self.singles]
        self.pairs = [(int(a), int(b)) for a, b in self.pairs]
        self.clean_margins = np.asarray(self.clean_margins, dtype=float)
        self.clean_correct = np.asarray(self.clean_correct, dtype=float)
        self.single_margins = np.asarray(self.single_margins, dtype=float).reshape(len(self.singles), n)
        self.single_correct = np.asarray(self.single_correct, dtype=float).reshape(len(self.singles), n)
        self.pair_margins = np.asarray(self.pair_margins, dtype=float).reshape(len(self.pairs), n)
        self.pair_correct = np.asarray(self.pair_correct, dtype=float).reshape(len(self.pairs), n)

    @property
    def n_items(self) -> int:
        return int(self.clean_margins.shape[0])

    def _idx(self) -> np.ndarray:
        return metrics.bootstrap_indices(self.n_items, self.n_boot, self.boot_seed)

    @property
    def single_drop(self) -> np.ndarray:
        """``[S]`` mean final-margin drop of each single ablation."""
        return (self.clean_margins[None] - self.single_margins).mean(1)

    @property
    def pair_drop(self) -> np.ndarray:
        """``[P]`` mean final-margin drop of each pair ablation."""
        return (self.clean_margins[None] - self.pair_margins).mean(1)

    def single_ci(self, level: float = 0.95) -> np.ndarray:
        """``[2, S]`` bootstrap interval over items of the single drops."""
        return _boot_ci((self.clean_margins[None] - self.single_margins).T, self._idx(), level)

    def pair_ci(self, level: float = 0.95) -> np.ndarray:
        """``[2, P]`` bootstrap interval over items of the pair drops."""
        if not self.pairs:
            return np.zeros((2, 0))
        return _boot_ci((self.clean_margins[None] - self.pair_margins).T, self._idx(), level)

    def pair_matrix(self) -> tuple[list[int], np.ndarray]:
        """(blocks ``[W]``, ``[W, W]`` drop matrix): off-diagonal = the pair's drop, diagonal = the single
        drop (NaN where not measured)."""
        bl = sorted({b for p in self.pairs for b in p})
        pos = {b: i for i, b in enumerate(bl)}
        m = np.full((len(bl), len(bl)), np.nan)
        sd = dict(zip(self.singles, self.single_drop))
        for b in bl:
            if b in sd:
                m[pos[b], pos[b]] = sd[b]
        for (a, b), v in zip(self.pairs, self.pair_drop):
            m[pos[a], pos[b]] = m[pos[b], pos[a]] = v
        return bl, m

    def to_pandas(self):
        """One row per ablation (singles then pairs): blocks, phase(s), margin drop with CI, accuracy, and for
        pairs the interaction (pair drop minus the sum of the two single drops, when both were measured)."""
        import pandas as pd

        rows = []
        sci, pci = self.single_ci(), self.pair_ci()
        sd = dict(zip(self.singles, self.single_drop))
        for i, b in enumerate(self.singles):
            rows.append({"kind": "single", "blocks": str(b), "block_a": b, "block_b": np.nan,
                         "phase": _phase_of(b, self.transition), "margin_drop": self.single_drop[i],
                         "margin_drop_lo": sci[0, i], "margin_drop_hi": sci[1, i],
                         "accuracy": self.single_correct[i].mean(), "accuracy_drop": (self.clean_correct - self.single_correct[i]).mean(),
                         "interaction": np.nan})
        for j, (a, b) in enumerate(self.pairs):
            inter = self.pair_drop[j] - sd[a] - sd[b] if a in sd and b in sd else np.nan
            rows.append({"kind": "pair", "blocks": f"{a},{b}", "block_a": a, "block_b": b,
                         "phase": f"{_phase_of(a, self.transition)}+{_phase_of(b, self.transition)}",
                         "margin_drop": self.pair_drop[j], "margin_drop_lo": pci[0, j], "margin_drop_hi": pci[1, j],
                         "accuracy": self.pair_correct[j].mean(), "accuracy_drop": (self.clean_correct - self.pair_correct[j]).mean(),
                         "interaction": inter})
        return pd.DataFrame(rows)

    def summary(self) -> str:
        """Plain-language comparison of single-block drops in the silent and decisive phases."""
        head = (f"{self.mode}-ablation on {self.model}, {self.task} ({self.n_items} items); clean final margin "
                f"{self.clean_margins.mean():.3f}, accuracy {self.clean_correct.mean():.3f}.")
        if not self.singles:
            return head
        if self.transition is None:
            return head + " No dense transition: phases undefined."
        idx = self._idx()
        drops = (self.clean_margins[None] - self.single_margins)  # [S, N]
        out = [head + f" Dense transition at block {self.transition}."]
        per = {}
        for phase in ("silent", "decisive"):
            sel = np.array([_phase_of(b, self.transition) == phase for b in self.singles])
            if sel.any():
                d = drops[sel].mean(0)
                per[phase] = d
                ci = _boot_ci(d, idx)
                k = int(np.argmax(self.single_drop[sel]))
                worst = np.asarray(self.singles)[sel][k]
                out.append(f"  {phase} blocks ({int(sel.sum())}): mean margin drop {d.mean():+.3f} [{ci[0]:+.3f}, {ci[1]:+.3f}]; "
                           f"largest at block {worst} ({self.single_drop[sel][k]:+.3f})")
        if len(per) == 2:
            d = per["silent"] - per["decisive"]
            ci = _boot_ci(d, idx)
            out.append(f"  silent - decisive: {d.mean():+.3f} [{ci[0]:+.3f}, {ci[1]:+.3f}]")
        return "\n".join(out)

    def plot(self, **kw):
        """Plotly figure: single drops as bars with CIs (phases coloured) and the pair matrix as a heatmap."""
        from .plots.interventions import ablation_drops

        return ablation_drops(self, **kw)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "task": self.task, "mode": self.mode, "n_blocks": self.n_blocks,
                "singles": self.singles, "pairs": [list(p) for p in self.pairs],
                "single_margins": self.single_margins.tolist(), "single_correct": self.single_correct.tolist(),
                "pair_margins": self.pair_margins.tolist(), "pair_correct": self.pair_correct.tolist(),
                "clean_margins": self.clean_margins.tolist(), "clean_correct": self.clean_correct.tolist(),
                "transition": self.transition, "n_boot": self.n_boot, "boot_seed": self.boot_seed}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "AblationResult":
        kw = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        kw["pairs"] = [tuple(p) for p in d["pairs"]]
        return cls(**kw)


def _default_pairs(view: ModelView, layer: int | None, window: int) -> list[tuple[int, int]]:
    if layer is None:
        warnings.warn("the dense model has no transition on this task: no window for pair ablations (pass pairs=...)",
                      stacklevel=3)
        return []
    near = [b for b in view.kept if abs(b - layer) <= window]
    return list(itertools.combinations(near, 2))


def ablate(
    model: Any,
    task: Any,
    blocks: Iterable[int] | int | None = None,
    *,
    mode: str = "skip",
    pairs: bool | Sequence[tuple[int, int]] | None = None,
    window: int = 3,
    transition: Any = None,
    batch_size: int | None = None,
    reuse_prefix: bool = True,
    n_boot: int = N_BOOT,
    boot_seed: int = 0,
    progress: bool = False,
) -> AblationResult:
    """Ablate single blocks and pairs of blocks; the drop of the final Decision Margin of each.

    Args:
        blocks: blocks ablated one at a time (default: every surviving block).
        mode: ``"skip"``, ``"zero"`` or ``"mean"`` (see the module docstring).
        pairs: ``None`` (default): every pair of blocks within ``window`` of the dense transition when
            ``blocks`` is None, else every pair of the given blocks; ``False``: no pairs; or a list of pairs.
        window: half-width (in blocks) of the window around the transition for the default pairs.
        transition: the dense :class:`~phaselens.Transition` (default: computed).
    """
    if mode not in ABLATION_MODES:
        raise InterventionError(f"mode must be one of {ABLATION_MODES}, got {mode!r}")
    view, t = _resolve(model, task)
    given = blocks is not None
    singles = _check_blocks(view, blocks, "ablate")
    tr = _transition(view, t, transition, batch_size, n_boot, boot_seed)
    if pairs is None:
        pair_l = list(itertools.combinations(sorted(singles), 2)) if given else _default_pairs(view, tr.layer, int(window))
    elif pairs is False:
        pair_l = []
    elif pairs is True:
        pair_l = list(itertools.combinations(sorted(singles), 2))
    else:
        pair_l = []
        for p in pairs:
            p = tuple(p)
            if len(p) != 2 or p[0] == p[1]:
                raise InterventionError(f"pairs must be pairs of two different blocks, got {p!r}")
            _check_blocks(view, p, "ablate pairs")
            pair_l.append((min(p), max(p)))
    runner = _FinalRunner(view, t, batch_size, reuse_prefix, progress)
    answers = runner.enc.answers
    clean = runner.clean()
    means = runner.mean_updates(sorted({b for b in singles} | {b for p in pair_l for b in p})) if mode == "mean" else {}
    units: list[tuple[int, ...]] = [(b,) for b in singles] + [tuple(p) for p in pair_l]
    res_m, res_c = [], []
    it: Iterable = units
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(units, desc=f"ablate {view.name}", leave=False)
    for u in it:
        plan = _ablation_edits(mode, u, means)
        hooks = (lambda _u=u: zeroed_branches(view.base.blocks, _u)) if mode == "zero" else None
        z = runner.run(lambda idx, _p=plan: _p, start=min(u), hooks=hooks)
        res_m.append(_margins(z, answers))
        res_c.append(_correct(z, answers))
    n = runner.n_items
    S = len(singles)
    m = np.asarray(res_m).reshape(len(units), n)
    c = np.asarray(res_c, dtype=float).reshape(len(units), n)
    return AblationResult(view.name, t.name, mode, view.base.n_layers, singles, pair_l, m[:S], c[:S], m[S:], c[S:],
                          _margins(clean, answers), _correct(clean, answers), tr.layer, n_boot, boot_seed)
