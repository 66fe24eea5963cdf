"""Ablation of single blocks and pairs, read at the model's output (the final Decision Margin).

Ablation of block ``l`` (``h_in`` its input, ``u_l = h_out - h_in`` its update):

``"skip"``
    the block is removed, ``h_out = h_in``; the same model as :func:`phaselens.prune`.
``"zero"``
    zero-ablation in the mechanistic-interpretability sense: the block's two writes into the
    residual stream (the attention branch and the MLP branch outputs) are set to zero (plan edits of
    those modules' outputs), the block itself still runs. For a residual block this *is* ``h_out = h_in``,
    so it gives the same numbers as ``"skip"`` (up to float rounding) by a different path; a
    block that is not purely residual would make them differ.
``"mean"``
    mean-ablation: ``h_out = h_in + mean(u_l)``, the block's update replaced by its mean ``[d]``
    over every real prompt token of the task's items, computed on the unablated model.

Every ablation runs as :class:`~phaselens.runner.Plan` edits on top of the model's own plan (a pruned or
recovered view keeps its cuts), with the clean prefix before the first ablated block replayed.
"""

from __future__ import annotations

import itertools
import os
import warnings
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from . import checks, metrics
from .errors import InterventionError
from .final_readout import (FinalRunner, boot_ci, check_blocks, check_run, dense_item_margins, dense_transition,
                            final_answers, final_folder, phase_of, resolve)
from .lenses import resolve_lens
from .effects import Effect, hierarchical_effect, no_transition_share, phase_group_means, rank_effect, transition_positions
from .results import Result
from .stats import N_BOOT
from .runner import Plan, skip
from .types import ModelLike, TaskLike
from .view import ModelView
from .runner.layered import scheduled  # schedule= / act_budget= / act_store= (issue 24)

ABLATION_MODES = ("skip", "zero", "mean")


def _ablation_edits(mode: str, blocks: tuple[int, ...], means: dict[int, torch.Tensor]) -> Plan:
    names = {b: f"block {b} {mode}-ablated" for b in blocks}
    if mode == "skip":
        return Plan(replace={b: skip for b in blocks}, names=names)
    if mode == "mean":
        rep = {}
        for b in blocks:
            mu = means[b]
            rep[b] = lambda h, _mu=mu: (h.float() + _mu.to(h.device, torch.float32)).to(h.dtype)
        return Plan(replace=rep, names=names)
    zero = {b: torch.zeros_like for b in blocks}  # both branches' writes into the residual stream are zeroed
    return Plan(mlp=dict(zero), attn=dict(zero), names=names)


