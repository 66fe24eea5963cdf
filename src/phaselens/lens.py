"""Deprecated (0.3): this module is now :mod:`phaselens.readout` (it sat beside the lenses/ package). Its names still work from here for one
release, each with a ``FutureWarning``; import them from ``phaselens.readout``."""

from .deprecation import module_getattr

__getattr__ = module_getattr(__name__, {name: "phaselens.readout" for name in (
    'OptionLogits', 'Transform', 'check_blocks_arg', 'check_context', 'context_length', 'option_logits', 'select_rows',
)})
