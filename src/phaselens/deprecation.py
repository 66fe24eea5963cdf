"""Deprecated names: one warning text for every renamed keyword, spec key or attribute."""

from __future__ import annotations

import warnings


def warn_renamed(old: str, new: str, where: str, *, stacklevel: int = 3) -> None:
    """A :class:`FutureWarning` that ``old`` was renamed ``new`` (in ``where``); the old name goes next release."""
    warnings.warn(f"phaselens: `{old}` is deprecated, use `{new}` ({where}); the old name goes in the next release",
                  FutureWarning, stacklevel=stacklevel)


__all__ = ["warn_renamed"]
