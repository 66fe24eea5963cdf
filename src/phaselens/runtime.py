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
    branch: dict[int, Edit] = field(default_factory=dict)  # edits the MLP branch output of block b

    def merged(self, other: "Plan") -> "Plan":
        clash = set(self.replace) & set(other.replace)
        if clash:
            raise ValueError(f"two edits replace the same block(s) {sorted(clash)}")
        after = dict(self.after)
        for b, fn in other.after.items():
            after[b] = _compose(after[b], fn) if b in after else fn
        return Plan({**self.replace, **other.replace}, after, {**self.branch, **other.branch})


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
        for b, fn in plan.branch.items():
            handles.append(branch_module(blocks[b]).register_forward_hook(lambda m, a, out, _fn=fn: _fn(out)))
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


def _unwrap(mod: nn.Module) -> nn.Module:
    return mod._modules.get("_original_component", mod)  # a TransformerBridge wrapper holds the original


def branch_module(block: nn.Module) -> nn.Module:
    """The module whose output is the MLP branch's contribution to the residual stream of ``block``:
    ``post_feedforward_layernorm`` (Gemma: the norm follows the MLP) or ``mlp`` (Llama and most others)."""
    inner = _unwrap(block)
    for name in ("post_feedforward_layernorm", "mlp", "feed_forward"):
        mod = getattr(inner, name, None)
        if isinstance(mod, nn.Module):
            return _unwrap(mod)
    raise ValueError(f"cannot find the MLP branch of {type(inner).__name__}; ReplaceMe needs a block with .mlp")


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


class Replay:
    """Prefix reuse across forward passes of successive pruned views (the iterative sweep).

    Stores, per batch key, the input ``[B, T, d]`` of every block index and the last
    block's output (key ``L``). When the next view differs from the last one only from
    block ``start`` on, a pass replays the stored input of block ``start`` (block 0 returns
    it, blocks ``1..start-1`` are skipped) and records the new inputs from there.
    ``start = 0`` runs everything. Only the changed suffix is computed.
    """

    def __init__(self, n_blocks: int, device: str | torch.device = "cpu") -> None:
        self.n_blocks = n_blocks
        self.device = torch.device(device)
        self.store: dict[object, dict[int, torch.Tensor]] = {}
        self.start = 0
        self.key: object = None
        self.frozen = False  # True: replay stored prefixes but record nothing (trying candidate cuts)

    def begin(self, start: int) -> None:
        """Next passes recompute from block ``start`` (clamped to ``[0, L-1]``)."""
        self.start = max(0, min(int(start), self.n_blocks - 1))

    def start_for(self, key: object) -> int:
        have = self.store.get(key, {})
        return self.start if self.start in have else 0

    def plan(self, plan: Plan, key: object) -> tuple[Plan, dict[int, Tap], dict[int, Tap], int]:
        """(plan with the prefix replayed, recording taps in, recording tap out, start) for batch ``key``."""
        self.key = key
        start = self.start_for(key)
        slot = self.store.setdefault(key, {})
        replace = {b: fn for b, fn in plan.replace.items() if b >= start}
        if start > 0:
            cached = slot[start]
            replace[0] = lambda h, _c=cached: _c.to(h.device, h.dtype)
            for b in range(1, start):
                replace[b] = identity
        new = Plan(replace, {b: f for b, f in plan.after.items() if b >= start},
                   {b: f for b, f in plan.branch.items() if b >= start})

        def rec(b: int) -> Tap:
            def tap(h: torch.Tensor) -> None:
                slot[b] = h.detach().to(self.device, copy=True)

            return tap

        if self.frozen:
            return new, {}, {}, start
        return new, {b: rec(b) for b in range(start, self.n_blocks)}, {self.n_blocks - 1: rec(self.n_blocks)}, start

    def output_of(self, key: object, block: int) -> torch.Tensor:
        """The stored output of ``block`` (= the input of ``block + 1``)."""
        return self.store[key][block + 1]


def merge_taps(*taps: dict[int, Tap] | None) -> dict[int, Tap]:
    """One tap per block that calls every given tap of that block in order."""
    out: dict[int, list[Tap]] = {}
    for d in taps:
        for b, t in (d or {}).items():
            out.setdefault(b, []).append(t)

    def both(ts: list[Tap]) -> Tap:
        if len(ts) == 1:
            return ts[0]
        return lambda h: [t(h) for t in ts] and None

    return {b: both(ts) for b, ts in out.items()}
