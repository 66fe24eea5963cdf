"""Saving and loading a :class:`~phaselens.lenses.base.Lens` (safetensors, with the model's fingerprint).

A lens file holds its kind's tensors (:meth:`~phaselens.lenses.LensKind.to_tensors`; the built-in kinds:
``W.<block>``, ``b.<block>``) and the metadata ``kind, model, fingerprint, n_blocks, d_model, info`` (JSON).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import LensError
from ..registry import PLUGINS_ENV
from ..tensorfile import meta_json, read_tensor_file
from ..types import ModelLike
from ..view import as_view
from .base import LENS_KINDS, Lens

_META = ("phaselens_lens", "kind", "model", "fingerprint", "n_blocks", "d_model", "info")


def save_lens(lens: Lens, path: str | Path) -> Path:
    """Write ``lens`` to ``path`` (:meth:`Lens.save`)."""
    return lens.save(path)


def read_lens(path: str | Path) -> Lens:
    """The lens saved at ``path``, without checking which model it is used with (see :func:`load_lens`)."""
    path = Path(path)
    meta, tensors = read_tensor_file(path, "lens", "Lens.save", _META, LensError)
    kind = meta["kind"]
    if kind not in LENS_KINDS:
        raise LensError(f"{path} holds a lens of kind {kind!r}, which is not registered (registered: "
                        f"{LENS_KINDS.names()}); import the plugin that registers it (@phaselens.register_lens("
                        f"{kind!r})) before loading, or name its module or .py file in ${PLUGINS_ENV} (or the "
                        "phaselens.plugins entry-point group) so every phaselens process loads it")
    try:
        n_blocks, d = int(meta["n_blocks"]), int(meta["d_model"])
    except ValueError as e:
        raise LensError(f"{path}: its metadata is malformed ({e}); refit and save the lens again") from e
    info = meta_json(path, meta, "info", dict, "lens", LensError)
    odd = sorted(k for k, t in tensors.items() if not t.is_floating_point())
    if odd:
        raise LensError(f"{path}: its tensors {odd[:5]} hold {tensors[odd[0]].dtype} values, not floating-point "
                        "translators; the lens file was altered or not written by phaselens")
    try:
        params = LENS_KINDS.get(kind).from_tensors(tensors, info)
        return Lens(kind, meta["model"], meta["fingerprint"], n_blocks, d, info=info, params=params)
    except LensError as e:
        raise LensError(f"{path}: {e}; refit and save the lens again") from e


def load_lens(path: str | Path, model: ModelLike) -> Lens:
    """The lens saved at ``path`` (by :meth:`Lens.save`), for ``model``; a lens fitted on another model (another
    fingerprint, block count or hidden size) is refused with a :class:`~phaselens.errors.LensError`."""
    base = as_view(model).base
    lens = read_lens(path)
    try:
        lens.check_model(base)
    except LensError as e:
        raise LensError(f"{path}: {e}") from e
    return lens
