"""Resumable runs: the state folder of a long run (iterative sweep, phase cuts, study).

A run with ``out=DIR`` keeps its state in ``DIR/.phaselens/<run>/``, apart from the results it saves in
``DIR`` itself, so saving a result never overwrites what a run resumes from:

* ``args.json``: the run's arguments; a rerun with other arguments is refused (naming what differs);
* one file per finished unit (a sweep step, a phase-cut unit), in the results format
  (:func:`phaselens.results.write_record`), written atomically;
* ``manifest.json``: the SHA-256 of every finished unit's file. A unit whose file is missing, truncated,
  altered or foreign (not in the manifest, or another checksum) is recomputed, with a warning saying so;
* ``lock``: the PID and host of the run holding the folder. A second run is refused with a message
  naming the holder; the lock of a run that was killed (its process is gone) is taken over, and the temporary
  files that run left half-written (``.NAME.tmpPID``) are deleted.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import time
import warnings
from pathlib import Path
from typing import Any, Callable

from .errors import ResultsError, RunFolderError
from . import files
from .files import read_regular, temporary, write_atomic  # noqa: F401  (re-exported for older callers)
from .results import FORMAT, read_record, write_record
from .version import __version__

STATE_DIR = ".phaselens"


def digest(obj: Any) -> str:
    """A short hash of JSON-serialisable ``obj`` (the texts or items a run was made with)."""
    return hashlib.sha256(json.dumps(obj, ensure_ascii=False, sort_keys=True, default=str).encode()).hexdigest()[:16]


#: the largest state file (arguments, manifest, lock, plan) a run reads back
MAX_STATE_BYTES = 64 << 20


def read_state(file: Path, kind: type, fix: str) -> Any:
    """The JSON state file ``file`` of a run, which must hold a ``kind`` (``dict`` or ``list``): a regular file of at
    most :data:`MAX_STATE_BYTES`; anything else (a pipe, a huge or deeply nested file, ``[]`` where a table belongs,
    bad UTF-8) is a :class:`RunFolderError` naming the file and saying ``fix``."""
    how = f"; {fix}" if fix else ""
    try:
        if not file.is_file():
            raise RunFolderError(f"{file} is not a regular file{how}")
        if file.stat().st_size > MAX_STATE_BYTES:
            raise RunFolderError(f"{file} is over {MAX_STATE_BYTES >> 20} MiB, too large for a run's state{how}")
        doc = json.loads(file.read_bytes().decode("utf-8"))
    except (OSError, ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise RunFolderError(f"{file} is corrupt ({type(e).__name__}){how}") from None
    if not isinstance(doc, kind):
        raise RunFolderError(f"{file} is corrupt: it holds a {type(doc).__name__}, not a JSON "
                             f"{'object' if kind is dict else 'array'}{how}")
    return doc


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunFolder:
    """The state of one resumable run in ``out/.phaselens/<run>/`` (see the module docstring).

    Use as a context manager: entering takes the lock (and checks or records ``args``), leaving releases it.
    """

    #: files an older phaselens (0.1) kept at the top of a run's folder, per run kind
    LEGACY = {"sweep": ("sweep.json", "step_000.json"), "phase_cuts": ("phase_cuts_args.json", "phase_cuts_dense.json")}

    def __init__(self, out: str | os.PathLike, run: str, args: dict[str, Any], what: str = "a run") -> None:
        out = Path(out)
        for p in (out, *out.parents):
            if p.exists() and not p.is_dir():
                raise RunFolderError(f"out={out}: {p} is a file, not a folder; pass a folder path")
            if p.exists():
                break
        self.out = out
        self.path = out / STATE_DIR / run
        self.args = json.loads(json.dumps(args, default=str))
        self.what = what
        self._locked = False

    # -- lock
    def __enter__(self) -> "RunFolder":
        self._refuse_legacy()
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock()
        try:
            self._check_args()
        except BaseException:
            self._unlock()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self._unlock()

    def _refuse_legacy(self) -> None:
        """A folder of an older phaselens' run (state files at its top, no ``.phaselens/``) is refused, saying how."""
        if self.path.exists():
            return
        old = []
        for name in self.LEGACY.get(self.path.name, ()):
            f = self.out / name
            try:
                doc = json.loads(f.read_text()) if f.is_file() else None
            except (OSError, json.JSONDecodeError):
                doc = None
            if isinstance(doc, dict) and "format" not in doc and "kind" not in doc:  # not a result file of this version
                old.append(name)
        if old:
            raise RunFolderError(
                f"{self.out} holds {self.what} written by phaselens 0.1 ({', '.join(old)} at the top of the folder); this "
                f"version keeps a run's state in {self.out / STATE_DIR} and cannot resume that one. Rerun into a new "
                "out= folder (the numbers are computed the same way), or delete the old files to start over here")

    #: an unreadable lock younger than this (seconds) may be one an older phaselens is still writing: wait for it
    UNREADABLE_GRACE = 5.0

    def _lock(self) -> None:
        """Take ``lock``: created whole, in one step (a fully written temporary hard-linked into place), so a
        second run never reads a half-written lock and mistakes a live run for a killed one."""
        lock = self.path / "lock"
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        deadline = time.monotonic() + self.UNREADABLE_GRACE + 1.0
        takeovers = 0
        while takeovers < 3:
            try:
                self._create_lock(lock, me)
            except FileExistsError:
                try:
                    held = json.loads(lock.read_text()) if lock.stat().st_size <= MAX_STATE_BYTES else None
                except FileNotFoundError:
                    continue  # released meanwhile: try again
                except (OSError, ValueError, RecursionError):
                    held = None
                if not isinstance(held, dict):
                    try:
                        age = time.time() - lock.stat().st_mtime
                    except FileNotFoundError:
                        continue
                    if age < self.UNREADABLE_GRACE and time.monotonic() < deadline:
                        time.sleep(0.05)  # being written by an older phaselens: read it again
                        continue
                    held = {}
                pid, host = held.get("pid"), held.get("host")
                if isinstance(pid, int) and pid == os.getpid() and host == me["host"]:
                    raise RunFolderError(f"{self.out} is already in use by this process ({self.what}); one run per "
                                         "folder at a time")
                if isinstance(pid, int) and host == me["host"] and _alive(pid):
                    raise RunFolderError(
                        f"{self.out} is in use by another run ({self.what}): PID {pid} on {host}, since "
                        f"{held.get('since', '?')}. Wait for it to finish, or use another out= folder")
                if host not in (None, me["host"]):
                    raise RunFolderError(
                        f"{self.out} is locked by a run on host {host} (PID {pid}, since {held.get('since', '?')}); "
                        f"if that run is gone, delete {lock} and rerun")
                warnings.warn(f"{self.out}: taking over the lock of a run that is gone (PID {pid}, since "
                              f"{held.get('since', '?')}); finished work is kept", stacklevel=3)
                with contextlib.suppress(FileNotFoundError):
                    lock.unlink()
                if isinstance(pid, int):
                    self._sweep_temporaries(pid)
                takeovers += 1
                continue
            self._locked = True
            return
        raise RunFolderError(f"could not take the lock {lock}; another run keeps taking it")

    @staticmethod
    def _create_lock(lock: Path, me: dict[str, Any]) -> None:
        """Create ``lock`` holding ``me``, or raise ``FileExistsError``; never leaves it empty or half-written."""
        tmp = temporary(lock)
        tmp.write_text(json.dumps(me))
        try:
            os.link(tmp, lock)  # atomic, and fails if the lock exists
        except FileExistsError:
            raise
        except OSError:  # a file system without hard links: exclusive create, then write (a short window)
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(me))
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    def _sweep_temporaries(self, pid: int) -> None:
        """Delete the temporary files (:func:`temporary`) a killed run ``pid`` left half-written in the folder:
        none of them was renamed into place, so none holds finished work."""
        suffix = f".tmp{pid}"
        for f in self.out.rglob(f"*{suffix}"):
            if f.is_file() and f.name.startswith(".") and f.name.endswith(suffix):
                with contextlib.suppress(FileNotFoundError):
                    f.unlink()

    def _unlock(self) -> None:
        if self._locked:
            with contextlib.suppress(FileNotFoundError):
                (self.path / "lock").unlink()
            self._locked = False

    # -- arguments
    def _check_args(self) -> None:
        file = self.path / "args.json"
        if file.exists():
            old = read_state(file, dict, f"delete {self.path} to start the run over")
            diff = {k: (old.get(k), v) for k, v in self.args.items() if old.get(k) != v}
            diff.update({k: (v, None) for k, v in old.items() if k not in self.args})
            if diff:
                raise RunFolderError(
                    f"{self.out} holds {self.what} made with other arguments {diff} (stored, asked); use another "
                    f"out= folder, the same arguments, or delete {self.path} to start over")
        else:
            write_atomic(file, json.dumps(self.args, indent=1, sort_keys=True))

    # -- units
    def _manifest(self) -> dict[str, str]:
        file = self.path / "manifest.json"
        if not file.exists():
            return {}
        try:
            man = read_state(file, dict, "")
            if not all(isinstance(k, str) and isinstance(v, str) for k, v in man.items()):
                raise RunFolderError(f"{file} maps unit names to something other than checksums")
            return man
        except RunFolderError:
            warnings.warn(f"{file} is corrupt; every unit of {self.out} will be checked and recomputed", stacklevel=3)
            return {}

    def _file(self, unit: str) -> Path:
        if not unit or "/" in unit or unit.startswith("."):
            raise RunFolderError(f"unit name {unit!r} must be a plain file stem")
        return self.path / f"{unit}.json"

    def load(self, unit: str) -> Any | None:
        """The finished unit's object, or ``None`` when it must be (re)computed (missing, truncated, altered,
        foreign: said with a warning when a file was there)."""
        file = self._file(unit)
        if not file.exists():
            return None
        want = self._manifest().get(unit)
        try:  # a regular file of bounded size only (a FIFO or a device is never read)
            have = hashlib.sha256(read_regular(file, files.MAX_JSON_BYTES, "unit file", ResultsError)).hexdigest()
        except ResultsError as e:
            warnings.warn(f"{e}; recomputing it", stacklevel=2)
            return None
        if want != have:
            why = "is not recorded as finished" if want is None else "does not match its recorded checksum"
            warnings.warn(f"{file} {why} (truncated, altered or from another run); recomputing it", stacklevel=2)
            return None
        try:
            obj, _ = read_record(file)
        except ResultsError as e:
            warnings.warn(f"{e}; recomputing it", stacklevel=2)
            return None
        return obj

    def save(self, unit: str, obj: Any) -> None:
        """Write a finished unit atomically and record its checksum."""
        if not self._locked:
            raise RunFolderError(f"{self.path}: save() outside the run's `with` block")
        file = self._file(unit)
        write_record(obj, file, {"phaselens": __version__, "format": FORMAT, "kind": type(obj).__name__})
        man = self._manifest()
        man[unit] = hashlib.sha256(file.read_bytes()).hexdigest()
        write_atomic(self.path / "manifest.json", json.dumps(man, indent=1, sort_keys=True))

    def units(self) -> list[str]:
        """Names of the units recorded as finished."""
        return sorted(self._manifest())


def load_or_compute(folder: RunFolder | None, unit: str, compute: Callable[[], Any],
                    valid: Callable[[Any], bool] = lambda obj: True) -> Any:
    """The finished ``unit`` of ``folder`` when it holds one that ``valid`` accepts, else ``compute()``, saved as
    ``unit`` (``folder`` None: always computed, nothing saved)."""
    got = folder.load(unit) if folder is not None else None
    if got is not None and valid(got):
        return got
    got = compute()
    if folder is not None:
        folder.save(unit, got)
    return got


def run_folder(out: str | os.PathLike | None, run: str, args: dict[str, Any], what: str) -> contextlib.AbstractContextManager:
    """A :class:`RunFolder` for ``out``, or a no-op context giving ``None`` when ``out`` is None."""
    if out is None:
        return contextlib.nullcontext(None)
    return RunFolder(out, run, args, what)

