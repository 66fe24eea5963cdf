"""Saving and loading results: the on-disk format of ``--out DIR``.

A results folder holds one JSON file per result, ``<name>.json``:

    {"kind": "Transition", "phaselens": "0.1.0", "created": "2026-11-23T19:00:00+00:00",
     "provenance": {"command": "transition", "model": ..., "task": ..., "format": ..., "seed": ...},
     "data": <result.to_dict()>}

``kind`` names a registered result class (:data:`KINDS`); every result class has
``to_dict()`` and a classmethod ``from_dict()``. :func:`load_results` gives back the objects;
:func:`read_results` gives them with their headers (:class:`ResultEntry`). Files are written
atomically (a temporary file renamed into place), so an interrupted run never leaves half a
result. Files whose name starts with ``.`` and JSON files without ``kind``/``data`` (a sweep's
own ``sweep.json``, say) are not results and are skipped.

Provenance keys used by phaselens itself (all optional): ``command`` (the CLI sub-command or
Python function), ``model``, ``task``, ``format``, ``seed``, ``n_items``, ``limit``, ``argv``.
:func:`save_result` fills ``model``, ``task``, ``format``, ``seed`` and ``n_items`` from the
result when it holds them and they are not given.
"""

from __future__ import annotations

import datetime as _dt
import importlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: result class name -> "module:Class" (imported lazily).
KINDS: dict[str, str] = {
    "DecisionTrace": "phaselens.trace:DecisionTrace",
    "Transition": "phaselens.trace:Transition",
    "Sweep": "phaselens.pruning.iterative:Sweep",
    "CKAResult": "phaselens.similarity:CKAResult",
    "BoundaryError": "phaselens.recovery.fit:BoundaryError",
    "PhaseCuts": "phaselens.phase_cuts:PhaseCuts",
    "NoiseResult": "phaselens.interventions:NoiseResult",
    "AblationResult": "phaselens.interventions:AblationResult",
    "CollapseStudy": "phaselens.stats:CollapseStudy",
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
    name = name or "".join("_" + c.lower() if c.isupper() else c for c in kind).lstrip("_")
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise ResultsError(f"result name {name!r} must be a plain file stem (no '/', not starting with '.')")
    folder.mkdir(parents=True, exist_ok=True)
    doc = {
        "kind": kind,
        "phaselens": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "provenance": {**provenance_of(result), **{k: v for k, v in provenance.items() if v is not None}},
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


def provenance_of(result: Any) -> dict[str, Any]:
    """``model``, ``task``, ``format``, ``seed``, ``n_items`` as far as ``result`` (or its ``.trace``) holds them."""
    out: dict[str, Any] = {}
    for obj in (getattr(result, "trace", None), result):
        if obj is None:
            continue
        for key in ("model", "task", "format", "seed"):
            v = getattr(obj, key, None)
            if key not in out and isinstance(v, (str, int)) and not isinstance(v, bool):
                out[key] = v
        n = getattr(obj, "n_items", None)
        if "n_items" not in out and isinstance(n, int):
            out["n_items"] = n
    if "model" not in out and isinstance(getattr(result, "model_a", None), str):  # CKA: two models
        out["model"] = result.model_a if result.model_a == result.model_b else f"{result.model_a} vs {result.model_b}"
        if isinstance(getattr(result, "source", None), str) and result.source:
            out.setdefault("task", result.source)
    return out


@dataclass
class ResultEntry:
    """One result file of a results folder: the object and its header."""

    name: str
    kind: str
    result: Any
    provenance: dict[str, Any] = field(default_factory=dict)
    phaselens: str = ""
    created: str = ""
    path: Path | None = None


def _result_files(folder: str | os.PathLike) -> list[tuple[Path, dict]]:
    folder = Path(folder)
    if not folder.is_dir():
        raise ResultsError(f"results folder not found: {folder} (pass the folder a command wrote with --out DIR)")
    docs = []
    for p in sorted(folder.glob("*.json")):
        if p.name.startswith("."):
            continue
        try:
            doc = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(doc, dict) and "kind" in doc and "data" in doc:
            docs.append((p, doc))
    if not docs:
        raise ResultsError(f"{folder} holds no phaselens results (*.json with 'kind' and 'data')")
    return docs


def read_results(folder: str | os.PathLike) -> list[ResultEntry]:
    """Every result in ``folder`` with its header, sorted by name (file stem)."""
    out = []
    for p, doc in _result_files(folder):
        try:
            obj = _cls(doc["kind"]).from_dict(doc["data"])
        except ResultsError as e:
            raise ResultsError(f"{p}: {e}") from None
        out.append(ResultEntry(p.stem, doc["kind"], obj, dict(doc.get("provenance") or {}), str(doc.get("phaselens", "")),
                               str(doc.get("created", "")), p))
    return out


def load_results(folder: str | os.PathLike) -> dict[str, Any]:
    """Every result in ``folder`` as ``{name: object}`` (file stem -> object), sorted by name."""
    return {e.name: e.result for e in read_results(folder)}


def slug(*parts: Any) -> str:
    """A file stem from ``parts``: ``slug("transition", "smollm2-135m", "mmlu:anatomy")`` -> ``"transition_smollm2-135m_mmlu-anatomy"``."""
    clean = ["".join(c if c.isalnum() or c in "-." else "-" for c in str(p)).strip("-.") for p in parts if p not in (None, "")]
    return "_".join(c for c in clean if c) or "result"


def save_results(results: dict[str, Any], folder: str | os.PathLike, **provenance: Any) -> list[Path]:
    """:func:`save_result` for each ``{name: result}``, with the same provenance."""
    return [save_result(r, folder, name, **provenance) for name, r in results.items()]
