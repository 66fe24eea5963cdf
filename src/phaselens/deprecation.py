"""Deprecated names: one warning, worded the same everywhere, for one release."""

from __future__ import annotations

import warnings


def warn_renamed(old: str, new: str, where: str, *, stacklevel: int = 3) -> None:
    """A :class:`FutureWarning`: ``old`` is deprecated, use ``new`` (``where`` says where the name lives)."""
    warnings.warn(f"phaselens: `{old}` is deprecated, use `{new}` ({where}); the old name goes in the next release",
                  FutureWarning, stacklevel=stacklevel)


__all__ = ["warn_renamed"]
