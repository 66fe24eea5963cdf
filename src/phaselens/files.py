"""The one way phaselens writes a file (atomically), and reads one it is handed (bounded, regular files only).

Every file phaselens writes (results and their tensor side files, a run's state, lenses, recoveries, tuned-lens
checkpoints, a study's index, a joined or dequantized model) is first written whole to a temporary sibling
``.NAME.tmpPID`` (:func:`temporary`), flushed to disk, and renamed into place. A write that fails or is
interrupted leaves the old file as it was and removes its temporary; a process killed mid-write leaves a
temporary that the next run taking over its lock deletes (:class:`phaselens.resume.RunFolder`).

* :func:`write_bytes`, :func:`write_text`, :func:`write_json`: a whole file at once;
* :func:`write_safetensors`: a safetensors file of tensors and string metadata;
* :func:`writing`: a context manager yielding the open temporary, for a file written piece by piece;
* :func:`writing_folder`: the same for a whole folder (a dequantized model), renamed into place at the end;
* :func:`folder_lock`: serialises the writers of one folder (results and their side files), across processes
  and threads (``flock`` on the folder itself: no lock file, released by the kernel when a process dies).

Files phaselens reads are untrusted (:func:`read_regular`, :func:`parse_json`, :func:`check_safetensors`):
regular files only (a FIFO, a device, a folder is refused before it is opened for reading, so nothing hangs or
reads without end), at most :data:`MAX_JSON_BYTES` / :data:`MAX_SIDE_BYTES` / :data:`MAX_TENSOR_FILE_BYTES`,
JSON nested at most :data:`MAX_JSON_DEPTH` deep, safetensors headers at most :data:`MAX_HEADER_BYTES`.
Each refusal is the caller's error class naming the file and what is wrong. The limits are module
attributes: raise one (``phaselens.files.MAX_JSON_BYTES = ...``) for a file you trust that exceeds it.

Floor 0: imports nothing of phaselens but its errors.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import stat
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

from safetensors.torch import save_file

from .errors import PhaselensError

try:
    import fcntl
except ImportError:  # pragma: no cover - not a POSIX system: writers of one folder are not serialised
    fcntl = None  # type: ignore[assignment]

__all__ = ["temporary", "writing", "writing_folder", "write_bytes", "write_text", "write_json", "write_atomic",
           "write_safetensors", "folder_lock", "read_regular", "check_regular", "parse_json", "check_safetensors",
           "looks_like",
           "MAX_JSON_BYTES", "MAX_JSON_DEPTH", "MAX_SIDE_BYTES", "MAX_TENSOR_FILE_BYTES", "MAX_HEADER_BYTES",
           "LOCK_TIMEOUT", "check_writable"]

#: the largest JSON file phaselens reads (a result's JSON holds its fields; its arrays are in the side file)
MAX_JSON_BYTES = 64 * 2**20
#: the deepest nesting of lists and objects in a JSON phaselens reads (results nest a few levels; 100,000 would
#: exhaust Python's stack)
MAX_JSON_DEPTH = 100
#: the largest array side file of a result (read whole, to check its SHA-256)
MAX_SIDE_BYTES = 16 * 2**30
#: the largest safetensors file (lens, recovery, checkpoint) phaselens opens (memory-mapped, not read whole)
MAX_TENSOR_FILE_BYTES = 2**40
#: the largest safetensors header (the JSON table of tensors and metadata at the file's start)
MAX_HEADER_BYTES = 16 * 2**20
#: seconds a writer waits for another writer of the same folder before giving up with an error naming the folder
LOCK_TIMEOUT = 600.0


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


# ----------------------------------------------------------------------------- the folder lock
_held: dict[tuple[int, int], list] = {}  # (st_dev, st_ino) of a locked folder -> [thread id, depth]
_held_guard = threading.Lock()


def _flock(fd: int, folder: Path, shared: bool, timeout: float, error: type[Exception]) -> None:
    """Take ``flock`` on ``fd`` (exclusive or shared), polling until ``timeout`` seconds have passed."""
    op = (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB
    deadline, pause = time.monotonic() + timeout, 0.002
    while True:
        try:
            fcntl.flock(fd, op)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise error(f"{folder}: another process has been writing in this folder for more than {timeout:g} s; "
                            "wait for it to finish (or raise phaselens.files.LOCK_TIMEOUT)") from None
            time.sleep(pause)
            pause = min(pause * 2, 0.05)


def _lock_fd(folder: Path, shared: bool, error: type[Exception]) -> int | None:
    """A file descriptor to ``flock`` for ``folder``: the folder itself, or (a file system that cannot lock a
    folder) the hidden file ``.phaselens.lock`` in it; ``None`` when neither can be locked (then a reader reads
    unlocked, and a writer is refused)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except FileNotFoundError:
        raise error(f"folder not found: {folder}") from None
    except NotADirectoryError:
        raise error(f"{folder} is not a folder") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # probe: can this file system lock a folder?
        fcntl.flock(fd, fcntl.LOCK_UN)
        return fd
    except BlockingIOError:
        return fd  # it can: someone holds it now
    except OSError:
        os.close(fd)
    try:
        return os.open(folder / ".phaselens.lock", os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
    except OSError as e:
        if shared:
            return None
        raise error(f"cannot lock {folder} for writing ({e}); phaselens serialises the writers of a folder with "
                    "flock, which this file system does not support: write to a local folder") from e


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, *, shared: bool = False, timeout: float | None = None,
                error: type[Exception] = PhaselensError) -> Iterator[None]:
    """Hold ``folder``'s lock for the block: exclusive for a writer, ``shared=True`` for a reader (readers do not
    exclude each other). Waits up to ``timeout`` seconds (default :data:`LOCK_TIMEOUT`), then raises ``error``
    naming the folder. Re-entrant within a thread; two threads, or two processes, exclude each other. The lock
    is ``flock`` on the folder itself, so it leaves no file and dies with the process holding it."""
    folder = Path(folder)
    if fcntl is None:  # pragma: no cover
        yield
        return
    fd = _lock_fd(folder, shared, error)
    if fd is None:
        yield
        return
    try:
        st = os.fstat(fd)
        key, me = (st.st_dev, st.st_ino), threading.get_ident()
        with _held_guard:
            mine = _held.get(key)
            if mine is not None and mine[0] == me:
                mine[1] += 1
        if mine is not None and mine[0] == me:  # this thread holds it already
            try:
                yield
            finally:
                with _held_guard:
                    mine[1] -= 1
            return
        _flock(fd, folder, shared, LOCK_TIMEOUT if timeout is None else timeout, error)
        with _held_guard:
            _held[key] = [me, 1]
        try:
            yield
        finally:
            with _held_guard:
                _held.pop(key, None)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------- reading untrusted files
