"""Resumable runs: atomic writes and the arguments file of an ``out=`` folder.

A long run (iterative sweep, phase cuts) writes each finished unit atomically (a temporary
file renamed into place, so a killed run never leaves half a file) and records its
arguments once; a rerun with the same folder continues, one with other arguments is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file renamed into place."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    tmp.replace(path)


def check_or_write_args(file: Path, args: dict[str, Any], what: str, error: type[Exception] = ValueError) -> None:
    """Record ``args`` in ``file``, or raise ``error`` if it holds a run made with other arguments."""
    file.parent.mkdir(parents=True, exist_ok=True)
    if file.exists():
        old = json.loads(file.read_text())
        diff = {k: (old.get(k), v) for k, v in args.items() if old.get(k) != v}
        if diff:
            raise error(f"{file.parent} holds {what} with other arguments {diff} (stored, asked); "
                        "use another out= folder, the same arguments, or delete the folder to start over")
    else:
        write_atomic(file, json.dumps(args, indent=1))


def digest(obj: Any) -> str:
    """A short hash of JSON-serialisable ``obj`` (the texts or items a run was made with)."""
    return hashlib.sha256(json.dumps(obj, ensure_ascii=False).encode()).hexdigest()[:16]
