"""Float64 sufficient statistics of cut spans over calibration tokens.

For each cut span ``[s, e)``, one pass of the *dense* model over the calibration tokens accumulates
``A = X^T X`` and ``C = X^T Y`` in float64, with ``X = h_{s-1}`` (the input of block ``s``) and
``Y = h_{e-1}`` (the output of block ``e-1``) at every non-padding token (``first_token=False``: all but each
passage's first, the attention sink): memory ``O(d^2)`` per span, whatever the number of tokens. What else is gathered follows the declared ``needs`` of the recovery methods
asked for (:mod:`phaselens.recovery.method`): ``"branch"`` adds the same products for the MLP branch of block
``s-1`` (ReplaceMe), ``"rotated"`` the per-passage magnitude ratios in the Hadamard-rotated basis (LinearPatch).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import torch

from ..calibration import load_calibration, tokenize
from ..errors import RecoveryError
from ..runner import Batch, Read, Runner
from ..view import ModelView, as_view
from .hadamard import hadamard
from .method import NEEDS, fit_operator, get_method, needs_of
from ..types import ModelLike


@dataclass
class SpanStats:
    """Float64 sufficient statistics of one cut span over ``n`` tokens (``d x d`` each)."""

    span: tuple[int, int]
    A: torch.Tensor  # X^T X
    C: torch.Tensor  # X^T Y
    n: int = 0
    yy: torch.Tensor | None = None  # diag(Y^T Y) [d]
    sx: torch.Tensor | None = None  # sum of X over tokens [d] (the bias row of an affine fit: the linear lens)
    sy: torch.Tensor | None = None  # sum of Y over tokens [d]
    A_branch: torch.Tensor | None = None  # M^T M (ReplaceMe)
    C_branch: torch.Tensor | None = None  # M^T (Y - X + M)
    yy_branch: torch.Tensor | None = None  # diag of (Y - X + M)^T (Y - X + M)
    ratio_sum: torch.Tensor | None = None  # LinearPatch: sum over passages of mean|YH| / mean|XH| [d]
    passages: int = 0
    first_token: bool = True  # whether each passage's first token (the attention sink) was accumulated

    def residual(self, W: torch.Tensor, branch: bool = False) -> torch.Tensor:
        """Per-channel sum of squared errors ``diag((XW - Y)^T (XW - Y))`` ``[d]``, from the statistics alone."""
        A, C, yy = (self.A_branch, self.C_branch, self.yy_branch) if branch else (self.A, self.C, self.yy)
        W = W.to(A.device, torch.float64)
        return ((A @ W) * W).sum(0) - 2 * (C * W).sum(0) + yy

    def affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The normal equations of the affine fit ``[X, 1] W ~ Y``: ``(A1 [d+1, d+1], C1 [d+1, d])``."""
        if self.sx is None or self.sy is None:
            raise RecoveryError(f"span {self.span}: these statistics have no token sums; gather them with span_stats")
        n = torch.tensor([[float(self.n)]], dtype=torch.float64, device=self.A.device)
        A1 = torch.cat([torch.cat([self.A, self.sx[:, None]], 1), torch.cat([self.sx[None], n], 1)], 0)
        return A1, torch.cat([self.C, self.sy[None]], 0)

    def has(self, need: str) -> bool:
        """Whether these statistics hold ``need`` (one of :data:`~phaselens.recovery.method.NEEDS`)."""
        held = {"stream": self.A, "branch": self.A_branch, "rotated": self.ratio_sum}
        return held.get(need) is not None

    @property
    def abs_ratio(self) -> torch.Tensor | None:
        """LinearPatch's scale ``[d]``: the per-passage magnitude ratios averaged over passages."""
        return None if self.ratio_sum is None else self.ratio_sum / max(self.passages, 1)


