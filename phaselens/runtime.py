"""The one forward pass everything runs through.

A :class:`Plan` says, per original block index, what to do instead of or after the
block: ``replace[b]`` maps the block's input ``[B, T, d]`` to its output (identity =
skip the block, a linear map = a Ghosted-Layers operator, a cached tensor = replay a
prefix), ``after[b]`` edits the block's output (noise injection). Taps read the input
(``tap_in``) or output (``tap_out``) of a block as it flows by.

Plans are applied by setting an instance-level ``forward`` on the block modules for
the duration of a ``with`` block: no weights are copied, the Hugging Face forward
(SDPA attention, its own masks and rotary tables) runs unchanged, and block indices and
per-layer attention types stay those of the original model.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
from torch import nn

Edit = Callable[[torch.Tensor], torch.Tensor]
Tap = Callable[[torch.Tensor], None]


class StopForward(Exception):
    """Raised by a tap to end a forward pass once everything needed was read."""


@dataclass
class Plan:
    """Per-block edits of a forward pass (original 0-based block indices)."""

    replace: dict[int, Edit] = field(default_factory=dict)
    after: dict[int, Edit] = field(default_factory=dict)

    def merged(self, other: "Plan") -> "Plan":
        clash = set(self.replace) & set(other.replace)
        if clash:
            raise ValueError(f"two edits replace the same block(s) {sorted(clash)}")
        after = dict(self.after)
        for b, fn in other.after.items():
            after[b] = _compose(after[b], fn) if b in after else fn
        return Plan({**self.replace, **other.replace}, after)


def _compose(f: Edit, g: Edit) -> Edit:
    return lambda h: g(f(h))


def identity(h: torch.Tensor) -> torch.Tensor:
    return h


def _hidden_arg(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _out_tensor(out: object) -> torch.Tensor:
    # transformers 5 blocks return a tensor; older ones a tuple whose first entry is the state.
    return out[0] if isinstance(out, tuple) else out  # type: ignore[index,return-value]


def _with_tensor(out: object, h: torch.Tensor) -> object:
    return (h, *out[1:]) if isinstance(out, tuple) else h  # type: ignore[index]


@contextlib.contextmanager
def applied(
    blocks: list[nn.Module],
    plan: Plan,
    tap_in: dict[int, Tap] | None = None,
    tap_out: dict[int, Tap] | None = None,
    returns_tuple: bool = False,
) -> Iterator[None]:
    """Install ``plan`` and taps on ``blocks`` for the duration of the ``with`` block."""
    handles: list = []
    patched: list[nn.Module] = []
    try:
        for b, fn in plan.replace.items():
            mod = blocks[b]

            def fwd(*args, _fn=fn, **kwargs):
                h = _fn(_hidden_arg(args, kwargs))
                return (h,) if returns_tuple else h

            mod.forward = fwd  # instance attribute shadows the class's forward
            patched.append(mod)
        for b, fn in plan.after.items():
            handles.append(blocks[b].register_forward_hook(lambda m, a, out, _fn=fn: _with_tensor(out, _fn(_out_tensor(out)))))
        for b, tap in (tap_in or {}).items():
            handles.append(
                blocks[b].register_forward_pre_hook(lambda m, a, k, _t=tap: _t(_hidden_arg(a, k)), with_kwargs=True)
            )
        for b, tap in (tap_out or {}).items():
            handles.append(blocks[b].register_forward_hook(lambda m, a, out, _t=tap: _t(_out_tensor(out))))
        yield
    finally:
        for h in handles:
            h.remove()
        for mod in patched:
            del mod.forward


def run_decoder(decoder: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> None:
    """Embeddings -> blocks -> final norm, with no LM head (taps collect what is needed)."""
    try:
        decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    except StopForward:
        pass


def capture_all_positions(model, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(last block's output ``[B, T, d]``, the model's own logits ``[B, T, V]``) for one batch."""
    box: dict[str, torch.Tensor] = {}
    last = model.n_layers - 1

    def tap(h: torch.Tensor) -> None:
        box["h"] = h

    def probe(m, a, out) -> None:
        box["tuple"] = isinstance(out, tuple)  # type: ignore[assignment]

    handle = model.blocks[0].register_forward_hook(probe)
    try:
        with applied(model.blocks, Plan(), tap_out={last: tap}):
            logits = model.hf(input_ids=input_ids, use_cache=False).logits
    finally:
        handle.remove()
    model.returns_tuple = bool(box.get("tuple", False))
    return box["h"], logits
