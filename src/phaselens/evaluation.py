"""Evaluate any view with lm-evaluation-harness: ``pl.evaluate(view, tasks=[...])``.

The lm-eval backend itself is :class:`phaselens.lmeval.PhaselensLM` (``lm_eval --model phaselens``); this module
holds what needs no lm-eval: the view an lm-eval ``--model_args`` string describes (:func:`view_from_args`,
:func:`parse_blocks`) and :func:`evaluate`, which imports lm-eval only when called.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from .errors import PhaselensError, PruningError, RecoveryError
from .loading import load_model
from .view import ModelView, as_view

_RANGE = re.compile(r"^\s*(\d+)\s*(?:-\s*(\d+)\s*)?$")


def parse_blocks(spec: Any) -> list[int]:
    """Block indices from ``"3-5,9"`` (ranges and commas) or lm-eval's comma-free ``"12-15+20"``, an int, or a
    list of ints: ``"12-15+20" -> [12, 13, 14, 15, 20]``; a :class:`PruningError` naming a bad part."""
    if isinstance(spec, bool):
        raise PruningError(f"a block list must be like '3-5,9' or '12-15+20', got {spec!r}")
    if isinstance(spec, int):
        return [spec]
    if isinstance(spec, (list, tuple)):
        return [b for part in spec for b in parse_blocks(part)]
    if not isinstance(spec, str) or not spec.strip():
        raise PruningError(f"a block list must be like '3-5,9' or '12-15+20', got {spec!r}")
    out: list[int] = []
    for part in re.split(r"[,+]", spec):
        m = _RANGE.match(part)
        if m is None:
            raise PruningError(f"{part!r} in the block list {spec!r} is not a block or a range 'a-b'; write e.g. "
                               "'12-15+20' (lm-eval's model_args take no commas, so '+' separates)")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if hi < lo:
            raise PruningError(f"the range {part!r} in {spec!r} runs backwards; write it as '{hi}-{lo}'")
        out.extend(range(lo, hi + 1))
    return out


def view_from_args(model: Any, prune: Any = None, recovery: Any = None, *, device: Any = None,
                   dtype: Any = None) -> ModelView:
    """The view ``--model_args model=...,prune=...,recovery=...`` names.

    Args:
        model: anything :func:`~phaselens.load_model` takes, or a view.
        prune: blocks to cut (:func:`parse_blocks`); ``None``: those of ``recovery`` (a file), else none.
        recovery: a file written by ``Recovered.save`` (its cut blocks must equal ``prune`` when both are given),
            or a method name (:data:`~phaselens.METHODS`) fitted on the bundled calibration text.
    """
    from .recovery import METHODS, fit_recovery, load_recovery

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
    lm = PhaselensLM(view_from_args(model, prune, recovery), max_tokens=max_tokens, batch_size=batch_size)
    if include_path is not None:
        kw["task_manager"] = TaskManager(include_path=str(include_path))
    names = [tasks] if isinstance(tasks, str) else list(tasks)
    return lm_eval.simple_evaluate(model=lm, tasks=names, **kw)


__all__ = ["evaluate", "parse_blocks", "view_from_args"]
