"""Lenses beside the logit lens: how a block's residual is read through the final norm and unembedding.

* :mod:`~phaselens.lenses.logit`: the identity (nostalgebraist's logit lens);
* :mod:`~phaselens.lenses.linear`: closed-form least squares to the last block's output (the recovery solver);
* :mod:`~phaselens.lenses.tuned`: Belrose et al.'s tuned lens (trained affine translators);
* :mod:`~phaselens.lenses.kl`: :func:`lens_kl`, the faithfulness of a lens on held-out text;
* :mod:`~phaselens.lenses.io`: saving and loading (safetensors, checked against the model's fingerprint).
"""

from .base import KINDS, Lens
from .fit import fit_lens, resolve_lens
from .io import load_lens
from .kl import lens_kl
from .logit import logit_lens

__all__ = ["KINDS", "Lens", "fit_lens", "lens_kl", "load_lens", "logit_lens", "resolve_lens"]
