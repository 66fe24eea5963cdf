"""Claims: what a paper predicts, the :class:`~phaselens.effects.Effect` that tests it, and a verdict.

A claim names its paper, the predicted direction and its effect. :func:`claims` judges a table of them:

* the family is every claim of one paper in one table; each family is **Holm**-corrected (step-down on the
  effects' p-values): the claim ranked ``k`` (ascending p) of ``m`` is judged at ``alpha_k = alpha / (m - k + 1)``
  and its interval is reported at level ``1 - alpha_k``;
* **agree**: Holm-adjusted ``p <= alpha`` and that interval excludes 0 on the predicted side;
  **disagree**: the same, on the other side; **undetermined** otherwise, with the minimum detectable effect
  ``(z_{1-alpha_k/2} + z_{0.8}) * SE`` (80% power at the claim's Holm level).
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from .effects import Effect, direction
from .errors import StatsWarning
from .records import Record
from .registry import Registry
from .resampling import EffectError
from .results import Result

#: the columns of :meth:`Claims.to_pandas` (and of the CSV), in order; extra columns follow them
COLUMNS = ("paper", "claim", "model", "task", "format", "n_items", "n_placements", "n_seeds", "estimate", "lo",
           "hi", "p_adj", "verdict")
#: power at which the minimum detectable effect of an undetermined verdict is stated
POWER = 0.8
VERDICTS = ("agree", "disagree", "undetermined")


@dataclass(frozen=True)
class ClaimSpec:
    """A registered claim: its paper, what it says, the direction it predicts for its contrast."""

    key: str
    paper: str
    claim: str
    predicted: str


#: claims phaselens knows by key (``CLAIMS.get("transition/fig8-sign")``). (This module is ``verdicts``, not
#: ``claims``, so that ``phaselens.claims`` stays the function.)
CLAIMS: Registry[ClaimSpec] = Registry("claim", "claim", EffectError)


def _direction_of(predicted: Any, what: str) -> str | None:
    """:func:`~phaselens.effects.direction`, its error naming the claim (``what``)."""
    try:
        return direction(predicted)
    except EffectError as e:
        raise EffectError(f"{what}: {e}") from None


def register_claim(key: str, *, paper: str, claim: str, predicted: Any, replace: bool = False) -> ClaimSpec:
    """Register a claim under ``key``; ``predicted`` is required (``"positive"``/``"negative"``)."""
    pred = _direction_of(predicted, f"claim {key!r}")
    if pred is None:
        raise EffectError(f"claim {key!r} has no predicted direction: pass predicted='positive' or 'negative'")
    return CLAIMS.add(key, ClaimSpec(key=key, paper=paper, claim=claim, predicted=pred), replace=replace)


TRANSITION = "decision-transition"
GHOSTED = "ghosted-layers"
register_claim("transition/silent-cut-hurts-more", paper=TRANSITION, predicted="positive",
               claim="cutting silent-phase blocks drops the decision margin more than cutting decisive-phase blocks "
                     "(silent − decisive margin drop)")
register_claim("transition/fig8-sign", paper=TRANSITION, predicted="negative",
               claim="a later transition goes with collapse at a lower pruning ratio (Figure 8, r = -0.96)")
register_claim("ghosted/decisive-interaction", paper=GHOSTED, predicted="positive",
               claim="recovery holds the decisive cut better than the silent one: "
                     "(rec − plain)_decisive − (rec − plain)_silent")
register_claim("ghosted/beats-linearpatch", paper=GHOSTED, predicted="positive",
               claim="Ghosted Layers recovers more than LinearPatch (ghosted − linearpatch accuracy)")


@dataclass
class Claim(Record):
    """One claim: ``paper``, what it says (``claim``), its ``effect``, and the direction it ``predicts``
    (default: the effect's own ``predicted``; one of them must give it)."""

    paper: str
    claim: str
    effect: Effect
    predicted: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.effect, Effect):
            raise EffectError(f"claim {self.claim!r}: effect must be a phaselens Effect, got "
                              f"{type(self.effect).__name__}")
        self.predicted = _direction_of(self.predicted, f"claim {self.claim!r} ({self.paper})") or self.effect.predicted
        if self.predicted is None:
            raise EffectError(f"claim {self.claim!r} ({self.paper}) has no predicted direction: pass "
                              "predicted='positive' or 'negative' (or set it on the effect)")


