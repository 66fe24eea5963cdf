"""Lenses beside the logit lens: how a block's residual is read through the final norm and unembedding.

* :mod:`~phaselens.lenses.base`: :class:`Lens`, :class:`LensKind` and the registry :data:`LENS_KINDS`
  (:func:`register_lens`: a lens kind of your own);
* :mod:`~phaselens.lenses.logit`: the identity (nostalgebraist's logit lens);
* :mod:`~phaselens.lenses.linear`: closed-form least squares to the last block's output (the recovery solver);
* :mod:`~phaselens.lenses.tuned`: Belrose et al.'s tuned lens (trained affine translators);
* :mod:`~phaselens.lenses.kl`: :func:`lens_kl`, the faithfulness of a lens on held-out text;
* :mod:`~phaselens.lenses.heatmap`: :func:`lens_heatmap`, the logit-lens picture of one prompt (top token per
  position and block);
* :mod:`~phaselens.lenses.io`: saving and loading (safetensors, checked against the model's fingerprint).
"""

from typing import Any

from . import base
from .base import LENS_KINDS, AffineLensKind, Lens, LensKind, lens_kind, register_lens
from .logit import LogitKind, logit_lens  # the built-in kinds register themselves in this order
from .linear import LinearKind
from .tuned import TunedKind
from .io import load_lens, read_lens, save_lens
from .fit import check_lens_arg, fit_lens, resolve_lens
from .kl import lens_kl
from .heatmap import LensHeatmap, lens_heatmap


def __getattr__(name: str) -> Any:
    if name == "KINDS":  # deprecated alias of LENS_KINDS.names() (warns)
        return base.KINDS
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["LENS_KINDS", "AffineLensKind", "Lens", "LensHeatmap", "LensKind", "LinearKind", "LogitKind", "TunedKind",
           "check_lens_arg", "fit_lens", "lens_heatmap", "lens_kind", "lens_kl", "load_lens", "logit_lens", "read_lens",
           "register_lens", "resolve_lens", "save_lens"]
