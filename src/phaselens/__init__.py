"""phaselens: the silent -> decisive transition of layer-pruned LLMs, through the logit lens.

    >>> import phaselens
    >>> t = phaselens.transition_point("smollm2-135m", "capitals")
    >>> t.layer, t.ci
    >>> t.plot().show()
"""

__version__ = "0.2.0"

from .ablation import AblationResult, ablate
from .calibration import heldout_texts, load_calibration
from .errors import (
    CalibrationError,
    CKAError,
    ExportError,
    InterventionError,
    LensError,
    ModelError,
    NonFiniteError,
    NotFoundError,
    PhaseCutsError,
    PhaselensError,
    PlotError,
    PruningError,
    RecoveryError,
    ReportWarning,
    ResultsError,
    RunFolderError,
    RunnerError,
    SingularFitWarning,
    StatsError,
    StatsWarning,
    StudyError,
    TaskError,
)
from .experiments import CollapseStudy, PhaseCuts, compare_phase_cuts, transition_vs_collapse
from .lenses import Lens, fit_lens, lens_kl, load_lens
from .embedded import EMBEDDED
from .evaluation import evaluate
from .export import ExportedView, export_view
from .loading import load_model
from .models import Model
from .noise import NoiseResult, inject_noise
from .perplexity import perplexity
from .pruning import CRITERIA, prune, select_blocks
from .pruning.iterative import Sweep, iterative_prune, load_sweep
from .recovery import METHODS, BoundaryError, Recovered, boundary_error, fit_recovery, load_recovery
from .report import build_report
from .results import Result, load_result, load_results, save_result
from .similarity import CKAResult, cka
from .study import load_study, run_study
from .cka import linear_cka
from .tasks import Item, LettersTemplate, Task, builtin_tasks, load_task
from .trace import DecisionTrace, Transition, decision_trace, transition_point
from .types import ModelLike, TaskLike
from .view import EditedView, ModelView, as_view

__all__ = [
    # models and tasks
    "EMBEDDED", "Item", "LettersTemplate", "Model", "ModelLike", "Task", "TaskLike", "builtin_tasks", "load_model",
    "load_task",
    # the decision readout
    "DecisionTrace", "Transition", "decision_trace", "transition_point",
    # lenses
    "Lens", "fit_lens", "lens_kl", "load_lens",
    # pruning and recovery
    "CRITERIA", "METHODS", "BoundaryError", "EditedView", "ModelView", "Recovered", "Sweep", "as_view",
    "boundary_error", "fit_recovery", "iterative_prune", "load_recovery", "load_sweep", "perplexity", "prune",
    "select_blocks",
    # evaluating and exporting views
    "ExportedView", "evaluate", "export_view",
    # controls and experiments
    "AblationResult", "CKAResult", "CollapseStudy", "NoiseResult", "PhaseCuts", "ablate", "cka", "compare_phase_cuts",
    "inject_noise", "linear_cka", "transition_vs_collapse",
    # results, reports, calibration text
    "Result", "build_report", "heldout_texts", "load_calibration", "load_result", "load_results", "save_result",
    # studies
    "load_study", "run_study",
    # errors and warnings
    "CKAError", "CalibrationError", "ExportError", "InterventionError", "LensError", "ModelError", "NonFiniteError", "NotFoundError", "PhaseCutsError",
    "PhaselensError", "PlotError", "PruningError", "RecoveryError", "ReportWarning", "ResultsError", "RunFolderError", "RunnerError",
    "SingularFitWarning", "StatsError", "StatsWarning", "StudyError", "TaskError",
]
