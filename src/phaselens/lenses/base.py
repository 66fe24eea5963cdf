"""The :class:`Lens`: one affine translator per block, applied to a residual before the final norm and unembedding.

A lens reads block ``l``'s residual ``h [..., d]`` as ``z = W_U . norm_final(T_l(h))`` with
``T_l(h) = h @ W_l + b_l`` (``W_l [d, d]``, ``b_l [d]``, float32). The last block ``L-1`` (the model's own
output) is always the identity, so every lens's last row is the model's own logits; so is any block without a
translator. The logit lens has no translators at all.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import LensError

#: The lens kinds :func:`phaselens.fit_lens` makes.
KINDS: tuple[str, ...] = ("logit", "linear", "tuned")

#: padded tokens per pass when a lens reads every block's residual at every token on the CPU ([tokens, d] per block)
CPU_MAX_TOKENS = 1024


def gather_max_tokens(base: Any, max_tokens: int | None) -> int | None:
    """``max_tokens``, or :data:`CPU_MAX_TOKENS` off a GPU (``None``: the runner's default budget on a GPU)."""
    if max_tokens is None and base.device.type != "cuda":
        return CPU_MAX_TOKENS
    return max_tokens


@dataclass(eq=False)
class Lens:
    """Per-block affine translators ``T_l(h) = h @ W_l + b_l`` fitted on one model.

    Attributes:
        kind: ``"logit"`` (no translators), ``"linear"`` (closed form) or ``"tuned"`` (trained).
        model: the name of the model it was fitted on; ``fingerprint`` its :attr:`~phaselens.Model.fingerprint`.
        n_blocks: ``L``, the model's blocks; ``d_model``: ``d``.
        weights: ``{block: W [d, d]}`` and ``biases`` ``{block: b [d]}`` (float32) for blocks ``0..L-2``
            (a block absent from them, and block ``L-1``, reads through the identity).
        info: how it was fitted (calibration tokens, seed, steps, vocabulary subset, ridge, ...), saved with it.
    """

    kind: str
    model: str
    fingerprint: str
    n_blocks: int
    d_model: int
    weights: dict[int, torch.Tensor] = field(default_factory=dict, repr=False)
    biases: dict[int, torch.Tensor] = field(default_factory=dict, repr=False)
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise LensError(f"unknown lens kind {self.kind!r}; choose one of {KINDS}")
        L, d = self.n_blocks, self.d_model
        self.weights = {int(b): w for b, w in self.weights.items()}
        self.biases = {int(b): v for b, v in self.biases.items()}
        for b in sorted(set(self.weights) | set(self.biases)):
            if not 0 <= b < L - 1:
                raise LensError(f"the {self.kind} lens has a translator for block {b}, but {self.model} has blocks "
                                f"0..{L - 1} and block {L - 1} (the model's own output) reads through the identity")
            if b not in self.weights or b not in self.biases:
                raise LensError(f"the {self.kind} lens's translator of block {b} lacks its "
                                f"{'matrix' if b not in self.weights else 'bias'}")
            w, v = self.weights[b], self.biases[b]
            if tuple(w.shape) != (d, d) or tuple(v.shape) != (d,):
                raise LensError(f"the {self.kind} lens's translator of block {b} has shapes {tuple(w.shape)} and "
                                f"{tuple(v.shape)}, but {self.model}'s hidden size is {d}: it must be [{d}, {d}] and [{d}]")
            if not (bool(torch.isfinite(w).all()) and bool(torch.isfinite(v).all())):
                raise LensError(f"the {self.kind} lens's translator of block {b} holds NaN or Inf; refit the lens "
                                "(more calibration text, a smaller learning rate, or a larger lam=)")
            self.weights[b] = w.detach().float()
            self.biases[b] = v.detach().float()
        self._dev: dict[tuple[int, torch.device], tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def name(self) -> str:
        """What results record as their ``lens``: the kind."""
        return self.kind

    @property
    def digest(self) -> str:
        """A short hash of the kind, the model and every translator (what a resumable run records)."""
        import hashlib

        h = hashlib.sha256(f"{self.kind}:{self.fingerprint}".encode())
        for b in self.blocks:
            h.update(self.weights[b].contiguous().numpy().tobytes())
            h.update(self.biases[b].contiguous().numpy().tobytes())
        return h.hexdigest()[:16]

    @property
    def blocks(self) -> list[int]:
        """The blocks that have a translator."""
        return sorted(self.weights)

    def translator(self, b: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(W [d, d], b [d])`` of block ``b``, or ``None`` where it reads through the identity."""
        return (self.weights[b], self.biases[b]) if b in self.weights else None

    def transform(self, b: int, h: torch.Tensor) -> torch.Tensor:
        """``T_b(h)``: block ``b``'s translator applied to residuals ``h [..., d]`` (float32 out); ``h`` itself for
        the identity. A non-finite result is a :class:`~phaselens.errors.LensError` naming the block."""
        if b not in self.weights:
            return h
        key = (b, h.device)
        if key not in self._dev:
            self._dev[key] = (self.weights[b].to(h.device), self.biases[b].to(h.device))
        w, v = self._dev[key]
        out = torch.addmm(v, h.reshape(-1, h.shape[-1]).float(), w).reshape(*h.shape[:-1], w.shape[1])
        if not bool(torch.isfinite(out).all()):
            raise LensError(f"the {self.kind} lens's translator of block {b} produced NaN or Inf on {self.model}'s "
                            f"residuals; its weights are finite, so the residuals are huge or the lens is unstable: "
                            "refit it (a larger lam= or a smaller learning rate), or run the model in float32")
        return out

    def check_model(self, base: Any) -> None:
        """A :class:`~phaselens.errors.LensError` unless ``base`` (a :class:`~phaselens.Model`) is the model it was fitted on."""
        if base.fingerprint != self.fingerprint:
            raise LensError(f"this {self.kind} lens was fitted on {self.model!r} (fingerprint {self.fingerprint}), not "
                            f"on {base.name!r} (fingerprint {base.fingerprint}); fit one for this model "
                            "(phaselens.fit_lens) or pass lens='logit'")

    def save(self, path: Any):
        """Write the translators and the model's fingerprint as safetensors (:func:`phaselens.load_lens` reads it)."""
        from .io import save_lens

        return save_lens(self, path)

    def summary(self) -> str:
        how = ", ".join(f"{k}={v}" for k, v in self.info.items() if not isinstance(v, (list, dict)))
        return f"{self.kind} lens of {self.model} ({len(self.weights)} translators of {self.n_blocks - 1}; {how})"

    def __repr__(self) -> str:
        return f"Lens({self.kind!r}, model={self.model!r}, L={self.n_blocks}, translators={len(self.weights)})"

