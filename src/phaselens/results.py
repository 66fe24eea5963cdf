"""The one result protocol: :class:`Result` (and :class:`Record` for the parts results are made of),
their generic encoding, and the results-folder format.

A result is a dataclass deriving from :class:`Result`; it registers itself by class name and has
``summary()``, ``to_pandas()``, ``plot()`` and ``figures()`` (what the report shows). It keeps its raw
data (option logits, answers, masks, per-item values) and derives the statistics from them.

On disk a result is two files in a folder::

    <name>.json          {"phaselens": "0.2.0", "format": 2, "kind": "Transition", "created": ...,
                          "provenance": {...}, "data": <fields>, "arrays": {"file": ..., "sha256": ...}}
    <name>.<hash>.safetensors   every numpy array / torch tensor of the result (no pickle, no code)

``data`` holds the fields, encoded generically (:func:`~phaselens.records.encode_record`): arrays become references into the
side file; tuples, ranges, non-string dict keys and non-finite floats are tagged so they come back as
they were. Loading checks the side file's SHA-256, refuses a missing or unknown field, and names the
file and the field. Both files are written atomically (the JSON last), so a killed run leaves either
the old result or the new one.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ResultsError
from .deprecation import module_getattr
from .files import check_writable, write_atomic
from .records import KIND_ALIASES, KINDS, Record, decode, encode_record, plain  # noqa: F401  (re-exported)
from .version import __version__

FORMAT = 2


# ----------------------------------------------------------------------------- results
class Result(Record):
    """Base of every result: ``summary()``, ``to_pandas()``, ``plot()``, ``figures()`` and :meth:`save`."""

    def summary(self) -> str:
        """What was measured, in words."""
        raise NotImplementedError

    def to_pandas(self):
        """The result as a table."""
        raise NotImplementedError

    def plot(self, **kw: Any):
        """The result's main Plotly figure."""
        raise NotImplementedError

    def figures(self) -> list[tuple[str, Any]]:
        """``[(caption, figure)]`` the report shows (default: ``plot()`` without a caption)."""
        return [("", self.plot())]

    def table(self):
        """The table the report shows (default: ``to_pandas()``)."""
        return self.to_pandas()

    @classmethod
    def overview(cls, results: dict[str, "Result"]) -> list[tuple[str, Any]]:
        """Figures comparing several results of this kind (the report calls it when a folder holds two or more)."""
        return []

    def provenance(self) -> dict[str, Any]:
        """``model``, ``task``, ``format``, ``seed``, ``n_items`` as far as the result holds them."""
        out: dict[str, Any] = {}
        for obj in (getattr(self, "trace", None), self):
            if obj is None:
                continue
            for key in ("model", "task", "format", "seed", "lens", "task_note"):
                v = getattr(obj, key, None)
                if key not in out and isinstance(v, (str, int)) and not isinstance(v, bool) and v != "":
                    out[key] = v
            n = getattr(obj, "n_items", None)
            if "n_items" not in out and isinstance(n, int):
                out["n_items"] = n
        return out

    def save(self, folder: str | os.PathLike, name: str | None = None, **provenance: Any) -> Path:
        """:func:`save_result` of this result."""
        return save_result(self, folder, name, **provenance)


def _snake(kind: str) -> str:
    return "".join("_" + c.lower() if c.isupper() else c for c in kind).lstrip("_")



def _check_folder(folder: Path) -> None:
    for p in (folder, *folder.parents):
        if p.exists() and not p.is_dir():
            raise ResultsError(f"cannot write results under {folder}: {p} is a file, not a folder; pass a folder path")
        if p.exists():
            break


def write_record(obj: Record, path: Path, header: dict[str, Any]) -> Path:
    """Write ``obj`` as ``path`` (JSON) and its arrays beside it (safetensors), atomically; returns ``path``."""
    from safetensors.numpy import save as st_save

    arrays: dict[str, np.ndarray] = {}
    data = encode_record(obj, arrays)
    doc = dict(header)
    old = _side_file(path)
    if arrays:
        blob = st_save(arrays)
        digest = hashlib.sha256(blob).hexdigest()
        side = path.with_name(f"{path.stem}.{digest[:12]}.safetensors")
        write_atomic(side, blob)
        doc["arrays"] = {"file": side.name, "sha256": digest}
    doc["data"] = data
    write_atomic(path, json.dumps(doc, allow_nan=False).encode())
    if old is not None and old.exists() and (not arrays or old.name != doc["arrays"]["file"]):
        old.unlink()
    return path


def _side_file(path: Path) -> Path | None:
    try:
        doc = json.loads(path.read_text())
        return path.with_name(doc["arrays"]["file"])
    except Exception:  # noqa: BLE001 - no old file, or not ours
        return None


