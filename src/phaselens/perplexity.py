"""Perplexity of a dense, pruned or recovered model on text (the language-modelling control).

Token-level: ``exp( sum of next-token NLL / number of predicted tokens )`` over all passages,
predicting every token after the first of each (truncated) passage. The vocabulary projection is
done in chunks of positions, never as a ``[B, T, V]`` tensor.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from . import checks
from .calibration import check_seq_len, heldout_texts, load_calibration, tokenize
from .errors import CalibrationError
from .runner import Batch, Positions, PrefixCache, Read, Runner
from .view import as_view
from .types import ModelLike

_CHUNK = 1024


@torch.inference_mode()
def perplexity(
    model: ModelLike,
    texts: Any = None,
    *,
    seq_len: int = 256,
    batch_size: int | None = None,
    max_tokens: int | None = None,
    cache: PrefixCache | None = None,
) -> float:
    """Perplexity of ``model`` (model, view or spec) on ``texts``.

    Args:
        texts: ``None`` for the bundled *held-out* passages (never used for fitting),
            ``"calibration"`` for the bundled fit passages, a text-file path or a list of strings.
        seq_len: passages are truncated to this many tokens.
        batch_size, max_tokens: at most this many passages / padded tokens per pass.
        cache: replays identical prefixes of earlier passes (:class:`~phaselens.runner.PrefixCache`).
    """
    nll, tokens = passage_nll(model, texts, seq_len=seq_len, batch_size=batch_size, max_tokens=max_tokens, cache=cache)
    return math.exp(float(nll.sum()) / int(tokens.sum()))


@torch.inference_mode()
def passage_nll(
    model: ModelLike,
    texts: Any = None,
    *,
    seq_len: int = 256,
    batch_size: int | None = None,
    max_tokens: int | None = None,
    cache: PrefixCache | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-passage next-token NLL of ``model`` on ``texts`` (as :func:`perplexity` takes them).

    Returns:
        ``nll [P]`` (float64: the sum of next-token NLL over each passage's predicted tokens) and ``tokens [P]``
        (how many tokens each predicts), so ``perplexity = exp(nll.sum() / tokens.sum())`` and a paired bootstrap
        over passages resamples ``(nll, tokens)`` pairs. Passages shorter than two tokens are dropped, as
        :func:`perplexity` drops them.
    """
    checks.batching(batch_size, max_tokens, CalibrationError)
    check_seq_len(seq_len)
    view = as_view(model)
    base = view.base
    if texts is None:
        passages = heldout_texts()
    elif isinstance(texts, str) and texts == "calibration":
        passages = load_calibration(None)
    else:
        passages = load_calibration(texts)
    seqs = tokenize(base.tokenizer, passages, seq_len)
    if not seqs:
        raise CalibrationError("no tokens to score: every passage is shorter than two tokens")
    L = base.n_blocks
    nll = np.zeros(len(seqs))
    tokens = np.zeros(len(seqs), dtype=np.int64)

    def reads(batch: Batch) -> dict[str, Read]:
        valid = batch.mask[:, 1:].bool() & batch.mask[:, :-1].bool()
        rows, cols = valid.nonzero(as_tuple=True)
        tgt = batch.ids[rows, cols + 1]

        def per_row(b: int, h: torch.Tensor) -> np.ndarray:
            out = torch.zeros(batch.size, dtype=torch.float64)
            t = tgt.to(h.device)
            for c in range(0, len(h), _CHUNK):
                z = base.full_logits(h[c : c + _CHUNK])
                ce = torch.nn.functional.cross_entropy(z, t[c : c + _CHUNK].to(z.device), reduction="none")
                out.index_add_(0, rows[c : c + _CHUNK].cpu(), ce.double().cpu())
            return out.numpy()

        return {"nll": Read((L - 1,), "out", Positions(rows, cols), fn=per_row)}

    for batch, out in Runner(view, cache=cache).passes(seqs, reads, max_tokens=max_tokens, batch_size=batch_size):
        idx = np.asarray(batch.rows)
        nll[idx] += out["nll"][L - 1]
        tokens[idx] += (batch.mask[:, 1:].bool() & batch.mask[:, :-1].bool()).sum(1).numpy()
    return nll, tokens
