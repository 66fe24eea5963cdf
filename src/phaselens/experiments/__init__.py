"""The experiments that join the two papers: the phase cuts and transition versus collapse."""

import importlib
import warnings
from typing import Any

from .collapse import CollapsePoint, CollapseStudy, collapse_point, collapse_points, collapse_study
from .phase_cuts import compare_phase_cuts, random_start
from .phase_cuts_result import CUT_KINDS, DEFAULT_METHODS, SPREAD, WHOLE_STREAM, Cut, CutResult, PhaseCuts
from .recovery_comparison import RecoveryComparison, RecoveryTask, compare_recovery
from .recovery_grid import RecoveryGrid, recovery_grid

__all__ = ["CUT_KINDS", "DEFAULT_METHODS", "SPREAD", "WHOLE_STREAM", "CollapsePoint", "CollapseStudy", "Cut",
           "CutResult", "PhaseCuts", "RecoveryComparison", "RecoveryTask", "collapse_point", "collapse_points",
           "collapse_study", "compare_phase_cuts", "compare_recovery", "random_start", "RecoveryGrid", "recovery_grid"]


def __getattr__(name: str) -> Any:
    """``phaselens.experiments.transition_vs_collapse``: deprecated, it runs a study and lives in
    :mod:`phaselens.study.collapse` (``phaselens.transition_vs_collapse``); imported by name at call time so the
    experiments floor never imports the studies floor."""
    if name == "transition_vs_collapse":
        warnings.warn("phaselens: `phaselens.experiments.transition_vs_collapse` is deprecated, use "
                      "`phaselens.transition_vs_collapse` (phaselens.study.collapse); the old name goes in the next "
                      "release", FutureWarning, stacklevel=2)
        return importlib.import_module("phaselens.study.collapse").transition_vs_collapse
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
