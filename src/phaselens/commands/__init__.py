"""Sub-commands of the ``phaselens`` CLI, one module per subject.

Each module registers its commands on :data:`phaselens.cli.app` when imported; the CLI
imports every module of this package (:func:`register_all`).
"""

from __future__ import annotations

import importlib
import pkgutil


def register_all() -> None:
    """Import every module of this package (each registers its commands)."""
    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{info.name}")
