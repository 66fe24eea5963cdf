"""A model as the lens sees it: the dense model, or a pruned / recovered view of it.

A :class:`ModelView` never copies weights: it names the removed blocks and the linear
operators standing in for cut spans, and turns them into a :class:`~phaselens.runtime.Plan`
for each forward pass. Every phaselens function that takes a model takes a view too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from .models import Model, load_model
from .runtime import Plan, identity


def spans_of(blocks: tuple[int, ...] | list[int]) -> list[tuple[int, int]]:
    """Maximal runs of consecutive indices as half-open spans: ``[3, 4, 7] -> [(3, 5), (7, 8)]``."""
    spans: list[tuple[int, int]] = []
    for b in sorted(blocks):
        if spans and spans[-1][1] == b:
            spans[-1] = (spans[-1][0], b + 1)
        else:
            spans.append((b, b + 1))
    return spans


def _linear(w: torch.Tensor):
    cache: dict = {}

    def op(h: torch.Tensor) -> torch.Tensor:
        key = (h.device, h.dtype)
        if key not in cache:
            cache.clear()
            cache[key] = w.to(device=h.device, dtype=h.dtype)
        return h @ cache[key]

    return op


@dataclass(eq=False)
class ModelView:
    """The dense ``base`` model minus ``removed`` blocks.

    Attributes:
        base: the dense :class:`~phaselens.Model` (its weights are never copied).
        removed: original indices of the skipped blocks.
        operators: ``{(s, e): W [d, d]}``: the cut span ``[s, e)`` maps ``h -> h @ W``
            (a Ghosted-Layers operator or a rival); spans without one are skipped (identity).
        branch_operators: ``{b: T [d, d]}``: block ``b``'s MLP-branch output is mapped
            ``m -> m @ T`` (ReplaceMe).
        kept: original indices of the surviving blocks, in order (``n_layers`` of them).
    """

    base: Model
    removed: tuple[int, ...] = ()
    operators: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict)
    branch_operators: dict[int, torch.Tensor] = field(default_factory=dict)
    label: str = ""
    method: str | None = None

    def __post_init__(self) -> None:
        self.removed = tuple(sorted(self.removed))
        spans = set(self.spans)
        for s in self.operators:
            if tuple(s) not in spans:
                raise ValueError(f"operator for span {s} but the cut spans are {sorted(spans)}")
        self._ops = {s: _linear(w) for s, w in self.operators.items()}
        self._branch = {b: _linear(w) for b, w in self.branch_operators.items()}

    @property
    def kept(self) -> list[int]:
        gone = set(self.removed)
        return [b for b in range(self.base.n_layers) if b not in gone]

    @property
    def n_layers(self) -> int:
        return len(self.kept)

    @property
    def spans(self) -> list[tuple[int, int]]:
        return spans_of(self.removed)

    @property
    def name(self) -> str:
        if self.label:
            return self.label
        if not self.removed:
            return self.base.name
        rec = f" +{self.method}" if self.method else ""
        return f"{self.base.name} -{_fmt_blocks(self.removed)}{rec}"

    def plan(self) -> Plan:
        replace: dict[int, Any] = {b: identity for b in self.removed}
        for (s, _e), op in self._ops.items():
            replace[s] = op  # the first block of the span applies the operator, the rest are skipped
        return Plan(replace, {}, dict(self._branch))

    def signature(self) -> dict[int, object]:
        """Per block index, what the forward does there (to find the first block a change affects)."""
        sig: dict[int, object] = {b: ("skip",) for b in self.removed}
        for s, w in self.operators.items():
            sig[s[0]] = ("op", tuple(s), w)
        for b, w in self.branch_operators.items():
            sig[b] = ("branch", sig.get(b), w)
        return sig

    def __repr__(self) -> str:
        rec = f", recovered={self.method}" if self.operators or self.branch_operators else ""
        return f"ModelView({self.base.name!r}, removed={list(self.removed)}{rec}, L={self.n_layers})"


def _fmt_blocks(blocks: tuple[int, ...]) -> str:
    return ",".join(f"{s}" if e == s + 1 else f"{s}-{e - 1}" for s, e in spans_of(blocks))


def first_change(old: ModelView | None, new: ModelView) -> int:
    """The first block index at which ``new`` computes something different from ``old``
    (``0`` when there is no old view, ``L`` when they are the same)."""
    if old is None or old.base is not new.base:
        return 0
    a, b = old.signature(), new.signature()
    for i in range(new.base.n_layers):
        if not _same(a.get(i), b.get(i)):
            return i
    return new.base.n_layers


def _same(x: object, y: object) -> bool:
    if isinstance(x, torch.Tensor) or isinstance(y, torch.Tensor):
        return isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor) and x.shape == y.shape and bool(torch.equal(x, y))
    if isinstance(x, tuple) and isinstance(y, tuple):
        return len(x) == len(y) and all(_same(p, q) for p, q in zip(x, y))
    return x == y


def as_view(model: Any) -> ModelView:
    """A :class:`ModelView` from a view, a :class:`Model` or anything :func:`load_model` takes."""
    if isinstance(model, ModelView):
        return model
    return ModelView(load_model(model))