def check_spans(spans: Any, L: int) -> list[tuple[int, int]]:
    """Spans as a list of ``(s, e)`` int pairs with ``0 <= s < e <= L``; a clear error otherwise."""
    try:
        out = [(int(s), int(e)) for s, e in spans]
    except (TypeError, ValueError):
        raise RecoveryError(f"spans must be a list of (start, end) pairs of block indices, got {spans!r}") from None
    if not out:
        raise RecoveryError("no spans given; pass the cut spans, e.g. [(10, 14)] (a view's .spans)")
    bad = [sp for sp in out if not 0 <= sp[0] < sp[1] <= L]
    if bad:
        raise RecoveryError(f"spans {bad} are not half-open block ranges [s, e) with 0 <= s < e <= {L}")
    return list(dict.fromkeys(out))


def feasible_needs(span: tuple[int, int], needs: Iterable[str]) -> frozenset[str]:
    """``needs`` less what cannot be gathered for ``span``: the MLP-branch products need a block before it."""
    return frozenset(n for n in needs if not (n == "branch" and span[0] == 0))


def _needs(methods: Any, needs: Any, branch: bool, linearpatch: bool) -> frozenset[str]:
    """The statistics to gather: the union of the methods' declared needs, ``needs``, and the old flags."""
    out = {"stream"} | set(needs or ()) | ({"branch"} if branch else set()) | ({"rotated"} if linearpatch else set())
    if methods is not None:
        out |= needs_of(methods)
    bad = out - set(NEEDS)
    if bad:
        raise RecoveryError(f"unknown statistics {sorted(bad)} in needs=; choose from {NEEDS}")
    return frozenset(out)


def _check_feasible(spans: list[tuple[int, int]], methods: Any, need: frozenset[str]) -> None:
    for sp in spans:
        for m in () if methods is None else methods:
            get_method(m).check_span(sp)
        if need - feasible_needs(sp, need):
            raise RecoveryError(f"the MLP-branch statistics need a block before the cut span {sp}; a method acting on "
                                "the branch cannot recover a cut at block 0")


@torch.inference_mode()
def span_stats(
    model: ModelLike,
    spans: list[tuple[int, int]],
    calibration: Any = None,
    *,
    methods: Any = None,
    needs: Iterable[str] | None = None,
    branch: bool = False,
    linearpatch: bool = False,
    seq_len: int = 256,
    batch_size: int | None = None,
    max_tokens: int | None = None,
    first_token: bool = True,
) -> dict[tuple[int, int], SpanStats]:
    """Accumulate ``X^T X`` and ``X^T Y`` ``[d, d]`` (float64) for every span from one pass of the dense base model
    of ``model``, plus what the recovery ``methods`` declare they need (or ``needs``, a subset of
    :data:`~phaselens.recovery.method.NEEDS`; ``branch=True`` / ``linearpatch=True`` are the old spellings of
    ``needs={"branch"}`` / ``{"rotated"}``). ``first_token=False`` leaves each passage's first token out (its
    residual is the attention sink, often ~100x the others' norm)."""
    check_first_token(first_token)
    base = as_view(model).base
    L, d = base.n_blocks, base.d_model
    spans = check_spans(spans, L)
    need = _needs(methods, needs, branch, linearpatch)
    _check_feasible(spans, methods, need)
    branch, rotated = "branch" in need, "rotated" in need
    seqs = tokenize(base.tokenizer, load_calibration(calibration), seq_len)
    if not seqs:
        raise RecoveryError("the calibration text gives no passage of 2 or more tokens; pass more text")
    acc = base.device if base.device.type == "cuda" else torch.device("cpu")
    z2 = lambda: torch.zeros(d, d, dtype=torch.float64, device=acc)  # noqa: E731
    z1 = lambda: torch.zeros(d, dtype=torch.float64, device=acc)  # noqa: E731
    stats = {sp: SpanStats(sp, z2(), z2(), yy=z1(), sx=z1(), sy=z1(), first_token=bool(first_token)) for sp in spans}
    for st in stats.values():
        if branch:
            st.A_branch, st.C_branch, st.yy_branch = z2(), z2(), z1()
        if rotated:
            st.ratio_sum = z1()
    H = hadamard(d).to(acc) if rotated else None
    need_in = sorted({s for s, _ in spans} | {e for _, e in spans if e < L})
    reads = {"x": Read(tuple(need_in), "in", "tokens")}
    if any(e == L for _, e in spans):
        reads["y"] = Read((L - 1,), "out", "tokens")
    if branch:
        reads["m"] = Read(tuple(sorted({s - 1 for s, _ in spans})), "mlp", "tokens")
    for batch, out in Runner(ModelView(base)).passes(seqs, reads, max_tokens=max_tokens, batch_size=batch_size):
        keep = batch.kept(bool(first_token))
        every = bool(keep.all())
        sel = (lambda t: t) if every else (lambda t: t[keep.to(t.device)])  # noqa: E731
        got = {b: sel(t).to(acc, torch.float64) for b, t in out["x"].items()}
        if "y" in out:
            got[L] = sel(out["y"][L - 1]).to(acc, torch.float64)
        for (s, e), st in stats.items():
            _accumulate(st, got[s], got[e], sel(out["m"][s - 1]) if branch else None, batch, H, keep)
    return stats


