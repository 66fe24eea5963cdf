"""A selection criterion registered outside phaselens (loaded by tests/test_registry.py as a plugin).

``"last-k"``: the ``n`` surviving blocks just before the final one. Only :meth:`scores` is written: a block's
score is its distance from the block before the final one (that block scores 0), and the final block scores
highest, so the default ``select`` cuts ``kept[-n-1:-1]`` and a sweep cuts the block before the final each step.
"""

import phaselens as pl
from phaselens.pruning import Criterion


@pl.register_criterion("last-k")
class LastK(Criterion):
    uses_calibration = False

    def scores(self, view, *, calibration=None, seed=0, step=0, cache=None):
        kept = view.kept
        return {b: float(len(kept)) if b == kept[-1] else float(len(kept) - 2 - i) for i, b in enumerate(kept)}
