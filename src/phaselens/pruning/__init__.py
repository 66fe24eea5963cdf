"""Layer pruning: pruned views, block-selection criteria and the iterative sweep."""

from __future__ import annotations

from typing import Any, Iterable

from ..view import ModelView, as_view
from .criteria import CRITERIA, angular_distances, block_influence, select_blocks, selection, sleb_scores


def prune(model: Any, blocks: Iterable[int]) -> ModelView:
    """A view of ``model`` that skips ``blocks`` (original 0-based indices); no weights are copied.

    ``model`` may already be a pruned view: the new blocks are removed on top (recovery
    operators of the old view are dropped, since the spans change). Per-layer results of
    the view carry the original index of each surviving block.
    """
    view = as_view(model)
    L = view.base.n_layers
    blocks = list(blocks)
    for b in blocks:
        if isinstance(b, bool) or not isinstance(b, int) and not hasattr(b, "__index__"):
            raise ValueError(f"block indices must be ints, got {b!r}")
    blocks = [int(b) for b in blocks]
    bad = [b for b in blocks if not 0 <= b < L]
    if bad:
        raise ValueError(f"block indices {bad} are out of range for a model with {L} blocks (valid: 0..{L - 1})")
    dup = sorted({b for b in blocks if blocks.count(b) > 1})
    if dup:
        raise ValueError(f"block indices {dup} are repeated; list each block once")
    again = sorted(set(blocks) & set(view.removed))
    if again:
        raise ValueError(f"blocks {again} are already pruned from {view.name}")
    removed = tuple(view.removed) + tuple(blocks)
    if len(removed) >= L:
        raise ValueError(f"pruning {len(removed)} of {L} blocks leaves none; keep at least one block")
    return ModelView(view.base, removed)


__all__ = ["CRITERIA", "ModelView", "angular_distances", "block_influence", "prune", "select_blocks", "selection", "sleb_scores"]
