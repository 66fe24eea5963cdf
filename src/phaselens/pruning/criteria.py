"""Which blocks to cut: Block Influence, angular distance, SLEB, random, and phase-targeted.

All similarities are cosines over the hidden dimension, one per token (``dim=-1`` of
``[n_tok, d]``), averaged over the non-padding calibration tokens. Scores are computed on
the model as given, so on a pruned view they are those of the current pruned model.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from ..activations import boundaries
from .. import checks
from ..errors import PruningError
from ..runner import PrefixCache
from ..view import ModelView, as_view
from ..types import ModelLike, TaskLike

Criterion = Literal["bi", "angular", "sleb", "random", "silent", "decisive"]
CRITERIA: tuple[str, ...] = ("bi", "angular", "sleb", "random", "silent", "decisive")
PLACEMENTS: tuple[str, ...] = ("adjacent", "far", "center")


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-token cosine over channels: ``[n, d], [n, d] -> [n]`` (float64)."""
    return torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=-1, eps=1e-12)


def block_influence(model: ModelLike, calibration: Any = None, *, seq_len: int = 256, cache: PrefixCache | None = None) -> dict[int, float]:
    """ShortGPT Block Influence ``BI_l = 1 - mean_t cos(h_in_l[t], h_out_l[t])`` of every surviving block
    (keys: original block indices)."""
    view = as_view(model)
    kept = view.kept
    # The output of block b is the input of block b + 1 (read before any operator standing in for a
    # cut span there), so a recovery operator after b is never attributed to b.
    nxt = {b: b + 1 for b in kept}
    which = sorted(set(kept) | set(nxt.values()))
    sums = dict.fromkeys(kept, 0.0)
    n = 0
    for got in boundaries(view, calibration, which=which, seq_len=seq_len, cache=cache):
        for b in kept:
            sums[b] += float(_cos(got[b], got[nxt[b]]).sum())
        n += got[kept[0]].shape[0]
    return {b: 1.0 - sums[b] / n for b in kept}


def angular_distances(model: ModelLike, n: int, calibration: Any = None, *, seq_len: int = 256,
                      cache: PrefixCache | None = None) -> dict[int, float]:
    """Gromov et al.: ``d(l, n) = mean_t arccos(cos(h_in_l, h_out_{l+n-1})) / pi`` for every run of
    ``n`` consecutive surviving blocks, keyed by the run's first block (original index)."""
    view = as_view(model)
    kept = view.kept
    if not 1 <= n < len(kept):
        raise PruningError(f"n must be in 1..{len(kept) - 1} for a model with {len(kept)} blocks, got {n}")
    runs = range(len(kept) - n + 1)
    end = {i: kept[i + n - 1] + 1 for i in runs}  # input of block l+n-1's successor = output of l+n-1
    sums = {kept[i]: 0.0 for i in runs}
    count = 0
    which = sorted({kept[i] for i in runs} | set(end.values()))
    for got in boundaries(view, calibration, which=which, seq_len=seq_len, cache=cache):
        for i in runs:
            c = _cos(got[kept[i]], got[end[i]]).clamp(-1, 1)
            sums[kept[i]] += float(torch.arccos(c).sum()) / math.pi
        count += got[kept[0]].shape[0]
    return {b: v / count for b, v in sums.items()}


def sleb_scores(model: ModelLike, calibration: Any = None, *, seq_len: int = 128, n_texts: int = 8) -> dict[int, float]:
    """Calibration perplexity of the model with each surviving block removed in turn (SLEB's
    score; lower = safer to cut), keyed by original block index.

    The candidates are plain pruned models (``model``'s removed blocks plus one more); recovery
    operators of a recovered view are not part of them. Perplexity is measured on the first
    ``n_texts`` calibration passages truncated to ``seq_len`` tokens. Each candidate recomputes
    only from its own block on (the inputs of the unchanged prefix are replayed).
    """
    from ..calibration import load_calibration
    from ..perplexity import perplexity

    view = as_view(model)
    if isinstance(n_texts, bool) or not isinstance(n_texts, (int, np.integer)) or n_texts < 1:
        raise PruningError(f"n_texts must be a positive int, got {n_texts!r}")
    plain = ModelView(view.base, view.removed)
    texts = load_calibration(calibration)[:n_texts]
    cache = PrefixCache()
    perplexity(plain, texts, seq_len=seq_len, cache=cache)  # records every block's input once
    cache.recording = False  # each candidate replays the unchanged prefix before its own block
    return {b: perplexity(_without(plain, [b]), texts, seq_len=seq_len, cache=cache) for b in view.kept}