def holm(p: Any) -> np.ndarray:
    """Holm-adjusted p-values: ``p_adj_(k) = max_{j <= k} min(1, (m - j + 1) p_(j))`` in ascending order."""
    p = np.asarray(p, dtype=float)
    order = np.argsort(p, kind="stable")
    m = p.size
    adj = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    out = np.empty(m)
    out[order] = adj
    return out


def holm_alphas(p: Any, alpha: float) -> np.ndarray:
    """The level each p-value is compared with in Holm's step-down: ``alpha / (m - k + 1)`` for rank ``k``."""
    p = np.asarray(p, dtype=float)
    out = np.empty(p.size)
    out[np.argsort(p, kind="stable")] = alpha / (p.size - np.arange(p.size))
    return out


def verdict(effect: Effect, predicted: str, p_adj: float, alpha_k: float, alpha: float) -> dict[str, Any]:
    """``{"verdict", "lo", "hi", "level", "mde"}`` of one claim judged at its Holm level ``alpha_k``."""
    lo, hi = effect.interval(1 - alpha_k)
    side = None
    if math.isfinite(p_adj) and p_adj <= alpha:
        side = "positive" if lo > 0 else "negative" if hi < 0 else None
    word = "undetermined" if side is None else "agree" if side == predicted else "disagree"
    return {"verdict": word, "lo": lo, "hi": hi, "level": 1 - alpha_k, "mde": effect.mde(alpha_k, POWER)}


