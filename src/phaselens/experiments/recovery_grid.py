"""Recovery across many cuts (the Ghosted Layers table's grid): each method against Ghosted Layers, pooled over cuts.

:meth:`RecoveryComparison.effects` judges one cut, resampling only its passages or items; a grid of cuts (ratios x
selection criteria) asks whether the advantage holds **across cuts**. :func:`recovery_grid` gathers the
:class:`RecoveryComparison` of every cut of one model into a :class:`RecoveryGrid`, whose :meth:`~RecoveryGrid.effects`
give, per method and measure, one effect that resamples the cuts and the passages (or items) crossed
(``pl.hierarchical_effect`` with ``dims=("items", "placements")``):

* held-out text: ``method − reference`` NLL per token (the log of the perplexity ratio, so a 37.5% cut with a
  perplexity of 10^3 does not outweigh a 12.5% cut), pooled ``(sum NLL_m − sum NLL_ref) / sum tokens`` over the
  passages and cuts drawn;
* per task: ``reference − method`` accuracy over the items and cuts drawn.

Positive means the reference is better; every effect predicts ``"positive"``. Two comparisons of the same blocks
(two criteria that chose the same cut) measure the same thing and count once. A method missing at a cut (ReplaceMe
at a cut starting at block 0) is compared on the cuts where it ran; the effect's ``n["placements"]`` says how many.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ..effects import Effect, hierarchical_effect
from ..errors import EffectError
from ..results import Result
from ..trace import N_BOOT
from ..view import fmt_blocks
from .recovery_comparison import REFERENCE, RecoveryComparison


def _cuts(comparisons: Sequence[RecoveryComparison]) -> dict[tuple, list[RecoveryComparison]]:
    """``{blocks: [comparisons of that cut]}`` (first-seen order) after checking they are one model's."""
    if not comparisons:
        raise EffectError("recovery_grid_effects needs at least one RecoveryComparison; got none")
    bad = [type(c).__name__ for c in comparisons if not isinstance(c, RecoveryComparison)]
    if bad:
        raise EffectError(f"recovery_grid_effects takes RecoveryComparison results; got {bad[:3]}")
    models = sorted({c.model for c in comparisons})
    if len(models) > 1:
        raise EffectError(f"recovery_grid_effects pools the cuts of one model; got {models}: call it per model")
    out: dict[tuple, list[RecoveryComparison]] = {}
    for c in comparisons:
        out.setdefault(tuple(int(b) for b in c.blocks), []).append(c)
    return out


def _label(blocks: tuple, rcs: list[RecoveryComparison]) -> str:
    crit = "/".join(dict.fromkeys(c.criterion for c in rcs))
    return f"{fmt_blocks(blocks)} ({crit})"


