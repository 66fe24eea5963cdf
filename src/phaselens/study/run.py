"""``run_study``: expand a spec into jobs, skip the finished ones, run the rest, keep the index."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import multiprocessing as mp
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .. import checks
from ..embedded import EMBEDDED, check_gguf
from ..errors import PhaselensError, StudyError
from ..registry import load_plugins
from ..results import slug
from ..tasks import load_task
from .executors import EXECUTORS
from .jobs import Job, Outcome
from .runs import RUNS
from .spec import JobConfig, StudySpec, hash_params, parse_spec
from .store import StudyFolder, load_study
from ..version import __version__


def task_digest(task: Any) -> str:
    """A hash of what the model sees of ``task``: every prompt, the option strings read, the answers, the format."""
    items = []
    for i, it in enumerate(task.items):
        items.append([it.id, task.prompt(i), task.decision_strings(i), list(it.options), it.answer])
    blob = json.dumps({"format": task.format, "items": items}, ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def job_id(config: dict[str, Any], fingerprint: str, items: str) -> str:
    """The content hash that names a job: its config, the model's identity (fingerprint, device type, dtype), the
    task's items; not phaselens' version (a job stays valid across versions; its row records the version)."""
    if isinstance(config.get("params"), dict):  # the spec key heldout hashes as the key it replaced
        params = hash_params(config["params"])
        config = {**config, "params": RUNS.get(config["kind"]).hashed(params) if config.get("kind") in RUNS else params}
    doc = {**config, "fingerprint": fingerprint, "items": items}
    lens = (config.get("params") or {}).get("lens") if isinstance(config.get("params"), dict) else None
    if isinstance(lens, str) and Path(lens).is_file():  # a saved lens: its content names the job, not its path
        doc["lens_sha256"] = hashlib.sha256(Path(lens).read_bytes()).hexdigest()
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _load_tasks(spec: StudySpec, jobs: list[JobConfig]) -> dict[str, tuple[Any, str]]:
    """Every distinct task of the plan, loaded on the driver (tasks are small: they travel with the jobs)."""
    out: dict[str, tuple[Any, str]] = {}
    for j in jobs:
        key = _task_key(j)
        if key in out:
            continue
        ts = spec.tasks[j.task_index]
        c = j.task
        try:
            t = load_task(ts.obj if ts.obj is not None else c["name"], format=c["format"], limit=c["limit"],
                          seed=c["seed"], shots=c["shots"], split=c["split"], sample=c.get("sample", True),
                          duplicates=c.get("duplicates", "error"))
        except PhaselensError as e:
            raise StudyError(f"tasks[{j.task_index}] ({c['name']}): {e}") from e
        out[key] = (t, task_digest(t))
    return out


def _task_key(j: JobConfig) -> str:
    return f"{j.task_index}:{json.dumps(j.task, sort_keys=True)}"  # two in-memory tasks may share a name


def _row(job: Job, cfg: JobConfig, out: Outcome, executor: str, items: str, order: int, attempts: int) -> dict[str, Any]:

    model = cfg.model if isinstance(cfg.model, str) else str(cfg.model)
    row = {"job": job.id, "status": "done" if out.ok else "failed", "kind": cfg.kind, "model": model,
           "task": cfg.task["name"], "format": cfg.task["format"] or getattr(job.task, "format", None),
           "limit": cfg.task["limit"], "shots": cfg.task["shots"], "seed": cfg.seed,
           "params": json.dumps(cfg.params, sort_keys=True),
           "result": slug(cfg.kind, Path(model).name, cfg.task["name"], f"s{cfg.seed}", job.id[:10]) if out.ok else None,
           "host": out.host, "worker": f"{out.host}:{out.pid}", "executor": executor,
           "started": out.started, "finished": out.finished, "wall_s": out.wall_s, "peak_rss_mb": out.peak_rss_mb,
           "peak_gpu_mb": out.peak_gpu_mb, "model_cached": out.model_cached, "attempts": attempts,
           "error": out.error or None, "traceback": out.traceback or None, "model_fingerprint": job.fingerprint,
           "task_digest": items, "phaselens": __version__, "order": order}
    for k, v in out.scalars.items():
        row[k] = v
    return row


def _check_models(s: Any, remote: bool) -> None:
    """Each model named by a string resolves (an embedded name, a .gguf file, a local folder or a model in the local
    HF cache, whose config is read: no weights), before the folder is touched. On a remote Ray cluster only embedded
    names are checked here: a path there may exist on the workers' nodes alone."""
    for i, m in enumerate(s.models):
        if not isinstance(m, str) or m.lower() in EMBEDDED or remote:
            continue
        try:
            if m.endswith(".gguf"):
                check_gguf(Path(m).expanduser())
            elif not Path(m).expanduser().is_dir():
                from transformers import AutoConfig

                AutoConfig.from_pretrained(m, local_files_only=True)
        except (PhaselensError, OSError, ValueError) as e:
            raise StudyError(f"models[{i}] = {m!r} is not an embedded name ({', '.join(EMBEDDED)}), a .gguf file, a "
                             f"local model folder or a model in the local Hugging Face cache; nothing was run "
                             f"({type(e).__name__}: {str(e)[:160]})") from e