def _without(view: ModelView, blocks: list[int]) -> ModelView:
    return ModelView(view.base, tuple(view.removed) + tuple(blocks))


@dataclass
class Selection:
    """Blocks chosen by a criterion, with the scores they were chosen by."""

    blocks: list[int]
    criterion: str
    scores: dict[int, float]


def select_blocks(
    model: ModelLike,
    n: int,
    criterion: Criterion = "bi",
    *,
    calibration: Any = None,
    task: TaskLike = None,
    seed: int = 0,
    placement: str | int = "adjacent",
    transition: Any = None,
) -> list[int]:
    """``n`` original block indices to cut from ``model`` (dense or already pruned), sorted.

    Args:
        criterion: ``"bi"`` (lowest Block Influence), ``"angular"`` (the contiguous ``n`` with the
            smallest angular distance), ``"sleb"`` (greedy: repeatedly the block whose removal
            raises calibration perplexity least), ``"random"`` (seeded control), ``"silent"`` /
            ``"decisive"`` (``n`` contiguous blocks inside that phase of ``task``).
        placement: for the phase criteria: ``"adjacent"`` (next to the transition, default),
            ``"far"`` (at the other end of the phase), ``"center"``, or an int: the first block.
        transition: a precomputed :class:`~phaselens.Transition` of ``model`` on ``task``.
    """
    return selection(model, n, criterion, calibration=calibration, task=task, seed=seed,
                     placement=placement, transition=transition).blocks


def selection(model: ModelLike, n: int, criterion: str = "bi", *, calibration: Any = None, task: TaskLike = None,
              seed: int = 0, placement: str | int = "adjacent", transition: Any = None) -> Selection:
    """:func:`select_blocks` with the scores behind the choice."""
    if criterion not in CRITERIA:
        raise PruningError(f"unknown criterion {criterion!r}; choose one of {CRITERIA}")
    checks.integer("n", n, minimum=1, error=PruningError, what="blocks to cut")
    checks.integer("seed", seed, error=PruningError)
    view = as_view(model)
    kept = view.kept
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n < len(kept):
        raise PruningError(f"n must be an int in 1..{len(kept) - 1} (the model has {len(kept)} blocks), got {n!r}")
    if criterion == "bi":
        s = block_influence(view, calibration)
        return Selection(sorted(sorted(s, key=lambda b: (s[b], b))[:n]), criterion, s)
    if criterion == "angular":
        s = angular_distances(view, n, calibration)
        first = min(s, key=lambda b: (s[b], b))
        i = kept.index(first)
        return Selection(kept[i : i + n], criterion, s)
    if criterion == "sleb":
        cut: list[int] = []
        first_scores: dict[int, float] = {}
        for _ in range(n):
            s = sleb_scores(_without(view, cut), calibration)
            first_scores = first_scores or s
            cut.append(min(s, key=lambda b: (s[b], b)))
        return Selection(sorted(cut), criterion, first_scores)
    if criterion == "random":
        return Selection(sorted(random.Random(seed).sample(kept, n)), criterion, {})
    return _phase_selection(view, n, criterion, task, placement, transition)


def _phase_selection(view: ModelView, n: int, phase: str, task: TaskLike, placement: str | int, transition: Any) -> Selection:
    if transition is None:
        if task is None:
            raise PruningError(f"criterion {phase!r} needs task= (the phases are those of a task)")
        from ..trace import transition_point

        transition = transition_point(view, task, n_boot=200)
    if transition.layer is None:
        raise PruningError(f"criterion {phase!r}: {transition.reason}")
    kept = view.kept
    t = transition.layer
    inside = [b for b in kept if (b < t if phase == "silent" else b >= t)]
    if len(inside) < n:
        raise PruningError(
            f"the {phase} phase has {len(inside)} surviving blocks ({inside[:1]}..{inside[-1:]}), fewer than n={n}; "
            "lower n or pick the other phase"
        )
    if isinstance(placement, (int, np.integer)) and not isinstance(placement, bool):
        if placement not in inside or inside.index(placement) + n > len(inside):
            raise PruningError(f"placement {placement}: {n} blocks from there do not fit inside the {phase} phase {inside}")
        i = inside.index(placement)
    elif placement == "center":
        i = (len(inside) - n) // 2
    elif placement in ("adjacent", "far"):
        near_end = (phase == "silent") == (placement == "adjacent")
        i = len(inside) - n if near_end else 0
    else:
        raise PruningError(f"placement must be one of {PLACEMENTS} or a block index, got {placement!r}")
    return Selection(inside[i : i + n], phase, {})
