"""The worker side of a study: one job in, one :class:`Outcome` out.

A worker (the driver itself, a pool process or a Ray actor) keeps a :class:`ModelCache`: a model loaded
for one job stays loaded for the next jobs that use it (at most ``capacity`` models, least recently used
first out). :func:`execute` runs a job through its run kind (:data:`~phaselens.study.runs.RUNS`), times
it, samples its peak memory, and returns the result object with its key scalars, or the traceback.
Nothing here writes the study folder: only the driver does (:mod:`phaselens.study.store`).
"""

from __future__ import annotations

import os
import socket
import threading
import time
import traceback
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import StudyError
from ..loading import load_model
from ..view import as_view
from .runs import RUNS


@dataclass
class Job:
    """What travels to a worker: the job's identity, its run, its model spec and its (already loaded) task."""

    id: str
    kind: str
    params: dict[str, Any]
    model: Any  # a spec string, or an in-memory model (local executor only)
    model_key: str
    task: Any  # a phaselens Task
    seed: int
    fingerprint: str
    config: dict[str, Any] = field(default_factory=dict)


@dataclass
class Outcome:
    """What comes back: the result (or the error), the key scalars and how the job ran."""

    id: str
    ok: bool
    result: Any = None
    scalars: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    traceback: str = ""
    host: str = ""
    pid: int = 0
    started: float = 0.0
    finished: float = 0.0
    wall_s: float = 0.0
    peak_rss_mb: float = float("nan")
    peak_gpu_mb: float = float("nan")
    model_cached: bool = False


class ModelCache:
    """Loaded models of one worker, by spec; at most ``capacity`` (least recently used first out)."""

    def __init__(self, capacity: int = 2) -> None:
        self.capacity = max(1, int(capacity))
        self.models: OrderedDict[str, Any] = OrderedDict()
        self.loads = 0

    def get(self, key: str, spec: Any) -> tuple[Any, bool]:
        """``(model, was_loaded_already)``."""
        if key in self.models:
            self.models.move_to_end(key)
            return self.models[key], True
        while len(self.models) >= self.capacity:
            self.models.popitem(last=False)
        m = load_model(spec) if isinstance(spec, (str, os.PathLike)) else spec  # an in-memory model (local executor)
        self.loads += 1
        self.models[key] = m
        return m, False


def model_identity(base: Any) -> str:
    """What a job's numbers depend on in a loaded model: its fingerprint (architecture and weights), and the
    device type and dtype it computes in (a GPU's bfloat16 gives other numbers than a CPU's float32)."""
    return f"{base.fingerprint}:{base.device.type}:{str(base.dtype).replace('torch.', '')}"


def fingerprint(cache: ModelCache, key: str, spec: Any) -> dict[str, Any]:
    """The model's identity (loads it into ``cache``): fingerprint, name, depth, where it was loaded."""
    m, _ = cache.get(key, spec)
    base = as_view(m).base
    return {"key": key, "identity": model_identity(base), "fingerprint": base.fingerprint, "name": base.name, "n_layers": base.n_blocks,
            "host": socket.gethostname(), "pid": os.getpid()}


# ----------------------------------------------------------------------------- memory
class PeakMemory:
    """Peak resident memory of this process while the ``with`` block runs (sampled every 20 ms from
    ``/proc/self/statm``; ``getrusage`` where there is no /proc), and CUDA's peak allocation when on a GPU."""

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self.peak = 0
        self.gpu = float("nan")
        self._stop = threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

    def _rss(self) -> int:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * self._page
        except OSError:
            import resource

            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self._rss())

    def __enter__(self) -> "PeakMemory":
        import torch

        self._cuda = torch.cuda.is_available()
        if self._cuda:
            torch.cuda.reset_peak_memory_stats()
        self.peak = self._rss()
        self._t = threading.Thread(target=self._loop, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self._rss())
        if self._cuda:
            import torch

            self.gpu = torch.cuda.max_memory_allocated() / 2**20


# ----------------------------------------------------------------------------- running
def execute(job: Job, cache: ModelCache, scratch_root: str | os.PathLike) -> Outcome:
    """Run ``job`` on this worker; never raises for a failure of the job itself (it comes back in the Outcome)."""
    out = Outcome(job.id, False, host=socket.gethostname(), pid=os.getpid(), started=time.time())
    t0 = time.perf_counter()
    mem = PeakMemory()
    try:
        with mem:
            model, out.model_cached = cache.get(job.model_key, job.model)
            base = as_view(model).base
            if model_identity(base) != job.fingerprint:


                raise StudyError(f"{job.model_key} on {out.host} is {model_identity(base)} (fingerprint:device:dtype), the study "
                                 f"planned {job.fingerprint}: the weights (clear PHASELENS_CACHE there) or the device differ "
                                 "between the machines of the cluster")
            scratch = Path(scratch_root) / job.id
            kind = RUNS.get(job.kind)
            r = kind.run(model, job.task, job.seed, job.params, scratch)
            out.scalars = kind.scalars(r)
            out.result, out.ok = r, True
    except Exception as e:  # noqa: BLE001 - recorded in the index; a rerun retries the job
        out.error = f"{type(e).__name__}: {e}"
        out.traceback = traceback.format_exc()
    out.finished = time.time()
    out.wall_s = time.perf_counter() - t0
    out.peak_rss_mb, out.peak_gpu_mb = mem.peak / 2**20, mem.gpu
    return out