def _effects(comparisons: Sequence[RecoveryComparison], reference: str, *, n_boot: int, boot_seed: int,
             level: float) -> list[Effect]:
    """:meth:`RecoveryGrid.effects` on comparisons :class:`RecoveryGrid` has checked (one model, one held-out set,
    ``reference`` at every cut)."""
    cuts = _cuts(comparisons)
    first = next(iter(cuts.values()))[0]
    kw = dict(predicted="positive", level=level, n_boot=n_boot, boot_seed=boot_seed, model=first.model)
    methods = list(dict.fromkeys(m for rcs in cuts.values() for c in rcs for m in c.methods if m != reference))
    tasks = list(dict.fromkeys(t.task for rcs in cuts.values() for c in rcs for t in c.tasks))
    out: list[Effect] = []
    left: list[str] = []  # (method, measure)s with fewer than 2 cuts: said in one warning, not dropped in silence
    for m in methods:
        have = [(b, rcs[0]) for b, rcs in cuts.items() if m in rcs[0].methods]
        if len(have) < 2:
            left.append(f"{m} held-out text ({len(have)} cut)")
        else:
            nll_m = np.stack([c.nll[c.methods.index(m)] for _, c in have], axis=1)
            nll_r = np.stack([c.nll[c.methods.index(reference)] for _, c in have], axis=1)
            tok = np.repeat(first.tokens.astype(float)[:, None], len(have), axis=1)
            out.append(hierarchical_effect(
                {m: nll_m, reference: nll_r, "tokens": tok}, name=f"{m} − {reference} held-out NLL per token",
                dims=("items", "placements"), labels={"placements": [_label(b, cuts[b]) for b, _ in have]},
                statistic=lambda mm, m=m: (mm[m] - mm[reference]) / mm["tokens"], task="held-out text", **kw))
        for t in tasks:
            cells = []
            for b, rcs in cuts.items():
                job = next((c for c in rcs if m in c.methods and any(x.task == t for x in c.tasks)), None)
                if job is not None:
                    cells.append((b, job, next(x for x in job.tasks if x.task == t)))
            if len(cells) < 2:
                left.append(f"{m} on {t} ({len(cells)} cut)")
                continue
            ids = [str(i) for i in cells[0][2].item_ids]
            cols = {m: [], reference: []}
            for b, job, rt in cells:
                mine = [str(i) for i in rt.item_ids]
                if sorted(mine) != sorted(ids) or len(set(mine)) != len(mine):
                    raise EffectError(f"task {t!r}: cut {list(b)} was scored on other items than cut "
                                      f"{list(cells[0][0])}; pool cuts measured on one item list")
                order = np.argsort([ids.index(i) for i in mine])
                for arm in cols:
                    cols[arm].append(np.asarray(rt.correct[job.methods.index(arm)], dtype=float)[order])
            out.append(hierarchical_effect(
                {reference: np.stack(cols[reference], axis=1), m: np.stack(cols[m], axis=1)},
                name=f"{reference} − {m} accuracy", dims=("items", "placements"),
                labels={"placements": [_label(b, cuts[b]) for b, _, _ in cells]}, task=t, format=cells[0][2].format,
                **kw))
    if left:
        warnings.warn(f"{first.model}: the grid has no effect for {', '.join(left)}: pooling over cuts needs at least "
                      "2 cuts where both the method and the reference ran; add cuts, or read that cut's own "
                      "RecoveryComparison.effects()", stacklevel=3)
    return out


def _table(comparisons: Sequence[RecoveryComparison]) -> Any:
    import pandas as pd

    rows = []
    for blocks, rcs in _cuts(comparisons).items():
        c0 = rcs[0]
        base = {"model": c0.model, "cut": _label(blocks, rcs), "n_cut": len(blocks), "n_blocks": c0.n_blocks,
                "criterion": "/".join(dict.fromkeys(c.criterion for c in rcs)),
                "calibration_passages": c0.calibration_passages}
        dense = {**base, "method": "dense", "perplexity": c0.dense_perplexity}
        per = {m: {**base, "method": m, "perplexity": c0.perplexity(m)} for m in c0.methods}
        for c in rcs:
            for t in c.tasks:
                dense[f"accuracy_{t.task}"] = float(np.mean(t.dense_correct))
                for m in c.methods:
                    per.setdefault(m, {**base, "method": m})[f"accuracy_{t.task}"] = c.accuracy(m, t.task)
        rows += [dense, *per.values()]
    return pd.DataFrame(rows)


