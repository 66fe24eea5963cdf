"""Every error and warning phaselens raises.

Each error is a :class:`PhaselensError`, which is a ``ValueError``: ``except phaselens.PhaselensError``
catches anything phaselens refuses, and code written against ``ValueError`` keeps working. Every
message names what was wrong (the argument, the value, the file) and how to fix it.
"""

from __future__ import annotations


class PhaselensError(ValueError):
    """Base of every phaselens error; the message says what was wrong and how to fix it."""


class ModelError(PhaselensError):
    """The model cannot be loaded or is not fit for the logit lens."""


class TaskError(PhaselensError):
    """A task, item or data file is malformed; the message names what and where."""


class CalibrationError(PhaselensError):
    """Calibration text is missing, empty or too small."""


class RunnerError(PhaselensError):
    """A forward pass cannot run as asked (a bad plan, concurrent use of one model, a bad read)."""


class NonFiniteError(RunnerError):
    """A forward pass produced NaN or Inf; the message names the block where it first appears."""


class PruningError(PhaselensError):
    """Blocks cannot be pruned or selected as asked."""


class EffectError(PhaselensError):
    """An effect, a resampling or a claim cannot be computed as asked; the message says what and how to fix it."""


class RecoveryError(PhaselensError):
    """A recovery cannot be fitted or loaded as asked."""


class ExportError(PhaselensError):
    """A view cannot be exported, or an exported folder cannot be read, as asked."""


class HealError(PhaselensError):
    """A view cannot be healed (fine-tuned) as asked: a bad method, step count, learning rate, data or run folder,
    or full fine-tuning that does not fit in memory."""


class LensError(PhaselensError):
    """A lens cannot be fitted, loaded or applied as asked."""


class CKAError(PhaselensError):
    """CKA cannot be computed as asked."""


class InterventionError(PhaselensError):
    """Noise injection or ablation cannot run as asked."""


class PhaseCutsError(PhaselensError):
    """The phase-cut experiment cannot run as asked."""


class StatsError(PhaselensError):
    """The inputs of a statistic are malformed."""


class ResultsError(PhaselensError):
    """A results folder or file cannot be read or written; the message says which and why."""


class RunFolderError(ResultsError):
    """A resumable run's folder is locked by another run, or holds a run made with other arguments."""


class StudyError(PhaselensError):
    """A study spec is invalid or a study folder cannot be used."""


class NotFoundError(PhaselensError, KeyError):
    """A result holds no entry of that name or key; the message lists what it holds. Also a ``KeyError``."""

    __str__ = PhaselensError.__str__  # the message as written, not KeyError's quoted repr


class PlotError(PhaselensError, TypeError):
    """A figure cannot be drawn from what was passed (wrong kind of result, mismatched names, nothing to draw).
    Also a ``TypeError`` (and, as every phaselens error, a ``ValueError``), which is what plotting code raised before."""


class SingularFitWarning(UserWarning):
    """The normal equations were singular; a larger ridge ``lam`` was used (the message gives it)."""


class StatsWarning(UserWarning):
    """A statistic is undefined for the given data (too few points, constant input)."""


class ReportWarning(UserWarning):
    """A result could not be drawn or tabulated; the report shows the error in its place."""


__all__ = [
    "CKAError", "CalibrationError", "HealError", "InterventionError", "LensError", "ModelError", "NonFiniteError",
    "PhaseCutsError", "PhaselensError", "PruningError", "RecoveryError", "ReportWarning", "ResultsError",
    "RunFolderError", "RunnerError", "SingularFitWarning", "StatsError", "StatsWarning", "StudyError", "TaskError",
]
