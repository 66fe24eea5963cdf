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

Each pass replays the clean prefix before the perturbed block (:class:`~phaselens.final_readout.FinalRunner`).
"""

from __future__ import annotations

import itertools
import math
import os
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from . import checks, metrics
from .errors import InterventionError
from .final_readout import (FinalRunner, boot_ci, check_blocks, check_run, dense_item_margins, dense_transition,
                            final_answers, final_folder, phase_of, resolve)
from .lenses import resolve_lens
from .effects import (Effect, bootstrap_effect, equal_distance_means, hierarchical_effect, no_transition_share,
                      phase_split_means, transition_positions)
from .resampling import MIN_ITEMS, EffectError, check_n_boot, count_weights
from .results import Result
from .runner import Batch, Plan
from .stats import N_BOOT, seed_interval, seed_list
from .types import ModelLike, TaskLike
from .view import fmt_blocks
from .runner.layered import scheduled  # schedule= / act_budget= / act_store= (issue 24)


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



@dataclass
class NoiseResult(Result):
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
        layer_margins: ``[N, L]`` per-item dense Decision Margin at each read block (the transition's trace), so
            that ``l*`` is re-estimated inside each bootstrap replicate (``None``: not kept; ``l*`` held fixed).
        layer_blocks: ``[L]`` original block index of each column of ``layer_margins``.
    """

    version = 2  # version 1 had no layer_margins / layer_blocks

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
    lens: str = "logit"  # the lens the transition (the phases) was read with
    layer_margins: np.ndarray | None = None
    layer_blocks: list[int] | None = None

    def __post_init__(self) -> None:
        if self.layer_margins is not None:
            self.layer_margins = np.asarray(self.layer_margins, dtype=float)
            self.layer_blocks = [int(b) for b in (self.layer_blocks if self.layer_blocks is not None
                                                  else range(self.layer_margins.shape[1]))]
            if self.layer_margins.shape != (len(self.clean_margins), len(self.layer_blocks)):
                raise InterventionError(f"layer_margins has shape {self.layer_margins.shape}, expected [items, read "
                                        f"blocks] = {(len(self.clean_margins), len(self.layer_blocks))}")
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
        return [phase_of(b, self.transition) for b in self.blocks]

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
        vals = (self.item_margins if what == "margin" else self.item_correct).mean(3)  # [B, E, S]
        _, lo, hi = seed_interval(np.moveaxis(vals, 2, 0), level)
        return np.stack([lo, hi])

    def item_ci(self, what: str = "margin", level: float = 0.95) -> np.ndarray:
        """``[2, B, E]`` bootstrap interval over items of the seed-averaged per-item values."""
        vals = (self.item_margins if what == "margin" else self.item_correct).mean(2)  # [B, E, N]
        idx = metrics.bootstrap_indices(self.n_items, self.n_boot, self.boot_seed)
        return boot_ci(np.moveaxis(vals, 2, 0), idx, level)

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
                ci, aci = boot_ci(d, idx, level), boot_ci(a, idx, level)
                blocks = [b for b, p in zip(self.blocks, self.phases) if p == phase]
                rows.append({"eps": eps, "phase": "all (no transition)" if phase == "none" else phase,
                             "n_blocks": len(blocks), "blocks": fmt_blocks(blocks),
                             "margin_drop": d.mean(), "margin_drop_lo": ci[0], "margin_drop_hi": ci[1],
                             "accuracy_drop": a.mean(), "accuracy_drop_lo": aci[0], "accuracy_drop_hi": aci[1]})
            if len(per) == 2:
                d = per["silent"][0] - per["decisive"][0]
                a = per["silent"][1] - per["decisive"][1]
                ci, aci = boot_ci(d, idx, level), boot_ci(a, idx, level)
                rows.append({"eps": eps, "phase": "silent - decisive", "n_blocks": len(self.blocks), "blocks": "",
                             "margin_drop": d.mean(), "margin_drop_lo": ci[0], "margin_drop_hi": ci[1],
                             "accuracy_drop": a.mean(), "accuracy_drop_lo": aci[0], "accuracy_drop_hi": aci[1]})
        return pd.DataFrame(rows)

    def _phase_axis(self) -> tuple[list[int], np.ndarray, Any, str]:
        """(blocks along which l* is a position, each injected block's position, ``lstar(means) -> [B]``, note)."""
        if self.layer_margins is not None:
            blocks = list(self.layer_blocks)
            lstar = lambda m: transition_positions(m["dense"][:, 0] if m["dense"].ndim == 3 else m["dense"])  # noqa: E731
            how = "; l* re-estimated in each replicate"
        else:
            blocks = sorted(set(self.blocks) | {self.transition})
            fixed = float(blocks.index(self.transition))
            lstar = lambda m: np.full(m["drop"].shape[0], fixed)  # noqa: E731
            how = "; l* held fixed (the result keeps no per-item dense margins)"
        pos = np.asarray([blocks.index(b) if b in blocks else -10 ** 6 for b in self.blocks], dtype=float)
        return blocks, pos, lstar, how

    def effects(self, *, eps: Any = None, level: float = 0.95, n_boot: int | None = None,
                boot_seed: int | None = None) -> list[Effect]:
        """Silent-versus-decisive sensitivity as effects, per noise scale (``eps``: one or several of the result's
        scales; default all), each the final-margin drop (clean minus noisy):

        * ``silent − decisive``: the mean drop over the injected silent blocks minus over the decisive ones
          (predicted positive: the silent phase is more sensitive);
        * ``l*-k − l*+k-1`` (equal distance): blocks at equal distance before and after the transition, ``k = 1, 2,
          ...`` wherever both were injected: the contrast with depth distance held equal.

        Items are crossed with seeds (:func:`~phaselens.hierarchical_effect`: fewer than 5 seeds are held fixed,
        each reported on its own); ``l*`` is re-estimated inside every replicate from the dense per-item margins
        (the share without a transition is ``undefined``). For the same block in its silent and its decisive role
        across tasks or models, see :func:`noise_role_effect`.
        """
        if self.transition is None:
            return []
        n_boot = self.n_boot if n_boot is None else n_boot
        boot_seed = self.boot_seed if boot_seed is None else boot_seed
        _, pos, lstar, how = self._phase_axis()
        if self.layer_margins is not None:
            share = no_transition_share(self.layer_margins, n_boot, boot_seed)
            how += f" (no transition in {share:.1%} of them)"
        out: list[Effect] = []
        for e in self._eps_index(eps):
            drop = np.transpose(self.clean_margins[None, None] - self.item_margins[:, e], (2, 1, 0))  # [N, S, B]
            arms = {"drop": drop}
            if self.layer_margins is not None:
                arms["dense"] = np.repeat(self.layer_margins[:, None], drop.shape[1], axis=1)  # [N, S, L]
            means = {k: v.mean((0, 1))[None] for k, v in arms.items()}
            t0 = lstar(means)
            label = f" (noise eps={self.eps[e]:g})"
            for title, split in (("silent − decisive margin drop", phase_split_means),
                                 ("equal-distance margin drop, blocks l*-k − l*+k-1", equal_distance_means)):
                a, b = split(means["drop"], pos, t0)
                if not (np.isfinite(a[0]) and np.isfinite(b[0])):
                    continue

                def stat(m, _split=split):
                    x, y = _split(m["drop"], pos, lstar(m))
                    return x - y

                eff = hierarchical_effect(arms, name=title + label, statistic=stat, dims=("items", "seeds"),
                                          require=(), predicted="positive", level=level, n_boot=n_boot,
                                          boot_seed=boot_seed, model=self.model, task=self.task,
                                          labels={"seeds": self.seeds})
                eff.method += how
                out.append(eff)
        return out

    def _eps_index(self, eps: Any) -> list[int]:
        if eps is None:
            return list(range(len(self.eps)))
        want = [eps] if isinstance(eps, (int, float, np.integer, np.floating)) else list(eps)
        out = []
        for v in want:
            hit = [i for i, x in enumerate(self.eps) if math.isclose(x, float(v), rel_tol=1e-9, abs_tol=1e-12)]
            if not hit:
                raise EffectError(f"eps={v!r} was not measured; this result holds eps {self.eps}")
            out.append(hit[0])
        return out

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
        from .plots.interventions import noise_sensitivity  # lazy: plotly is imported only when a figure is drawn

        return noise_sensitivity(self, **kw)


