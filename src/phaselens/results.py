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
the old result or the new one. Writers of one folder are serialised (a folder lock), and an old side file is
deleted only when no JSON in the folder names it. A result file is untrusted when read: regular files only,
bounded size and nesting, a side-file reference of exactly the form above (in the folder, not a link), and a
header ``kind`` that matches the data (limits in :mod:`phaselens.files`).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import glob
import hashlib
import json
import os
import re
import stat
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ResultsError
from .deprecation import module_getattr
from . import files as _files
from .files import check_writable, folder_lock, parse_json, read_regular, write_atomic
from .records import KIND_ALIASES, KINDS, Record, decode, encode_record, plain  # noqa: F401  (re-exported)
from .version import __version__

FORMAT = 2


# ----------------------------------------------------------------------------- results
class Result(Record):
    """Base of every result: ``summary()``, ``to_pandas()``, ``plot()``, ``effects()``, ``figures()`` and :meth:`save`."""

    def summary(self) -> str:
        """What was measured, in words."""
        raise NotImplementedError

    def to_pandas(self):
        """The result as a table."""
        raise NotImplementedError

    def plot(self, **kw: Any):
        """The result's main Plotly figure."""
        raise NotImplementedError

    def effects(self) -> list:
        """The result's headline contrasts as :class:`~phaselens.Effect` objects (estimate, interval, p, the
        predicted direction, ``n`` at every sampled level); ``[]`` for a result that is a measurement, not a
        contrast (a trace's per-layer numbers, a fitted lens)."""
        return []

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


#: the side-file names phaselens writes: ``<stem>.<first 12 hex digits of the SHA-256>.safetensors``
_SIDE = re.compile(r"(?P<stem>[^/\\\x00]+)\.(?P<hash>[0-9a-f]{12})\.safetensors")
_SHA = re.compile(r"[0-9a-f]{64}")


def side_name(stem: str, sha256: str) -> str:
    """The name of the array side file of result ``stem`` whose bytes have SHA-256 ``sha256``."""
    return f"{stem}.{sha256[:12]}.safetensors"


def write_record(obj: Record, path: Path, header: dict[str, Any]) -> Path:
    """Write ``obj`` as ``path`` (JSON) and its arrays beside it (safetensors), atomically; returns ``path``.

    The writers of one folder are serialised (:func:`phaselens.files.folder_lock`). Afterwards an older side file
    of this result (a regular file named ``<path stem>.<hash>.safetensors``, as phaselens names them) is deleted
    only when no JSON in the folder still names it: a copy such as ``a_backup.json`` keeps its arrays, and a
    reference crafted to name any other file never deletes it."""
    from safetensors.numpy import save as st_save

    path = Path(path)
    arrays: dict[str, np.ndarray] = {}
    data = encode_record(obj, arrays)
    doc = dict(header)
    blob = None
    if arrays:
        blob = st_save(arrays)
        digest = hashlib.sha256(blob).hexdigest()
        doc["arrays"] = {"file": side_name(path.stem, digest), "sha256": digest}
    doc["data"] = data
    text = json.dumps(doc, allow_nan=False).encode()
    folder = path.parent
    with folder_lock(folder, error=ResultsError):
        if path.is_dir():
            raise ResultsError(f"cannot write the result {path}: it is a folder; choose another name")
        new = None if blob is None else folder / doc["arrays"]["file"]
        fresh = new is not None and not os.path.lexists(new)
        if new is not None:
            write_atomic(new, blob)
        try:
            write_atomic(path, text)
        except BaseException:
            if fresh:  # written for this JSON only, which was not written: nobody names it
                with contextlib.suppress(FileNotFoundError):
                    new.unlink()
            raise
        stale = {p.name for p in _own_side_files(folder, path.stem)} - ({new.name} if new is not None else set())
        for name in stale - _referenced(folder, stale):
            with contextlib.suppress(FileNotFoundError):
                (folder / name).unlink()
    return path


def _own_side_files(folder: Path, stem: str) -> list[Path]:
    """The regular files in ``folder`` named as phaselens names the side files of result ``stem``."""
    out = []
    for p in folder.glob(f"{glob.escape(stem)}.*.safetensors"):
        m = _SIDE.fullmatch(p.name)
        if m is not None and m["stem"] == stem and stat.S_ISREG(os.lstat(p).st_mode):
            out.append(p)
    return out


