"""Packed sequences: one prompt and K continuations in one row, each continuation attending to the prompt.

A packed row is ``[prompt, cont_1, ..., cont_K]`` with

* ``segments``: 0 on the prompt, ``k`` on continuation ``k`` (1-based), -1 on padding;
* ``positions``: ``0..P-1`` on the prompt, and each continuation restarting at ``P`` (its tokens sit where
  they would after the prompt alone), so rotary tables see the positions of the unpacked sequence;
* the 4D block mask (:func:`block_mask`): a token attends to earlier tokens of its own segment and to the
  prompt, never to another continuation; a sliding-window layer also needs ``pos_q - pos_kv < window``, in
  logical positions, which is exactly the window of the unpacked sequence.

So every token of a continuation computes what it computes in ``prompt + cont_k`` alone (no KV cache: the
prompt runs once per item, through the model's own SDPA attention with an explicit mask).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from ..errors import RunnerError


@dataclass(frozen=True)
class Packed:
    """One packed row: ``ids``, ``positions``, ``segments`` (length ``P + sum n_k``) and where each continuation starts."""

    ids: list[int]
    positions: list[int]
    segments: list[int]
    prompt_len: int
    starts: list[int]  # index in the row of each continuation's first token

    @property
    def layout(self) -> tuple[list[int], list[int]]:
        return self.positions, self.segments


def pack(prompt: Sequence[int], conts: Sequence[Sequence[int]]) -> Packed:
    """Pack ``prompt`` and its continuations into one row (see the module docstring)."""
    if not prompt:
        raise RunnerError("a packed row needs a prompt of at least one token")
    if any(len(c) == 0 for c in conts):
        raise RunnerError("a continuation is empty; every continuation needs at least one token")
    P = len(prompt)
    ids, pos, seg, starts = list(prompt), list(range(P)), [0] * P, []
    for k, c in enumerate(conts, start=1):
        starts.append(len(ids))
        ids += list(c)
        pos += range(P, P + len(c))
        seg += [k] * len(c)
    return Packed(ids, pos, seg, P, starts)


def block_mask(segments: torch.Tensor, positions: torch.Tensor, window: int | None = None) -> torch.Tensor:
    """``[B, 1, T, T]`` bool, True where query ``q`` may attend to key ``kv``.

    ``kv <= q`` in the row, ``kv`` on the prompt or on ``q``'s own segment, both real; with ``window``, also
    ``positions[q] - positions[kv] < window``. A padding query attends to itself only (no empty rows: SDPA
    would return NaN there, and a NaN value at a masked key still poisons later layers' products)."""
    B, T = segments.shape
    i = torch.arange(T, device=segments.device)
    real = segments >= 0
    sq, sk = segments[:, :, None], segments[:, None, :]
    m = (i[:, None] >= i[None, :])[None] & ((sk == 0) | (sk == sq)) & real[:, :, None] & real[:, None, :]
    if window is not None:
        m &= (positions[:, :, None] - positions[:, None, :]) < int(window)
    m |= torch.eye(T, dtype=torch.bool, device=segments.device)[None] & ~real[:, :, None]
    return m[:, None]


def text_config(hf: Any) -> Any:
    cfg = hf.config
    return cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg


def decoder_mask(hf: Any, attn_impl: str | None, segments: torch.Tensor, positions: torch.Tensor,
                 dtype: torch.dtype) -> Any:
    """The ``attention_mask`` a Hugging Face decoder takes for packed rows: a ``[B, 1, T, T]`` mask (passed
    through as-is by its mask builder, so it must carry any sliding window itself), or for a model with
    sliding-window layers (Gemma-3, Qwen2 with ``use_sliding_window``) ``{"full_attention": mask,
    "sliding_attention": windowed mask}``, the per-layer-type mapping those decoders accept. Bool for SDPA; additive float (0 / dtype min) for eager attention."""
    impl = attn_impl or "sdpa"
    if impl not in ("sdpa", "eager"):
        raise RunnerError(f"packed continuation rows need SDPA or eager attention (a 4D mask); this model uses {impl!r}. "
                          "Load it with attn_implementation='sdpa', or pass share_prefix=False")
    cfg = text_config(hf)
    if getattr(cfg, "use_bidirectional_attention", False):
        raise RunnerError("this model attends bidirectionally; packed continuations assume a causal decoder "
                          "(pass share_prefix=False)")

    def fmt(m: torch.Tensor) -> torch.Tensor:
        if impl == "sdpa":
            return m
        return torch.zeros(m.shape, dtype=dtype, device=m.device).masked_fill(~m, torch.finfo(dtype).min)

    full = fmt(block_mask(segments, positions))
    types = list(getattr(cfg, "layer_types", None) or [])
    if "sliding_attention" in types:
        window = getattr(cfg, "sliding_window", None)
        if window is None:
            raise RunnerError("the model has sliding-window layers but no sliding_window in its config")
        return {"full_attention": full, "sliding_attention": fmt(block_mask(segments, positions, window))}
    if not types and getattr(cfg, "sliding_window", None):  # one windowed mask for every layer (Mistral-style)
        return fmt(block_mask(segments, positions, cfg.sliding_window))
    return full
