"""A model as the lens sees it: the dense model, or a pruned / recovered view of it.

A :class:`ModelView` never copies weights: it names the removed blocks and the linear
operators standing in for cut spans, and turns them into a :class:`~phaselens.runtime.Plan`
for each forward pass. Every phaselens function that takes a model takes a view too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

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


@dataclass(eq=False)
class ModelView:
    """The dense ``base`` model minus ``removed`` blocks, with ``operators[span]`` (a map
    ``[..., d] -> [..., d]``) in place of the cut span ``span = (s, e)``.

    Attributes:
        kept: original indices of the surviving blocks, in order (``n_layers`` of them).
    """

    base: Model
    removed: tuple[int, ...] = ()
    operators: dict[tuple[int, int], Callable[[torch.Tensor], torch.Tensor]] = field(default_factory=dict)
    label: str = ""
    method: str | None = None

    def __post_init__(self) -> None:
        self.removed = tuple(sorted(self.removed))

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
        return self.label or (self.base.name if not self.removed else f"{self.base.name} -{list(self.removed)}")

    def plan(self) -> Plan:
        replace: dict[int, Any] = {b: identity for b in self.removed}
        for (s, e), op in self.operators.items():
            replace[s] = op  # the first block of the span applies the operator, the rest are skipped
        return Plan(replace)

    def __repr__(self) -> str:
        rec = f", recovered={self.method}" if self.operators else ""
        return f"ModelView({self.base.name!r}, removed={list(self.removed)}{rec}, L={self.n_layers})"


def as_view(model: Any) -> ModelView:
    """A :class:`ModelView` from a view, a :class:`Model` or anything :func:`load_model` takes."""
    if isinstance(model, ModelView):
        return model
    return ModelView(load_model(model))
