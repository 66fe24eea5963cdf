"""Which blocks to cut: Block Influence, angular distance, SLEB, random, and phase-targeted.

Each criterion is a registered :class:`Criterion` (:data:`CRITERIA`) that owns how it scores and selects
blocks; :func:`select_blocks`, :func:`~phaselens.iterative_prune`, the CLI and study specs all read the
registry. ``@pl.register_criterion("name")`` adds one.

All similarities are cosines over the hidden dimension, one per token (``dim=-1`` of
``[n_tok, d]``), averaged over the non-padding calibration tokens. Scores are computed on
the model as given, so on a pruned view they are those of the current pruned model.
"""

from __future__ import annotations

import math
import random
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from ..activations import boundaries
from ..calibration import load_calibration
from ..perplexity import perplexity
from ..trace import transition_point
from .. import checks
from ..errors import PruningError
from ..runner import PrefixCache
from ..registry import Registry
from ..resume import digest
from ..view import ModelView, as_view
from ..types import ModelLike, TaskLike

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


SLEB_TEXTS = 8  # calibration passages SLEB scores on (of seq_len 128 tokens)


def sleb_scores(model: ModelLike, calibration: Any = None, *, seq_len: int = 128, n_texts: int = SLEB_TEXTS) -> dict[int, float]:
    """Calibration perplexity of the model with each surviving block removed in turn (SLEB's
    score; lower = safer to cut), keyed by original block index.

    The candidates are plain pruned models (``model``'s removed blocks plus one more); recovery
    operators of a recovered view are not part of them. Perplexity is measured on the first
    ``n_texts`` calibration passages truncated to ``seq_len`` tokens. Each candidate recomputes
    only from its own block on (the inputs of the unchanged prefix are replayed).
    """
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


class Criterion:
    """A block-selection criterion: it scores the surviving blocks of a model and chooses ``n`` of them to cut.

    Subclass it and register it with ``@phaselens.register_criterion("name")``. Override :meth:`scores`
    (one number per surviving block, original indices as keys; the lowest is cut first): the default
    :meth:`select` cuts the ``n`` lowest, and :func:`~phaselens.iterative_prune` cuts the lowest after every
    cut. Override :meth:`select` for a criterion that chooses otherwise (contiguous runs, phases).

    Attributes:
        needs_task: :meth:`select` needs ``task=`` (or ``transition=``): the phase criteria.
        uses_calibration: the scores are computed on calibration text.
        uses_seed: the choice is seeded (``seed=``).
        iterative: usable in :func:`~phaselens.iterative_prune` (scores one block at a time).
    """

    name: str = ""
    needs_task: bool = False
    uses_calibration: bool = True
    uses_seed: bool = False
    iterative: bool = True

    def scores(self, view: ModelView, *, calibration: Any = None, seed: int = 0, step: int = 0,
               cache: PrefixCache | None = None) -> dict[int, float]:
        """``{block: score}`` for every surviving block of ``view`` (lowest cut first); ``step`` is the sweep's step."""
        raise PruningError(f"criterion {self.name!r} does not score blocks one by one, so it cannot run in "
                           f"iterative_prune; use one of {sweep_criteria()}")

    def select(self, view: ModelView, n: int, *, calibration: Any = None, task: TaskLike = None, seed: int = 0,
               placement: str | int = "adjacent", transition: Any = None) -> Selection:
        """``n`` blocks of ``view`` to cut (``1 <= n < n_kept``, checked by the caller): the ``n`` lowest scores."""
        s = self.scores(view, calibration=calibration, seed=seed)
        return Selection(sorted(sorted(s, key=lambda b: (s[b], b))[:n]), self.name, s)

    def __repr__(self) -> str:
        return f"<criterion {self.name!r}>"


CRITERIA: Registry[Criterion] = Registry("criterion", "selection criterion", PruningError)


def register_criterion(name: str, *, replace: bool = False) -> Callable:
    """Decorator: register a :class:`Criterion` subclass (instantiated with no arguments) as ``name``."""
    return CRITERIA.register(name, replace=replace)


def sweep_criteria() -> tuple[str, ...]:
    """The registered criteria usable in :func:`~phaselens.iterative_prune` (``iterative``)."""
    return tuple(n for n, c in CRITERIA.items() if c.iterative)


@register_criterion("bi")
class BlockInfluence(Criterion):
    """ShortGPT: the ``n`` blocks of lowest Block Influence."""

    def scores(self, view, *, calibration=None, seed=0, step=0, cache=None):
        return block_influence(view, calibration, cache=cache)


@register_criterion("angular")
class Angular(Criterion):
    """Gromov et al.: the contiguous ``n`` blocks of smallest angular distance (``n = 1`` in a sweep)."""

    def scores(self, view, *, calibration=None, seed=0, step=0, cache=None):
        return angular_distances(view, 1, calibration, cache=cache)

    def select(self, view, n, *, calibration=None, task=None, seed=0, placement="adjacent", transition=None):
        s = angular_distances(view, n, calibration)
        first = min(s, key=lambda b: (s[b], b))
        i = view.kept.index(first)
        return Selection(view.kept[i : i + n], self.name, s)


# SLEB's greedy path per (model fingerprint, blocks already removed, calibration passages scored): a selection of n
# blocks after one of m < n on the same model and text extends the stored path instead of recomputing its first m
# steps (a grid of cut sizes, or one cut size for several tasks, scores each step once per process).
_SLEB_PATHS: OrderedDict[tuple, list[tuple[int, dict[int, float]]]] = OrderedDict()
_SLEB_PATHS_KEPT = 32


