"""Perplexity of a dense, pruned or recovered model on text (the language-modelling control).

Token-level: ``exp( sum of next-token NLL / number of predicted tokens )`` over all
passages, predicting every token after the first of each (truncated) passage. The
vocabulary projection is done in chunks of positions, never as a ``[B, T, V]`` tensor.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .calibration import calibration_batches, heldout_texts, load_calibration
from .runtime import Replay, applied, merge_taps
from .view import as_view

_CHUNK = 1024


def perplexity(
    model: Any,
    texts: Any = None,
    *,
    seq_len: int = 256,
    batch_size: int = 8,
    replay: Replay | None = None,
) -> float:
    """Perplexity of ``model`` (model, view or spec) on ``texts``.

    Args:
        texts: ``None`` for the bundled *held-out* passages (never used for fitting),
            ``"calibration"`` for the bundled fit passages, a text-file path or a list of strings.
        seq_len: passages are truncated to this many tokens.
    """
    view = as_view(model)
    base = view.base
    if texts is None:
        passages = heldout_texts()
    elif isinstance(texts, str) and texts == "calibration":
        passages = load_calibration(None)
    else:
        passages = load_calibration(texts)
    nll, count = 0.0, 0
    with torch.inference_mode():
        for j, (ids, att) in enumerate(calibration_batches(base, passages, seq_len=seq_len, batch_size=batch_size)):
            plan, t_in, t_out = view.plan(), {}, {}
            if replay is not None:
                plan, t_in, t_out, _ = replay.plan(plan, ("ppl", j, tuple(ids.shape), int(ids[0, 1])))
            with applied(base.blocks, plan, tap_in=t_in, tap_out=merge_taps(t_out), returns_tuple=base.returns_tuple):
                h = base.decoder(input_ids=ids, attention_mask=att, use_cache=False).last_hidden_state
            tgt = ids[:, 1:]
            valid = att[:, 1:].bool() & att[:, :-1].bool()
            rows, cols = valid.nonzero(as_tuple=True)
            for c in range(0, len(rows), _CHUNK):
                r, t = rows[c : c + _CHUNK], cols[c : c + _CHUNK]
                z = base.unembed_logits(h[r, t])  # the decoder's output is already normed
                nll += torch.nn.functional.cross_entropy(z, tgt[r, t], reduction="sum").item()
            count += int(valid.sum())
    if count == 0:
        raise ValueError("no tokens to score: every passage is shorter than two tokens")
    return math.exp(nll / count)