def _kind_of(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR,
                       "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISLNK, "a symbolic link")):
        if test(mode):
            return name
    return "not a regular file"


def check_regular(path: str | os.PathLike, what: str, error: type[Exception], *, limit: int | None = None,
                  follow: bool = True) -> os.stat_result:
    """``os.stat`` of ``path`` (``os.lstat`` with ``follow=False``: a symbolic link is refused), or ``error``
    naming it when it is missing, not a regular file (a FIFO, a device, a folder), or larger than ``limit``."""
    path = Path(path)
    try:
        st = os.stat(path) if follow else os.lstat(path)
    except FileNotFoundError:
        raise error(f"{what} not found: {path}") from None
    except OSError as e:
        raise error(f"cannot read the {what} {path}: {e}") from e
    if not stat.S_ISREG(st.st_mode):
        raise error(f"{path} is {_kind_of(st.st_mode)}, not a regular file: phaselens reads a {what} only from a "
                    "regular file")
    if limit is not None and st.st_size > limit:
        raise error(f"{path} is {st.st_size:,} bytes, more than the {limit:,} a {what} may have; it is not one "
                    "phaselens wrote (raise phaselens.files limits only for a file you trust)")
    return st


def read_regular(path: str | os.PathLike, limit: int, what: str, error: type[Exception], *,
                 follow: bool = True) -> bytes:
    """The bytes of the regular file ``path`` (at most ``limit``); ``error`` naming it otherwise. A FIFO or a
    device is refused before it is read (and opened without blocking), a link with ``follow=False``."""
    path = Path(path)
    check_regular(path, what, error, limit=limit, follow=follow)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | (0 if follow else getattr(os, "O_NOFOLLOW", 0))
    try:
        fd = os.open(path, flags)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise error(f"{path} is a symbolic link; phaselens does not follow links to a {what}") from e
        raise error(f"cannot read the {what} {path}: {e}") from e
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())  # what was opened (it may have been replaced since the check)
        if not stat.S_ISREG(st.st_mode):
            raise error(f"{path} is {_kind_of(st.st_mode)}, not a regular file: phaselens reads a {what} only from "
                        "a regular file")
        data = f.read(limit + 1)
    if len(data) > limit:
        raise error(f"{path} is more than the {limit:,} bytes a {what} may have; it is not one phaselens wrote")
    return data


