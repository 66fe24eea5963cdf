"""phaselens' progress messages: the ``"phaselens"`` logger (INFO to stderr as ``phaselens: ...``).

Long steps (dequantizing a model on its first load, rebuilding or checking a cache) say what they do here, not as
warnings: warnings are kept for real problems. Silence them with
``logging.getLogger("phaselens").setLevel(logging.WARNING)``; route them elsewhere by replacing the handler.
Floor 0: imports nothing of phaselens.
"""

from __future__ import annotations

import logging
import sys

__all__ = ["logger"]


class _Stderr(logging.StreamHandler):
    """Writes to the ``sys.stderr`` of the moment (so a redirected or captured stderr gets the lines)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


logger = logging.getLogger("phaselens")
if not logger.handlers:
    _h = _Stderr()
    _h.setFormatter(logging.Formatter("phaselens: %(message)s"))
    logger.addHandler(_h)
    logger.setLevel(logging.INFO)
    logger.propagate = False
