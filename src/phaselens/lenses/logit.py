"""The logit lens: the identity translator at every block (``T_l = id``), nostalgebraist's readout."""

from __future__ import annotations

from typing import Any

from .base import Lens


def logit_lens(base: Any) -> Lens:
    """The identity lens of ``base`` (a :class:`~phaselens.Model`): no translators."""
    return Lens("logit", base.name, base.fingerprint, base.n_blocks, base.d_model, info={"fitted": "nothing to fit"})
