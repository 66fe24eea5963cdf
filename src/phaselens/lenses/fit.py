"""``fit_lens`` and how ``lens=`` arguments are resolved to a :class:`~phaselens.lenses.base.Lens`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .. import checks
from ..embedded import cache_dir
from ..errors import LensError
from ..runner.layered import scheduled  # schedule= / act_budget= / act_store= (issue 24)
from ..types import ModelLike
from ..view import as_view
from .base import LENS_KINDS, Lens, lens_kind
from .io import load_lens


@scheduled
def fit_lens(model: ModelLike, kind: str, calibration: Any = None, *, seed: int = 0, **kw: Any) -> Lens:
    """Fit a lens of ``kind`` (a registered :class:`~phaselens.lenses.LensKind`) on ``model``'s dense base model.

    Args:
        model: a :class:`~phaselens.Model`, a view of one (its dense base is used) or anything ``load_model`` takes.
        kind: ``"logit"`` (the identity; nothing to fit), ``"linear"`` (closed-form least squares from ``h_l`` to
            ``h_{L-1}`` with a bias, :func:`~phaselens.lenses.linear.fit_linear`: ``lam=``, ``target=``,
            ``seq_len=``), ``"tuned"`` (Belrose et al.'s tuned lens, :func:`~phaselens.lenses.tuned.fit_tuned`:
            ``steps=``, ``lr=``, ``vocab=``, ``out=`` for a resumable run, ...) or a kind registered with
            :func:`phaselens.register_lens` (``**kw`` go to its ``fit``).
        calibration: ``None`` (the bundled fit passages), a text file, or a list of strings.
        seed: seeds a trained kind (the tuned lens); the closed-form kinds are deterministic.
    """
    lk = lens_kind(kind)
    checks.integer("seed", seed, error=LensError)
    base = as_view(model).base
    lens = lk.fit(base, calibration, seed=seed, **kw)
    if not isinstance(lens, Lens) or lens.kind != kind:
        raise LensError(f"the lens kind {kind!r}'s fit() returned {lens!r}, not a Lens of kind {kind!r}; fix the "
                        f"plugin that registered it ({type(lk).__module__})")
    lens.check_model(base)
    return lens


def cache_path(base: Any, kind: str) -> Path:
    """Where ``lens=kind`` keeps the lens it fits on the bundled calibration text for ``base``."""
    return Path(cache_dir()) / "lenses" / f"{base.name.replace('/', '_')}-{base.fingerprint}-{kind}.safetensors"


_MEMO: dict[tuple[str, str], Lens] = {}


def _is_kind(lens: Any) -> bool:
    return isinstance(lens, str) and lens in LENS_KINDS


def check_lens_arg(lens: Any) -> None:
    """What :func:`resolve_lens` would refuse without a model: an unknown kind, a lens file that does not exist,
    something that is no lens at all. Run before a model loads."""
    if lens is None or isinstance(lens, Lens) or _is_kind(lens):
        return
    if isinstance(lens, (str, os.PathLike)):
        if not Path(lens).is_file():
            raise LensError(f"unknown lens kind {str(lens)!r}, and no lens file of that name; choose one of "
                            f"{LENS_KINDS.names()}, a fitted Lens, or the path of one saved with Lens.save (register "
                            "your own kind with phaselens.register_lens)")
        return
    lens_kind(lens)


def resolve_lens(lens: Any, model: ModelLike) -> Lens:
    """The :class:`Lens` a ``lens=`` argument names, for ``model`` (a model or view):

    * ``None`` or ``"logit"``: the logit lens;
    * another kind name (``"linear"``, ``"tuned"``, a registered kind): fitted with the defaults on the bundled
      calibration text the first time, kept in the phaselens cache folder (``PHASELENS_CACHE``; :func:`cache_path`)
      and loaded from there afterwards;
    * a path to a lens saved with :meth:`Lens.save`;
    * a :class:`Lens`: checked to be fitted on this model.
    """
    base = as_view(model).base
    if lens is None:
        lens = "logit"
    if isinstance(lens, Lens):
        lens.check_model(base)
        return lens
    if isinstance(lens, (str, os.PathLike)) and not _is_kind(lens):
        p = Path(lens)
        if p.suffix == ".safetensors" or p.is_file():
            return load_lens(p, base)
    kind = lens_kind(lens).name
    if not LENS_KINDS.get(kind).cache:
        return fit_lens(base, kind)
    key = (base.fingerprint, kind)
    if key not in _MEMO:
        _MEMO[key] = _cached_fit(base, kind)
    return _MEMO[key]


def _cached_fit(base: Any, kind: str) -> Lens:
    """``kind`` fitted with its defaults on ``base``, from the cache folder when it is there (and written there)."""
    path = cache_path(base, kind)
    if path.is_file():
        try:
            return load_lens(path, base)
        except LensError:
            pass  # a stale or damaged cache file: refit
    fitted = fit_lens(base, kind)
    try:
        fitted.save(path)
    except OSError:
        pass  # a read-only cache: the lens is still used
    return fitted
