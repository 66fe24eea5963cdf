"""Reading the safetensors files phaselens writes (recoveries, lenses), with errors that say what a file is.

``read_tensor_file(path, what, writer, required, error)`` returns ``(metadata, tensors)`` or raises ``error``:
the file is missing, not a regular file (a FIFO, a device, a folder: refused before it is read), larger than
:data:`phaselens.files.MAX_TENSOR_FILE_BYTES`, not a safetensors file (saying whether it looks like a pickle,
text or other binary data; nothing in it is executed), its header declares more bytes than the file holds or
than :data:`phaselens.files.MAX_HEADER_BYTES`, or its metadata lacks a key ``writer`` always writes.
:func:`meta_json` parses a JSON metadata value (bounded nesting) and checks its type.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from . import files
from .files import check_safetensors, looks_like, parse_json

_looks_like = looks_like  # the old name


def read_tensor_file(path: str | Path, what: str, writer: str, required: tuple[str, ...],
                     error: type[Exception]) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """``(metadata, {name: tensor})`` of the phaselens ``what`` file at ``path`` written by ``writer``."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.exists():
        raise error(f"{what} file not found: {path}")
    if path.is_dir():
        raise error(f"{what} file not found: {path} (it is a folder)")
    head, n = check_safetensors(path, what, error)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise error(f"{path} is not a {what} file: it looks like {looks_like(head)}, and a {what} is a safetensors "
                    f"file written by {writer} ({type(e).__name__}: {e}); nothing was executed") from e
    if n > files.MAX_HEADER_BYTES:
        raise error(f"{path} is not a {what} file: its safetensors header is {n:,} bytes, more than the "
                    f"{files.MAX_HEADER_BYTES:,} phaselens reads (a {what} written by {writer} has a small header)")
    missing = [k for k in required if k not in meta]
    if missing:
        raise error(f"{path} is a safetensors file but not a phaselens {what}: its metadata lacks {missing}; save it "
                    f"with {writer}")
    return meta, tensors


def meta_json(path: Path, meta: dict[str, str], key: str, kind: type | tuple[type, ...], what: str,
              error: type[Exception]) -> Any:
    """The JSON metadata value ``meta[key]`` of the ``what`` file ``path``, which must be a ``kind`` (``list``,
    ``dict``, ...); ``error`` naming the file, the key and what it holds otherwise."""
    value = parse_json(meta[key], f"{path}: its metadata {key!r}", error)
    if not isinstance(value, kind):
        names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise error(f"{path}: its metadata {key!r} holds a {type(value).__name__} ({meta[key][:80]!r}), not a "
                    f"{names}; the {what} file was not written by phaselens or was altered")
    return value
