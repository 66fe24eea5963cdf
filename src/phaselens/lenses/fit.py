"""``fit_lens`` and how ``lens=`` arguments are resolved to a :class:`~phaselens.lenses.base.Lens`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import LensError
from .base import KINDS, Lens
from ..types import ModelLike
from ..runner.layered import scheduled  # schedule= / act_budget= / act_store= (issue 24)


def _check_kind(kind: Any) -> str:
    if not isinstance(kind, str) or kind not in KINDS:
        raise LensError(f"unknown lens kind {kind!r}; choose one of {KINDS} (or pass a fitted Lens, or the path of a "
                        "saved one)")
    return kind


@scheduled
def fit_lens(model: ModelLike, kind: str, calibration: Any = None, *, seed: int = 0, **kw: Any) -> Lens:
    """Fit a lens of ``kind`` on ``model``'s dense base model.

    Args:
        model: a :class:`~phaselens.Model`, a view of one (its dense base is used) or anything ``load_model`` takes.
        kind: ``"logit"`` (the identity; nothing to fit), ``"linear"`` (closed-form least squares from ``h_l`` to
            ``h_{L-1}`` with a bias, :func:`~phaselens.lenses.linear.fit_linear`: ``lam=``, ``target=``,
            ``seq_len=``) or ``"tuned"`` (Belrose et al.'s tuned lens, :func:`~phaselens.lenses.tuned.fit_tuned`:
            ``steps=``, ``lr=``, ``vocab=``, ``out=`` for a resumable run, ...).
        calibration: ``None`` (the bundled fit passages), a text file, or a list of strings.
        seed: seeds the tuned lens's training (the other kinds are deterministic).
    """
    kind = _check_kind(kind)
    from ..view import as_view

    base = as_view(model).base
    if kind == "logit":
        if kw:
            raise LensError(f"the logit lens takes no options, got {sorted(kw)}")
        from .logit import logit_lens

        return logit_lens(base)
    if kind == "linear":
        from .linear import fit_linear

        allowed = {"lam", "target", "seq_len", "batch_size", "max_tokens"}
        bad = sorted(set(kw) - allowed)
        if bad:
            raise LensError(f"fit_lens(kind='linear') does not take {bad}; it takes {sorted(allowed)}")
        return fit_linear(base, calibration, **kw)
    from .tuned import fit_tuned

    return fit_tuned(base, calibration, seed=seed, **kw)


def cache_path(base: Any, kind: str) -> Path:
    """Where ``lens=kind`` keeps the lens it fits on the bundled calibration text for ``base``."""
    from ..embedded import cache_dir

    return Path(cache_dir()) / "lenses" / f"{base.name.replace('/', '_')}-{base.fingerprint}-{kind}.safetensors"


_MEMO: dict[tuple[str, str], Lens] = {}


def check_lens_arg(lens: Any) -> None:
    """What :func:`resolve_lens` would refuse without a model: an unknown kind, a lens file that does not exist,
    something that is no lens at all. Run before a model loads."""
    if lens is None or isinstance(lens, Lens) or (isinstance(lens, str) and lens in KINDS):
        return
    if isinstance(lens, (str, os.PathLike)):
        if not Path(lens).is_file():
            raise LensError(f"unknown lens kind {str(lens)!r}, and no lens file of that name; choose one of {KINDS}, "
                            "a fitted Lens, or the path of one saved with Lens.save")
        return
    _check_kind(lens)


def resolve_lens(lens: Any, model: ModelLike) -> Lens:
    """The :class:`Lens` a ``lens=`` argument names, for ``model`` (a model or view):

    * ``None`` or ``"logit"``: the logit lens;
    * ``"linear"`` / ``"tuned"``: fitted with the defaults on the bundled calibration text the first time, kept in
      the phaselens cache folder (``PHASELENS_CACHE``; :func:`cache_path`) and loaded from there afterwards;
    * a path to a lens saved with :meth:`Lens.save`;
    * a :class:`Lens`: checked to be fitted on this model.
    """
    from ..view import as_view

    base = as_view(model).base
    if lens is None:
        lens = "logit"
    if isinstance(lens, Lens):
        lens.check_model(base)
        return lens
    if isinstance(lens, (str, os.PathLike)) and not (isinstance(lens, str) and lens in KINDS):
        p = Path(lens)
        if p.suffix == ".safetensors" or p.is_file():
            from .io import load_lens

            return load_lens(p, base)
    kind = _check_kind(lens)
    if kind == "logit":
        from .logit import logit_lens

        return logit_lens(base)
    key = (base.fingerprint, kind)
    if key in _MEMO:
        return _MEMO[key]
    from .io import load_lens, save_lens

    path = cache_path(base, kind)
    if path.is_file():
        try:
            _MEMO[key] = load_lens(path, base)
            return _MEMO[key]
        except LensError:
            pass  # a stale or damaged cache file: refit
    fitted = fit_lens(base, kind)
    try:
        save_lens(fitted, path)
    except OSError:
        pass  # a read-only cache: the lens is still used
    _MEMO[key] = fitted
    return fitted
