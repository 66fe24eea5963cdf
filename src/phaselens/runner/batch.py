"""Batches of a pass and what a pass reads from them."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Callable, Sequence

import torch

from ..errors import RunnerError

Reduce = Callable[[int, torch.Tensor], Any]


@dataclass(frozen=True)
class Positions:
    """Explicit ``(row, position)`` pairs of a batch to read: ``rows``, ``cols`` ``[m]`` long tensors."""

    rows: torch.Tensor
    cols: torch.Tensor


@dataclass(frozen=True)
class Read:
    """What a pass reads, at every block in ``blocks`` (original indices).

    Attributes:
        blocks: the blocks read.
        site: ``"out"`` (the block's output, the residual stream after it), ``"in"`` (its input) or
            ``"mlp"`` (its MLP branch's output).
        at: ``"last"`` (each row's last real token, ``[B, d]``), ``"tokens"`` (every real token,
            ``[n_tok, d]``), ``"all"`` (``[B, T, d]``) or :class:`Positions` (``[m, d]``).
        fn: ``fn(block, selection) -> value`` applied at once (a reduction, so nothing large is kept);
            the value is returned instead of the selection.
    """

    blocks: tuple[int, ...]
    site: str = "out"
    at: Any = "last"
    fn: Reduce | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "blocks", tuple(int(b) for b in self.blocks))
        if self.site not in ("out", "in", "mlp"):
            raise RunnerError(f"Read.site must be 'out', 'in' or 'mlp', got {self.site!r}")
        if not (isinstance(self.at, Positions) or self.at in ("last", "tokens", "all")):
            raise RunnerError(f"Read.at must be 'last', 'tokens', 'all' or Positions, got {self.at!r}")


@dataclass
class Batch:
    """One padded pass: ``rows`` index the caller's sequences; ``ids``, ``mask`` ``[B, T]`` (right padding).

    Packed rows (:mod:`~phaselens.runner.masks`) also carry ``positions`` and ``segments`` ``[B, T]``: the
    decoder then gets their 4D block mask and these position ids instead of the 2D padding mask."""

    rows: list[int]
    ids: torch.Tensor
    mask: torch.Tensor
    positions: torch.Tensor | None = None
    segments: torch.Tensor | None = None

    @property
    def packed(self) -> bool:
        return self.segments is not None

    @property
    def size(self) -> int:
        return len(self.rows)

    @cached_property
    def last(self) -> torch.Tensor:
        """``[B]`` position of each row's last real token."""
        return self.mask.sum(1) - 1

    def kept(self, first_token: bool = True) -> torch.Tensor:
        """``[n]`` bool over the real tokens in the order a ``"tokens"`` read gives them: all (``first_token``),
        or all but each sequence's first (a packed row holds several; its position ids start each at 0)."""
        real = self.mask.bool().cpu()
        if first_token:
            return torch.ones(int(real.sum()), dtype=torch.bool)
        if self.positions is not None:
            return self.positions.cpu()[real] != 0
        later = real.clone()
        later[:, 0] = False
        return later[real]

    def last_index(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """``([B] rows, [B] last positions)`` on ``device``, made once per batch and device (every block reads them)."""
        memo = self.__dict__.setdefault("_last_index", {})
        if device not in memo:
            memo[device] = (torch.arange(self.ids.shape[0], device=device), self.last.to(device))
        return memo[device]

    @cached_property
    def key(self) -> str:
        """Content hash of the token ids, the mask, and for packed rows their positions and segments (so the
        prefix cache never replays a packed batch's states into an unpacked one, or the reverse)."""
        h = hashlib.sha1(str(tuple(self.ids.shape)).encode())
        h.update(self.ids.detach().cpu().numpy().tobytes())
        h.update(self.mask.detach().cpu().to(torch.uint8).numpy().tobytes())
        if self.packed:
            h.update(b"packed")
            h.update(self.positions.detach().cpu().to(torch.int64).numpy().tobytes())  # type: ignore[union-attr]
            h.update(self.segments.detach().cpu().to(torch.int64).numpy().tobytes())  # type: ignore[union-attr]
        return h.hexdigest()


def select_at(h: torch.Tensor, at: Any, batch: Batch) -> torch.Tensor:
    """The rows of ``h [B, T, ...]`` a :class:`Read` at ``at`` selects in ``batch`` (``[m, ...]``)."""
    if at == "last":
        rows, last = batch.last_index(h.device)
        return h[rows, last]
    if at == "tokens":
        return h[batch.mask.to(h.device).bool()]
    if at == "all":
        return h
    return h[at.rows.to(h.device), at.cols.to(h.device)]


def token_batches(lengths: Sequence[int], max_tokens: int, max_rows: int | None = None) -> list[list[int]]:
    """Index batches of similar length (longest first) whose padded size ``rows x longest`` stays within
    ``max_tokens`` (a single sequence longer than the budget is a batch of its own), at most ``max_rows`` rows."""
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise RunnerError(f"max_tokens must be a positive int (padded tokens per pass), got {max_tokens!r}")
    if max_rows is not None and (isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 1):
        raise RunnerError(f"batch_size must be a positive int (sequences per pass) or None, got {max_rows!r}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    out: list[list[int]] = []
    cur: list[int] = []
    for i in order:
        width = lengths[cur[0]] if cur else lengths[i]
        if cur and ((len(cur) + 1) * width > max_tokens or (max_rows is not None and len(cur) >= max_rows)):
            out.append(cur)
            cur = []
        cur.append(i)
    if cur:
        out.append(cur)
    return out


def pad(seqs: Sequence[Sequence[int]], pad_id: int, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad ``seqs`` into ``(input_ids [B, T], attention_mask [B, T])``."""
    t = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), t), int(pad_id), dtype=torch.long)
    att = torch.zeros((len(seqs), t), dtype=torch.long)
    for r, s in enumerate(seqs):
        ids[r, : len(s)] = torch.as_tensor(list(s), dtype=torch.long)
        att[r, : len(s)] = 1
    return ids.to(device), att.to(device)


def pad_layouts(layouts: Sequence[tuple[Sequence[int], Sequence[int]]], device: torch.device | str
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad ``(positions, segments)`` per row into ``[B, T]`` tensors (positions 0, segments -1 on padding)."""
    t = max(len(p) for p, _ in layouts)
    pos = torch.zeros((len(layouts), t), dtype=torch.long)
    seg = torch.full((len(layouts), t), -1, dtype=torch.long)
    for r, (p, sg) in enumerate(layouts):
        pos[r, : len(p)] = torch.as_tensor(list(p), dtype=torch.long)
        seg[r, : len(sg)] = torch.as_tensor(list(sg), dtype=torch.long)
    return pos.to(device), seg.to(device)


def default_max_tokens(device: torch.device) -> int:
    """Padded tokens per pass: 4096 on the CPU, 32768 on a GPU."""
    return 32768 if device.type == "cuda" else 4096
