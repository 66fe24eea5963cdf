"""A model as the lens sees it: the dense model, or a pruned / recovered / edited view of it.

A :class:`ModelView` never copies weights: it names the removed blocks and the linear operators
standing in for cut spans, and turns them into a :class:`~phaselens.runner.Plan` for each forward
pass. Every phaselens function that takes a model takes a view too.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import torch

from .deprecation import renamed_property
from .errors import PruningError, RecoveryError
from .loading import load_model
from .models import Model
from .runner import Plan, skip
from .types import ModelLike

#: the function :meth:`ModelView.export` calls (``phaselens.export.export_view`` registers itself: the exporter sits
#: on a higher floor, so this module never imports it)
EXPORTERS: list[Any] = []


def spans_of(blocks: tuple[int, ...] | list[int]) -> list[tuple[int, int]]:
    """Maximal runs of consecutive indices as half-open spans: ``[3, 4, 7] -> [(3, 5), (7, 8)]``."""
    spans: list[tuple[int, int]] = []
    for b in sorted(blocks):
        if spans and spans[-1][1] == b:
            spans[-1] = (spans[-1][0], b + 1)
        else:
            spans.append((b, b + 1))
    return spans


def fmt_blocks(blocks: Any) -> str:
    """``[3, 4, 5, 9] -> "3-5,9"`` (``"-"`` for none)."""
    return ",".join(f"{s}" if e == s + 1 else f"{s}-{e - 1}" for s, e in spans_of(tuple(blocks))) or "-"


def _linear(w: torch.Tensor):
    """``h -> h @ w``, with ``w`` moved once to the activations' device and dtype."""
    cache: dict = {}

    def op(h: torch.Tensor) -> torch.Tensor:
        key = (h.device, h.dtype)
        if key not in cache:
            cache.clear()
            cache[key] = w.to(device=h.device, dtype=h.dtype)
        return h @ cache[key]

    return op


def _digest(w: torch.Tensor) -> str:
    return hashlib.sha1(w.detach().float().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]


#: public names of the two helpers above (the export module builds views from stored operators)
linear_map = _linear
digest = _digest


def _check_operator(w: Any, what: str, d: int) -> torch.Tensor:
    if not isinstance(w, torch.Tensor):
        raise RecoveryError(f"{what} must be a torch tensor [d, d], got {type(w).__name__}")
    if not w.is_floating_point():
        raise RecoveryError(f"{what} has dtype {w.dtype}; an operator is a floating-point [{d}, {d}] matrix")
    if tuple(w.shape) != (d, d):
        raise RecoveryError(f"{what} has shape {tuple(w.shape)}, but the model's hidden size is {d}: an operator "
                            f"must be [{d}, {d}] (h -> h @ W)")
    if not bool(torch.isfinite(w).all()):
        raise RecoveryError(f"{what} holds NaN or Inf; refit it (more calibration text, or a larger lam=)")
    return w


