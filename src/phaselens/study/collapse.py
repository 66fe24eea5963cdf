"""``transition_vs_collapse``: the transition-versus-collapse study (:mod:`phaselens.experiments.collapse` holds its
result and its points); with ``models`` x ``tasks`` it runs the iterative sweeps as a study (:func:`run_study`)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Sequence

from ..deprecation import renamed_kwargs
from ..errors import StatsError, StudyError
from ..experiments.collapse import CollapsePoint, CollapseStudy, collapse_point, collapse_points, collapse_study
from ..results import load_result
from .run import run_study

__all__ = ["CollapsePoint", "CollapseStudy", "transition_vs_collapse"]


def _study_points(models: list, tasks: list, criterion: str, out: Any, chunk: int, max_cut: int | None,
                  executor: str, address: str | None, sweep_kw: dict[str, Any]) -> list[CollapsePoint]:
    """The sweeps of models x tasks as one study; one point per (model, task), in the order given."""
    seed = sweep_kw.pop("seed", 0)
    run: dict[str, Any] = {"kind": "sweep", "criterion": criterion, "until": "collapse", "chunk": chunk, **sweep_kw}
    if max_cut is not None:
        run["steps"] = max_cut
    spec = {"name": "transition_vs_collapse", "models": models, "tasks": tasks, "seeds": [seed], "runs": [run]}
    tmp = tempfile.TemporaryDirectory(prefix="phaselens-collapse-") if out is None else None
    root = Path(tmp.name if tmp is not None else out)
    try:
        df = run_study(spec, out=root, executor=executor, address=address)
        df = df[df.job.isin(df.attrs["planned"])].set_index("job").loc[df.attrs["planned"]]
        bad = df[df.status != "done"]
        if len(bad):
            raise StudyError(f"{len(bad)} sweep(s) failed, e.g. {bad.model.iloc[0]} on {bad.task.iloc[0]}: "
                             f"{bad.error.iloc[0]} (the tracebacks: phaselens.load_study({str(root)!r}).traceback)")
        pts = []
        for row in df.itertuples():
            path = root / f"{row.result}.json"
            sw = load_result(path)
            pts.append(collapse_point(sw.steps[0].transition, sw, "" if tmp is not None else str(path)))
        return pts
    finally:
        if tmp is not None:
            tmp.cleanup()


@renamed_kwargs(max_steps="max_cut")
def transition_vs_collapse(
    results: Sequence[Any] | None = None,
    *,
    models: Sequence[Any] | None = None,
    tasks: Sequence[Any] | None = None,
    criterion: str = "bi",
    out: str | Path | None = None,
    chunk: int = 4,
    max_cut: int | None = None,
    executor: str = "local",
    address: str | None = None,
    **sweep_kw: Any,
) -> CollapseStudy:
    """Transition layer (as a fraction of depth) against collapse ratio, with Pearson r.

    Either ``results``: a list of ``(Transition, Sweep)`` pairs, of :class:`~phaselens.Sweep` objects
    (the transition is the sweep's dense step), or of folders (an ``iterative_prune(out=...)`` folder,
    or a results folder holding a Sweep and optionally a Transition). Or ``models`` x ``tasks``: the
    sweeps run as a study (:func:`phaselens.run_study`, one ``sweep`` job per pair, ``until = "collapse"``)
    in the study folder ``out`` (a temporary folder when ``out`` is None) on ``executor`` (``"local"``,
    ``"processes"``, ``"ray"`` at ``address``); each sweep is extended ``chunk`` cuts at a time until accuracy
    collapses (at most ``max_cut`` blocks cut; ``max_steps=`` is its deprecated name); rerunning with the same ``out`` reuses the finished sweeps. Other
    keywords are the sweep jobs' parameters (:func:`~phaselens.iterative_prune`'s: ``n_boot``, ``recovery``,
    ``calibration``, ``heldout``, ...; ``seed`` is the study's seed; ``require_transition=True`` stops a pair whose
    dense model has no transition after one cut, since such a point cannot enter r).
    """
    if results is not None and (models is not None or tasks is not None):
        raise StatsError("pass either results or models= and tasks=, not both")
    if results is None:
        for what, v in (("models", models), ("tasks", tasks)):
            if isinstance(v, (str, bytes, dict)) or not isinstance(v, (list, tuple)):
                raise StatsError(f"{what}= must be a list (of model names or Models / task names or Tasks), got {v!r}")
        if not models or not tasks:
            raise StatsError("pass results (a list of (Transition, Sweep) pairs, Sweeps or folders), or models=[...] "
                             "and tasks=[...] to run the sweeps")
        pts = _study_points(list(models), list(tasks), criterion, out, chunk, max_cut, executor, address, sweep_kw)
    else:
        pts = collapse_points(results)
    return collapse_study(pts)