def run_study(
    spec: Any,
    out: str | os.PathLike,
    executor: str = "local",
    address: str | None = None,
    *,
    workers: int | None = None,
    wait: float | None = None,
    on_job: Callable[[dict[str, Any]], None] | None = None,
    on_plan: Callable[[int, int], None] | None = None,
    plugins: Any = None,
):
    """Run a study: every job of ``spec``'s grid that ``out`` does not hold finished yet.

    Args:
        spec: a TOML file, TOML text or the equal dict (see :mod:`phaselens.study.spec`); validated first.
        out: the study folder (:mod:`phaselens.study.store`); a rerun skips finished jobs and retries failed
            ones, also with a changed spec (the jobs finished there are reused).
        executor: ``"local"`` (this process, one job after another), ``"processes"`` (a pool of worker
            processes) or ``"ray"`` (``pip install 'phaselens[ray]'``).
        address: the Ray cluster (``"auto"``, ``"ray://host:10001"``); ``None``: a local Ray instance (an
            initialised Ray is used as it is). Unused by the other executors.
        workers: worker processes / Ray actors (default: what the spec's ``resources`` fit on the machine).
        wait: when another study holds ``out``, wait up to this many seconds for it (default: refuse).
        on_job: called with each job's index row as soon as it is recorded (progress bars).
        on_plan: called once with ``(jobs to run, jobs already finished)`` before the first job starts.
        plugins: modules (names or ``.py`` paths) that register criteria, run kinds, ...; imported here before
            the spec is read, and by every worker (as the spec's ``plugins`` key). They are not part of job ids.

    Returns:
        the index (as :func:`load_study`); ``df.attrs`` has ``ran``, ``reused`` and ``failed`` counts of this
        call, and ``planned``, the job ids of ``spec``.
    """
    _refuse_inside_a_worker()
    checks.out_folder("out", out, error=StudyError)  # a folder that cannot be written is refused before any work
    load_plugins(plugins)
    s = parse_spec(spec)
    _check_executor(s, executor, address, workers)
    configs = s.jobs()
    tasks = _load_tasks(s, configs)
    _check_models(s, remote=executor == "ray" and address is not None)
    models = dict(zip(s.model_names, s.models))
    counts = {"ran": 0, "reused": 0, "failed": 0}
    with StudyFolder(out, wait) as folder:
        ex = EXECUTORS[executor](s.resources, str(folder.scratch), workers=workers, address=address, n_jobs=len(configs))
        try:
            jobs = _plan_jobs(configs, tasks, models, ex.fingerprints(models))
            folder.write_plan(s.source if not s.in_memory else {"name": s.name, "in_memory": True},
                              [{"job": p.job.id, **p.config.config()} for p in jobs])
            rows = folder.rows()
            done = folder.finished(rows)
            todo = [p for p in jobs if p.job.id not in done]
            counts["reused"] = len(jobs) - len(todo)
            folder.write_index(rows)
            if on_plan is not None:
                on_plan(len(todo), counts["reused"])
            _run_jobs(ex, folder, rows, todo, executor=executor, counts=counts, on_job=on_job)
        finally:
            ex.close()
    df = load_study(out)
    df.attrs.update(counts)
    return df


def _refuse_inside_a_worker() -> None:
    if getattr(mp.current_process(), "_inheriting", False):  # a spawned worker importing the caller's script
        raise StudyError("run_study was called again inside a worker process of executor='processes' while it imported "
                         "your script: put the call under `if __name__ == \"__main__\":` (Python's multiprocessing rule)")


def _check_executor(s: StudySpec, executor: str, address: str | None, workers: Any) -> None:
    """The executor exists, can run this spec, and is installed; ``workers`` is valid."""
    if executor not in EXECUTORS:
        raise StudyError(f"executor must be one of {list(EXECUTORS)}, got {executor!r}")
    if executor != "local" and s.in_memory:
        raise StudyError("in-memory models or tasks (objects in the spec dict) run only with executor='local'; "
                         "give names or paths to run them elsewhere")
    if executor == "ray" and importlib.util.find_spec("ray") is None:
        raise StudyError("executor='ray' needs Ray: pip install 'phaselens[ray]'")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise StudyError(f"workers must be an int >= 1, got {workers!r}")


@dataclass
class PlannedJob:
    """One job of the plan: what travels to the worker, its config, its task's digest and its place in the plan."""

    job: Job
    config: JobConfig
    items: str
    order: int


def _plan_jobs(configs: list[JobConfig], tasks: dict[str, tuple[Any, str]], models: dict[str, Any],
               fps: dict[str, dict[str, Any]]) -> list[PlannedJob]:
    """Every distinct job of the grid, named by its content hash (a config repeated in the grid runs once)."""
    out: dict[str, PlannedJob] = {}
    for c in configs:
        t, items = tasks[_task_key(c)]
        fp = fps[c.model]["identity"]  # fingerprint:device:dtype
        jid = job_id(c.config(), fp, items)
        if jid not in out:
            job = Job(id=jid, kind=c.kind, params=c.params, model=models[c.model], model_key=c.model, task=t,
                      seed=c.seed, fingerprint=fp, config=c.config())
            out[jid] = PlannedJob(job=job, config=c, items=items, order=len(out))
    return list(out.values())


def _run_jobs(ex: Any, folder: StudyFolder, rows: dict[str, Any], todo: list[PlannedJob], *, executor: str,
              counts: dict[str, int], on_job: Callable[[dict[str, Any]], None] | None) -> None:
    """Run ``todo`` one model after another (workers keep their models loaded); record each outcome at once."""
    by_id = {p.job.id: p for p in todo}
    todo = sorted(todo, key=lambda p: (p.config.model_index, p.order))
    for job, outcome in ex.run([p.job for p in todo]):
        p = by_id[job.id]
        attempts = int((rows.get(job.id) or {}).get("attempts") or 0) + 1
        row = _row(job, p.config, outcome, executor, p.items, p.order, attempts)
        folder.record(row, outcome.result if outcome.ok else None)
        rows[job.id] = row
        folder.write_index(rows)
        counts["ran" if outcome.ok else "failed"] += 1
        if on_job is not None:
            on_job(row)
