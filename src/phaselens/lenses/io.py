"""Saving and loading a :class:`~phaselens.lenses.base.Lens` (safetensors, with the model's fingerprint)."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import LensError
from ..files import write_safetensors
from .base import KINDS, Lens
from ..types import ModelLike
from ..version import __version__

_META = ("phaselens_lens", "kind", "model", "fingerprint", "n_blocks", "d_model", "info")


def save_lens(lens: Lens, path: str | Path) -> Path:
    """Write ``lens`` to ``path``: tensors ``W.<block>``, ``b.<block>``; metadata kind, model, fingerprint, info."""
    path = Path(path)
    if path.parent.exists() and not path.parent.is_dir():
        raise LensError(f"cannot save the lens under {path.parent}: it is a file, not a folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {f"W.{b}": w.detach().float().cpu().contiguous() for b, w in lens.weights.items()}
    tensors.update({f"b.{b}": v.detach().float().cpu().contiguous() for b, v in lens.biases.items()})
    meta = {"phaselens_lens": __version__, "kind": lens.kind, "model": lens.model, "fingerprint": lens.fingerprint,
            "n_blocks": str(lens.n_blocks), "d_model": str(lens.d_model), "info": json.dumps(lens.info, default=str)}
    write_safetensors(path, tensors, meta)
    return path


def read_lens(path: str | Path) -> Lens:
    """The lens saved at ``path``, without checking which model it is used with (see :func:`load_lens`)."""
    from ..tensorfile import read_tensor_file

    path = Path(path)
    meta, tensors = read_tensor_file(path, "lens", "Lens.save", _META, LensError)
    if meta["kind"] not in KINDS:
        raise LensError(f"{path} holds a lens of unknown kind {meta['kind']!r} (known: {KINDS})")
    try:
        W = {int(k[2:]): v for k, v in tensors.items() if k.startswith("W.")}
        B = {int(k[2:]): v for k, v in tensors.items() if k.startswith("b.")}
        n_blocks, d = int(meta["n_blocks"]), int(meta["d_model"])
        info = json.loads(meta["info"])
    except (ValueError, json.JSONDecodeError) as e:
        raise LensError(f"{path}: its metadata or tensor names are malformed ({e}); refit and save the lens again") from e
    return Lens(meta["kind"], meta["model"], meta["fingerprint"], n_blocks, d, W, B, info)


def load_lens(path: str | Path, model: ModelLike) -> Lens:
    """The lens saved at ``path`` (by :meth:`Lens.save`), for ``model``; a lens fitted on another model (another
    fingerprint) is refused with a :class:`~phaselens.errors.LensError`."""
    from ..view import as_view

    base = as_view(model).base
    lens = read_lens(path)
    try:
        lens.check_model(base)
    except LensError as e:
        raise LensError(f"{path}: {e}") from e
    return lens