@dataclass
class Claims(Result):
    """A claims table: every claim with its Holm-corrected verdict (families: one paper each).

    ``rows`` (derived) holds one dict per claim with :data:`COLUMNS` and ``predicted``, ``p``, ``level``
    (the Holm-adjusted interval level), ``mde``, ``effect``, ``method``, ``undefined``.
    """

    claims: list = field(default_factory=list)
    alpha: float = 0.05
    name: str = ""

    derived = ("rows",)

    def __post_init__(self) -> None:
        if not self.claims:
            raise EffectError("no claims to judge: pass at least one Claim")
        if not 0 < self.alpha < 1:
            raise EffectError(f"alpha must be between 0 and 1, got {self.alpha!r}")
        bad = [type(c).__name__ for c in self.claims if not isinstance(c, Claim)]
        if bad:
            raise EffectError(f"claims must be Claim objects, got {bad[:3]}")
        self.rows = self._judge()

    def _judge(self) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = [{} for _ in self.claims]
        for paper in dict.fromkeys(c.paper for c in self.claims):
            idx = [i for i, c in enumerate(self.claims) if c.paper == paper]
            p = np.array([self.claims[i].effect.p for i in idx], dtype=float)
            p_fill = np.where(np.isfinite(p), p, 1.0)
            for i, pa, ak in zip(idx, holm(p_fill), holm_alphas(p_fill, self.alpha)):
                rows[i] = self._row(self.claims[i], float(pa), float(ak))
        return rows

    def _row(self, c: Claim, p_adj: float, alpha_k: float) -> dict[str, Any]:
        e = c.effect
        if e.ci_method == "percentile" and e.replicates.size < 2 / alpha_k:
            warnings.warn(f"claim {c.claim!r}: its Holm level {1 - alpha_k:.4g} needs at least "
                          f"{math.ceil(2 / alpha_k)} replicates for each tail to hold one; the effect has "
                          f"{e.replicates.size} (raise n_boot)", StatsWarning, stacklevel=4)
        v = verdict(e, c.predicted, p_adj, alpha_k, self.alpha)
        n = e.n
        return {"paper": c.paper, "claim": c.claim, "model": e.model, "task": e.task, "format": e.format,
                "n_items": n.get("items", n.get("pairs", n.get("passages"))), "n_placements": n.get("placements"),
                "n_seeds": n.get("seeds"), "estimate": e.estimate, "lo": v["lo"], "hi": v["hi"], "p_adj": p_adj,
                "verdict": v["verdict"], "predicted": c.predicted, "p": e.p, "level": v["level"], "mde": v["mde"],
                "effect": e.name, "method": e.method, "undefined": e.undefined}

    @property
    def verdicts(self) -> list[str]:
        """The verdict of each claim, in order."""
        return [r["verdict"] for r in self.rows]

    def to_pandas(self):
        import pandas as pd

        df = pd.DataFrame(self.rows)
        for col in ("n_items", "n_placements", "n_seeds"):
            df[col] = df[col].astype("Int64")
        return df

    def to_csv(self, path: str | os.PathLike) -> Path:
        """:func:`write_claims_csv` of this table."""
        return write_claims_csv(self, path)

    def summary(self) -> str:
        lines = [f"{self.name or 'claims'}: {len(self.claims)} claim(s), Holm-corrected per paper at alpha = "
                 f"{self.alpha:g}"]
        for c, r in zip(self.claims, self.rows):
            lines.append(f"[{r['verdict']}] {c.paper}: {c.claim} (predicted {c.predicted})")
            lines.append(f"    {c.effect.summary().splitlines()[0]}; Holm-adjusted p = {r['p_adj']:.3g}, "
                         f"{r['level']:.4g} interval [{r['lo']:+.3g}, {r['hi']:+.3g}]")
            if r["verdict"] == "undetermined":
                lines.append(f"    undetermined: this design detects an effect of ±{r['mde']:.3g} or larger with "
                             f"{POWER:.0%} power at its Holm level")
        return "\n".join(lines)

    def plot(self, **kw: Any):
        import plotly.graph_objects as go  # heavy optional dependency

        colors = {"agree": "seagreen", "disagree": "crimson", "undetermined": "gray"}
        fig = go.Figure()
        for word in VERDICTS:
            rows = [r for r in self.rows if r["verdict"] == word]
            if rows:
                fig.add_trace(go.Scatter(
                    x=[r["estimate"] for r in rows], y=[f"{r['paper']}: {r['effect']}" for r in rows], mode="markers",
                    name=word, marker_color=colors[word],
                    error_x=dict(type="data", symmetric=False, array=[r["hi"] - r["estimate"] for r in rows],
                                 arrayminus=[r["estimate"] - r["lo"] for r in rows])))
        fig.add_vline(x=0, line_dash="dot")
        fig.update_layout(title=self.name or "claims", xaxis_title="effect (Holm-adjusted interval)", **kw)
        return fig


def _as_claim(entry: Any) -> Claim:
    if isinstance(entry, Claim):
        return entry
    if isinstance(entry, tuple) and len(entry) == 2 and isinstance(entry[1], Effect):
        spec = CLAIMS.get(str(entry[0]))
        return Claim(paper=spec.paper, claim=spec.claim, effect=entry[1], predicted=spec.predicted)
    if isinstance(entry, tuple) and len(entry) in (3, 4) and isinstance(entry[2], Effect):
        return Claim(*entry)
    raise EffectError(f"cannot read a claim from {type(entry).__name__}: pass a Claim, (registered key, Effect) or "
                      "(paper, claim, Effect[, predicted])")


def claims(entries: Iterable[Any] | Mapping[str, Effect], *, alpha: float = 0.05, name: str = "") -> Claims:
    """A :class:`Claims` table from ``Claim`` objects, ``(registered key, Effect)`` pairs (see :data:`CLAIMS`),
    ``(paper, claim, Effect[, predicted])`` tuples, or a ``{registered key: Effect}`` mapping."""
    if isinstance(entries, Mapping):
        entries = list(entries.items())
    return Claims(claims=[_as_claim(e) for e in entries], alpha=alpha, name=name)


def write_claims_csv(table: Claims, path: str | os.PathLike) -> Path:
    """Write ``table.to_pandas()`` (:data:`COLUMNS` first) to ``path`` as CSV; returns the path."""
    if not isinstance(table, Claims):
        raise EffectError(f"write_claims_csv takes a Claims table, got {type(table).__name__}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_pandas().to_csv(path, index=False)
    return path