def _own_side_file(path: Path) -> Path | None:
    """The side file the JSON at ``path`` names, when it is one phaselens writes for this result (the name
    ``<path stem>.<hash>.safetensors``, a regular file in the folder); ``None`` for anything else (no file, not
    ours, a reference elsewhere): only such a file may be deleted when ``path`` is rewritten."""
    try:
        doc = parse_json(read_regular(path, _files.MAX_JSON_BYTES, "result file", ResultsError), path, ResultsError)
        ref = doc["arrays"]["file"]
    except (ResultsError, KeyError, TypeError):
        return None
    m = _SIDE.fullmatch(ref) if isinstance(ref, str) else None
    if m is None or m["stem"] != path.stem:
        return None
    side = path.with_name(ref)
    try:
        return side if stat.S_ISREG(os.lstat(side).st_mode) else None
    except OSError:
        return None


def _referenced(folder: Path, names: set[str]) -> set[str]:
    """Which of the side files ``names`` a JSON file in ``folder`` names (a textual search, erring towards naming:
    a JSON file too large or unreadable to check counts as naming them all)."""
    if not names:
        return set()
    forms = {n: (json.dumps(n).encode()[1:-1], n.encode("utf-8")) for n in names}
    found: set[str] = set()
    with os.scandir(folder) as entries:
        for e in entries:
            if not e.name.endswith(".json"):
                continue
            try:
                if not e.is_file():  # a folder, a FIFO, a device (or a link to one) names nothing
                    continue
                raw = read_regular(e.path, _files.MAX_JSON_BYTES, "result file", ResultsError)
            except ResultsError:
                return set(names)
            for n, fs in forms.items():
                if any(f in raw for f in fs):
                    found.add(n)
                elif not n.isascii() and b"\\u" in raw:  # escaped differently: parse it
                    try:
                        if parse_json(raw, e.path, ResultsError)["arrays"]["file"] == n:
                            found.add(n)
                    except (ResultsError, KeyError, TypeError):
                        pass
    return found


def _side_ref(path: Path, arrays: Any) -> tuple[Path, str]:
    """``(side file, sha256)`` named by the ``arrays`` entry of the result ``path``; a :class:`ResultsError`
    naming the file and the reference unless it has exactly the form phaselens writes: a name (no folder)
    ``<stem>.<hash>.safetensors`` whose hash starts the recorded 64-hex-digit SHA-256."""
    if not isinstance(arrays, dict) or set(arrays) != {"file", "sha256"}:
        got = sorted(arrays) if isinstance(arrays, dict) else type(arrays).__name__
        raise ResultsError(f"{path}: its 'arrays' entry must hold 'file' and 'sha256', it holds {got}; the file was "
                           "not written by phaselens or was altered")
    ref, sha = arrays["file"], arrays["sha256"]
    if not isinstance(sha, str) or not _SHA.fullmatch(sha):
        raise ResultsError(f"{path}: its recorded sha256 {sha!r} is not 64 hex digits; the file was altered")
    m = _SIDE.fullmatch(ref) if isinstance(ref, str) else None
    if m is None or m["stem"].startswith(".") or m["hash"] != sha[:12]:
        raise ResultsError(f"{path}: its side-file reference {ref!r} is not of the form phaselens writes "
                           f"(<name>.{sha[:12]}.safetensors, in the same folder); refused: a result reads arrays "
                           "only from its own folder")
    return path.with_name(ref), sha


def _read_doc(path: Path) -> dict[str, Any]:
    """The parsed JSON of the result file ``path`` (a regular file, bounded size and nesting)."""
    doc = parse_json(read_regular(path, _files.MAX_JSON_BYTES, "result file", ResultsError), path, ResultsError)
    if not isinstance(doc, dict):
        raise ResultsError(f"{path}: not a phaselens result (it holds a JSON {type(doc).__name__}, not an object)")
    return doc


def read_record(path: Path) -> tuple[Any, dict[str, Any]]:
    """``(object, header)`` of a file written by :func:`write_record`; a :class:`ResultsError` naming the
    file when it is truncated, corrupt, from the old format, its side file is missing, altered, a link or
    outside its folder, or its header disagrees with its data."""
    path = Path(path)
    if not path.parent.is_dir():  # nothing to lock: the error names the file
        return _record(path, _read_doc(path))
    with folder_lock(path.parent, shared=True, error=ResultsError):
        return _record(path, _read_doc(path))


