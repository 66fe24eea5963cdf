"""The one way phaselens writes a file: atomically.

Every file phaselens writes (results and their tensor side files, a run's state, lenses, recoveries, tuned-lens
checkpoints, a study's index, a joined or dequantized model) is first written whole to a temporary sibling
``.NAME.tmpPID`` (:func:`temporary`), flushed to disk, and renamed into place. A write that fails or is
interrupted leaves the old file as it was and removes its temporary; a process killed mid-write leaves a
temporary that the next run taking over its lock deletes (:class:`phaselens.resume.RunFolder`).

* :func:`write_bytes`, :func:`write_text`, :func:`write_json`: a whole file at once;
* :func:`write_safetensors`: a safetensors file of tensors and string metadata;
* :func:`writing`: a context manager yielding the open temporary, for a file written piece by piece;
* :func:`writing_folder`: the same for a whole folder (a dequantized model), renamed into place at the end.

Floor 0: imports nothing of phaselens but its errors.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

from safetensors.torch import save_file

from .errors import PhaselensError

__all__ = ["temporary", "writing", "writing_folder", "write_bytes", "write_text", "write_json", "write_atomic",
           "write_safetensors", "check_writable"]


def temporary(path: str | os.PathLike, pid: int | None = None) -> Path:
    """The temporary ``.NAME.tmpPID`` beside ``path`` that process ``pid`` (default: this one) writes before
    renaming it into place; a run taking over a killed run's lock deletes that run's (:class:`RunFolder`)."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp{os.getpid() if pid is None else pid}")


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


@contextlib.contextmanager
def _placed(path: str | os.PathLike) -> Iterator[Path]:
    """Yield the temporary path for ``path``; on success fsync it and rename it into place, on failure remove it."""
    path = Path(path)
    tmp = temporary(path)
    _remove(tmp)  # a leftover of this very PID (a reused PID after a crash) is never finished work
    try:
        yield tmp
        _fsync(tmp)
        tmp.replace(path)
    except BaseException:
        _remove(tmp)
        raise


@contextlib.contextmanager
def writing(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary for ``path`` (``mode`` ``"wb"`` or ``"w"``, text as UTF-8) and yield it; when the block ends
    without an exception the file is flushed, fsynced and renamed onto ``path``, otherwise it is removed."""
    if mode not in ("wb", "w"):
        raise PhaselensError(f"writing(mode={mode!r}): use 'wb' (bytes) or 'w' (text)")
    with _placed(path) as tmp:
        with open(tmp, mode, **({} if mode == "wb" else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())


@contextlib.contextmanager
def writing_folder(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder for ``path``; when the block ends without an exception it replaces ``path``
    (an existing folder there is removed first), otherwise it is removed."""
    path = Path(path)
    tmp = temporary(path)
    _remove(tmp)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        if path.exists():
            _remove(path)
        tmp.rename(path)
    except BaseException:
        _remove(tmp)
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns ``path``."""
    with writing(path) as f:
        f.write(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns ``path``."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any, **dumps: Any) -> Path:
    """Write ``json.dumps(obj, **dumps)`` to ``path`` atomically (serialised before anything is written)."""
    return write_text(path, json.dumps(obj, **dumps))


def write_atomic(path: str | os.PathLike, data: str | bytes) -> Path:
    """Write ``data`` (text as UTF-8) to ``path`` atomically."""
    return write_bytes(path, data.encode("utf-8") if isinstance(data, str) else data)


def write_safetensors(path: str | os.PathLike, tensors: Mapping[str, Any], metadata: Mapping[str, str] | None = None) -> Path:
    """Write ``tensors`` (name -> CPU contiguous tensor) and string ``metadata`` as a safetensors file, atomically."""
    with _placed(path) as tmp:
        save_file(dict(tensors), str(tmp), metadata=None if metadata is None else dict(metadata))
    return Path(path)


def check_writable(path: str | os.PathLike, kind: str = "folder", *, what: str = "out",
                   error: type[PhaselensError] | None = None, parents: bool = False) -> Path:
    """Refuse, before any work, an output location that cannot be written; returns ``Path(path)``.

    ``kind="folder"``: a folder phaselens writes into (created later with its missing parents): no existing part of
    the path may be a file, and the folder itself (or, when it does not exist yet, its nearest existing ancestor)
    must take a new file. ``kind="file"``: a file written whole (atomically, beside itself): it must not be a folder
    or anything but a regular file, and its folder must exist and take a new file (``parents=True``: a writer that
    creates the missing folders; then the nearest existing one must take a new file). Writability is *probed* (a
    temporary ``.phaselens-probe-*`` file is created and removed at once), since permission bits do not stop root
    and say nothing of read-only mounts. Raises ``error`` (default :class:`~phaselens.errors.ResultsError`) naming
    ``what`` and the path."""
    from .errors import ResultsError

    err = error or ResultsError
    if kind not in ("folder", "file"):
        raise PhaselensError(f"check_writable(kind={kind!r}): use 'folder' or 'file'")
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise err(f"{what} must be a {kind} path, got {path!r} ({type(path).__name__})")
    p = Path(path).expanduser()
    if "\x00" in str(p):
        raise err(f"{what}={str(path)!r}: a path cannot hold a NUL byte")
    if kind == "file":
        if p.is_dir():
            raise err(f"{what}={str(path)!r} is a folder; pass the path of the file to write, e.g. {p / 'out.html'}")
        if p.exists() and not p.is_file():
            raise err(f"{what}={str(path)!r} exists and is not a regular file (a device, a pipe or a socket); "
                      "pass the path of a file to write")
        folder = p.absolute().parent
        if parents:
            check_writable(folder, "folder", what=what, error=err)
            return Path(path)
        if not folder.is_dir():
            bad = next((q for q in (folder, *folder.parents) if q.exists()), None)
            why = f"{bad} is a file, not a folder" if bad is not None and not bad.is_dir() else f"the folder {folder} does not exist"
            raise err(f"{what}={str(path)!r}: {why}; create the folder first or pass another path")
        _probe(folder, p, what, err)
        return Path(path)
    here = p.absolute()
    for q in (here, *here.parents):
        if q.exists() or q.is_symlink():
            if not q.is_dir():
                raise err(f"{what}={str(path)!r}: {q} is {'a file, not a folder' if q.is_file() else 'not a folder'}; pass a "
                          "folder path")
            _probe(q, p, what, err)
            return Path(path)
    raise err(f"{what}={str(path)!r}: no part of the path exists")  # pragma: no cover - '/' always exists


def _probe(folder: Path, target: Path, what: str, err: type[PhaselensError]) -> None:
    """Create and remove a temporary file in ``folder``; refuse ``target`` naming the path when that fails."""
    import tempfile

    try:
        fd, name = tempfile.mkstemp(dir=folder, prefix=".phaselens-probe-")
    except OSError as e:
        where = ("" if folder == target.absolute() else f" (its folder {folder} takes no new file)"
                 if folder == target.absolute().parent else f" (its nearest existing folder {folder} takes no new file)")
        raise err(f"{what}={str(target)!r} is not writable{where}: {e.strerror or e}; pass a folder you can write to") from e
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(name)
