"""Deprecated (0.3): this module is now :mod:`phaselens.final_readout` (it held no probes). Its names still work from here for one
release, each with a ``FutureWarning``; import them from ``phaselens.final_readout``."""

from .deprecation import module_getattr

__getattr__ = module_getattr(__name__, {name: "phaselens.final_readout" for name in (
    'FinalRunner', 'boot_ci', 'check_blocks', 'check_run', 'dense_transition', 'final_correct', 'final_margins', 'phase_of', 'resolve',
)})
