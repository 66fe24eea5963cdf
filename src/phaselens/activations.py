"""Residual-stream statistics over calibration tokens, from one forward pass per batch.

Everything here streams: batches of calibration text go through the (pruned) model, taps
read the block inputs/outputs needed, and only reductions are kept (never ``[N, d]``).
"""

from __future__ import annotations

from typing import Any, Iterator

import torch

from .calibration import calibration_batches, load_calibration
from .runtime import Replay, applied, merge_taps, run_decoder
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
    batch_size: int = 8,
    replay: Replay | None = None,
) -> Iterator[Boundaries]:
    """Yield, batch by batch, the residual stream entering each block index in ``which``
    (default: every block index ``0..L-1`` and ``L`` = the last block's output) at the
    non-padding calibration tokens ``[n_tok, d]`` (in the model's dtype)."""
    base = view.base
    L = base.n_layers
    which = list(range(L + 1)) if which is None else list(which)
    texts = load_calibration(texts)
    with torch.inference_mode():
        for j, (ids, att) in enumerate(calibration_batches(base, texts, seq_len=seq_len, batch_size=batch_size)):
            mask = att.bool()
            got: dict[int, torch.Tensor] = {}

            def grab(b: int):
                return lambda h: got.__setitem__(b, h[mask])

            t_in = {b: grab(b) for b in which if b < L}
            t_out = {L - 1: grab(L)} if L in which else {}
            plan = view.plan()
            if replay is not None:
                key = ("cal", j, tuple(ids.shape), int(ids[0, 1]))
                plan, r_in, r_out, start = replay.plan(plan, key)
                for b in which:
                    if b <= start and b in replay.store[key]:
                        got[b] = replay.store[key][b][mask.to(replay.device)].to(base.device)
                t_in = merge_taps({b: t for b, t in t_in.items() if b not in got}, r_in)
                t_out = merge_taps({b: t for b, t in t_out.items() if L not in got}, r_out)
            with applied(base.blocks, plan, tap_in=t_in, tap_out=t_out, returns_tuple=base.returns_tuple):
                run_decoder(base.decoder, ids, att)
            yield got
