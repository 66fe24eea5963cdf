"""phaselens: the silent -> decisive transition of layer-pruned LLMs, through the logit lens.

    >>> import phaselens
    >>> t = phaselens.transition_point("smollm2-135m", "capitals")
    >>> t.layer, t.ci
    >>> t.plot().show()
"""

from .calibration import CalibrationError, heldout_texts, load_calibration
from .interventions import AblationResult, EditedView, NoiseResult, ablate, inject_noise
from .lens import OptionLogits, option_logits
from .models import EMBEDDED, Model, ModelError, load_model
from .perplexity import perplexity
from .phase_cuts import PhaseCuts, compare_phase_cuts
from .pruning import CRITERIA, prune, select_blocks
from .pruning.iterative import Sweep, SweepStep, iterative_prune, load_sweep
from .recovery import (
    METHODS,
    BoundaryError,
    Recovered,
    RecoveryError,
    SingularFitWarning,
    boundary_error,
    fit_recoveries,
    fit_recovery,
    load_recovery,
)
from .similarity import CKAResult, cka, linear_cka
from .results import ResultEntry, ResultsError, load_results, read_results, save_result, save_results
from .report import build_report
from .stats import CollapseStudy, transition_vs_collapse
from .tasks import Item, LettersTemplate, Task, TaskError, builtin_tasks, load_task
from .trace import DecisionTrace, Transition, decision_trace, transition_from_trace, transition_point
from .view import ModelView, as_view

__version__ = "0.1.0"

__all__ = [
    "ResultEntry",
    "ResultsError",
    "build_report",
    "load_results",
    "read_results",
    "save_result",
    "save_results",
    "AblationResult",
    "CollapseStudy",
    "EditedView",
    "NoiseResult",
    "ablate",
    "inject_noise",
    "transition_vs_collapse",
    "CRITERIA",
    "EMBEDDED",
    "METHODS",
    "BoundaryError",
    "CKAResult",
    "CalibrationError",
    "DecisionTrace",
    "Item",
    "LettersTemplate",
    "Model",
    "ModelError",
    "ModelView",
    "OptionLogits",
    "PhaseCuts",
    "Recovered",
    "RecoveryError",
    "SingularFitWarning",
    "Sweep",
    "SweepStep",
    "Task",
    "TaskError",
    "Transition",
    "as_view",
    "boundary_error",
    "builtin_tasks",
    "cka",
    "compare_phase_cuts",
    "decision_trace",
    "fit_recoveries",
    "fit_recovery",
    "heldout_texts",
    "iterative_prune",
    "linear_cka",
    "load_calibration",
    "load_model",
    "load_recovery",
    "load_sweep",
    "load_task",
    "option_logits",
    "perplexity",
    "prune",
    "select_blocks",
    "transition_from_trace",
    "transition_point",
]
