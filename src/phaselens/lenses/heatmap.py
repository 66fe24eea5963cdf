"""The classic logit-lens picture: one prompt, positions x blocks, each cell the top next token through a lens.

For a prompt of ``T`` tokens and a model (or view) with surviving blocks ``kept``, :func:`lens_heatmap` reads the
residual stream after each surviving block at every position in one runner pass, sends it through the lens
(``softmax(W_U . norm_final(T_l(h)))`` over the full vocabulary) and keeps the ``top_k`` tokens and their
probabilities. Row ``r`` is block ``kept[r]``; the last row reads block ``L-1``'s output, so it is the model's own
next-token distribution. Cell ``(r, t)`` predicts the token after position ``t``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..errors import LensError
from ..results import Result
from ..runner import Read, Runner
from ..types import ModelLike
from ..view import as_view
from .base import read_at
from .fit import resolve_lens

#: longest prompt drawn (the picture has one column per token)
MAX_POSITIONS = 512


@dataclass
class LensHeatmap(Result):
    """Top next tokens of one prompt at every position, read through a lens after every surviving block.

    Shapes: ``R`` rows (surviving blocks read), ``T`` prompt positions, ``k`` tokens kept per cell.

    Attributes:
        model, lens, prompt: what was read, through which lens kind, on which text.
        n_blocks: the dense model's depth ``L``; ``blocks [R]`` the original index of each row (the last row reads
            block ``L-1``'s output: the model's own output).
        tokens: ``[T]`` the prompt's tokens as text; ``token_ids [T]`` their ids.
        top_ids: ``[R, T, k]`` the ``k`` most probable next tokens per cell, most probable first.
        top_probs: ``[R, T, k]`` their probabilities (full-vocabulary softmax through the lens).
        vocab: ``{id: text}`` of every token in ``top_ids`` and ``token_ids``.
    """

    model: str
    lens: str
    prompt: str
    n_blocks: int
    blocks: list[int]
    tokens: list[str]
    token_ids: np.ndarray
    top_ids: np.ndarray = field(repr=False)
    top_probs: np.ndarray = field(repr=False)
    vocab: dict[int, str] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.blocks = [int(b) for b in self.blocks]
        self.token_ids = np.asarray(self.token_ids, dtype=np.int64)
        self.top_ids = np.asarray(self.top_ids, dtype=np.int64)
        self.top_probs = np.asarray(self.top_probs, dtype=np.float32)
        self.vocab = {int(k): str(v) for k, v in self.vocab.items()}
        want = (len(self.blocks), len(self.tokens))
        if self.top_ids.shape[:2] != want or self.top_probs.shape != self.top_ids.shape or len(self.token_ids) != want[1]:
            raise LensError(f"lens heatmap of {self.model}: top_ids {self.top_ids.shape}, top_probs {self.top_probs.shape} "
                            f"and {len(self.token_ids)} token ids do not fit [R, T, k] with R={want[0]}, T={want[1]}")

    @property
    def n_read(self) -> int:
        """``R``: the rows (surviving blocks read)."""
        return len(self.blocks)

    @property
    def n_positions(self) -> int:
        """``T``: the prompt's tokens."""
        return len(self.tokens)

    @property
    def top_tokens(self) -> np.ndarray:
        """``[R, T, k]`` the text of each top token (object array of str)."""
        return np.vectorize(lambda i: self.vocab.get(int(i), f"<{int(i)}>"), otypes=[object])(self.top_ids)

    @property
    def top1_probs(self) -> np.ndarray:
        """``[R, T]`` the probability of each cell's top token (the colour of the picture)."""
        return self.top_probs[..., 0]

    def first_block(self, position: int = -1) -> int | None:
        """The first block from which the model's final top token at ``position`` stays the lens's top token
        through the last row (``None`` never happens: the last row is the final prediction)."""
        top = self.top_ids[:, position, 0]
        r = len(top) - 1
        while r > 0 and top[r - 1] == top[-1]:
            r -= 1
        return self.blocks[r]

    def summary(self) -> str:
        fin = int(self.top_ids[-1, -1, 0])
        return (f"{self.lens} lens on {self.model}, {self.n_positions} prompt tokens x {self.n_read} blocks: at the last "
                f"position the model predicts {self.vocab.get(fin, fin)!r} (p {self.top_probs[-1, -1, 0]:.3f}), the top "
                f"token through the lens from block {self.first_block()} on")

    def to_pandas(self):
        """One row per (block, position, rank): the input token, the predicted token, its id and probability."""
        import pandas as pd

        R, T, k = self.top_ids.shape
        r, t, j = np.meshgrid(np.arange(R), np.arange(T), np.arange(k), indexing="ij")
        return pd.DataFrame({
            "block": np.asarray(self.blocks)[r.ravel()], "position": t.ravel(),
            "input": np.asarray(self.tokens, dtype=object)[t.ravel()], "rank": j.ravel() + 1,
            "token": self.top_tokens.ravel(), "token_id": self.top_ids.ravel(), "prob": self.top_probs.ravel(),
        })

    def table(self):
        """The report's table: the last position's top tokens per block."""
        df = self.to_pandas()
        return df[df.position == self.n_positions - 1].reset_index(drop=True)

    def plot(self, **kw: Any):
        """The heatmap (Plotly): positions x blocks, each cell the top token, coloured by its probability; the
        hover lists the top tokens. See :func:`phaselens.plots.lens_heatmap`."""
        from ..plots import lens_heatmap as draw  # lazy: plotly is imported only when a figure is drawn

        return draw(self, **kw)

    def provenance(self) -> dict[str, Any]:
        return {"model": self.model, "lens": self.lens, "task": "prompt"}


