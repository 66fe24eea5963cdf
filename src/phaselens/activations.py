"""Residual-stream statistics over calibration tokens, from one forward pass per batch.

Everything here streams: batches of calibration text go through the (pruned) model, the runner reads
the block inputs/outputs needed, and callers keep only reductions (never ``[N, d]``).
"""

from __future__ import annotations

from typing import Any, Iterator

import torch

from .calibration import load_calibration, tokenize
from .runner import PrefixCache, Read, Runner
from .view import ModelView

#: What :func:`boundaries` yields per batch: ``{b: input of block b [n_tok, d]}`` for the
#: requested blocks, plus key ``L`` for the last block's output; only non-padding tokens.
Boundaries = dict[int, torch.Tensor]


def boundaries(
    view: ModelView,
    texts: Any = None,
    *,
    which: list[int] | None = None,
    seq_len: int = 256,
    batch_size: int | None = None,
    max_tokens: int | None = None,
    cache: PrefixCache | None = None,
) -> Iterator[Boundaries]:
    """Yield, batch by batch, the residual stream entering each block index in ``which``
    (default: every block index ``0..L-1`` and ``L`` = the last block's output) at the
    non-padding calibration tokens ``[n_tok, d]`` (in the model's dtype)."""
    base = view.base
    L = base.n_blocks
    which = list(range(L + 1)) if which is None else list(which)
    seqs = tokenize(base.tokenizer, load_calibration(texts), seq_len)
    reads = {"x": Read(tuple(b for b in which if b < L), "in", "tokens")}
    if L in which:
        reads["y"] = Read((L - 1,), "out", "tokens")
    for _batch, out in Runner(view, cache=cache).passes(seqs, reads, max_tokens=max_tokens, batch_size=batch_size):
        got = dict(out["x"])
        if L in which:
            got[L] = out["y"][L - 1]
        yield got
