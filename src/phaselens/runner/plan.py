"""Plans: what a forward pass does instead of, or after, each block."""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..deprecation import module_getattr
from ..errors import RunnerError

Edit = Callable[[torch.Tensor], torch.Tensor]
_serial = itertools.count(1)


def skip(h: torch.Tensor) -> torch.Tensor:
    """The edit that skips a block: its input passes through unchanged (``replace={b: skip}``)."""
    return h


__getattr__ = module_getattr(__name__, {"identity": f"{__name__}:skip"})  # the old name of skip


class StopForward(Exception):
    """Raised inside a pass once everything it needs was read (the rest of the model is skipped)."""


@dataclass
class Plan:
    """Per-block edits of a forward pass (original 0-based block indices).

    Attributes:
        replace: ``{b: fn}``, block ``b`` computes ``fn(input [B, T, d])`` instead of itself
            (:func:`skip` skips it, a linear map is a recovery operator).
        after: ``{b: fn}``, block ``b``'s output is edited (noise injection).
        mlp, attn: ``{b: fn}``, block ``b``'s MLP-branch / attention-branch output is edited
            (ReplaceMe's operator, zero-ablation).
        names: ``{b: text}`` what the plan puts at block ``b``, for error messages.
    """

    replace: dict[int, Edit] = field(default_factory=dict)
    after: dict[int, Edit] = field(default_factory=dict)
    mlp: dict[int, Edit] = field(default_factory=dict)
    attn: dict[int, Edit] = field(default_factory=dict)
    names: dict[int, str] = field(default_factory=dict)
    serial: int = field(default_factory=lambda: next(_serial), compare=False)

    def blocks(self) -> set[int]:
        return set(self.replace) | set(self.after) | set(self.mlp) | set(self.attn)

    def merged(self, other: "Plan | None") -> "Plan":
        """This plan, then ``other``: ``after``/branch edits compose, a block is replaced at most once."""
        if other is None or not other.blocks():
            return self
        clash = set(self.replace) & set(other.replace)
        if clash:
            raise RunnerError(f"two edits replace the same block(s) {sorted(clash)}; a block can be replaced once")
        out = Plan({**self.replace, **other.replace}, dict(self.after), dict(self.mlp), dict(self.attn),
                   {**self.names, **other.names})
        for mine, theirs in ((out.after, other.after), (out.mlp, other.mlp), (out.attn, other.attn)):
            for b, fn in theirs.items():
                mine[b] = _compose(mine[b], fn) if b in mine else fn
        return out


def _compose(f: Edit, g: Edit) -> Edit:
    return lambda h: g(f(h))


def chain(signature: dict[int, str], n_blocks: int, model: str = "") -> list[str]:
    """``[L + 1]`` prefix hashes: entry ``b`` identifies what blocks ``0..b-1`` of ``model`` (a string naming the
    model object) compute (entry 0: nothing)."""
    h = hashlib.sha1(b"phaselens-prefix|" + model.encode())
    out = [h.hexdigest()]
    for b in range(n_blocks):
        h.update(f"|{b}:{signature.get(b, '')}".encode())
        out.append(h.hexdigest())
    return out
