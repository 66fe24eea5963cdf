"""phaselens: the silent -> decisive transition of layer-pruned LLMs, through the logit lens.

    >>> import phaselens
    >>> t = phaselens.transition_point("smollm2-135m", "capitals")
    >>> t.layer, t.ci
    >>> t.plot().show()
"""

from .version import __version__

from .ablation import AblationResult, ablate
from .calibration import heldout_texts, load_calibration
from .deprecation import module_getattr
from .errors import PhaselensError
from .evaluation import evaluate
from .experiments import (CollapseStudy, PhaseCuts, RecoveryComparison, compare_phase_cuts, compare_recovery,
                          RecoveryGrid, recovery_grid)
from .export import ExportedView, export_view
from .healing import Healing, heal
from .lenses import Lens, LensHeatmap, LensKind, fit_lens, lens_heatmap, lens_kl, load_lens, register_lens
from .loading import load_model
from .models import Model
from .noise import NoiseResult, inject_noise
from .perplexity import passage_nll, perplexity
from .pruning import Criterion, prune, register_criterion, select_blocks
from .pruning.iterative import Sweep, iterative_prune, load_sweep
from .recovery import BoundaryErrorResult, Recovered, boundary_error, fit_recovery, load_recovery, register_method
from .report import build_report
from .results import Result, load_result, load_results, save_result
from .similarity import CKAResult, cka
from .cka_contrast import CKAContrast, cka_contrast
from .registry import load_plugins, registered
from .study import RunKind, load_study, register_run, run_study
from .study.collapse import transition_vs_collapse
from .cka import linear_cka
from .verdicts import Claim, Claims, claims, write_claims_csv
from .effects import Effect, correlation_effect, hierarchical_effect, paired_effect, permutation_effect
from .effects import within_correlation_effect
from .noise import noise_role_effect
from .tasks import Item, LettersTemplate, Task, builtin_tasks, load_task
from .trace import DecisionTrace, Transition, decision_trace, transition_point
from .view import EditedView, ModelView, as_view

__all__ = [
    # models and tasks
    "Item", "LettersTemplate", "Model", "Task", "builtin_tasks", "load_model", "load_task",
    # the decision readout
    "DecisionTrace", "Transition", "decision_trace", "transition_point",
    # lenses
    "Lens", "LensHeatmap", "LensKind", "fit_lens", "lens_heatmap", "lens_kl", "load_lens", "register_lens",
    # pruning and recovery
    "BoundaryErrorResult", "Criterion", "EditedView", "ModelView", "Recovered", "Sweep", "as_view", "boundary_error",
    "fit_recovery", "iterative_prune", "load_recovery", "load_sweep", "passage_nll", "perplexity", "prune", "register_criterion",
    "register_method", "select_blocks",
    # evaluating, exporting and healing views
    "ExportedView", "Healing", "evaluate", "export_view", "heal",
    # controls and experiments
    "AblationResult", "CKAContrast", "CKAResult", "CollapseStudy", "NoiseResult", "PhaseCuts", "RecoveryComparison", "ablate", "cka",
    "cka_contrast", "compare_phase_cuts", "compare_recovery", "inject_noise", "linear_cka", "recovery_grid",
    "RecoveryGrid", "transition_vs_collapse",
    # results, reports, calibration text
    "Result", "build_report", "heldout_texts", "load_calibration", "load_result", "load_results", "save_result",
    # effects and claims (issue 21)
    "Claim", "Claims", "Effect", "claims", "correlation_effect", "hierarchical_effect", "paired_effect",
    "permutation_effect", "write_claims_csv",
    "noise_role_effect", "within_correlation_effect",
    # studies
    "RunKind", "load_study", "register_run", "run_study",
    # extending phaselens: registries and plugins
    "load_plugins", "registered",
    # the base of every error (the others: phaselens.errors)
    "PhaselensError",
]

#: names that left the top level: they still work for one release, with a FutureWarning naming the new place
MOVED = {
    **{name: "phaselens.errors" for name in (
        "CKAError", "CalibrationError", "InterventionError", "LensError", "ModelError", "NonFiniteError",
        "NotFoundError", "PhaseCutsError", "PlotError", "PruningError", "RecoveryError", "ReportWarning",
        "ResultsError", "RunFolderError", "RunnerError", "SingularFitWarning", "StatsError", "StatsWarning",
        "StudyError", "TaskError")},
    "CRITERIA": "phaselens.pruning",
    "METHODS": "phaselens.recovery",
    "EMBEDDED": "phaselens.embedded",
    "BoundaryError": "phaselens.recovery.boundary:BoundaryErrorResult",
    "ModelLike": "phaselens.types",
    "TaskLike": "phaselens.types",
}

__getattr__ = module_getattr(__name__, MOVED)
