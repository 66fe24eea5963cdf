"""Installing a plan on a model's blocks for one pass: patches that nest and restore exactly, one thread per model."""

from __future__ import annotations

import contextlib
import threading
import weakref
from typing import Any, Callable, Iterator

import torch
from torch import nn

from ..errors import RunnerError
from ..parts import branch
from .plan import Plan

_MISSING = object()
_stacks: "weakref.WeakKeyDictionary[nn.Module, list]" = weakref.WeakKeyDictionary()
_owners: "weakref.WeakKeyDictionary[nn.Module, list]" = weakref.WeakKeyDictionary()
_owners_lock = threading.Lock()


@contextlib.contextmanager
def exclusive(decoder: nn.Module, name: str) -> Iterator[None]:
    """One thread at a time per model; the same thread may nest passes."""
    me = threading.get_ident()
    with _owners_lock:
        owner = _owners.get(decoder)
        if owner is not None and owner[0] != me:
            raise RunnerError(
                f"{name} is running a forward pass in another thread; phaselens patches the model's blocks during a "
                "pass, so one model cannot serve two threads at once. Load one copy of the model per thread, or run "
                "the passes one after another")
        if owner is None:
            owner = _owners[decoder] = [me, 0]
        owner[1] += 1
    try:
        yield
    finally:
        with _owners_lock:
            owner[1] -= 1
            if owner[1] == 0:
                _owners.pop(decoder, None)


def _push_forward(mod: nn.Module, fn: Callable) -> None:
    _stacks.setdefault(mod, []).append(mod.__dict__.get("forward", _MISSING))
    mod.forward = fn  # an instance attribute shadows the class's forward


def _pop_forward(mod: nn.Module, fn: Callable) -> None:
    prev = _stacks[mod].pop()  # popped even when the forward was replaced, so the stack stays paired with the patches
    if mod.__dict__.get("forward") is not fn:
        raise RunnerError(f"the forward of {type(mod).__name__} was replaced by someone else during a phaselens pass; "
                          "it is left as that code set it")
    if prev is _MISSING:
        del mod.__dict__["forward"]
    else:
        mod.forward = prev


def _hidden_arg(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _out_tensor(out: Any) -> torch.Tensor:
    # transformers 5 blocks return a tensor; older ones a tuple whose first entry is the state.
    return out[0] if isinstance(out, tuple) else out


def _with_tensor(out: Any, h: torch.Tensor) -> Any:
    return (h, *out[1:]) if isinstance(out, tuple) else h


@contextlib.contextmanager
def patched(blocks: list[nn.Module], plan: Plan, *, tap_in: dict[int, Callable] | None = None,
            tap_out: dict[int, Callable] | None = None, tap_mlp: dict[int, Callable] | None = None,
            returns_tuple: bool = False) -> Iterator[None]:
    """Install ``plan`` and taps ``fn(h)`` (block input / output / MLP-branch output) on ``blocks`` for the
    duration of the ``with`` block. Patches nest: leaving restores exactly what was there on entering."""
    handles: list = []
    pushed: list[tuple[nn.Module, Callable]] = []
    try:
        for b, fn in plan.replace.items():
            def fwd(*args, _fn=fn, **kwargs):
                h = _fn(_hidden_arg(args, kwargs))
                return (h,) if returns_tuple else h

            _push_forward(blocks[b], fwd)
            pushed.append((blocks[b], fwd))
        for which, edits in (("mlp", plan.mlp), ("attn", plan.attn)):
            for b, fn in edits.items():
                handles.append(branch(blocks[b], which).register_forward_hook(
                    lambda m, a, out, _fn=fn: _with_tensor(out, _fn(_out_tensor(out)))))
        for b, fn in plan.after.items():
            handles.append(blocks[b].register_forward_hook(lambda m, a, out, _fn=fn: _with_tensor(out, _fn(_out_tensor(out)))))
        for b, tap in (tap_in or {}).items():
            handles.append(blocks[b].register_forward_pre_hook(lambda m, a, k, _t=tap: _t(_hidden_arg(a, k)), with_kwargs=True))
        for b, tap in (tap_mlp or {}).items():
            handles.append(branch(blocks[b], "mlp").register_forward_hook(lambda m, a, out, _t=tap: _t(_out_tensor(out))))
        for b, tap in (tap_out or {}).items():
            handles.append(blocks[b].register_forward_hook(lambda m, a, out, _t=tap: _t(_out_tensor(out))))
        yield
    finally:
        for h in handles:
            h.remove()
        failed: list[RunnerError] = []
        for mod, fn in reversed(pushed):  # every block is restored, even after one that someone else replaced
            try:
                _pop_forward(mod, fn)
            except RunnerError as e:
                failed.append(e)
        if failed:
            raise failed[0]


def block_returns_tuple(blocks: list[nn.Module], decoder: nn.Module, ids: torch.Tensor) -> bool:
    """Whether the decoder's blocks return a tuple (older transformers) or a tensor (transformers 5): one probe pass."""
    box: dict[str, bool] = {}

    def probe(m: nn.Module, a: Any, out: Any) -> None:
        box["tuple"] = isinstance(out, tuple)

    handle = blocks[0].register_forward_hook(probe)
    try:
        with torch.inference_mode():
            decoder(input_ids=ids, use_cache=False)
    finally:
        handle.remove()
    return bool(box.get("tuple", False))

