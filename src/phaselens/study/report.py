"""The study's own part of ``phaselens report DIR``: the figures that compare jobs.

* transition against collapse, with Pearson r (:class:`~phaselens.CollapseStudy` of the sweep jobs,
  one scatter per criterion);
* margin curves as a grid of models x tasks (the dense curve of every trace job, or of every sweep's
  first step when the study has no trace job);
* the phase-cut contrasts per model (silent-phase cut minus decisive-phase cut, per recovery method);
* the index itself (status, wall time, peak memory, key scalars of every job).
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

from ..errors import ReportWarning, StatsWarning
from ..experiments.collapse import CollapseStudy, collapse_point
from ..page import Section
from ..pruning.iterative import Sweep
from ..stats import pearson
from ..trace import Transition
from .store import INDEX, load_study

SHOWN = ("job", "status", "kind", "model", "task", "seed", "params", "wall_s", "peak_rss_mb", "transition",
         "final_accuracy", "collapse_ratio", "error")


def is_study(folder: Any) -> bool:
    return isinstance(folder, (str, Path)) and (Path(folder) / INDEX).is_file()


def collapse_studies(results: dict[str, Any]) -> dict[str, Any]:
    """One :class:`~phaselens.CollapseStudy` per criterion from the study's Sweep results (``{criterion: study}``)."""
    by: dict[str, list] = {}
    for name, r in results.items():
        if isinstance(r, Sweep) and r.steps:
            by.setdefault(r.criterion, []).append(collapse_point(r.steps[0].transition, r, name))
    out = {}
    for crit, pts in sorted(by.items()):
        study = CollapseStudy(pts, math.nan, math.nan, crit)
        x, y = study.pair_means()  # one point per (model, task): its seeds are not independent pairs
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", StatsWarning)
            study.r, study.p = pearson(list(x), list(y), what="transition fraction and collapse ratio")
        out[crit] = study
    return out


def margin_curves(results: dict[str, Any], index) -> dict[tuple[str, str], list[dict[str, Any]]]:
    kinds = {row.result: row for row in index.itertuples() if isinstance(row.result, str)}
    has_trace = any(isinstance(r, Transition) for r in results.values())
    curves: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for name, r in results.items():
        row = kinds.get(name)
        if row is None:
            continue
        tr = r if isinstance(r, Transition) else (r.steps[0].transition if isinstance(r, Sweep) and not has_trace else None)
        if tr is None:
            continue
        label = f"seed {row.seed}" + ("" if row.kind == "trace" else f" ({row.kind})")
        curves.setdefault((Path(row.model).name, row.task), []).append(
            {"label": label, "blocks": tr.trace.blocks, "margins": tr.trace.margins, "transition": tr.layer})
    return curves


def contrast_rows(index) -> list[dict[str, Any]]:
    rows = []
    for rec in index[index.kind == "phase-cuts"].to_dict("records"):
        if rec.get("status") != "done":
            continue
        for col, v in rec.items():
            if col.startswith("contrast_") and not col.endswith(("_lo", "_hi")) and v is not None and not math.isnan(v):
                m = col[len("contrast_"):]
                rows.append({"model": Path(rec["model"]).name, "task": rec["task"], "seed": rec["seed"], "method": m,
                             "difference": v, "lo": rec.get(f"{col}_lo"), "hi": rec.get(f"{col}_hi")})
    return rows


def study_sections(folder: str | Path, entries: list) -> list:
    """The report sections of a study folder (see the module docstring)."""
    from ..plots.study import margin_grid, phase_cut_contrasts  # lazy: plotly is imported only when a figure is drawn

    index = load_study(folder)
    results = {e.name: e.result for e in entries}
    n_done = int((index.status == "done").sum())
    sec = Section(f"Study: {len(index)} jobs ({n_done} done, {len(index) - n_done} failed)", "study",
                  note="Figures across the study's jobs; each job's own result follows below.")
    for what, fn in (
        ("transition vs collapse", lambda: [(f"criterion {c}: {s.summary()}", s.plot()) for c, s in collapse_studies(results).items()]),
        ("margin grid", lambda: (lambda c: [("Dense margin curves, models x tasks.", margin_grid(c))] if c else [])(
            margin_curves(results, index))),
        ("phase-cut contrasts", lambda: (lambda r: [("Phase-cut contrasts per model (paired bootstrap 95% intervals).",
                                                     phase_cut_contrasts(r))] if r else [])(contrast_rows(index))),
    ):
        try:
            sec.figures.extend(fn())
        except Exception as ex:  # noqa: BLE001 - shown on the page and warned
            msg = f"could not make the study's {what} figure: {type(ex).__name__}: {ex}"
            warnings.warn(msg, ReportWarning, stacklevel=2)
            sec.errors.append(msg)
    cols = [c for c in SHOWN if c in index.columns]
    cols += [c for c in index.columns if c.startswith(("contrast_", "noise_gap", "ablation_gap", "cka_")) and c not in cols]
    table = index[cols].copy()
    table["job"] = table["job"].str[:10]
    table["params"] = [json.dumps(json.loads(p)) if isinstance(p, str) else p for p in table["params"]]
    sec.tables.append(("study index", table))
    return [sec]
