"""The worker side of a study: one job in, one :class:`Outcome` out.

A worker (the driver itself, a pool process or a Ray actor) keeps a :class:`ModelCache`: a model loaded
for one job stays loaded for the next jobs that use it (at most ``capacity`` models, least recently used
first out). :func:`execute` runs a job through the public API (:data:`~phaselens.study.spec.RUNS`), times
it, samples its peak memory, and returns the result object with its key scalars, or the traceback.
Nothing here writes the study folder: only the driver does (:mod:`phaselens.study.store`).
"""

from __future__ import annotations

import math
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
        from ..loading import load_model

        while len(self.models) >= self.capacity:
            self.models.popitem(last=False)
        m = load_model(spec) if isinstance(spec, (str, os.PathLike)) else spec  # an in-memory model (local executor)
        self.loads += 1
        self.models[key] = m
        return m, False


def identity(base: Any) -> str:
    """What a job's numbers depend on in a loaded model: its fingerprint (architecture and weights), and the
    device type and dtype it computes in (a GPU's bfloat16 gives other numbers than a CPU's float32)."""
    return f"{base.fingerprint}:{base.device.type}:{str(base.dtype).replace('torch.', '')}"


def fingerprint(cache: ModelCache, key: str, spec: Any) -> dict[str, Any]:
    """The model's identity (loads it into ``cache``): fingerprint, name, depth, where it was loaded."""
    from ..view import as_view

    m, _ = cache.get(key, spec)
    base = as_view(m).base
    return {"key": key, "identity": identity(base), "fingerprint": base.fingerprint, "name": base.name, "n_layers": base.n_layers,
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
def _texts(kind: str, n: int | None) -> list[str] | None:
    if n is None:
        return None
    from ..calibration import heldout_texts, load_calibration

    texts = load_calibration() if kind == "calibration" else heldout_texts()
    if n > len(texts):


        raise StudyError(f"{kind}_passages = {n}, but there are {len(texts)} bundled {kind} passages")
    return texts[:n]


def sweep_cap(n_layers: int, steps: int | None, max_ratio: float | None) -> int:
    """The most cuts of a sweep job: ``steps``, or ``ceil(max_ratio * L)``, or ``L - 1``; never more than ``L - 1``."""
    if max_ratio is not None:
        steps = max(1, int(math.ceil(max_ratio * n_layers - 1e-9)))
    return n_layers - 1 if steps is None else min(int(steps), n_layers - 1)


def run_kind(kind: str, model: Any, task: Any, seed: int, params: dict[str, Any], scratch: Path) -> Any:
    """Run one job through the public API; returns its Result."""
    import phaselens as pl

    p = dict(params)
    cal = _texts("calibration", p.pop("calibration_passages", None))
    ppl = _texts("heldout", p.pop("heldout_passages", None))
    cal = p.pop("calibration", None) if cal is None else cal  # texts given in the spec itself
    ppl = p.pop("perplexity_texts", None) if ppl is None else ppl
    L = model.n_layers
    if kind == "trace":
        trace = pl.decision_trace(model, task, seed=seed, **p)
        return trace.transition() if trace.complete else trace
    if kind == "sweep":
        until, chunk = p.pop("until", "steps"), p.pop("chunk", 4)
        cap = sweep_cap(L, p.pop("steps", None), p.pop("max_ratio", None))
        kw = dict(out=scratch, seed=seed, calibration=cal, perplexity_texts=ppl, **p)
        if until != "collapse":
            return pl.iterative_prune(model, task, steps=cap, **kw)
        k = 0
        while True:  # extend chunk cuts at a time (resuming from the scratch folder) until accuracy collapses
            k = min(cap, k + chunk)
            sw = pl.iterative_prune(model, task, steps=k, **kw)
            if sw.collapse_ratio is not None or k >= cap or sw.dense_accuracy <= sw.chance:
                return sw
    if kind == "phase-cuts":
        n = p.pop("n")
        if p.pop("fit_n", False):
            tr = pl.transition_point(model, task, seed=seed)
            if tr.layer is None:
                raise pl.PhaseCutsError(f"{model.name} on {task.name}: {tr.reason} (no phases to cut)")
            n = min(n, tr.layer, L - tr.layer)
        if isinstance(p.get("placement"), list):
            p["placement"] = tuple(p["placement"])
        return pl.compare_phase_cuts(model, task, n, seed=seed, out=scratch, calibration=cal, perplexity_texts=ppl, **p)
    if kind == "noise":
        stride = p.pop("stride", None)
        if stride is not None:
            tr = pl.transition_point(model, task, seed=seed, n_boot=p.get("n_boot", 1000))
            p["blocks"] = sorted(set(range(0, L, stride)) | ({tr.layer} if tr.layer is not None else set()) | {L - 1})
            p["transition"] = tr
        return pl.inject_noise(model, task, boot_seed=seed, **p)
    if kind == "ablate":
        if isinstance(p.get("pairs"), list):
            p["pairs"] = [tuple(x) for x in p["pairs"]]
        return pl.ablate(model, task, boot_seed=seed, **p)
    if kind == "cka":
        cut, crit, on = p.pop("prune", 0.5), p.pop("criterion", "bi"), p.pop("on", "task")
        n_cut = cut if isinstance(cut, int) else max(1, int(round(cut * L)))
        blocks = pl.select_blocks(model, n_cut, crit, calibration=cal, seed=seed)
        pruned = pl.prune(model, blocks)
        inputs = task if on == "task" else (ppl if ppl is not None else pl.heldout_texts())
        return pl.cka(model, pruned, inputs, seed=seed, **p)
    raise StudyError(f"unknown run kind {kind!r}")


def _nan(x: Any) -> float:
    return float("nan") if x is None else float(x)


def _transition(tr: Any) -> dict[str, Any]:
    t = tr.trace
    lo, hi = tr.ci if tr.ci is not None else (None, None)
    return {"transition": tr.layer, "transition_lo": lo, "transition_hi": hi, "n_blocks": int(t.n_blocks),
            "transition_fraction": tr.fraction, "final_accuracy": float(t.accuracy[-1]), "final_margin": float(t.margins[-1]),
            "n_items": int(t.n_items)}


def scalars(kind: str, r: Any) -> dict[str, Any]:
    """The key numbers of one job's result, for the index (None / NaN where a number does not exist)."""
    import numpy as np

    from ..trace import Transition

    if kind == "trace":
        if isinstance(r, Transition):
            return _transition(r)
        return {"n_blocks": int(r.n_blocks), "final_accuracy": float(r.accuracy[-1]), "final_margin": float(r.margins[-1]),
                "n_items": int(r.n_items)}
    if kind == "sweep":
        out = _transition(r.steps[0].transition)
        out.update({"dense_accuracy": float(r.dense_accuracy), "final_accuracy": float(r.steps[-1].accuracy),
                    "final_margin": float(r.steps[-1].margin), "collapse_ratio": r.collapse_ratio,
                    "steps": len(r.steps) - 1, "criterion": r.criterion})
        return out
    if kind == "phase-cuts":
        out = _transition(r.transition)
        out.update({"dense_accuracy": float(r.dense_accuracy), "cut_n": int(r.n)})
        for m in r.methods:
            try:
                c = r.contrast("silent", "decisive", method=m, metric="margin")
            except Exception:  # noqa: BLE001 - a skipped combination (replaceme at block 0)
                continue
            out[f"contrast_{m}"], out[f"contrast_{m}_lo"], out[f"contrast_{m}_hi"] = c["difference"], c["lo"], c["hi"]
        return out
    if kind == "noise":
        out = {"transition": r.transition, "n_blocks": int(r.n_blocks), "n_items": int(r.n_items),
               "final_accuracy": float(np.mean(r.clean_correct)), "final_margin": float(np.mean(r.clean_margins))}
        sens = r.sensitivity()
        gap = sens[sens.phase == "silent - decisive"]
        for e, row in zip(gap.eps, gap.itertuples()):
            suf = "" if len(r.eps) == 1 else f"_eps{e:g}"
            out[f"noise_gap{suf}"], out[f"noise_gap{suf}_lo"], out[f"noise_gap{suf}_hi"] = \
                row.margin_drop, row.margin_drop_lo, row.margin_drop_hi
        return out
    if kind == "ablate":
        from ..final_readout import phase_of

        out = {"transition": r.transition, "n_blocks": int(r.n_blocks), "n_items": int(r.n_items),
               "final_accuracy": float(np.mean(r.clean_correct)), "final_margin": float(np.mean(r.clean_margins))}
        ph = np.asarray([phase_of(b, r.transition) for b in r.singles])
        d = r.single_drop
        if (ph == "silent").any() and (ph == "decisive").any():
            out["ablation_gap"] = float(d[ph == "silent"].mean() - d[ph == "decisive"].mean())
        return out
    if kind == "cka":
        b, v = r.matched()
        return {"cka_matched": float(np.mean(v)) if len(v) else float("nan"), "cut_n": len(r.blocks_a) - len(r.blocks_b),
                "n_samples": int(r.n_samples)}
    return {}


def execute(job: Job, cache: ModelCache, scratch_root: str | os.PathLike) -> Outcome:
    """Run ``job`` on this worker; never raises for a failure of the job itself (it comes back in the Outcome)."""
    out = Outcome(job.id, False, host=socket.gethostname(), pid=os.getpid(), started=time.time())
    t0 = time.perf_counter()
    mem = PeakMemory()
    try:
        with mem:
            model, out.model_cached = cache.get(job.model_key, job.model)
            from ..view import as_view

            base = as_view(model).base
            if identity(base) != job.fingerprint:


                raise StudyError(f"{job.model_key} on {out.host} is {identity(base)} (fingerprint:device:dtype), the study "
                                 f"planned {job.fingerprint}: the weights (clear PHASELENS_CACHE there) or the device differ "
                                 "between the machines of the cluster")
            scratch = Path(scratch_root) / job.id
            r = run_kind(job.kind, model, job.task, job.seed, job.params, scratch)
            out.scalars = scalars(job.kind, r)
            out.result, out.ok = r, True
    except Exception as e:  # noqa: BLE001 - recorded in the index; a rerun retries the job
        out.error = f"{type(e).__name__}: {e}"
        out.traceback = traceback.format_exc()
    out.finished = time.time()
    out.wall_s = time.perf_counter() - t0
    out.peak_rss_mb, out.peak_gpu_mb = mem.peak / 2**20, mem.gpu
    return out
