"""Reading the safetensors files phaselens writes (recoveries, lenses), with errors that say what a file is.

``read_tensor_file(path, what, writer, required, error)`` returns ``(metadata, tensors)`` or raises ``error``:
the file is missing, it is not a safetensors file (saying whether it looks like a pickle, text or other binary
data; nothing in it is executed), or its metadata lacks a key ``writer`` always writes.
"""

from __future__ import annotations

from pathlib import Path

import torch


def _looks_like(head: bytes) -> str:
    if head[:1] == b"\x80":
        return "a pickle"
    return "text" if head and all(32 <= c < 127 or c in (9, 10, 13) for c in head) else "binary data"


def read_tensor_file(path: str | Path, what: str, writer: str, required: tuple[str, ...],
                     error: type[Exception]) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """``(metadata, {name: tensor})`` of the phaselens ``what`` file at ``path`` written by ``writer``."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise error(f"{what} file not found: {path}" + (" (it is a folder)" if path.is_dir() else ""))
    head = path.read_bytes()[:16]
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise error(f"{path} is not a {what} file: it looks like {_looks_like(head)}, and a {what} is a safetensors "
                    f"file written by {writer} ({type(e).__name__}: {e}); nothing was executed") from e
    missing = [k for k in required if k not in meta]
    if missing:
        raise error(f"{path} is a safetensors file but not a phaselens {what}: its metadata lacks {missing}; save it "
                    f"with {writer}")
    return meta, tensors
