"""The parts of a report page (:mod:`phaselens.report` lays them out; :mod:`phaselens.study.report` adds a study's).
Floor 0: imports nothing of phaselens."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Section:
    """One part of the page: a heading, a note, figures ``[(caption, figure)]`` and tables ``[(caption, DataFrame)]``."""

    title: str
    anchor: str
    note: str = ""
    figures: list[tuple[str, Any]] = field(default_factory=list)
    tables: list[tuple[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