@torch.inference_mode()
def lens_heatmap(model: ModelLike, prompt: str, lens: Any = "logit", *, top_k: int = 5,
                 max_tokens: int | None = None, add_special_tokens: bool = True) -> LensHeatmap:
    """The logit-lens picture of one prompt: the ``top_k`` next tokens at every position after every surviving block.

    Args:
        model: a model, a view (pruned / recovered: its surviving blocks are the rows) or anything ``load_model`` takes.
        prompt: the text; tokenized as the model's tokenizer does (``add_special_tokens``: its BOS), at most
            :data:`MAX_POSITIONS` tokens.
        lens: ``"logit"``, ``"tuned"``, ``"linear"``, a registered kind, a lens file or a :class:`Lens`.
        top_k: tokens kept per cell (1..50).
    Returns:
        a :class:`LensHeatmap` (``plot()``: the interactive heatmap; ``to_pandas()``: every cell's tokens).
    """
    if not isinstance(prompt, str) or not prompt.strip():
        raise LensError(f"prompt must be a non-empty string, got {prompt!r}")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= 50:
        raise LensError(f"top_k must be an int from 1 to 50 (tokens kept per cell), got {top_k!r}")
    view = as_view(model)
    base = view.base
    lens_ = resolve_lens(lens, view)
    ids = list(base.tokenizer(prompt, add_special_tokens=add_special_tokens)["input_ids"])
    if not ids:
        raise LensError(f"the prompt {prompt!r} gives no tokens")
    if len(ids) > MAX_POSITIONS:
        raise LensError(f"the prompt is {len(ids)} tokens long; the heatmap draws one column per token, at most "
                        f"{MAX_POSITIONS}: shorten the prompt")
    rows_at = read_at(view.kept, base.n_blocks)
    reads = {"h": Read(tuple(sorted(set(rows_at))), "out", "tokens")}
    (_, out), = list(Runner(view).passes([ids], reads, max_tokens=max_tokens))
    hs = out["h"]
    k = min(top_k, int(base.W_U.shape[0]))
    top_ids = np.zeros((len(rows_at), len(ids), k), dtype=np.int64)
    top_probs = np.zeros((len(rows_at), len(ids), k), dtype=np.float32)
    for r, b in enumerate(rows_at):
        h = hs[b].to(base.device)
        if r < len(rows_at) - 1:
            h = lens_.transform(b, h)
        p = torch.softmax(base.full_logits(h).float(), -1)  # [T, V]
        v, i = torch.topk(p, k, dim=-1)
        top_ids[r], top_probs[r] = i.cpu().numpy(), v.cpu().numpy()
    used = sorted(set(top_ids.ravel().tolist()) | set(ids))
    vocab = {i: base.tokenizer.decode([i]) for i in used}
    return LensHeatmap(model=view.name, lens=lens_.kind, prompt=prompt, n_blocks=base.n_blocks, blocks=rows_at,
                       tokens=[vocab[i] for i in ids], token_ids=np.asarray(ids), top_ids=top_ids, top_probs=top_probs,
                       vocab=vocab)
