"""The logit lens: the identity translator at every block (``T_l = id``), nostalgebraist's readout."""

from __future__ import annotations

from typing import Any

import torch

from ..errors import LensError
from .base import Lens, LensKind, register_lens


def logit_lens(base: Any) -> Lens:
    """The identity lens of ``base`` (a :class:`~phaselens.Model`): no translators."""
    return Lens("logit", base.name, base.fingerprint, base.n_blocks, base.d_model, info={"fitted": "nothing to fit"})


@register_lens("logit")
class LogitKind(LensKind):
    """``T_l = id``: nothing to fit, nothing to save (the default lens)."""

    cache = False

    def fit(self, model: Any, calibration: Any = None, *, seed: int = 0, **opts: Any) -> Lens:
        if opts:
            raise LensError(f"the logit lens takes no options, got {sorted(opts)}")
        return logit_lens(model)

    def transform(self, lens: Lens, block: int, h: torch.Tensor) -> torch.Tensor:
        return h