@dataclass(eq=False)
class ModelView:
    """The dense ``base`` model minus ``removed`` blocks.

    Attributes:
        base: the dense :class:`~phaselens.Model` (its weights are never copied).
        removed: original indices of the skipped blocks.
        operators: ``{(s, e): W [d, d]}``: the cut span ``[s, e)`` maps ``h -> h @ W`` (a Ghosted-Layers
            operator or a rival); spans without one are skipped (identity).
        branch_operators: ``{b: T [d, d]}``: block ``b``'s MLP-branch output is mapped ``m -> m @ T`` (ReplaceMe).
        kept: original indices of the surviving blocks, in order (``n_kept`` of them; ``n_blocks`` is the dense depth ``L``).
    """

    base: Model
    removed: tuple[int, ...] = ()
    operators: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict)
    branch_operators: dict[int, torch.Tensor] = field(default_factory=dict)
    label: str = ""
    method: str | None = None

    def __post_init__(self) -> None:
        L, d = self.base.n_blocks, self.base.d_model
        removed = list(self.removed)
        for b in removed:
            if isinstance(b, bool) or not isinstance(b, int) and not hasattr(b, "__index__"):
                raise PruningError(f"block indices must be ints, got {b!r}")
        removed = [int(b) for b in removed]
        bad = [b for b in removed if not 0 <= b < L]
        if bad:
            raise PruningError(f"block indices {bad} are out of range for {self.base.name} with {L} blocks (valid: 0..{L - 1})")
        if len(set(removed)) != len(removed):
            dup = sorted({b for b in removed if removed.count(b) > 1})
            raise PruningError(f"block indices {dup} are repeated; list each block once")
        if len(removed) >= L:
            raise PruningError(f"pruning {len(removed)} of {L} blocks leaves none; keep at least one block")
        self.removed = tuple(sorted(removed))
        spans = set(self.spans)
        self.operators = {(int(s), int(e)): w for (s, e), w in self.operators.items()}
        for s, w in self.operators.items():
            if s not in spans:
                raise RecoveryError(f"an operator for span {s}, but the cut spans of {self.base.name} "
                                    f"-{fmt_blocks(self.removed)} are {sorted(spans)}")
            _check_operator(w, f"the operator of span {s}", d)
        self.branch_operators = {int(b): w for b, w in self.branch_operators.items()}
        for b, w in self.branch_operators.items():
            if not 0 <= b < L or b in self.removed:
                raise RecoveryError(f"a branch operator for block {b}, which is not a surviving block of the view")
            _check_operator(w, f"the MLP-branch operator of block {b}", d)
        self._ops = {s: _linear(w) for s, w in self.operators.items()}
        self._branch = {b: _linear(w) for b, w in self.branch_operators.items()}

    @property
    def kept(self) -> list[int]:
        gone = set(self.removed)
        return [b for b in range(self.base.n_blocks) if b not in gone]

    @property
    def n_kept(self) -> int:
        """How many blocks this view runs."""
        return len(self.kept)

    @property
    def n_blocks(self) -> int:
        """``L``: the dense model's depth (as on :class:`~phaselens.Model` and in every result)."""
        return self.base.n_blocks

    n_layers = renamed_property("n_layers", "n_kept")

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
        return f"{self.base.name} -{fmt_blocks(self.removed)}{rec}"

    def plan(self) -> Plan:
        """The :class:`~phaselens.runner.Plan` of a pass through this view."""
        replace: dict[int, Any] = {b: skip for b in self.removed}
        names = {b: f"block {b} skipped (pruned)" for b in self.removed}
        for (s, e), op in self._ops.items():
            replace[s] = op  # the first block of the span applies the operator, the rest are skipped
            names[s] = f"the {self.method or 'recovery'} operator standing in for blocks {s}-{e - 1}"
        for b in self._branch:
            names[b] = f"block {b} with its MLP branch mapped by the {self.method or 'branch'} operator"
        return Plan(replace, mlp=dict(self._branch), names=names)

    @cached_property
    def _signature(self) -> dict[int, str]:
        sig: dict[int, str] = {b: "skip" for b in self.removed}
        for (s, e), w in self.operators.items():
            sig[s] = f"op{s}-{e}:{_digest(w)}"
        for b, w in self.branch_operators.items():
            sig[b] = f"mlp:{_digest(w)}"
        return sig

    def signature(self) -> dict[int, str]:
        """Per block index, a token of what the forward computes there (``""``: the block itself); the runner's
        prefix cache and CKA's "same computation" check compare these."""
        return dict(self._signature)

    def export(self, folder: Any, *, dtype: Any = None, overwrite: bool = False) -> Any:
        """Write this view as a Hugging Face checkpoint folder (:func:`phaselens.export.export_view`)."""
        if not EXPORTERS:
            raise PruningError("no exporter is registered; import phaselens (phaselens.export registers it)")
        return EXPORTERS[-1](self, folder, dtype=dtype, overwrite=overwrite)

    def __repr__(self) -> str:
        rec = f", recovered={self.method}" if self.operators or self.branch_operators else ""
        return f"ModelView({self.base.name!r}, removed={list(self.removed)}{rec}, kept={self.n_kept} of {self.n_blocks})"


@dataclass(eq=False)
class EditedView(ModelView):
    """A :class:`ModelView` whose forward also applies ``edits`` (a :class:`~phaselens.runner.Plan`: noise
    after a block, a block's update replaced, ...). Anything that takes a model takes it."""

    edits: Plan = field(default_factory=Plan)

    @classmethod
    def of(cls, model: Any, edits: Plan, label: str = "") -> "EditedView":
        v = as_view(model)
        if isinstance(v, EditedView):  # an edited view's own edits (an export's operators) stay, then these
            edits = v.edits.merged(edits)
        return cls(v.base, v.removed, dict(v.operators), dict(v.branch_operators), label or v.label, v.method, edits=edits)

    def plan(self) -> Plan:
        return super().plan().merged(self.edits)

    def signature(self) -> dict[int, str]:
        sig = super().signature()
        for b in self.edits.blocks():
            sig[b] = f"{sig.get(b, '')}+edit{self.edits.serial}"
        return sig


def as_view(model: ModelLike) -> ModelView:
    """A :class:`ModelView` from a view, a :class:`Model` or anything :func:`load_model` takes."""
    if isinstance(model, ModelView):
        return model
    return ModelView(load_model(model))