@dataclass
class RecoveryGrid(Result):
    """Every recovery method on many cuts of one model (ratios x criteria): the Ghosted Layers table's grid.

    Shapes: ``C`` distinct cuts, ``P`` held-out passages, ``N`` items of a task.

    Attributes:
        model: the model's name.
        comparisons: one :class:`RecoveryComparison` per (cut, task) job; jobs of the same blocks are one cut
            (they share its held-out NLL) and each adds its tasks.
        reference: the arm :meth:`effects` compares every other method against.
    """

    model: str
    comparisons: list
    reference: str = REFERENCE
    n_boot: int = N_BOOT
    boot_seed: int = 0

    def __post_init__(self) -> None:
        cuts = _cuts(self.comparisons)
        if {c.model for c in self.comparisons} != {self.model}:
            raise EffectError(f"RecoveryGrid of {self.model!r} holds comparisons of "
                              f"{sorted({c.model for c in self.comparisons})}")
        missing = [list(b) for b, rcs in cuts.items() if any(self.reference not in c.methods for c in rcs)]
        if missing:
            raise EffectError(f"cut(s) {missing[:3]} have no {self.reference!r} arm; pass reference= a method every "
                              "cut was recovered with")
        first = self.comparisons[0]
        for c in self.comparisons:
            if not np.array_equal(c.tokens, first.tokens):
                raise EffectError(f"cut {list(c.blocks)} was scored on other held-out passages ({c.n_passages}, "
                                  f"{int(c.tokens.sum())} tokens) than cut {list(first.blocks)} ({first.n_passages}, "
                                  f"{int(first.tokens.sum())} tokens): pool cuts measured on one held-out set")

    @property
    def cuts(self) -> list[str]:
        """The distinct cuts' labels, ``"start-end (criterion)"``, in first-seen order."""
        return [_label(b, rcs) for b, rcs in _cuts(self.comparisons).items()]

    def effects(self, *, n_boot: int | None = None, boot_seed: int | None = None, level: float = 0.95) -> list[Effect]:
        """Per method (other than :attr:`reference`): ``"<m> − <ref> held-out NLL per token"`` over ``[P, C]`` and,
        per task, ``"<ref> − <m> accuracy"`` over ``[N, C]``, each resampling passages or items and cuts crossed
        (cuts held fixed, with per-cut rows in ``clusters``, when fewer than 5). Positive: the reference is better
        (predicted ``"positive"``). A (method, measure) with fewer than 2 cuts where both arms ran is left out, and one
        warning names each such (method, measure)."""
        return _effects(self.comparisons, self.reference, level=level,
                        n_boot=self.n_boot if n_boot is None else n_boot,
                        boot_seed=self.boot_seed if boot_seed is None else boot_seed)

    def to_pandas(self):
        """The grid in the paper's layout: one row per (cut, method), held-out perplexity and an ``accuracy_<task>``
        column per task; a dense row per cut. ``calibration_passages``: what the cut's operators were fit on."""
        return _table(self.comparisons)

    def summary(self) -> str:
        df = self.to_pandas()
        g = df[df.method != "dense"].groupby("method", sort=False).perplexity.median()
        best = df[df.method != "dense"].loc[lambda d: d.groupby("cut").perplexity.transform("min") == d.perplexity]
        wins = best.method.value_counts().to_dict()
        return (f"{self.model}: {len(self.cuts)} cuts ({', '.join(self.cuts)}), each recovered with "
                f"{', '.join(g.index)}. Median held-out perplexity over cuts: "
                + ", ".join(f"{m} {v:.1f}" for m, v in g.items())
                + ". Lowest perplexity at a cut: " + ", ".join(f"{m} {n}x" for m, n in wins.items()) + ".")

    def plot(self, **kw: Any):
        """Plotly figure: held-out perplexity (log) per cut, one marker per method, and accuracy per task."""
        from ..plots.recovery import recovery_grid_figure

        return recovery_grid_figure(self, **kw)


def recovery_grid(comparisons: Sequence[RecoveryComparison], reference: str = REFERENCE, *, n_boot: int = N_BOOT,
                  boot_seed: int = 0) -> RecoveryGrid:
    """The :class:`RecoveryGrid` of one model's :class:`RecoveryComparison` jobs (a grid of cuts: ratios x criteria),
    e.g. ``pl.recovery_grid(pl.load_results(study_folder).values())`` for a study's ``recovery`` jobs of one model."""
    comparisons = list(comparisons)
    _cuts(comparisons)
    return RecoveryGrid(model=comparisons[0].model, comparisons=comparisons, reference=reference, n_boot=n_boot,
                        boot_seed=boot_seed)
