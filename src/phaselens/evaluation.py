"""Evaluate any view with lm-evaluation-harness: ``pl.evaluate(view, tasks=[...])``.

The lm-eval backend itself is :class:`phaselens.lmeval.PhaselensLM` (``lm_eval --model phaselens``); this module
holds what needs no lm-eval: the view an lm-eval ``--model_args`` string describes (:func:`view_from_args`,
:func:`parse_blocks`) and :func:`evaluate`, which imports lm-eval only when called.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import checks
from .errors import PhaselensError, PruningError, RecoveryError
from .loading import load_model
from .recovery import METHODS, fit_recovery, load_recovery
from .view import ModelView, as_view



def parse_blocks(spec: Any) -> list[int]:
    """Block indices of ``prune=``: :func:`phaselens.checks.block_list`'s grammar (``"3-5,9"``, lm-eval's comma-free
    ``"12-15+20"``, an int or a list); a :class:`PruningError` naming a bad part."""
    return checks.block_list(spec, "prune", PruningError)


def view_from_args(model: Any, prune: Any = None, recovery: Any = None, *, device: Any = None,
                   dtype: Any = None) -> ModelView:
    """The view ``--model_args model=...,prune=...,recovery=...`` names.

    Args:
        model: anything :func:`~phaselens.load_model` takes, or a view.
        prune: blocks to cut (:func:`parse_blocks`); ``None``: those of ``recovery`` (a file), else none.
        recovery: a file written by ``Recovered.save`` (its cut blocks must equal ``prune`` when both are given),
            or a method name (:data:`~phaselens.METHODS`) fitted on the bundled calibration text.
    """

    if isinstance(model, ModelView):
        if prune is not None or recovery is not None:
            raise PhaselensError("prune= and recovery= apply to a model name; a view already says what it prunes")
        return model
    view = as_view(load_model(model, device=device, dtype=dtype))  # (an exported folder loads as its view)
    if prune is None and recovery is None:
        return view
    removed = parse_blocks(prune) if prune is not None else None
    if recovery is None:
        return ModelView(view.base, tuple(removed or ()))
    rec = str(recovery)
    if rec in METHODS:
        if not removed:
            raise RecoveryError(f"recovery={rec} needs prune= (the blocks to cut and recover)")
        return fit_recovery(ModelView(view.base, tuple(removed)), method=rec)
    if not Path(rec).expanduser().is_file():
        raise RecoveryError(f"recovery={rec!r} is neither a recovery method ({', '.join(METHODS)}) nor a file written "
                            "by Recovered.save")
    out = load_recovery(Path(rec).expanduser(), view.base)
    if removed is not None and sorted(set(removed)) != list(out.removed):
        raise RecoveryError(f"prune={prune} cuts {sorted(set(removed))} but {rec} recovers {list(out.removed)}; drop "
                            "prune= or pass the blocks the file was fitted for")
    return out


def evaluate(model: Any, tasks: Any, *, prune: Any = None, recovery: Any = None, max_tokens: int | None = None,
             batch_size: int | None = None, include_path: Any = None, **kw: Any) -> dict:
    """Run lm-evaluation-harness ``tasks`` on a model or view; returns lm-eval's results dict.

    Args:
        model: a view, a :class:`~phaselens.Model` or anything :func:`~phaselens.load_model` takes.
        tasks: lm-eval task names (or task dicts / objects), e.g. ``["arc_easy"]``.
        prune, recovery: as in :func:`view_from_args` (for a model given by name).
        max_tokens, batch_size: padded tokens / sequences per forward pass.
        include_path: a folder of task YAMLs (lm-eval's ``--include_path``).
        **kw: passed to ``lm_eval.simple_evaluate`` (``limit=``, ``num_fewshot=``, ``bootstrap_iters=``, ...).

    Every forward pass goes through phaselens' runner (:class:`phaselens.lmeval.PhaselensLM`), so a pruned or
    recovered view is evaluated without building a new model. Needs ``pip install phaselens[lmeval]``.
    """
    try:  # lm-eval is an optional, heavy dependency: imported only here
        import lm_eval
        from lm_eval.tasks import TaskManager

        from .lmeval import PhaselensLM
    except ImportError as e:
        raise PhaselensError(f"evaluate needs lm-evaluation-harness: pip install 'phaselens[lmeval]' ({e})") from e
    names = check_evaluate_args(tasks, max_tokens, include_path, kw, lm_eval.simple_evaluate)
    if include_path is not None:
        kw["task_manager"] = TaskManager(include_path=str(include_path))
    tm = kw.get("task_manager") or TaskManager()
    kw["task_manager"] = tm
    unknown = [n for n in names if isinstance(n, str) and n not in tm.all_tasks]
    if unknown:  # lm-eval's own refusal is a KeyError deep inside it
        raise PhaselensError(f"unknown lm-eval task(s) {unknown}; `lm_eval ls tasks` lists them, or pass include_path= "
                             "for a folder of your own task YAMLs")
    lm = PhaselensLM(view_from_args(model, prune, recovery), max_tokens=max_tokens, batch_size=batch_size)
    return lm_eval.simple_evaluate(model=lm, tasks=names, **kw)


def check_evaluate_args(tasks: Any, max_tokens: Any, include_path: Any, kw: dict[str, Any], simple_evaluate: Any) -> list:
    """The arguments of :func:`evaluate` that need no model: ``tasks`` a name or a non-empty list, ``max_tokens``,
    ``include_path`` an existing folder, the ``**kw`` keys ``simple_evaluate`` takes and ``limit`` a positive number."""
    import inspect

    if isinstance(tasks, str):
        names = [tasks]
    elif isinstance(tasks, (list, tuple)) and tasks:
        names = list(tasks)
    else:
        raise PhaselensError(f"tasks must be an lm-eval task name or a non-empty list of them, got {tasks!r}")
    checks.integer("max_tokens", max_tokens, minimum=1, optional=True, what="padded tokens per forward pass")
    if include_path is not None and not Path(include_path).is_dir():
        raise PhaselensError(f"include_path={str(include_path)!r} is not a folder (of lm-eval task YAMLs)")
    takes = set(inspect.signature(simple_evaluate).parameters) - {"model", "tasks", "model_args"}
    bad = sorted(set(kw) - takes)
    if bad:
        raise PhaselensError(f"evaluate() got {bad}, which lm_eval.simple_evaluate does not take; it takes "
                             f"{sorted(takes)}")
    limit = kw.get("limit")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, float)) or not limit > 0
                              or limit != limit or limit == float("inf")):
        raise PhaselensError(f"limit must be a positive number (items per task, or a share in (0, 1]), got {limit!r}")
    return names


__all__ = ["evaluate", "parse_blocks", "view_from_args"]
