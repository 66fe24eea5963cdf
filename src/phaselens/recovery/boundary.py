"""Boundary error: what the first surviving block after a cut receives versus what the dense model gives it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .. import checks
from ..calibration import check_seq_len, load_calibration, tokenize
from ..deprecation import module_getattr
from ..errors import RecoveryError
from ..results import Result
from ..runner import Read, Runner
from ..view import ModelView, as_view
from .stats import check_first_token
from ..types import ModelLike


@dataclass
class BoundaryErrorResult(Result):
    """Per cut span, what the next surviving block receives versus what the dense model gives it.

    Attributes:
        spans: the cut spans ``(s, e)``.
        mse: ``[S]`` mean squared error over tokens and channels.
        relative: ``[S]`` ``mse / mean(Y^2)`` (scale-free).
        per_channel: ``[S, d]`` mean squared error per channel.
        n_tokens: calibration tokens compared.
        first_token: whether each passage's first token was compared (its residual is the attention sink, often
            ~100x the norm of the rest, so it can decide ``mse`` alone).
    """

    model: str
    method: str | None
    spans: list[tuple[int, int]]
    mse: np.ndarray
    relative: np.ndarray
    per_channel: np.ndarray
    n_tokens: int
    first_token: bool = True

    version = 2  # version 1 had no first_token (it compared every token)

    @classmethod
    def upgrade(cls, doc: dict[str, Any], version: int) -> dict[str, Any] | None:
        return {**doc, "first_token": True} if version == 1 else None

    def __post_init__(self) -> None:
        self.spans = [(int(s), int(e)) for s, e in self.spans]
        self.mse = np.asarray(self.mse, dtype=float)
        self.relative = np.asarray(self.relative, dtype=float)
        self.per_channel = np.asarray(self.per_channel, dtype=float)

    def to_pandas(self):
        import pandas as pd

        return pd.DataFrame({"model": self.model, "method": self.method or "none", "span_start": [s for s, _ in self.spans],
                             "span_end": [e for _, e in self.spans], "mse": self.mse, "relative": self.relative,
                             "n_tokens": self.n_tokens, "first_token": self.first_token})

    def summary(self) -> str:
        parts = [f"{s}-{e - 1}: relative {r:.4g} (MSE {m:.4g})" for (s, e), r, m in zip(self.spans, self.relative, self.mse)]
        which = "" if self.first_token else " (each passage's first token left out)"
        return (f"boundary error of {self.model} ({self.method or 'no recovery'}) over {self.n_tokens} tokens{which}: "
                + "; ".join(parts))

    def plot(self, **kw):
        from ..plots import boundary_error_channels

        return boundary_error_channels([self], **kw)


@torch.inference_mode()
def boundary_error(
    model: ModelLike,
    calibration: Any = None,
    *,
    inputs: str = "dense",
    seq_len: int = 256,
    batch_size: int | None = None,
    max_tokens: int | None = None,
    first_token: bool = True,
) -> BoundaryErrorResult:
    """Per cut span ``[s, e)`` of ``model`` (a pruned or recovered view): the mean squared error between
    what block ``e`` (the next surviving block) receives and what the dense model gives it, over the
    non-padding calibration tokens (default: the bundled fit passages).

    Args:
        inputs: ``"dense"`` (default): each span is fed the dense model's input ``h_{s-1}`` and
            passed through what the view puts in its place (its operator, ReplaceMe's edited block
            ``s-1``, or nothing): each span's own error, the quantity the fit minimises (equal to
            ``Recovered.fit_error`` on the fit's tokens). ``"pruned"``: the whole pruned model runs, so
            a later span also receives the error left by earlier ones (equal to ``"dense"`` for a
            single span, or for the first span).
        first_token: whether each passage's first token is compared. Default: yes, as the fit reads it (the
            operator minimises the error over every token). Its residual is the attention sink, whose norm is
            often ~100x the others' (SmolLM2 after block 18), so with it ``mse`` can be the sink's error alone;
            ``False`` measures the ordinary tokens.
    """
    if inputs not in ("dense", "pruned"):
        raise RecoveryError(f"inputs must be 'dense' (each span on the dense model's input) or 'pruned' (the whole "
                            f"pruned model runs), got {inputs!r}")
    check_first_token(first_token)
    checks.batching(batch_size, max_tokens, RecoveryError)
    check_seq_len(seq_len)
    view = as_view(model)
    base = view.base
    spans = view.spans
    if not spans:
        raise RecoveryError("the model has no cut spans; boundary error compares a pruned model with its dense base")
    seqs = tokenize(base.tokenizer, load_calibration(calibration), seq_len)
    if not seqs:
        raise RecoveryError("the calibration text gives no passage of 2 or more tokens; pass more text")
    d = base.d_model
    sq = torch.zeros(len(spans), d, dtype=torch.float64)
    y2 = torch.zeros(len(spans), dtype=torch.float64)
    n = 0
    ops, branch = view._ops, view._branch  # the very edits the view's forward applies
    kw = dict(max_tokens=max_tokens, batch_size=batch_size)
    dense_reads = {"y": Read(tuple(e - 1 for _, e in spans), "out", "tokens")}
    if inputs == "dense":
        dense_reads["x"] = Read(tuple(s for s, _ in spans), "in", "tokens")
        br = tuple(s - 1 for s, _ in spans if s - 1 in branch)
        if br:
            dense_reads["m"] = Read(br, "mlp", "tokens")
    dense = Runner(ModelView(base)).passes(seqs, dense_reads, **kw)
    pruned = Runner(view).passes(seqs, {"p": Read(tuple(e - 1 for _, e in spans), "out", "tokens")}, **kw) \
        if inputs == "pruned" else None
    for batch, got in dense:
        if pruned is not None:
            _, p = next(pruned)
            got["p"] = {e: p["p"][e - 1] for _, e in spans}
        else:
            got["p"] = {}
            for s, e in spans:
                x = got["x"][s]  # h_{s-1} of the dense model at the real tokens [n, d]
                if s - 1 in branch:  # ReplaceMe: block s-1 with its MLP branch m -> m T
                    m = got["m"][s - 1]
                    x = x - m + branch[s - 1](m)
                got["p"][e] = ops[(s, e)](x) if (s, e) in ops else x
        keep = batch.kept(bool(first_token))
        for i, (_s, e) in enumerate(spans):
            y = got["y"][e - 1].double().cpu()[keep]
            diff = got["p"][e].double().cpu()[keep] - y
            sq[i] += (diff**2).sum(0)
            y2[i] += (y**2).mean(1).sum()
        n += int(keep.sum())
    per_channel = (sq / n).numpy()
    mse = per_channel.mean(1)
    return BoundaryErrorResult(view.name, view.method, spans, mse, mse / (y2.numpy() / n), per_channel, n,
                               bool(first_token))


__getattr__ = module_getattr(__name__, {"BoundaryError": f"{__name__}:BoundaryErrorResult"})  # the result's old name
