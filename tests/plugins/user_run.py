"""A study run kind registered outside phaselens (loaded by tests/test_registry.py as a plugin).

``"final-accuracy"``: the decision trace of the model on the task, with its own index numbers.
"""

import phaselens as pl
from phaselens.study import RunKind


@pl.register_run("final-accuracy")
class FinalAccuracy(RunKind):
    fixed = ("model", "task", "seed", "boot_seed", "progress", "cache", "device", "blocks", "lens")

    def fn(self):
        return pl.decision_trace  # its other keywords (n_boot, max_tokens, ...) are valid run parameters

    def run(self, model, task, seed, params, scratch):
        return pl.decision_trace(model, task, **params)

    def scalars(self, r):
        return {"final_accuracy": float(r.accuracy[-1]), "n_correct_final": int(round(r.accuracy[-1] * r.n_items)),
                "n_items": int(r.n_items)}
