"""Where a study's jobs run: ``"local"`` (in this process, one after another), ``"processes"`` (a pool of
worker processes on this machine) or ``"ray"`` (actors on a Ray cluster, or a local Ray instance).

Each executor has the same two calls: :meth:`fingerprints` (load each model once on a worker and return
its identity) and :meth:`run` (yield ``(job, outcome)`` as jobs finish, in any order). The workers keep
their models loaded across jobs (:class:`~phaselens.study.jobs.ModelCache`); the Ray executor sends a
job preferably to an actor that already holds its model. Over the network go the job (its config and
its task's items) and the outcome (the result's arrays: option logits, margins, CKA matrices), never
weights or activations.
"""

from __future__ import annotations

import os
import socket
from collections import OrderedDict, deque
from typing import Any, Iterator

from ..embedded import cache_dir
from ..errors import StudyError
from ..registry import PLUGINS_ENV, load_plugins
from ..runner.cache import GPU_SHARE_VAR, MEMORY_SHARE_VAR, gpu_share, memory_share
from .jobs import Job, ModelCache, Outcome, execute, fingerprint


def _threads(num_cpus: float) -> None:
    import torch

    n = max(1, int(num_cpus))
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


# ----------------------------------------------------------------------------- local
class LocalExecutor:
    """In this process, one job after another."""

    name = "local"

    def __init__(self, resources: Any, scratch: str, **_: Any) -> None:
        self.cache = ModelCache(resources.models_per_worker)
        self.scratch = scratch

    def fingerprints(self, models: dict[str, Any]) -> dict[str, dict[str, Any]]:
        return {k: fingerprint(self.cache, k, spec) for k, spec in reversed(list(models.items()))}

    def run(self, jobs: list[Job]) -> Iterator[tuple[Job, Outcome]]:
        for j in jobs:
            yield j, execute(j, self.cache, self.scratch)

    def close(self) -> None:
        self.cache.models.clear()


# ----------------------------------------------------------------------------- processes
_CACHE: ModelCache | None = None
_SCRATCH = ""


def _init_worker(capacity: int, scratch: str, num_cpus: float, env: dict[str, str]) -> None:
    global _CACHE, _SCRATCH
    os.environ.update(env)
    load_plugins()  # the driver's plugins, from the PHASELENS_PLUGINS this process inherited
    _CACHE, _SCRATCH = ModelCache(capacity), scratch
    _threads(num_cpus)


def _pool_fingerprint(key: str, spec: Any) -> dict[str, Any]:
    assert _CACHE is not None
    return fingerprint(_CACHE, key, spec)


def _pool_execute(job: Job) -> Outcome:
    assert _CACHE is not None
    return execute(job, _CACHE, _SCRATCH)


