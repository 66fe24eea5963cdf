"""Saving and loading results: the on-disk format of ``--out DIR``.

A results folder holds one JSON file per result, ``<name>.json``:

    {"kind": "Transition", "phaselens": "0.1.0", "created": "2026-11-23T19:00:00+00:00",
     "provenance": {"command": "transition", "model": ..., "task": ..., "format": ..., "seed": ...},
     "data": <result.to_dict()>}

``kind`` names a registered result class (:data:`KINDS`); every result class has
``to_dict()`` and a classmethod ``from_dict()``. :func:`load_results` gives back the objects.
Files are written atomically (a temporary file renamed into place), so an interrupted run
never leaves half a result.
"""

from __future__ import annotations

import datetime as _dt
import importlib
import json
import os
from pathlib import Path
from typing import Any

#: result class name -> "module:Class" (imported lazily).
KINDS: dict[str, str] = {
    "DecisionTrace": "phaselens.trace:DecisionTrace",
    "Transition": "phaselens.trace:Transition",
    "Sweep": "phaselens.pruning.iterative:Sweep",
    "CKAResult": "phaselens.similarity:CKAResult",
    "BoundaryError": "phaselens.recovery.fit:BoundaryError",
}


class ResultsError(ValueError):
    """A results folder or file cannot be read; the message says which and why."""


def register(kind: str, target: str) -> None:
    """Register a result class ``"module:Class"`` under ``kind`` (its class name)."""
    KINDS[kind] = target


def _cls(kind: str):
    if kind not in KINDS:
        raise ResultsError(f"unknown result kind {kind!r}; known kinds: {sorted(KINDS)}")
    mod, name = KINDS[kind].split(":")
    return getattr(importlib.import_module(mod), name)


def save_result(result: Any, folder: str | os.PathLike, name: str | None = None, **provenance: Any) -> Path:
    """Write ``result`` as ``folder/<name>.json`` (default name: the kind in snake case).

    ``provenance`` (model, task, format, seed, command, ...) is stored beside the data.
    """
    from . import __version__

    kind = type(result).__name__
    if kind not in KINDS:
        raise ResultsError(f"{kind} is not a registered result kind ({sorted(KINDS)})")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    name = name or "".join("_" + c.lower() if c.isupper() else c for c in kind).lstrip("_")
    doc = {
        "kind": kind,
        "phaselens": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "provenance": provenance,
        "data": result.to_dict(),
    }
    path = folder / f"{name}.json"
    tmp = folder / f".{name}.json.tmp{os.getpid()}"
    tmp.write_text(json.dumps(doc, default=_jsonable))
    tmp.replace(path)
    return path


def _jsonable(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (np.integer, np.floating)):
        return o.item()
    if isinstance(o, range):
        return [o.start, o.stop]
    if isinstance(o, (set, tuple)):
        return list(o)
    raise TypeError(f"cannot store {type(o).__name__} in a results file")


def read_result(path: str | os.PathLike) -> tuple[Any, dict[str, Any]]:
    """``(result object, the file's header: kind, phaselens version, created, provenance)``."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ResultsError(f"{path}: not a readable phaselens results file ({e})") from None
    if not isinstance(doc, dict) or "kind" not in doc or "data" not in doc:
        raise ResultsError(f"{path}: not a phaselens results file (no 'kind'/'data')")
    obj = _cls(doc["kind"]).from_dict(doc["data"])
    return obj, {k: v for k, v in doc.items() if k != "data"}


def load_results(folder: str | os.PathLike) -> dict[str, Any]:
    """Every result in ``folder`` as ``{name: object}`` (file stem -> object), sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ResultsError(f"results folder not found: {folder}")
    out = {}
    for p in sorted(folder.glob("*.json")):
        try:
            doc = json.loads(p.read_text())
        except json.JSONDecodeError:
            continue
        if isinstance(doc, dict) and "kind" in doc and "data" in doc:
            out[p.stem] = read_result(p)[0]
    if not out:
        raise ResultsError(f"{folder} holds no phaselens results (*.json with 'kind' and 'data')")
    return out
