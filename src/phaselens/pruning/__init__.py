"""Layer pruning: pruned views, block-selection criteria and the iterative sweep."""

from __future__ import annotations

from typing import Iterable

from ..errors import PruningError
from ..view import ModelView, as_view
from .criteria import (CRITERIA, Criterion, Selection, angular_distances, block_influence, register_criterion, select_blocks,
                       selection, sleb_scores, sweep_criteria)
from ..types import ModelLike


def prune(model: ModelLike, blocks: Iterable[int]) -> ModelView:
    """A view of ``model`` that skips ``blocks`` (original 0-based indices); no weights are copied.

    ``model`` may already be a pruned view: the new blocks are removed on top (recovery
    operators of the old view are dropped, since the spans change). Per-layer results of
    the view carry the original index of each surviving block.
    """
    view = as_view(model)
    if isinstance(blocks, (str, bytes)) or not isinstance(blocks, Iterable):
        raise PruningError(f"blocks must be a list of block indices, e.g. prune(model, [3, 4]), got {blocks!r}")
    blocks = list(blocks)
    for b in blocks:
        if isinstance(b, bool) or not isinstance(b, int) and not hasattr(b, "__index__"):
            raise PruningError(f"block indices must be ints, got {b!r}")
    again = sorted(set(int(b) for b in blocks) & set(view.removed))
    if again:
        raise PruningError(f"blocks {again} are already pruned from {view.name}")
    return ModelView(view.base, tuple(view.removed) + tuple(int(b) for b in blocks))


__all__ = ["CRITERIA", "Criterion", "ModelView", "Selection", "angular_distances", "block_influence", "prune",
           "register_criterion", "select_blocks", "selection", "sleb_scores", "sweep_criteria"]
