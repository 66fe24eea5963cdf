"""The study folder: each job's result in the results format, and ONE index table.

::

    DIR/index.parquet                   one row per job (read it with phaselens.load_study(DIR))
    DIR/<kind>_<model>_<task>_s<seed>_<job>.json (+ .safetensors)   each finished job's Result
    DIR/.phaselens/study/               the driver's state (a RunFolder): lock, spec.json, plan.json,
                                        row_<job>.json (one per finished or failed job, checksummed)
    DIR/.phaselens/study/scratch/<job>/ resumable state of the jobs that have one (sweeps, phase cuts),
                                        when the worker runs on the driver's machine

Only the driver writes the results, rows and index (workers write only their jobs' resumable state under
``scratch/``), and every write is atomic (a temporary file renamed into place): the result
first, then its row, then the index, so a study killed at any moment leaves whole files, and the
index can always be rebuilt from the rows. Two studies cannot hold the folder at once: the second waits
(``wait=`` seconds) or is refused with a message naming the holder.
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from pathlib import Path
from typing import Any

from ..errors import ResultsError, RunFolderError, StudyError
from ..files import write_atomic, writing
from ..results import read_record, save_result
from ..resume import RunFolder, read_state

INDEX = "index.parquet"
RUN = "study"
#: index columns in order (key scalars follow, sorted)
CORE = ("job", "status", "kind", "model", "task", "format", "limit", "shots", "seed", "params", "result", "host", "worker",
        "executor", "started", "finished", "wall_s", "peak_rss_mb", "peak_gpu_mb", "model_cached", "attempts", "error",
        "traceback", "model_fingerprint", "task_digest", "phaselens")
#: columns that say how and where a job ran (they differ between executors; everything else must not)
INT_COLUMNS = ("limit", "shots", "seed", "attempts", "transition", "transition_lo", "transition_hi", "n_blocks", "n_items",
               "steps", "cut_n", "n_samples")
RUN_COLUMNS = ("host", "worker", "executor", "started", "finished", "wall_s", "peak_rss_mb", "peak_gpu_mb", "model_cached")


class StudyFolder:
    """The driver's handle on a study folder (a context manager holding its lock)."""

    def __init__(self, out: str | os.PathLike, wait: float | None = None) -> None:
        self.out = Path(out)
        self.wait = wait
        self.state = RunFolder(self.out, RUN, {"study": 1}, what="a study")

    @property
    def path(self) -> Path:
        return self.state.path

    @property
    def scratch(self) -> Path:
        return self.path / "scratch"

    def __enter__(self) -> "StudyFolder":
        deadline = None if self.wait is None else time.monotonic() + self.wait
        while True:
            try:
                self.state.__enter__()
                return self
            except RunFolderError as e:
                if "in use by another run" not in str(e) or deadline is None or time.monotonic() > deadline:
                    hint = "" if self.wait is None else f" (waited {self.wait:g} s)"
                    raise StudyError(f"cannot run the study in {self.out}: {e}{hint}; pass wait=SECONDS (--wait) to "
                                     "wait for the other study") from e
                time.sleep(0.2)

    def __exit__(self, *exc: Any) -> None:
        self.state.__exit__(*exc)

    # -- plan
    def write_plan(self, spec: dict[str, Any], plan: list[dict[str, Any]]) -> None:
        write_atomic(self.path / "spec.json", json.dumps(spec, indent=1, sort_keys=True, default=str))
        write_atomic(self.path / "plan.json", json.dumps(plan, indent=1, sort_keys=True, default=str))

    # -- rows and results
    def rows(self) -> dict[str, dict[str, Any]]:
        """Every recorded row by job id (finished or failed), read from the checksummed row files."""
        out = {}
        for unit in self.state.units():
            if unit.startswith("row_"):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    row = self.state.load(unit)
                if isinstance(row, dict):
                    out[unit[4:]] = row
        return out

    def finished(self, rows: dict[str, dict[str, Any]]) -> set[str]:
        """Jobs done whose result file is whole (a missing or damaged result makes the job run again)."""
        done = set()
        for job, row in rows.items():
            if row.get("status") != "done":
                continue
            try:
                read_record(self.out / f"{row['result']}.json")
            except (ResultsError, KeyError):
                continue
            done.add(job)
        return done

    def record(self, row: dict[str, Any], result: Any = None) -> None:
        """Write a finished job's result (if any) and its row; the index is rewritten by :meth:`write_index`."""
        if result is not None:
            save_result(result, self.out, row["result"], job=row["job"], study_kind=row["kind"], seed=row["seed"])
        self.state.save(f"row_{row['job']}", row)

    def write_index(self, rows: dict[str, dict[str, Any]]) -> Path:
        """Rewrite ``index.parquet`` from ``rows`` atomically."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        df = frame(list(rows.values()))
        table = pa.Table.from_pandas(df, preserve_index=False)
        path = self.out / INDEX
        with writing(path) as f:
            pq.write_table(table, f)
        return path


def frame(rows: list[dict[str, Any]]):
    """The index as a DataFrame: CORE columns first, then the key scalars (sorted), rows in plan order."""
    import pandas as pd

    if not rows:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in CORE})
    rows = sorted(rows, key=lambda r: (r.get("order", 0), r["job"]))
    extra = sorted({k for r in rows for k in r} - set(CORE) - {"order"})
    cols = {}
    for c in (*CORE, *extra):
        raw = [r.get(c) for r in rows]
        vals = [v for v in raw if v is not None and not (isinstance(v, float) and math.isnan(v))]
        num = vals and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals)
        if c in INT_COLUMNS or num and all(float(v).is_integer() and isinstance(v, int) for v in vals):
            # ints that may be missing stay nullable ints, not floats
            cols[c] = pd.array([None if v is None or isinstance(v, float) and math.isnan(v) else int(v) for v in raw],
                               dtype="Int64")
        elif num:
            cols[c] = pd.Series([math.nan if v is None else float(v) for v in raw], dtype=float)
        else:
            cols[c] = pd.Series(raw, dtype=object)
    df = pd.DataFrame(cols)
    return df


def load_study(folder: str | os.PathLike):
    """The index of a study folder as one pandas DataFrame (one row per job; see :mod:`phaselens.study.store`).

    Columns: ``job`` (content hash), ``status`` (``done`` / ``failed``), ``kind``, ``model``, ``task``,
    ``format``, ``limit``, ``shots``, ``seed``, ``params`` (JSON), ``result`` (file stem in the folder),
    ``host``, ``worker``, ``executor``, ``wall_s``, ``peak_rss_mb``, ``peak_gpu_mb``, ``error``, ``traceback``,
    and the key scalars (``transition``, ``transition_lo``/``_hi``, ``final_accuracy``, ``collapse_ratio``,
    ``contrast_<method>``, ...). ``df.attrs["planned"]`` holds the job ids of the last spec run there.
    """
    import pandas as pd

    folder = Path(folder)
    path = folder / INDEX
    if not path.is_file():
        raise StudyError(f"{folder} is not a study folder (no {INDEX}); run `phaselens study run SPEC --out {folder}`")
    try:
        df = pd.read_parquet(path)
    except Exception as e:  # noqa: BLE001
        raise StudyError(f"{path} cannot be read ({type(e).__name__}: {e}); rerun the study to rebuild it") from e
    if (folder / ".phaselens" / RUN / "plan.json").exists():
        df.attrs["planned"] = [j["job"] for j in load_plan(folder)]
    return df


def load_plan(folder: str | os.PathLike) -> list[dict[str, Any]]:
    """The jobs of the last spec run in ``folder`` (``[]`` if none)."""
    p = Path(folder) / ".phaselens" / RUN / "plan.json"
    if not p.exists():
        return []
    try:
        plan = read_state(p, list, "rerun the study to write it again")
    except RunFolderError as e:
        raise StudyError(str(e)) from None
    if not all(isinstance(j, dict) and isinstance(j.get("job"), str) for j in plan):
        raise StudyError(f"{p} is corrupt: every entry must be a job (a table with a job id); rerun the study to write "
                         "it again")
    return plan