class ProcessExecutor:
    """A pool of worker processes on this machine (spawned, so each has its own torch), each with its own
    model cache; ``workers`` processes (default: CPU cores / ``num_cpus``)."""

    name = "processes"

    def __init__(self, resources: Any, scratch: str, workers: int | None = None, **_: Any) -> None:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        n = workers or resources.workers or max(1, int((os.cpu_count() or 1) // max(1.0, resources.num_cpus)))
        env = {k: v for k, v in os.environ.items() if k.startswith(("PHASELENS_", "HF_", "OMP_", "TOKENIZERS_"))}
        env[MEMORY_SHARE_VAR] = repr(memory_share() / n)  # n workers' default memory bounds add up to one process's
        env[GPU_SHARE_VAR] = repr(gpu_share() / n)  # and their GPU bounds, on the one GPU they share
        self.n = n
        self.pool = ProcessPoolExecutor(n, mp_context=mp.get_context("spawn"), initializer=_init_worker,
                                        initargs=(resources.models_per_worker, scratch, resources.num_cpus, env))

    def fingerprints(self, models: dict[str, Any]) -> dict[str, dict[str, Any]]:
        from concurrent.futures.process import BrokenProcessPool

        futs = {k: self.pool.submit(_pool_fingerprint, k, spec) for k, spec in models.items()}
        try:
            return {k: f.result() for k, f in futs.items()}
        except BrokenProcessPool:
            raise StudyError("a worker process of executor='processes' died while starting (its error is printed above); "
                             "a script that calls run_study must do so under `if __name__ == \"__main__\":`") from None

    def run(self, jobs: list[Job]) -> Iterator[tuple[Job, Outcome]]:
        from concurrent.futures import as_completed
        from concurrent.futures.process import BrokenProcessPool

        futs = {self.pool.submit(_pool_execute, j): j for j in jobs}
        for f in as_completed(futs):
            j = futs[f]
            try:
                yield j, f.result()
            except BrokenProcessPool as e:
                yield j, Outcome(j.id, False, error=f"a worker process died: {e}", traceback=repr(e),
                                 host=socket.gethostname())

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


# ----------------------------------------------------------------------------- ray
class StudyWorker:
    """A Ray actor: one worker process holding its models across the jobs sent to it."""

    def __init__(self, capacity: int, driver_host: str, scratch: str, num_cpus: float,
                 plugins: list[str] | None = None, num_gpus: float = 0.0) -> None:

        load_plugins(plugins)  # the driver's plugins: module names, or .py paths that exist on this node
        self.cache = ModelCache(capacity)
        # the driver's scratch folder when this actor shares its machine, else this node's phaselens cache
        self.scratch = scratch if socket.gethostname() == driver_host else str(cache_dir() / "study-scratch")
        _threads(num_cpus)
        # this actor's part of its node's RAM (its cores' share), so the default memory bounds of the actors on one
        # node add up to one process's
        os.environ[MEMORY_SHARE_VAR] = repr(min(1.0, max(1e-3, float(num_cpus)) / (os.cpu_count() or 1)) * memory_share())
        # and its part of its GPU: Ray gives an actor with num_gpus < 1 a fraction of one GPU that others share
        if 0 < num_gpus < 1:
            os.environ[GPU_SHARE_VAR] = repr(float(num_gpus) * gpu_share())

    def fingerprint(self, key: str, spec: Any) -> dict[str, Any]:
        return fingerprint(self.cache, key, spec)

    def run(self, job: Job) -> Outcome:
        return execute(job, self.cache, self.scratch)

    def pid(self) -> int:
        return os.getpid()


class RayExecutor:
    """Ray actors (``num_cpus``/``num_gpus`` each, from the spec's ``resources``); ``ray.init(address=address)``
    unless Ray is already initialised (then that instance is used and left running)."""

    name = "ray"

    def __init__(self, resources: Any, scratch: str, workers: int | None = None, address: str | None = None,
                 n_jobs: int = 1, **_: Any) -> None:
        try:
            import ray
        except ImportError:
            raise StudyError("executor='ray' needs Ray: pip install 'phaselens[ray]'") from None
        self.ray = ray
        self.owns = not ray.is_initialized()
        if self.owns:  # a local instance without its dashboard; a cluster (or ray:// client) as it is
            ray.init(address=address, log_to_driver=False, **({"include_dashboard": False} if address is None else {}))
        self.res = resources
        total = ray.cluster_resources()
        fit = int(total.get("CPU", 1) // max(resources.num_cpus, 1e-9))
        if resources.num_gpus > 0:
            gpus = total.get("GPU", 0)
            if gpus < resources.num_gpus:
                self.close()
                raise StudyError(f"resources.num_gpus = {resources.num_gpus:g} but the Ray cluster has {gpus:g} GPU(s)")
            fit = min(fit, int(gpus // resources.num_gpus))
        self.n = max(1, min(workers or resources.workers or fit, max(1, n_jobs)))
        self.cls = ray.remote(StudyWorker)
        plugins = [p for p in os.environ.get(PLUGINS_ENV, "").split(",") if p]
        self.args = (resources.models_per_worker, socket.gethostname(), scratch, resources.num_cpus, plugins,
                     resources.num_gpus)
        self.actors = [self._actor() for _ in range(self.n)]
        self.loaded: dict[Any, OrderedDict] = {a: OrderedDict() for a in self.actors}

    def _actor(self) -> Any:
        return self.cls.options(num_cpus=self.res.num_cpus, num_gpus=self.res.num_gpus, max_restarts=0).remote(*self.args)

    def _note(self, actor: Any, key: str) -> None:
        d = self.loaded.setdefault(actor, OrderedDict())
        d[key] = True
        d.move_to_end(key)
        while len(d) > self.res.models_per_worker:
            d.popitem(last=False)

    def fingerprints(self, models: dict[str, Any]) -> dict[str, dict[str, Any]]:
        refs = {}
        for i, (k, spec) in enumerate(models.items()):
            a = self.actors[i % len(self.actors)]
            refs[k] = a.fingerprint.remote(k, spec)
            self._note(a, k)
        try:
            return {k: self.ray.get(r) for k, r in refs.items()}
        except self.ray.exceptions.RayTaskError as e:
            raise e.as_instanceof_cause() from e

    def run(self, jobs: list[Job]) -> Iterator[tuple[Job, Outcome]]:
        ray = self.ray
        pending = deque(jobs)
        idle = list(self.actors)
        inflight: dict[Any, tuple[Any, Job]] = {}
        while pending or inflight:
            while idle and pending:  # a job whose model an idle actor holds, else the next job
                pick = next(((a, j) for j in pending for a in idle if j.model_key in self.loaded.get(a, {})), None)
                a, j = pick or (idle[0], pending[0])
                idle.remove(a)
                pending.remove(j)
                inflight[a.run.remote(j)] = (a, j)
                self._note(a, j.model_key)
            ready, _ = ray.wait(list(inflight), num_returns=1)
            for ref in ready:
                a, j = inflight.pop(ref)
                try:
                    out = ray.get(ref)
                    idle.append(a)
                except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError, ray.exceptions.ObjectLostError) as e:
                    out = Outcome(j.id, False, error=f"the Ray worker running this job died: {type(e).__name__}",
                                  traceback=str(e), host="?")
                    self.loaded.pop(a, None)
                    self.actors.remove(a)
                    fresh = self._actor()  # a replacement, so the study goes on
                    self.actors.append(fresh)
                    idle.append(fresh)
                yield j, out

    def close(self) -> None:
        for a in getattr(self, "actors", []):
            try:
                self.ray.kill(a)
            except Exception:  # noqa: BLE001 - already gone
                pass
        self.actors = []
        if self.owns and self.ray.is_initialized():
            self.ray.shutdown()


#: the executors by name (the one list of them)
EXECUTORS = {"local": LocalExecutor, "processes": ProcessExecutor, "ray": RayExecutor}
