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
           "write_safetensors"]


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