def read_record(path: Path) -> tuple[Any, dict[str, Any]]:
    """``(object, header)`` of a file written by :func:`write_record`; a :class:`ResultsError` naming the
    file when it is truncated, corrupt, from the old format, or its side file is missing or altered."""
    from safetensors.numpy import load as st_load

    try:
        doc = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ResultsError(f"{path}: not a readable phaselens result (truncated or corrupt: {e})") from e
    if not isinstance(doc, dict) or "data" not in doc or "kind" not in doc:
        raise ResultsError(f"{path}: not a phaselens result (no 'kind'/'data')")
    if doc.get("format") != FORMAT:
        prov = doc.get("provenance") or {}
        cmd = f" (it came from `phaselens {prov['command']}`" + (f" on {prov.get('model')}" if prov.get("model") else "") \
            + ")" if prov.get("command") else ""
        raise ResultsError(f"{path}: written by phaselens {doc.get('phaselens', '?')} in results format "
                           f"{doc.get('format', 1)}; this phaselens reads format {FORMAT}. Recompute it{cmd} with "
                           "this version; the numbers are computed the same way")
    arrays: dict[str, np.ndarray] = {}
    if "arrays" in doc:
        side = path.with_name(doc["arrays"]["file"])
        if not side.exists():
            raise ResultsError(f"{path}: its array file {side.name} is missing; recompute the result")
        blob = side.read_bytes()
        if hashlib.sha256(blob).hexdigest() != doc["arrays"]["sha256"]:
            raise ResultsError(f"{path}: its array file {side.name} does not match the checksum recorded with it "
                               "(truncated or altered); recompute the result")
        arrays = st_load(blob)
    try:
        obj = decode(doc["data"], arrays)
    except ResultsError as e:
        raise ResultsError(f"{path}: {e}") from e
    return obj, {k: v for k, v in doc.items() if k not in ("data", "arrays")}


def save_result(result: Any, folder: str | os.PathLike, name: str | None = None, **provenance: Any) -> Path:
    """Write ``result`` as ``folder/<name>.json`` (+ its array file); default name: the kind in snake case.

    ``provenance`` (command, model, task, ...) is stored beside the data, over what the result holds itself.
    """

    if not isinstance(result, Result):
        raise ResultsError(f"{type(result).__name__} is not a phaselens result (registered kinds: "
                           f"{sorted(k for k, c in KINDS.items() if issubclass(c, Result))})")
    kind = type(result).__name__
    name = name or _snake(kind)
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise ResultsError(f"result name {name!r} must be a plain file stem (no '/', not starting with '.')")
    folder = Path(folder)
    _check_folder(folder)
    check_writable(folder, "folder", what="folder", error=ResultsError)
    folder.mkdir(parents=True, exist_ok=True)
    header = {"phaselens": __version__, "format": FORMAT, "kind": kind,
              "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
              "provenance": encode_record({**result.provenance(), **{k: v for k, v in provenance.items() if v is not None}}, None)}
    return write_record(result, folder / f"{name}.json", header)


def load_result(path: str | os.PathLike) -> Any:
    """The result saved at ``path`` (a ``.json`` file written by :func:`save_result`)."""
    obj, _ = read_record(Path(path))
    return obj


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


def read_results(folder: str | os.PathLike, *, skip_corrupt: bool = False) -> list[ResultEntry]:
    """Every result in ``folder`` with its header, sorted by name. A corrupt or outdated result file is an
    error naming it, unless ``skip_corrupt=True``: then it is skipped with a warning listing every such file."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ResultsError(f"results folder not found: {folder} (pass the folder a command wrote with --out DIR)")
    out, bad, foreign = [], [], []
    for p in sorted(folder.glob("*.json")):
        if p.name.startswith("."):
            continue
        if _foreign(p):
            foreign.append(p.name)
            continue
        try:
            obj, head = read_record(p)
        except ResultsError as e:
            if not skip_corrupt:
                raise ResultsError(f"{e} (pass skip_corrupt=True to load the other results)") from e
            bad.append(f"{p.name}: {e}")
            continue
        out.append(ResultEntry(p.stem, head["kind"], obj, decode(head.get("provenance") or {}, None),
                               str(head.get("phaselens", "")), str(head.get("created", "")), p))
    if foreign:
        warnings.warn(f"{folder}: {len(foreign)} JSON file(s) not written by phaselens were left alone: "
                      f"{', '.join(foreign)}", stacklevel=2)
    if bad:
        warnings.warn(f"skipped {len(bad)} unreadable result file(s) in {folder}: " + "; ".join(bad), stacklevel=2)
    if not out:
        raise ResultsError(f"{folder} holds no phaselens results (*.json written by save_result or --out DIR)")
    return out


def _foreign(path: Path) -> bool:
    """A JSON file that parses but carries no phaselens header (a user's own file): not a result."""
    try:
        doc = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False  # unreadable: possibly a truncated result, so it is reported, not ignored
    return not (isinstance(doc, dict) and ("phaselens" in doc or "kind" in doc))


def load_results(folder: str | os.PathLike, *, skip_corrupt: bool = False) -> dict[str, Any]:
    """Every result in ``folder`` as ``{name: result}`` (file stem -> object), sorted by name."""
    return {e.name: e.result for e in read_results(folder, skip_corrupt=skip_corrupt)}


def slug(*parts: Any) -> str:
    """A file stem: ``slug("transition", "smollm2-135m", "mmlu:anatomy")`` -> ``"transition_smollm2-135m_mmlu-anatomy"``."""
    clean = ["".join(c if c.isalnum() or c in "-." else "-" for c in str(p)).strip("-.") for p in parts if p not in (None, "")]
    return "_".join(c for c in clean if c) or "result"


__getattr__ = module_getattr(__name__, {"encode": "phaselens.records:encode_record"})  # the old name of encode_record
