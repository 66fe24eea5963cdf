"""The experiments that join the two papers: the phase cuts and transition versus collapse."""

from .collapse import CollapsePoint, CollapseStudy, transition_vs_collapse
from .phase_cuts import compare_phase_cuts, random_start
from .phase_cuts_result import CUT_KINDS, DEFAULT_METHODS, WHOLE_STREAM, Cut, CutResult, PhaseCuts

__all__ = ["CUT_KINDS", "DEFAULT_METHODS", "WHOLE_STREAM", "CollapsePoint", "CollapseStudy", "Cut", "CutResult",
           "PhaseCuts", "compare_phase_cuts", "random_start", "transition_vs_collapse"]