def _too_deep(obj: Any, limit: int) -> bool:
    stack = [(obj, 1)]
    while stack:
        o, d = stack.pop()
        if isinstance(o, (dict, list)):
            if d > limit:
                return True
            stack.extend((v, d + 1) for v in (o.values() if isinstance(o, dict) else o))
    return False


def parse_json(data: bytes | str, where: str | os.PathLike, error: type[Exception], *,
               depth: int | None = None) -> Any:
    """``json.loads(data)``, refusing (``error`` naming ``where``) text that is not UTF-8 JSON or nests deeper than
    ``depth`` (default :data:`MAX_JSON_DEPTH`) levels of lists and objects (never a ``RecursionError``)."""
    limit = MAX_JSON_DEPTH if depth is None else depth
    try:
        text = data.decode("utf-8") if isinstance(data, (bytes, bytearray)) else data
        obj = json.loads(text)
    except RecursionError:
        raise error(f"{where}: nested deeper than the {limit} levels phaselens reads; it is not a file phaselens "
                    "wrote") from None
    except UnicodeDecodeError as e:
        raise error(f"{where}: not readable JSON (truncated or corrupt: not UTF-8 text, {e})") from e
    except ValueError as e:  # json.JSONDecodeError
        raise error(f"{where}: not readable JSON (truncated or corrupt: {e})") from e
    if _too_deep(obj, limit):
        raise error(f"{where}: nested deeper than the {limit} levels phaselens reads; it is not a file phaselens "
                    "wrote")
    return obj


def looks_like(head: bytes) -> str:
    """What a file whose first bytes are ``head`` looks like: ``"a pickle"``, ``"text"`` or ``"binary data"``."""
    if head[:1] == b"\x80":
        return "a pickle"
    return "text" if head and all(32 <= c < 127 or c in (9, 10, 13) for c in head) else "binary data"


def check_safetensors(path: str | os.PathLike, what: str, error: type[Exception], *,
                      limit: int | None = None) -> tuple[bytes, int]:
    """Check that ``path`` is a regular file of at most ``limit`` bytes (default :data:`MAX_TENSOR_FILE_BYTES`),
    refusing anything else (a FIFO, a device, a folder) with ``error`` naming the file, before it is read;
    returns its first 16 bytes and the header length its first 8 declare (-1 for a shorter file). The caller
    opens it with safetensors (which refuses a header longer than the file or 100 MB itself) and then refuses a
    header over :data:`MAX_HEADER_BYTES`."""
    path = Path(path)
    check_regular(path, f"{what} file", error, limit=MAX_TENSOR_FILE_BYTES if limit is None else limit)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as e:
        raise error(f"cannot read the {what} file {path}: {e}") from e
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise error(f"{path} is not a regular file: phaselens reads a {what} file only from a regular file")
        head = f.read(16)
    return head, int.from_bytes(head[:8], "little") if len(head) >= 8 else -1


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