def _record(path: Path, doc: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    from safetensors import SafetensorError
    from safetensors.numpy import load as st_load

    if "data" not in doc or "kind" not in doc:
        raise ResultsError(f"{path}: not a phaselens result (no 'kind'/'data')")
    if doc.get("format") != FORMAT:
        prov = doc.get("provenance") if isinstance(doc.get("provenance"), dict) else {}
        cmd = f" (it came from `phaselens {prov['command']}`" + (f" on {prov.get('model')}" if prov.get("model") else "") \
            + ")" if prov.get("command") else ""
        raise ResultsError(f"{path}: written by phaselens {doc.get('phaselens', '?')} in results format "
                           f"{doc.get('format', 1)}; this phaselens reads format {FORMAT}. Recompute it{cmd} with "
                           "this version; the numbers are computed the same way")
    kind = doc["kind"]
    if not isinstance(kind, str):
        raise ResultsError(f"{path}: its 'kind' is {kind!r}, not a name; the file was not written by phaselens")
    arrays: dict[str, np.ndarray] = {}
    if "arrays" in doc:
        side, sha = _side_ref(path, doc["arrays"])
        if not os.path.lexists(side):
            raise ResultsError(f"{path}: its array file {side.name} is missing; recompute the result")
        blob = read_regular(side, _files.MAX_SIDE_BYTES, "result's array file", ResultsError, follow=False)
        if hashlib.sha256(blob).hexdigest() != sha:
            raise ResultsError(f"{path}: its array file {side.name} does not match the checksum recorded with it "
                               "(truncated or altered); recompute the result")
        n = int.from_bytes(blob[:8], "little") if len(blob) >= 8 else -1
        if n < 2 or n > min(_files.MAX_HEADER_BYTES, len(blob) - 8):
            raise ResultsError(f"{path}: its array file {side.name} declares a safetensors header of {n:,} bytes in a "
                               f"file of {len(blob):,}; it is not an array file phaselens wrote")
        try:
            arrays = st_load(blob)
        except (SafetensorError, ValueError, TypeError, OverflowError) as e:
            raise ResultsError(f"{path}: its array file {side.name} is not a valid safetensors file ({e})") from e
    try:
        obj = decode(doc["data"], arrays)
        prov = decode(doc.get("provenance") or {}, None)
        if not isinstance(prov, dict):
            raise ResultsError(f"its 'provenance' is a {type(prov).__name__}, not an object")
    except ResultsError as e:
        raise ResultsError(f"{path}: {e}") from e
    except (TypeError, ValueError, KeyError, IndexError, AttributeError, OverflowError, MemoryError) as e:
        raise ResultsError(f"{path}: its data do not decode ({type(e).__name__}: {e}); the file was not written by "
                           "phaselens or was altered") from e
    stored = type(obj).__name__
    if KIND_ALIASES.get(kind, kind) != KIND_ALIASES.get(stored, stored):
        raise ResultsError(f"{path}: its header says kind {kind!r}, but its data hold a {stored}; the file was altered "
                           "or not written by phaselens")
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
    error naming it, unless ``skip_corrupt=True``: then it is skipped with a warning listing every such file.
    Only regular files are read (a FIFO or a device named ``*.json`` is reported, never opened for reading),
    and a ``*.json`` link to a file outside ``folder`` is refused."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ResultsError(f"results folder not found: {folder} (pass the folder a command wrote with --out DIR)")
    out, bad, foreign = [], [], []
    with folder_lock(folder, shared=True, error=ResultsError):
        for p in sorted(folder.glob("*.json")):
            if p.name.startswith("."):
                continue
            try:
                _inside(folder, p)
                doc = parse_json(read_regular(p, _files.MAX_JSON_BYTES, "result file", ResultsError), p, ResultsError)
                if _foreign(doc):
                    foreign.append(p.name)
                    continue
                obj, head = _record(p, doc)
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


def _inside(folder: Path, p: Path) -> None:
    """Refuse ``p`` (an entry of ``folder``) when it is a symbolic link leading out of ``folder``."""
    if p.is_symlink():
        target = p.resolve()
        if not target.is_relative_to(folder.resolve()):
            raise ResultsError(f"{p} is a link to {target}, outside {folder}; phaselens does not follow links out of "
                               "a results folder (copy the file in instead)")


def _foreign(doc: Any) -> bool:
    """JSON that carries no phaselens header (a user's own file): not a result."""
    return not (isinstance(doc, dict) and ("phaselens" in doc or "kind" in doc))


def load_results(folder: str | os.PathLike, *, skip_corrupt: bool = False) -> dict[str, Any]:
    """Every result in ``folder`` as ``{name: result}`` (file stem -> object), sorted by name."""
    return {e.name: e.result for e in read_results(folder, skip_corrupt=skip_corrupt)}


def slug(*parts: Any) -> str:
    """A file stem: ``slug("transition", "smollm2-135m", "mmlu:anatomy")`` -> ``"transition_smollm2-135m_mmlu-anatomy"``."""
    clean = ["".join(c if c.isalnum() or c in "-." else "-" for c in str(p)).strip("-.") for p in parts if p not in (None, "")]
    return "_".join(c for c in clean if c) or "result"


__getattr__ = module_getattr(__name__, {"encode": "phaselens.records:encode_record"})  # the old name of encode_record
