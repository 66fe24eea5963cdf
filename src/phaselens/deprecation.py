"""Deprecated names: one warning, worded the same everywhere."""

from __future__ import annotations

import warnings


def warn_renamed(old: str, new: str, where: str) -> None:
    """Warn (``FutureWarning``) that ``old`` was renamed ``new`` in ``where``; the old name goes next release."""
    warnings.warn(f"phaselens: `{old}` is deprecated, use `{new}` ({where}); the old name goes in the next release",
                  FutureWarning, stacklevel=3)


__all__ = ["warn_renamed"]
