"""The run kinds of a study (``trace``, ``sweep``, ``phase-cuts``, ``noise``, ``ablate``, ``cka``): the public function
each job calls, the parameters the study sets itself, and how the other parameters are checked."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable


def _fn(module: str, name: str) -> Callable[[], Callable]:
    def get() -> Callable:
        import importlib

        return getattr(importlib.import_module(f"phaselens.{module}"), name)

    return get


@dataclass(frozen=True)
class RunKind:
    """One kind of run: the function it calls and how its parameters are read.

    Attributes:
        fn: returns the public function the job calls (its signature validates pass-through keys).
        fixed: the function's parameters the study sets itself (model, task, seeds, folders, progress).
        listy: parameters whose value is a list (a list of lists is a grid over them).
        study: parameters the study translates, ``{name: (check, default)}``.
        choices: allowed values of enumerated parameters.
        required: parameters without a default.
    """

    name: str
    fn: Callable[[], Callable]
    fixed: tuple[str, ...]
    listy: tuple[str, ...] = ()
    study: dict[str, Any] = field(default_factory=dict)
    choices: dict[str, tuple] = field(default_factory=dict)
    required: tuple[str, ...] = ()

    def allowed(self) -> list[str]:
        sig = inspect.signature(self.fn())
        passed = [p for p, v in sig.parameters.items() if p not in self.fixed and v.kind is not v.VAR_KEYWORD]
        return sorted(set(passed) | set(self.study))


def _int(lo: int = 0) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= lo


def _ratio(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < 1


def _choices() -> dict[str, tuple]:
    from ..ablation import ABLATION_MODES
    from ..cka import FORMS
    from ..pruning.iterative import SWEEP_CRITERIA
    from ..recovery.solvers import METHODS
    from ..similarity import POSITIONS

    return {"criterion": SWEEP_CRITERIA, "recovery": (None, *METHODS), "methods": METHODS, "mode": ABLATION_MODES,
            "positions": (None, *POSITIONS), "form": FORMS, "placement": ("adjacent", "far", "center"),
            "until": ("steps", "collapse"), "on": ("task", "heldout"), "cka_criterion": ("bi", "angular", "random", "sleb"),
            "schedule": ("auto", "batch", "layer")}


_PASSAGES = {"calibration_passages": (_int(1), None), "heldout_passages": (_int(1), None)}
RUNS: dict[str, RunKind] = {
    "trace": RunKind("trace", _fn("trace", "decision_trace"),
                     fixed=("model", "task", "seed", "progress", "cache", "device"), listy=("blocks",)),
    "sweep": RunKind("sweep", _fn("pruning.iterative", "iterative_prune"),
                     fixed=("model", "task", "out", "seed", "progress"), listy=("calibration", "perplexity_texts"),
                     study={**_PASSAGES, "max_ratio": (_ratio, None), "until": (lambda v: True, "steps"),
                            "chunk": (_int(1), 4)}),
    "phase-cuts": RunKind("phase-cuts", _fn("experiments.phase_cuts", "compare_phase_cuts"),
                          fixed=("model", "task", "out", "seed", "progress"),
                          listy=("methods", "seeds", "calibration", "perplexity_texts"), study={**_PASSAGES, "fit_n": (lambda v: isinstance(v, bool), False)},
                          required=("n",)),
    "noise": RunKind("noise", _fn("noise", "inject_noise"), fixed=("model", "task", "boot_seed", "progress", "transition"),
                     listy=("blocks", "seeds", "eps"), study={"stride": (_int(1), None)}),
    "ablate": RunKind("ablate", _fn("ablation", "ablate"), fixed=("model", "task", "boot_seed", "progress", "transition"),
                      listy=("blocks", "pairs")),
    "cka": RunKind("cka", _fn("similarity", "cka"), fixed=("model_a", "model_b", "task_or_texts", "seed", "progress"),
                   study={**_PASSAGES, "prune": (lambda v: _ratio(v) or _int(1)(v), 0.5),
                          "criterion": (lambda v: True, "bi"), "on": (lambda v: True, "task")}),
}
