"""The layer schedule: every batch of a wave through block 0, then every batch through block 1, ...

With accelerate offload (``device_map`` with ``"cpu"`` / ``"disk"`` blocks) the batch schedule loads every
offloaded block's weights again for every batch. The layer schedule makes each block's weights resident once per
*wave* (accelerate's own hook: ``module._hf_hook.pre_forward`` loads, ``post_forward`` puts them back), runs all
the wave's batches through the block, and prefetches the next block's weights on a background thread while
the current block computes.

Nothing is rebuilt: each block's arguments (attention masks, rotary tables, position ids, Gemma-3's masks per
layer type) are *recorded* from the model's own decoder forward, run with every block replaced by a recorder.
Each batch is a :class:`~phaselens.runner.core.Pass` prepared exactly as for the batch schedule (view, edits,
reads, prefix-cache replay, stop), so both schedules run the same patches and taps on the same block calls.

A per-model check (:func:`check_model`) runs a short batch under both schedules once per model, in one pass that
reads each offloaded weight once; a model that
carries state between blocks outside the residual stream (Gemma-3n's shared KV, a decoder computing a block's
arguments from an earlier block's output) differs there and is refused.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
import os
import tempfile
import threading
import warnings
import weakref
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from ..errors import RunnerError
from .batch import Batch
from .cache import available_memory, gpu_share, memory_share
from .patches import exclusive, patched
from .plan import Plan, StopForward, skip

SCHEDULES = ("auto", "batch", "layer")
STORES = ("device", "cpu")
#: relative tolerance of the per-model check (bit equality is expected: the same kernels on the same inputs)
CHECK_RTOL = 1e-5


@dataclass(frozen=True)
class Schedule:
    """How the runner orders its passes.

    Attributes:
        kind: ``"batch"`` (each batch through every block), ``"layer"`` (every batch of a wave through block
            0, then block 1, ...) or ``"auto"`` (``"layer"`` when a block's weights are offloaded, else batch).
        act_budget: bytes the residual streams of one wave may take in their store (None: half the free GPU
            memory / a quarter of the available RAM, whichever is the store); batches beyond it make more waves,
            each of which reads the weights once.
        act_store: where a wave's residual streams wait between blocks: ``"device"`` (the compute device),
            ``"cpu"`` (pinned CPU memory) or a folder (a disk memmap per batch).
        prefetch: load the next block's weights on a background thread while the current block computes.
    """

    kind: str = "auto"
    act_budget: int | None = None
    act_store: str = "device"
    prefetch: bool = True


def check_schedule(kind: Any = "auto", act_budget: Any = None, act_store: Any = None, prefetch: Any = True) -> Schedule:
    """A checked :class:`Schedule` (no model needed: a bad value is an error before any weights load)."""
    if isinstance(kind, Schedule):
        return kind
    if kind not in SCHEDULES:
        raise RunnerError(f"schedule={kind!r} is not a schedule; use 'batch' (each batch through every block), "
                          "'layer' (every batch through block 0, then block 1, ...) or 'auto'")
    if act_budget is not None and (isinstance(act_budget, bool) or not isinstance(act_budget, int) or act_budget < 1):
        raise RunnerError(f"act_budget={act_budget!r} must be a positive int (bytes of residual stream per wave) or None")
    store = "device" if act_store is None else act_store
    if isinstance(store, os.PathLike) or (isinstance(store, str) and store not in STORES):
        store = str(Path(store).expanduser())
        _check_folder(store)
    elif not isinstance(store, str):
        raise RunnerError(f"act_store={act_store!r} must be 'device', 'cpu' or a folder for disk memmaps")
    if not isinstance(prefetch, bool):
        raise RunnerError(f"prefetch={prefetch!r} must be True or False")
    return Schedule(kind, act_budget, store, prefetch)


def _check_folder(folder: str) -> None:
    p = Path(folder)
    try:
        p.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=p, prefix=".phaselens-probe-"):
            pass
    except OSError as e:
        raise RunnerError(f"act_store={folder!r}: the residual streams cannot be written there ({e.strerror or e}); "
                          "pass a writable folder, 'cpu' or 'device'") from e


_CURRENT: contextvars.ContextVar[Schedule] = contextvars.ContextVar("phaselens_schedule", default=Schedule())


def current_schedule() -> Schedule:
    """The schedule every pass without its own uses (:func:`schedule` sets it; default ``"auto"``)."""
    return _CURRENT.get()


@contextlib.contextmanager
def schedule(kind: Any = "auto", *, act_budget: Any = None, act_store: Any = None, prefetch: Any = True) -> Iterator[Schedule]:
    """``with phaselens.runner.schedule("layer", act_budget=2**30): ...``: every pass inside runs under it."""
    token = _CURRENT.set(check_schedule(kind, act_budget, act_store, prefetch))
    try:
        yield _CURRENT.get()
    finally:
        _CURRENT.reset(token)


_using = schedule  # (the decorator's keyword is called schedule too)


_KEYWORDS = ("schedule", "act_budget", "act_store")


def scheduled(fn: Any) -> Any:
    """Decorator: the public function takes ``schedule=``, ``act_budget=``, ``act_store=`` (keyword-only) and runs
    under them (:func:`schedule`); values not given keep the current schedule's. Each is checked at the call,
    before any weights load."""
    sig = inspect.signature(fn)
    params = list(sig.parameters.values())
    at = next((i for i, p in enumerate(params) if p.kind is p.VAR_KEYWORD), len(params))
    params[at:at] = [inspect.Parameter(k, inspect.Parameter.KEYWORD_ONLY, default=None) for k in _KEYWORDS]

    @functools.wraps(fn)
    def wrapper(*args: Any, schedule: Any = None, act_budget: Any = None, act_store: Any = None, **kwargs: Any) -> Any:
        if schedule is None and act_budget is None and act_store is None:
            return fn(*args, **kwargs)
        cur = current_schedule()
        with _using(cur.kind if schedule is None else schedule, act_budget=cur.act_budget if act_budget is None else act_budget,
                    act_store=cur.act_store if act_store is None else act_store, prefetch=cur.prefetch):
            return fn(*args, **kwargs)

    wrapper.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
    return wrapper


# ----------------------------------------------------------------------------- offloaded weights
def offload_hooks(module: nn.Module, recurse: bool = True) -> list[tuple[nn.Module, Any]]:
    """``(submodule, hook)`` for every accelerate hook under ``module`` (itself included) that offloads weights."""
    out = []
    for m in (module.modules() if recurse else [module]):
        hook = getattr(m, "_hf_hook", None)
        for h in getattr(hook, "hooks", None) or ([hook] if hook is not None else []):  # SequentialHook holds several
            if getattr(h, "offload", False) and hasattr(h, "pre_forward") and hasattr(h, "post_forward"):
                out.append((m, h))
    return out


def is_offloaded(base: Any) -> bool:
    """Whether accelerate offloads some block's weights (to the CPU or disk) on ``base``."""
    return any(offload_hooks(b) for b in base.blocks)


class Weights:
    """Makes modules' offloaded weights resident for a while: accelerate's hook loads them (``pre_forward``), its
    ``offload`` flag is lowered so the block calls in between do not load or drop them, and ``post_forward``
    puts them back (``meta``). ``load`` may run on a background thread (prefetch)."""

    def __init__(self, groups: Sequence[list[tuple[nn.Module, Any]]], device: torch.device) -> None:
        self.hooks = list(groups)
        self.loaded: set[int] = set()
        self.lock = threading.Lock()
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" and any(self.hooks) else None

    def load(self, g: int) -> None:
        ctx = torch.cuda.stream(self.stream) if self.stream is not None else contextlib.nullcontext()
        with ctx:
            for m, h in self.hooks[g]:
                h.pre_forward(m)
                h.offload = False
        if self.stream is not None:
            self.stream.synchronize()
        with self.lock:
            self.loaded.add(g)

    def release(self, g: int) -> None:
        with self.lock:
            if g not in self.loaded:
                return
            self.loaded.discard(g)
        if self.stream is not None:  # the compute stream may still read them
            torch.cuda.current_stream().synchronize()
        for m, h in self.hooks[g]:
            h.offload = True
            h.post_forward(m, None)

    def release_all(self) -> None:
        for g in sorted(self.loaded):
            self.release(g)


# ----------------------------------------------------------------------------- residual streams of a wave
class Residuals:
    """Where each batch's residual stream waits between blocks: the compute device, pinned CPU memory, or a memmap
    file per batch in a folder. ``get`` returns a tensor the block may consume (never the stored buffer itself,
    so a read of ``"all"`` positions never aliases storage that the next block overwrites)."""

    def __init__(self, store: str, device: torch.device) -> None:
        self.store, self.device = store, device
        self.kept: dict[int, torch.Tensor] = {}
        self.files: list[Path] = []
        self.devices: dict[int, torch.device] = {}
        self.tmp: tempfile.TemporaryDirectory | None = None
        if store not in STORES:
            self.tmp = tempfile.TemporaryDirectory(dir=store, prefix="phaselens-wave-")

    def put(self, i: int, h: torch.Tensor) -> None:
        if self.store == "device" or (self.store == "cpu" and h.device.type == "cpu"):
            self.kept[i] = h
            return
        buf = self.kept.get(i)
        if buf is None or buf.shape != h.shape or buf.dtype != h.dtype:
            if self.store == "cpu":
                buf = torch.empty(h.shape, dtype=h.dtype, pin_memory=torch.cuda.is_available())
            else:
                path = Path(self.tmp.name) / f"batch{i}-{len(self.files)}.bin"  # type: ignore[union-attr]
                self.files.append(path)
                buf = torch.from_file(str(path), shared=True, size=h.numel(), dtype=h.dtype).view(h.shape)
            self.kept[i] = buf
        buf.copy_(h)
        self.devices[i] = h.device

    def get(self, i: int) -> torch.Tensor:
        h = self.kept[i]
        if self.store == "device" or (self.store == "cpu" and h.device.type == "cpu" and not h.is_pinned()):
            return h
        return h.to(self.devices[i], copy=True)

    def close(self) -> None:
        self.kept.clear()
        if self.tmp is not None:
            self.tmp.cleanup()


def default_budget(sched: Schedule, device: torch.device) -> int:
    """The wave budget when none was given: half the free memory of the GPU times
    :func:`~phaselens.runner.cache.gpu_share`, else a quarter of the available RAM times
    :func:`~phaselens.runner.cache.memory_share` (a study worker's part of the machine)."""
    if sched.act_budget is not None:
        return sched.act_budget
    if sched.act_store == "device" and device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free // 2 * gpu_share())
    return int(available_memory() // 4 * memory_share())


def residual_bytes(rows: int, tokens: int, d_model: int, itemsize: int) -> int:
    """What one padded batch of ``rows x tokens`` keeps in a wave: its residual stream ``rows x tokens x d`` values
    of ``itemsize`` bytes, plus a ``rows x tokens x tokens`` one-byte estimate of its recorded block mask."""
    return rows * tokens * d_model * itemsize + rows * tokens * tokens


def batch_bytes(batch: Batch, d_model: int, itemsize: int) -> int:
    """:func:`residual_bytes` of ``batch`` (``ids`` ``[B, T]``)."""
    B, T = batch.ids.shape
    return residual_bytes(B, T, d_model, itemsize)


def width(base: Any) -> tuple[int, int]:
    """``(d, bytes per value)`` of the residual stream, read without loading any offloaded weight."""
    emb = base.hf.get_input_embeddings().weight  # shape and dtype hold on the meta device too
    return int(emb.shape[1]), int(emb.element_size())


def waves(base: Any, batches: Sequence[Batch], budget: int) -> list[list[Batch]]:
    """Consecutive batches grouped so that each wave's residual streams fit ``budget`` bytes."""
    d, item = width(base)
    sizes = [batch_bytes(b, d, item) for b in batches]
    big = max(sizes)
    if big > budget:
        b = batches[sizes.index(big)]
        raise RunnerError(f"act_budget={budget} bytes is too small for one batch ({b.size} rows x {b.ids.shape[1]} tokens "
                          f"x d={d} needs {big} bytes); raise act_budget to at least {big}, or pass a smaller "
                          "max_tokens= (padded tokens per batch)")
    out: list[list[Batch]] = []
    used = budget + 1
    for b, s in zip(batches, sizes):
        if used + s > budget:
            out.append([])
            used = 0
        out[-1].append(b)
        used += s
    return out


# ----------------------------------------------------------------------------- recording block arguments
@dataclass
class Calls:
    """What the decoder passed to each block for one batch: ``h0`` (block 0's input: the embedding output) and
    per block ``(args, kwargs)`` (the hidden state first, as the decoder passed it)."""

    h0: torch.Tensor
    calls: list[tuple[tuple, dict]]

    def call(self, block: nn.Module, b: int, h: torch.Tensor) -> torch.Tensor:
        args, kw = self.calls[b]
        out = block(h, *args[1:], **kw) if args else block(**{**kw, "hidden_states": h})
        return out[0] if isinstance(out, tuple) else out


def _decode(base: Any, inputs: dict[str, Any], before: Any = None, after: Any = None) -> None:
    """The model's own decoder on ``inputs`` with ``before(b)`` / ``after(b)`` (hook factories, with kwargs) on
    every block ``b``; a hook may end the pass with :class:`StopForward`."""
    handles = []
    try:
        for b, blk in enumerate(base.blocks):
            if before is not None:
                handles.append(blk.register_forward_pre_hook(before(b), with_kwargs=True))
            if after is not None:
                handles.append(blk.register_forward_hook(after(b), with_kwargs=True))
        with contextlib.suppress(StopForward):
            base.decoder(**inputs, use_cache=False)
    finally:
        for h in handles:
            h.remove()


def record(base: Any, inputs: dict[str, Any]) -> Calls:
    """Run the model's own decoder on ``inputs`` with every block replaced by a recorder: what each block gets."""
    L = len(base.blocks)
    calls: list = [None] * L

    def recorder(b: int):
        def hook(m: nn.Module, args: tuple, kwargs: dict) -> None:
            calls[b] = (tuple(args), dict(kwargs))
            if b == L - 1:
                raise StopForward

        return hook

    with patched(base.blocks, Plan({b: skip for b in range(L)}), returns_tuple=base.returns_tuple):
        _decode(base, inputs, before=recorder)
    if any(c is None for c in calls):
        raise RunnerError(f"{base.name}: the decoder did not call every block once (blocks "
                          f"{[b for b, c in enumerate(calls) if c is None]} were not called); use schedule='batch'")
    args, kw = calls[0]
    return Calls(args[0] if args else kw["hidden_states"], calls)


def _at(plan: Plan, b: int) -> Plan:
    """``plan`` restricted to block ``b``."""
    return Plan(*({k: v for k, v in d.items() if k == b} for d in (plan.replace, plan.after, plan.mlp, plan.attn)),
                plan.names)


def _block_taps(taps: tuple[dict, dict, dict], b: int) -> dict[str, dict]:
    return {name: ({b: t[b]} if b in t else {}) for name, t in zip(("tap_in", "tap_out", "tap_mlp"), taps)}


# ----------------------------------------------------------------------------- one wave
def run_wave(runner: Any, passes: Sequence[Any], sched: Schedule) -> None:
    """Run prepared passes (:meth:`Runner.prepare`) layer-major: each block's weights are resident once."""
    base = runner.base
    todo = [p for p in passes if p.run]
    if not todo:
        return
    with torch.inference_mode(), exclusive(base.decoder, base.name):
        outer = Weights([_outside_blocks(base)], base.input_device)
        try:
            outer.load(0)
            calls = [record(base, runner._inputs(p.batch)) for p in todo]
        finally:
            outer.release_all()
        _blocks(runner, todo, calls, sched)


def _outside_blocks(base: Any) -> list[tuple[nn.Module, Any]]:
    """Offload hooks of the decoder outside its blocks and final norm (embeddings, rotary tables): the recording
    pass runs them (the final norm never runs under the layer schedule)."""
    inside = {id(m) for part in (*base.blocks, base.final_norm) for m in part.modules()}
    return [mh for m in base.decoder.modules() if id(m) not in inside for mh in offload_hooks(m, recurse=False)]


def _blocks(runner: Any, todo: Sequence[Any], calls: Sequence[Calls], sched: Schedule) -> None:
    base, L = runner.base, runner.n_blocks
    need = [any(b <= p.last and b not in p.run_plan.replace and not (b == p.last and p.stop_in) for p in todo)
            for b in range(L)]
    order = [b for b in range(L) if need[b]]
    weights = Weights([offload_hooks(blk) for blk in base.blocks], runner._devices[0])
    store = Residuals(sched.act_store, runner._devices[0])
    pool = ThreadPoolExecutor(1, thread_name_prefix="phaselens-prefetch") if sched.prefetch and any(weights.hooks) else None
    pending: dict[int, Future] = {}

    def fetch(b: int) -> None:
        if pool is not None:
            pending[b] = pool.submit(weights.load, b)
        else:
            weights.load(b)

    try:
        for i, c in enumerate(calls):
            store.put(i, c.h0)
        done = [False] * len(todo)
        if order:
            fetch(order[0])
        for b in range(L):
            if need[b]:
                if b in pending:
                    pending.pop(b).result()
                nxt = next((o for o in order if o > b), None)
                if nxt is not None:
                    fetch(nxt)  # loads while this block computes
            for i, p in enumerate(todo):
                if done[i] or b > p.last:
                    continue
                with patched(base.blocks, _at(p.run_plan, b), returns_tuple=base.returns_tuple, **_block_taps(p.taps, b)):
                    try:
                        store.put(i, calls[i].call(base.blocks[b], b, store.get(i)))
                    except StopForward:
                        done[i] = True
            if need[b]:
                weights.release(b)
    finally:
        for f in pending.values():
            with contextlib.suppress(Exception):
                f.result()
        if pool is not None:
            pool.shutdown(wait=True)
        weights.release_all()
        store.close()


# ----------------------------------------------------------------------------- the per-model check
_CHECKED: "weakref.WeakKeyDictionary[nn.Module, str | None]" = weakref.WeakKeyDictionary()
_WARNED: set[int] = set()


def check_model(runner: Any, sched: Schedule) -> str | None:
    """Once per model: a short padded batch through the model's own decoder (the batch schedule) and, in the same
    pass, through each block again as the layer schedule calls it (the arguments recorded with every block
    skipped, the input that the layer schedule's own previous block gave). ``None`` when every block's two outputs
    agree, else what differs. Each offloaded weight is read once: block ``b``'s weights are made resident before
    the decoder calls it and stay so for the layer-schedule call, then go back."""
    base = runner.base
    if base.hf in _CHECKED:
        return _CHECKED[base.hf]

    V = int(base.hf.get_input_embeddings().num_embeddings)
    seqs = [[(7 + 13 * k) % V for k in range(9)], [(11 + 17 * k) % V for k in range(6)]]
    plain = type(runner)(base, schedule="batch")
    inputs = plain._inputs(plain._batch(seqs, [0, 1]))
    L = len(base.blocks)
    weights = Weights([offload_hooks(blk) for blk in base.blocks], plain._devices[0])
    outer = Weights([_outside_blocks(base)], base.input_device)
    state: dict[str, Any] = {"inside": False, "h": None, "why": None}

    def before(b: int):
        def hook(m: nn.Module, args: tuple, kwargs: dict) -> None:
            if not state["inside"]:
                weights.load(b)
        return hook

    def after(b: int, calls: Calls):
        def hook(m: nn.Module, args: tuple, kwargs: dict, out: Any) -> None:
            if state["inside"]:
                return
            state["inside"] = True
            try:
                h = calls.h0 if b == 0 else state["h"]
                y = calls.call(m, b, h)
            finally:
                state["inside"] = False
                weights.release(b)
            x = (out[0] if isinstance(out, tuple) else out).float()
            err = float((x - y.float()).abs().max())
            if not err <= CHECK_RTOL * (1.0 + float(x.abs().max())) and state["why"] is None:
                state["why"] = f"block {b}'s output differs by {err:.3g}"
            state["h"] = y
            if b == L - 1 or state["why"] is not None:
                raise StopForward
        return hook

    with torch.inference_mode(), exclusive(base.decoder, base.name):
        try:
            outer.load(0)
            calls = record(base, inputs)
            _decode(base, inputs, before=before, after=lambda b: after(b, calls))
        finally:
            weights.release_all()
            outer.release_all()
    why = state["why"]
    _CHECKED[base.hf] = why
    return why


def resolve(runner: Any, sched: Schedule, batches: Sequence[Batch]) -> str:
    """``"batch"`` or ``"layer"`` for ``runner``'s model: ``"auto"`` is layer when a block is offloaded. Under the
    layer schedule the batches must fit the activation budget (checked first, before any weights load); a model
    that fails the per-model check is refused under ``"layer"`` (an error) and runs batch-major under ``"auto"``
    (said once)."""
    kind = sched.kind
    if kind == "auto":
        kind = "layer" if is_offloaded(runner.base) else "batch"
    if kind == "batch":
        return kind
    waves(runner.base, batches, default_budget(sched, runner._devices[0]))
    why = check_model(runner, sched)
    if why is None:
        return kind
    if sched.kind == "layer":
        raise RunnerError(f"schedule='layer' is refused for {runner.base.name}: on a short batch the layer schedule does "
                          f"not equal the batch schedule ({why}); this model carries state between its blocks outside "
                          "the residual stream, or computes a block's arguments from an earlier block. Use "
                          "schedule='batch'")
    if id(runner.base.hf) not in _WARNED:
        _WARNED.add(id(runner.base.hf))
        warnings.warn(f"phaselens: {runner.base.name} fails the layer schedule's check ({why}); its offloaded "
                      "weights are read once per batch (schedule='batch')", RuntimeWarning, stacklevel=3)
    return "batch"
