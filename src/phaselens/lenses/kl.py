"""``lens_kl``: how faithful a lens is, ``mean_t KL(p_final,t || p_lens_l,t)`` over held-out tokens (full vocabulary)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..calibration import heldout_texts, load_calibration, tokenize
from ..errors import LensError
from .base import gather_max_tokens
from ..types import ModelLike

_CHUNK = 128  # tokens per full-vocabulary softmax


@torch.inference_mode()
def lens_kl(model: ModelLike, texts: Any = None, lens: Any = "logit", *, seq_len: int = 256, max_tokens: int | None = None,
            batch_size: int | None = None, progress: bool = False) -> np.ndarray:
    """Mean KL divergence (nats) from the model's final next-token distribution to the lens's at each surviving block.

    Args:
        model: a model or view; the final distribution is the view's own output.
        texts: held-out passages (``None``: the bundled held-out split, never used for fitting), a text file or a
            list of strings; truncated to ``seq_len`` tokens each.
        lens: a kind name (``"logit"``, ``"linear"``, ``"tuned"``), a path to a saved lens, or a :class:`Lens`.
    Returns:
        ``[L]`` float64, one value per surviving block (the last row, the model's own output, is 0).
    """
    from ..readout import read_at
    from ..runner import Read, Runner
    from ..view import as_view
    from .fit import resolve_lens

    view = as_view(model)
    base = view.base
    lens_ = resolve_lens(lens, view)
    seqs = tokenize(base.tokenizer, heldout_texts() if texts is None else load_calibration(texts), seq_len)
    if not seqs:
        raise LensError("the held-out text gives no passage of 2 or more tokens; pass more text")
    rows_at = read_at(view.kept, base.n_layers)
    last = base.n_layers - 1
    tot = np.zeros(len(rows_at))
    n = 0
    max_tokens = gather_max_tokens(base, max_tokens)
    reads = {"h": Read(tuple(rows_at), "out", "tokens")}
    for _, out in Runner(view).passes(seqs, reads, max_tokens=max_tokens, batch_size=batch_size,
                                      progress=f"lens_kl {lens_.kind}" if progress else None):
        hs = out["h"]
        m = hs[last].shape[0]
        for c in range(0, m, _CHUNK):
            sl = slice(c, c + _CHUNK)
            logp = torch.log_softmax(base.full_logits(hs[last][sl].to(base.device)), -1)
            p = logp.exp()
            for r, b in enumerate(rows_at[:-1]):
                h = lens_.transform(b, hs[b][sl].to(base.device))
                logq = torch.log_softmax(base.full_logits(h), -1)
                tot[r] += float((p * (logp - logq)).sum())
        n += m
    return tot / n