def _sleb_key(view: ModelView, calibration: Any) -> tuple:
    texts = digest(load_calibration(calibration)[:SLEB_TEXTS])
    return (view.base.fingerprint, str(view.base.device), str(view.base.dtype), tuple(sorted(view.removed)), texts)


@register_criterion("sleb")
class Sleb(Criterion):
    """SLEB: greedily the block whose removal raises calibration perplexity least (the greedy path is kept per
    model fingerprint, start and calibration text, so a larger cut extends a smaller one's path)."""

    def scores(self, view, *, calibration=None, seed=0, step=0, cache=None):
        return sleb_scores(view, calibration)

    def select(self, view, n, *, calibration=None, task=None, seed=0, placement="adjacent", transition=None):
        key = _sleb_key(view, calibration)
        path = _SLEB_PATHS.pop(key, [])
        try:
            while len(path) < n:
                s = sleb_scores(_without(view, [b for b, _ in path]), calibration)
                path.append((min(s, key=lambda b: (s[b], b)), s))
        finally:
            _SLEB_PATHS[key] = path  # most recently used last; the oldest paths go first
            while len(_SLEB_PATHS) > _SLEB_PATHS_KEPT:
                _SLEB_PATHS.popitem(last=False)
        return Selection(sorted(b for b, _ in path[:n]), self.name, dict(path[0][1]))


@register_criterion("random")
class RandomCut(Criterion):
    """A seeded random control: ``n`` blocks drawn with ``random.Random(seed)``; in a sweep, scores drawn
    with ``random.Random(f"{seed}:{step}")``."""

    uses_calibration = False
    uses_seed = True

    def scores(self, view, *, calibration=None, seed=0, step=0, cache=None):
        rng = random.Random(f"{seed}:{step}")
        return {b: rng.random() for b in view.kept}

    def select(self, view, n, *, calibration=None, task=None, seed=0, placement="adjacent", transition=None):
        return Selection(sorted(random.Random(seed).sample(view.kept, n)), self.name, {})


class PhaseCriterion(Criterion):
    """``n`` contiguous blocks inside one phase of ``task`` (``placement`` says where in it)."""

    needs_task = True
    uses_calibration = False
    iterative = False
    phase = ""

    def select(self, view, n, *, calibration=None, task=None, seed=0, placement="adjacent", transition=None):
        return _phase_selection(view, n, self.phase, task, placement, transition)


@register_criterion("silent")
class Silent(PhaseCriterion):
    phase = "silent"


@register_criterion("decisive")
class Decisive(PhaseCriterion):
    phase = "decisive"


def select_blocks(
    model: ModelLike,
    n: int,
    criterion: str = "bi",
    *,
    calibration: Any = None,
    task: TaskLike = None,
    seed: int = 0,
    placement: str | int = "adjacent",
    transition: Any = None,
) -> list[int]:
    """``n`` original block indices to cut from ``model`` (dense or already pruned), sorted.

    Args:
        criterion: a name in :data:`CRITERIA`: ``"bi"`` (lowest Block Influence), ``"angular"`` (the contiguous
            ``n`` with the smallest angular distance), ``"sleb"`` (greedy: repeatedly the block whose removal
            raises calibration perplexity least), ``"random"`` (seeded control), ``"silent"`` / ``"decisive"``
            (``n`` contiguous blocks inside that phase of ``task``), or one registered with
            :func:`register_criterion`.
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
        raise PruningError(f"unknown criterion {criterion!r}; choose one of {CRITERIA.names()} "
                           "(or register your own with phaselens.register_criterion)")
    checks.integer("n", n, minimum=1, error=PruningError, what="blocks to cut")
    checks.integer("seed", seed, error=PruningError)
    check_placement_arg(placement)
    layer = getattr(transition, "layer", "missing")
    if transition is not None and not (layer is None or isinstance(layer, (int, np.integer))):
        raise PruningError(f"transition must be a phaselens Transition (transition_point(...)) or None, got "
                           f"{type(transition).__name__}")
    view = as_view(model)
    kept = view.kept
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n < len(kept):
        raise PruningError(f"n must be an int in 1..{len(kept) - 1} (the model has {len(kept)} blocks), got {n!r}")
    crit = CRITERIA.get(criterion)
    got = crit.select(view, int(n), calibration=calibration, task=task, seed=seed, placement=placement,
                      transition=transition)
    return Selection(list(got.blocks), criterion, dict(got.scores))


def check_placement_arg(placement: Any) -> None:
    """``placement`` of :func:`select_blocks`: one of :data:`PLACEMENTS` or a block index >= 0 (checked before any
    model work, whatever the criterion)."""
    if isinstance(placement, (int, np.integer)) and not isinstance(placement, (bool, np.bool_)):
        if placement < 0:
            raise PruningError(f"placement {placement}: a block index must be >= 0")
        return
    if not isinstance(placement, str) or placement not in PLACEMENTS:
        raise PruningError(f"placement must be one of {PLACEMENTS} or a block index, got {placement!r}")


def _phase_selection(view: ModelView, n: int, phase: str, task: TaskLike, placement: str | int, transition: Any) -> Selection:
    if transition is None:
        if task is None:
            raise PruningError(f"criterion {phase!r} needs task= (the phases are those of a task)")

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