def check_first_token(first_token: Any) -> None:
    if not isinstance(first_token, bool):
        raise RecoveryError(f"first_token must be True or False (whether each passage's first token, the attention "
                            f"sink, is used), got {first_token!r}")


def _accumulate(st: SpanStats, X: torch.Tensor, Y: torch.Tensor, M: torch.Tensor | None, batch: Batch,
                H: torch.Tensor | None, keep: torch.Tensor | None = None) -> None:
    """Add one batch's kept tokens (``X``, ``Y`` ``[n, d]`` float64; ``M`` the branch output; ``keep`` ``[N]`` bool
    over the batch's real tokens, ``n`` of them true) to ``st``."""
    st.A += X.T @ X
    st.C += X.T @ Y
    st.yy += (Y * Y).sum(0)
    st.sx += X.sum(0)
    st.sy += Y.sum(0)
    st.n += X.shape[0]
    if M is not None:
        M = M.to(X.device, torch.float64)
        T = Y - X + M
        st.A_branch += M.T @ M
        st.C_branch += M.T @ T
        st.yy_branch += (T * T).sum(0)
    if H is not None:
        _add_ratios(st, batch, X @ H, Y @ H, keep)


def _add_ratios(st: SpanStats, batch: Batch, XH: torch.Tensor, YH: torch.Tensor, keep: torch.Tensor | None = None) -> None:
    """Per passage (row of the batch), ``mean_t |YH| / mean_t |XH|`` per channel over its kept tokens, added to
    ``st.ratio_sum``."""
    rows = batch.mask.bool().nonzero(as_tuple=True)[0]
    rows = (rows if keep is None else rows[keep.to(rows.device)]).to(XH.device)
    B = batch.size
    sx = torch.zeros(B, XH.shape[1], dtype=XH.dtype, device=XH.device).index_add_(0, rows, XH.abs())
    sy = torch.zeros_like(sx).index_add_(0, rows, YH.abs())
    st.ratio_sum += (sy / sx.clamp_min(1e-300)).sum(0)  # the token counts of a passage cancel in the ratio
    st.passages += B


def solve(method: str, A: torch.Tensor, C: torch.Tensor, lam: float | None = None, *,
          abs_ratio: torch.Tensor | None = None, target: str | None = None) -> tuple[torch.Tensor, float]:
    """The operator ``W [d, d]`` (float64) of ``method`` from ``A = X^T X``, ``C = X^T Y`` of its regression (the
    branch's for a branch method; LinearPatch: from ``abs_ratio [d]``); returns ``(W, lam)``. ``target``: what the
    ridge of ``ghosted`` shrinks towards."""
    passages = 0 if abs_ratio is None else 1
    st = SpanStats((0, 1), A.double(), C.double(), A_branch=A.double(), C_branch=C.double(),
                   ratio_sum=abs_ratio, passages=passages)
    return fit_operator(get_method(method), st, lam, target=target)