@dataclass
class AblationResult(Result):
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
        layer_margins: ``[N, L]`` per-item Decision Margin of the dense model at each read block (the transition's
            trace), so that ``l*`` can be re-estimated inside each bootstrap replicate (``None``: not kept; ``l*``
            is then held fixed).
        layer_blocks: ``[L]`` original block index of each column of ``layer_margins``.
    """

    version = 2  # version 1 had no layer_margins / layer_blocks

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
    lens: str = "logit"  # the lens the transition (the phases) was read with
    layer_margins: np.ndarray | None = None
    layer_blocks: list[int] | None = None

    def __post_init__(self) -> None:
        n = len(self.clean_margins)
        if self.layer_margins is not None:
            self.layer_margins = np.asarray(self.layer_margins, dtype=float)
            self.layer_blocks = [int(b) for b in (self.layer_blocks if self.layer_blocks is not None
                                                  else range(self.layer_margins.shape[1]))]
            if self.layer_margins.shape != (n, len(self.layer_blocks)):
                raise InterventionError(f"layer_margins has shape {self.layer_margins.shape}, expected [items, read "
                                        f"blocks] = {(n, len(self.layer_blocks))}")
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
        return boot_ci((self.clean_margins[None] - self.single_margins).T, self._idx(), level)

    def pair_ci(self, level: float = 0.95) -> np.ndarray:
        """``[2, P]`` bootstrap interval over items of the pair drops."""
        if not self.pairs:
            return np.zeros((2, 0))
        return boot_ci((self.clean_margins[None] - self.pair_margins).T, self._idx(), level)

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
                         "phase": phase_of(b, self.transition), "margin_drop": self.single_drop[i],
                         "margin_drop_lo": sci[0, i], "margin_drop_hi": sci[1, i],
                         "accuracy": self.single_correct[i].mean(), "accuracy_drop": (self.clean_correct - self.single_correct[i]).mean(),
                         "interaction": np.nan})
        for j, (a, b) in enumerate(self.pairs):
            inter = self.pair_drop[j] - sd[a] - sd[b] if a in sd and b in sd else np.nan
            rows.append({"kind": "pair", "blocks": f"{a},{b}", "block_a": a, "block_b": b,
                         "phase": f"{phase_of(a, self.transition)}+{phase_of(b, self.transition)}",
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
            sel = np.array([phase_of(b, self.transition) == phase for b in self.singles])
            if sel.any():
                d = drops[sel].mean(0)
                per[phase] = d
                ci = boot_ci(d, idx)
                k = int(np.argmax(self.single_drop[sel]))
                worst = np.asarray(self.singles)[sel][k]
                out.append(f"  {phase} blocks ({int(sel.sum())}): mean margin drop {d.mean():+.3f} [{ci[0]:+.3f}, {ci[1]:+.3f}]; "
                           f"largest at block {worst} ({self.single_drop[sel][k]:+.3f})")
        if len(per) == 2:
            d = per["silent"] - per["decisive"]
            ci = boot_ci(d, idx)
            out.append(f"  silent - decisive: {d.mean():+.3f} [{ci[0]:+.3f}, {ci[1]:+.3f}]")
        return "\n".join(out)

    def effects(self, *, level: float = 0.95, n_boot: int | None = None, boot_seed: int | None = None) -> list[Effect]:
        """The headline contrasts of single-block ablation (margin drop = clean minus ablated final margin):

        * the mean drop **at the transition** (blocks ``l*-1`` and ``l*``), over the **rest of the silent phase**
          (blocks before ``l*-1``) and over the **rest of the decisive phase** (blocks after ``l*``);
        * ``at − rest of silent`` and ``at − rest of decisive`` (predicted positive: "ablating at the transition
          hurts most");
        * the most damaging block, with a bootstrap interval on its rank (:func:`~phaselens.effects.rank_effect`).

        Items are resampled (percentile bootstrap, ``n_boot`` replicates); ``l*`` is re-estimated from the dense
        per-item margins (``layer_margins``) inside every replicate, and the share of replicates with no transition
        is each effect's ``undefined``. Without ``layer_margins`` ``l*`` is held fixed (said in ``method``).
        """
        n_boot = self.n_boot if n_boot is None else n_boot
        boot_seed = self.boot_seed if boot_seed is None else boot_seed
        drops = (self.clean_margins[None] - self.single_margins).T  # [N, S]
        common = dict(level=level, n_boot=n_boot, boot_seed=boot_seed, model=self.model, task=self.task)
        out: list[Effect] = []
        if self.transition is not None and len(self.singles) >= 1:
            out += self._phase_effects(drops, common)
        if len(self.singles) >= 2:
            out.append(rank_effect(drops, self.singles, name="", **common))
        return out

    def _phase_effects(self, drops: np.ndarray, common: dict) -> list[Effect]:
        if self.layer_margins is not None:
            blocks = list(self.layer_blocks)
            arms = {"drop": drops, "dense": self.layer_margins}
            lstar = lambda m: transition_positions(m["dense"])  # noqa: E731  re-estimated per replicate
            share = no_transition_share(self.layer_margins, common["n_boot"], common["boot_seed"])
            how = f"; l* re-estimated in each replicate (no transition in {share:.1%} of them)"
        else:
            blocks = sorted(set(self.singles) | {self.transition})
            arms = {"drop": drops}
            fixed = float(blocks.index(self.transition))
            lstar = lambda m: np.full(m["drop"].shape[0], fixed)  # noqa: E731
            how = "; l* held fixed (the result keeps no per-item dense margins)"
        pos = np.asarray([blocks.index(b) if b in blocks else -10 ** 6 for b in self.singles], dtype=float)
        groups = phase_group_means(drops.mean(0)[None], pos, lstar({k: v.mean(0)[None] for k, v in arms.items()}))
        names = {"at": "at the transition (blocks l*-1, l*)", "silent_rest": "rest of the silent phase (< l*-1)",
                 "decisive_rest": "rest of the decisive phase (> l*)"}
        out = []

        def stat(key, other=None):
            def f(m):
                g = phase_group_means(m["drop"], pos, lstar(m))
                return g[key] if other is None else g[key] - g[other]
            return f

        for key, label in names.items():
            if np.isfinite(groups[key][0]):
                e = hierarchical_effect(arms, name=f"margin drop {label}", statistic=stat(key), dims=("items",),
                                        require=(), **common)
                e.method += how
                out.append(e)
        for other in ("silent_rest", "decisive_rest"):
            if np.isfinite(groups["at"][0]) and np.isfinite(groups[other][0]):
                e = hierarchical_effect(arms, name=f"margin drop at the transition − {names[other]}",
                                        statistic=stat("at", other), dims=("items",), require=(), predicted="positive",
                                        **common)
                e.method += how
                out.append(e)
        return out

    def plot(self, **kw):
        """Plotly figure: single drops as bars with CIs (phases coloured) and the pair matrix as a heatmap."""
        from .plots.interventions import ablation_drops  # lazy: plotly is imported only when a figure is drawn

        return ablation_drops(self, **kw)

def check_pairs(pairs: Any) -> list[tuple[int, int]] | None:
    """``pairs`` of :func:`ablate`, checked without a model: ``None``/``True``/``False`` (returns ``None``) or a list of
    pairs of two different block indices (returned as tuples); an :class:`InterventionError` naming the bad entry."""
    if pairs is None or isinstance(pairs, bool):
        return None
    if not isinstance(pairs, (list, tuple)):
        raise InterventionError(f"pairs must be None, True, False or a list of (block, block) pairs, got {pairs!r}")
    out = []
    for p in pairs:
        if isinstance(p, (str, bytes)) or not isinstance(p, (list, tuple, np.ndarray)) or len(p) != 2:
            raise InterventionError(f"pairs must be a list of (block, block) pairs, got {p!r} in pairs={pairs!r}; "
                                    "e.g. pairs=[(3, 4), (5, 7)]")
        for b in p:
            if isinstance(b, (bool, np.bool_)) or not isinstance(b, (int, np.integer)) or b < 0:
                raise InterventionError(f"pairs: block indices must be ints >= 0, got {b!r} in the pair {p!r}")
        a, b = int(p[0]), int(p[1])
        if a == b:
            raise InterventionError(f"pairs must be pairs of two different blocks, got {tuple(p)!r}")
        out.append((a, b))
    return out


def _default_pairs(view: ModelView, layer: int | None, window: int) -> list[tuple[int, int]]:
    if layer is None:
        warnings.warn("the dense model has no transition on this task: no window for pair ablations (pass pairs=...)",
                      stacklevel=3)
        return []
    near = [b for b in view.kept if abs(b - layer) <= window]
    return list(itertools.combinations(near, 2))


@scheduled
def ablate(
    model: ModelLike,
    task: TaskLike,
    blocks: Iterable[int] | int | None = None,
    *,
    mode: str = "skip",
    pairs: bool | Sequence[tuple[int, int]] | None = None,
    window: int = 3,
    transition: Any = None,
    batch_size: int | None = None,
    max_tokens: int | None = None,
    reuse_prefix: bool = True,
    n_boot: int = N_BOOT,
    boot_seed: int = 0,
    progress: bool = False,
    lens: Any = None,
    out: str | os.PathLike | None = None,
) -> AblationResult:
    """Ablate single blocks and pairs of blocks; the drop of the final Decision Margin of each.

    Args:
        blocks: blocks ablated one at a time (default: every surviving block).
        mode: ``"skip"``, ``"zero"`` or ``"mean"`` (see the module docstring).
        pairs: ``None`` (default): every pair of blocks within ``window`` of the dense transition when
            ``blocks`` is None, else every pair of the given blocks; ``False``: no pairs; or a list of pairs.
        window: half-width (in blocks) of the window around the transition for the default pairs.
        transition: the dense :class:`~phaselens.Transition` (default: computed, read through ``lens``).
        lens: the lens the default transition is read with (``"logit"``, ``"linear"``, ``"tuned"`` or a
            :class:`~phaselens.Lens`); the final readout is the model's own (every lens's last row).
        out: a folder that makes the run resumable: the clean answers, the dense trace and each ablation's answers
            are saved in ``out/.phaselens/`` as they finish, and a rerun (killed, or with more blocks or pairs)
            computes only what is missing. Refused for another model or task (see :class:`~phaselens.resume.RunFolder`).
    """
    if mode not in ABLATION_MODES:
        raise InterventionError(f"mode must be one of {ABLATION_MODES}, got {mode!r}")
    checks.integer("window", window, minimum=0, error=InterventionError, what="blocks either side of the transition")
    check_run(n_boot, boot_seed, batch_size, max_tokens, reuse_prefix)
    pair_given = check_pairs(pairs)
    view, t = resolve(model, task)
    given = blocks is not None
    singles = check_blocks(view, blocks, "ablate")
    for p in pair_given or ():
        check_blocks(view, p, "ablate pairs")  # a pruned or unknown block fails before any forward pass
    lens_ = resolve_lens(lens, view)  # before any model work
    checks.check_n_boot(n_boot, n_items=len(t.items), error=InterventionError)
    with final_folder(out, "ablation", view, t, "an ablation run") as folder:  # refused here, before any pass
        tr = dense_transition(view, t, transition, batch_size, n_boot, boot_seed, lens_, out)
        if pairs is None:
            pair_l = (list(itertools.combinations(sorted(singles), 2)) if given
                      else _default_pairs(view, tr.layer, int(window)))
        elif pairs is False:
            pair_l = []
        elif pairs is True:
            pair_l = list(itertools.combinations(sorted(singles), 2))
        else:
            pair_l = [(min(p), max(p)) for p in pair_given or ()]
        runner = FinalRunner(view, t, batch_size=batch_size, max_tokens=max_tokens, reuse_prefix=reuse_prefix,
                             progress=progress)
        answers, n = runner.enc.answers, runner.n_items
        means: dict[int, torch.Tensor] = {}
        units: list[tuple[int, ...]] = [(b,) for b in singles] + [tuple(p) for p in pair_l]
        res_m, res_c = [], []
        it: Iterable = units
        if progress:
            from tqdm.auto import tqdm

            it = tqdm(units, desc=f"ablate {view.name}", leave=False)

        def ablated(u: tuple[int, ...]) -> torch.Tensor:
            if mode == "mean" and not means:  # the mean updates, once, and only when an ablation is still to be run
                means.update(runner.mean_updates(sorted({b for x in units for b in x})))
            plan = _ablation_edits(mode, u, means)
            return runner.run(lambda batch, _p=plan: _p)

        clean_m, clean_c = final_answers(folder, "clean", n, runner.clean, answers)
        for u in it:
            unit = f"{mode}_{'-'.join(str(b) for b in u)}"
            m_, c_ = final_answers(folder, unit, n, lambda _u=u: ablated(_u), answers)
            res_m.append(m_)
            res_c.append(c_)
    S = len(singles)
    m = np.asarray(res_m).reshape(len(units), n)
    c = np.asarray(res_c, dtype=float).reshape(len(units), n)
    lm, lb = dense_item_margins(tr, n, [it.id for it in t.items])
    return AblationResult(view.name, t.name, mode, view.base.n_blocks, singles, pair_l, m[:S], c[:S], m[S:], c[S:],
                          clean_m, clean_c, tr.layer, n_boot, boot_seed,
                          lens_.name if transition is None else getattr(getattr(transition, "trace", None), "lens", "logit"),
                          lm, lb)
