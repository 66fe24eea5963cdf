"""Studies: many runs, one command, on one laptop or a Ray cluster.

    >>> import phaselens as pl
    >>> pl.run_study("study.toml", out="runs/fig8")            # or executor="ray", address="auto"
    >>> pl.load_study("runs/fig8")                             # one row per job

The spec (:mod:`.spec`) lists models, tasks, seeds and runs, where a list means a grid; each job is named by
a content hash of its configuration, the model fingerprint, the task's items and the phaselens version, so
a finished job is never recomputed and a failed one is retried on the next run. The folder (:mod:`.store`)
holds each job's result in the results format and one Parquet index; the executors (:mod:`.executors`) run
the jobs in this process, in a pool of processes, or on Ray actors that keep their models loaded.
"""

from .executors import EXECUTORS
from .run import job_id, run_study, task_digest
from .runs import RUNS, RunKind, register_run
from . import recovery_run  # noqa: F401  (registers the "recovery" run kind)
from .spec import StudySpec, parse_spec
from .store import load_plan, load_study

__all__ = ["EXECUTORS", "RUNS", "RunKind", "StudySpec", "job_id", "load_plan", "load_study", "parse_spec",
           "register_run", "run_study", "task_digest"]