def eps_list(eps: Any) -> list[float]:
    """``eps`` (one scale or several) as a list of finite floats >= 0; an :class:`InterventionError` otherwise."""
    if isinstance(eps, (str, bytes, dict)) or not isinstance(eps, (int, float, np.floating, np.integer, Iterable)):
        raise InterventionError(f"eps must be a number or a list of numbers (noise scales), got {eps!r}")
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


def noise_unit(block: int, eps: float, seed: int) -> str:
    """The name of one (block, eps, seed)'s answers in a resumable noise run (``eps`` as its shortest exact repr)."""
    return f"noise_b{int(block)}_e{float(eps)!r}_s{int(seed)}"


@scheduled
def inject_noise(
    model: ModelLike,
    task: TaskLike,
    blocks: Iterable[int] | int | None = None,
    eps: float | Sequence[float] = (0.1, 0.5, 1.0),
    *,
    seeds: int | Sequence[int] = 5,
    transition: Any = None,
    batch_size: int | None = None,
    max_tokens: int | None = None,
    reuse_prefix: bool = True,
    n_boot: int = N_BOOT,
    boot_seed: int = 0,
    progress: bool = False,
    lens: Any = None,
    out: str | os.PathLike | None = None,
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
        out: a folder that makes the run resumable: the clean answers, the dense trace and each (block, eps, seed)'s
            answers are saved in ``out/.phaselens/`` as they finish, and a rerun (killed, or with more blocks, scales
            or seeds) computes only what is missing. Refused for another model or task (see
            :class:`~phaselens.resume.RunFolder`).
    """
    eps_l, seed_l = eps_list(eps), seed_list(seeds, minimum=1, error=InterventionError)
    check_run(n_boot, boot_seed, batch_size, max_tokens, reuse_prefix)
    view, t = resolve(model, task)
    blocks = check_blocks(view, blocks, "inject_noise")
    lens_ = resolve_lens(lens, view)  # before any model work
    checks.check_n_boot(n_boot, n_items=len(t.items), error=InterventionError)
    with final_folder(out, "noise", view, t, "a noise-injection run") as folder:  # refused here, before any pass
        tr = dense_transition(view, t, transition, batch_size, n_boot, boot_seed, lens_, out)
        runner = FinalRunner(view, t, batch_size=batch_size, max_tokens=max_tokens, reuse_prefix=reuse_prefix,
                             progress=progress)
        answers, n = runner.enc.answers, runner.n_items
        d = view.base.d_model
        out_m = np.empty((len(blocks), len(eps_l), len(seed_l), n))
        out_c = np.empty_like(out_m)
        lengths = runner.lengths
        todo = list(itertools.product(enumerate(blocks), enumerate(seed_l)))
        if progress:
            from tqdm.auto import tqdm

            todo = tqdm(todo, desc=f"noise {view.name}", leave=False)
        clean_m, clean_c = final_answers(folder, "clean", n, runner.clean, answers)
        for (i, b), (s, seed) in todo:
            draws: dict[int, torch.Tensor] = {}

            def draw(item: int, _b=b, _seed=seed) -> torch.Tensor:
                if item not in draws:
                    draws[item] = noise_draw(_seed, _b, item, lengths[item], d)
                return draws[item]

            for e, eps_v in enumerate(eps_l):
                def edits(batch: Batch, _b=b, _eps=eps_v) -> Plan:
                    noise = torch.zeros(batch.size, batch.ids.shape[1], d)
                    for r, j in enumerate(batch.rows):
                        noise[r, : lengths[j]] = draw(j)
                    return Plan(after={_b: lambda h, _n=noise: add_noise(h, _eps, _n)},
                                names={_b: f"block {_b} with noise eps={_eps:g} on its output"})

                out_m[i, e, s], out_c[i, e, s] = final_answers(folder, noise_unit(b, eps_v, seed), n,
                                                               lambda _f=edits: runner.run(_f), answers)
    lm, lb = dense_item_margins(tr, n, [it.id for it in t.items])
    return NoiseResult(view.name, t.name, view.base.n_blocks, blocks, eps_l, seed_l, out_m, out_c,
                       clean_m, clean_c, tr.layer, n_boot, boot_seed,
                       lens_.name if transition is None else getattr(getattr(transition, "trace", None), "lens", "logit"),
                       lm, lb)



def noise_role_effect(results: Sequence[NoiseResult], *, eps: float | None = None, relative: bool = True,
                      level: float = 0.95, n_boot: int = N_BOOT, boot_seed: int = 0) -> Effect:
    """The same block index in its silent role against its decisive role, across results whose transitions differ
    (several tasks or models): the phase contrast with the block (its depth) held fixed.

    For every block index ``b`` injected in each result, ``b`` is silent in the results where ``b < l*`` and
    decisive where ``b >= l*``. The statistic is the mean, over the blocks that are silent in at least one result
    and decisive in another, of (mean drop of ``b`` where silent) − (mean drop of ``b`` where decisive); predicted
    positive. ``relative``: each result's drops divided by its mean clean final margin (tasks and models differ in
    scale). Each result's items are resampled on their own (different tasks hold different items; seeds are
    averaged), and each result's ``l*`` is re-estimated inside every replicate from its dense per-item margins
    (held fixed where a result keeps none).

    Args:
        results: two or more :class:`NoiseResult` s (each with a transition).
        eps: the noise scale compared (default: the largest scale every result measured).
    """
    rs = list(results)
    if len(rs) < 2 or not all(isinstance(r, NoiseResult) for r in rs):
        raise EffectError("noise_role_effect takes a list of two or more NoiseResults (different tasks or models)")
    check_n_boot(n_boot, level)
    for k, r in enumerate(rs):
        if r.n_items < MIN_ITEMS:
            raise EffectError(f"arm {k} ({r.model}, {r.task}) holds {r.n_items} items; an effect needs at least "
                              f"{MIN_ITEMS}")
        if r.transition is None:
            raise EffectError(f"arm {k} ({r.model}, {r.task}) has no transition: its blocks have no phase role")
    if eps is None:
        common = set(rs[0].eps).intersection(*[set(r.eps) for r in rs[1:]])
        if not common:
            raise EffectError(f"the results share no noise scale: {[r.eps for r in rs]}; pass eps= one they all hold")
        eps = max(common)
    rng = np.random.default_rng(boot_seed)
    parts = []  # per result: (drops [B+1, S], positions [S], lstar [B+1], blocks)
    for r in rs:
        e = r._eps_index(eps)[0]
        drop = (r.clean_margins[None, None] - r.item_margins[:, e]).mean(1).T  # [N, S] (seeds averaged)
        w = np.vstack([np.ones((1, r.n_items)), count_weights(r.n_items, n_boot, rng)])  # row 0: the sample itself
        d = w @ drop / r.n_items  # [B+1, S]
        if relative:
            scale = w @ r.clean_margins / r.n_items
            with np.errstate(divide="ignore", invalid="ignore"):
                d = d / np.where(scale > 0, scale, np.nan)[:, None]
        _, pos, lstar, _ = r._phase_axis()
        dense = (w @ r.layer_margins / r.n_items) if r.layer_margins is not None else None
        t = lstar({"drop": d, "dense": dense}) if dense is not None else lstar({"drop": d})
        parts.append((d, pos, t, r.blocks))
    blocks = sorted(set().union(*[set(p[3]) for p in parts]))
    B1 = n_boot + 1
    sil_sum = np.zeros((B1, len(blocks)))
    sil_n = np.zeros((B1, len(blocks)))
    dec_sum = np.zeros((B1, len(blocks)))
    dec_n = np.zeros((B1, len(blocks)))
    col = {b: j for j, b in enumerate(blocks)}
    for d, pos, t, bl in parts:
        for s_, b in enumerate(bl):
            silent = pos[s_] < t  # [B1]; NaN l* -> False both ways
            decisive = pos[s_] >= t
            sil_sum[:, col[b]] += np.where(silent, d[:, s_], 0)
            sil_n[:, col[b]] += silent
            dec_sum[:, col[b]] += np.where(decisive, d[:, s_], 0)
            dec_n[:, col[b]] += decisive
    both = (sil_n > 0) & (dec_n > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        diff = np.where(both, sil_sum / sil_n - dec_sum / dec_n, 0.0)
        stat = np.where(both.any(1), diff.sum(1) / both.sum(1), np.nan)
    if not math.isfinite(stat[0]):
        raise EffectError("no block index is silent in one result and decisive in another (their transitions "
                          f"{[r.transition for r in rs]} and injected blocks do not overlap that way)")
    n_roles = int(both[0].sum())
    name = (f"same block, silent − decisive role{' (relative)' if relative else ''} margin drop (noise eps={eps:g}, "
            f"{n_roles} block(s))")
    return bootstrap_effect(name, float(stat[0]), stat[1:], level=level, predicted="positive",
                            n={"results": len(rs), "items": int(sum(r.n_items for r in rs))},
                            resampled=["items"], method="bootstrap over each result's items independently "
                            "(percentile); each result's l* re-estimated per replicate" +
                            ("" if all(r.layer_margins is not None for r in rs) else " where it keeps dense margins"),
                            n_boot=n_boot, boot_seed=boot_seed,
                            model=",".join(dict.fromkeys(r.model for r in rs)),
                            task=",".join(dict.fromkeys(r.task for r in rs)))
