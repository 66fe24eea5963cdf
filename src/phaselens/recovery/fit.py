"""Fit recovery operators for the cut spans of a pruned model; boundary error; save and load.

For each cut span ``[s, e)`` of a pruned view, one pass of the *dense* model over the
calibration tokens accumulates ``X^T X`` and ``X^T Y`` in float64, with ``X = h_{s-1}`` (the
input of block ``s``) and ``Y = h_{e-1}`` (the output of block ``e-1``) at every
non-padding token: memory ``O(d^2)`` per span, whatever the number of tokens. Spans are
fitted independently, each on dense-model inputs.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch

from ..calibration import calibration_batches, load_calibration, n_tokens
from ..runtime import StopForward, applied, branch_module, run_decoder
from ..view import ModelView, as_view
from .solvers import METHODS, SingularFitWarning, solve

#: A fit with fewer calibration tokens than this many times the hidden size warns: an
#: unconstrained d x d operator would memorise its calibration text.
MIN_TOKENS_PER_DIM = 8


class RecoveryError(ValueError):
    """A recovery cannot be fitted or loaded as asked; the message says why."""


@dataclass
class SpanStats:
    """Float64 sufficient statistics of one cut span over ``n`` tokens (``d x d`` each)."""

    span: tuple[int, int]
    A: torch.Tensor  # X^T X
    C: torch.Tensor  # X^T Y
    n: int = 0
    yy: torch.Tensor | None = None  # diag(Y^T Y) [d]
    A_branch: torch.Tensor | None = None  # M^T M (ReplaceMe)
    C_branch: torch.Tensor | None = None  # M^T (Y - X + M)
    yy_branch: torch.Tensor | None = None  # diag of (Y - X + M)^T (Y - X + M)

    def residual(self, W: torch.Tensor, branch: bool = False) -> torch.Tensor:
        """Per-channel sum of squared errors ``diag((XW - Y)^T (XW - Y))`` ``[d]``, from the statistics alone."""
        A, C, yy = (self.A_branch, self.C_branch, self.yy_branch) if branch else (self.A, self.C, self.yy)
        W = W.to(A.device, torch.float64)
        return ((A @ W) * W).sum(0) - 2 * (C * W).sum(0) + yy


def span_stats(
    model: Any,
    spans: list[tuple[int, int]],
    calibration: Any = None,
    *,
    branch: bool = False,
    seq_len: int = 256,
    batch_size: int = 8,
) -> dict[tuple[int, int], SpanStats]:
    """Accumulate ``X^T X`` and ``X^T Y`` (and ReplaceMe's branch products if ``branch``) for
    every span from one pass of the dense base model of ``model`` over the calibration tokens."""
    base = as_view(model).base
    L, d = base.n_layers, base.d_model
    spans = _check_spans(spans, L)
    texts = load_calibration(calibration)
    dev = base.device
    acc_dev = dev if dev.type == "cuda" else torch.device("cpu")
    stats = {
        sp: SpanStats(sp, torch.zeros(d, d, dtype=torch.float64, device=acc_dev), torch.zeros(d, d, dtype=torch.float64, device=acc_dev),
                      yy=torch.zeros(d, dtype=torch.float64, device=acc_dev))
        for sp in spans
    }
    if branch:
        for (s, _e), st in stats.items():
            if s == 0:
                raise RecoveryError(f"replaceme needs a block before the cut span {(s, _e)}; it cannot recover a cut at block 0")
            st.A_branch = torch.zeros(d, d, dtype=torch.float64, device=acc_dev)
            st.C_branch = torch.zeros(d, d, dtype=torch.float64, device=acc_dev)
            st.yy_branch = torch.zeros(d, dtype=torch.float64, device=acc_dev)
    need_in = sorted({s for s, _ in spans} | {e for _, e in spans if e < L})
    need_out_last = any(e == L for _, e in spans)
    last_in = max(need_in, default=-1)
    with torch.inference_mode():
        for ids, att in calibration_batches(base, texts, seq_len=seq_len, batch_size=batch_size):
            mask = att.bool()
            got: dict[Any, torch.Tensor] = {}

            def grab(b: int, stop: bool):
                def tap(h: torch.Tensor) -> None:
                    got[b] = h[mask]
                    if stop:
                        raise StopForward  # nothing after this block is needed: skip the rest of the pass
                return tap

            t_in = {b: grab(b, b == last_in and not need_out_last) for b in need_in}
            t_out = {L - 1: grab(L, False)} if need_out_last else {}
            handles = []
            if branch:
                for s, _ in spans:
                    mod = branch_module(base.blocks[s - 1])
                    handles.append(mod.register_forward_hook(lambda m, a, out, _s=s: got.__setitem__(("m", _s), out[mask])))
            try:
                with applied(base.blocks, _no_plan(), tap_in=t_in, tap_out=t_out, returns_tuple=base.returns_tuple):
                    run_decoder(base.decoder, ids, att)
            finally:
                for h in handles:
                    h.remove()
            for (s, e), st in stats.items():
                X = got[s].to(acc_dev, torch.float64)
                Y = got[e].to(acc_dev, torch.float64)
                st.A += X.T @ X
                st.C += X.T @ Y
                st.yy += (Y * Y).sum(0)
                st.n += X.shape[0]
                if branch:
                    M = got[("m", s)].to(acc_dev, torch.float64)
                    T = Y - X + M
                    st.A_branch += M.T @ M
                    st.C_branch += M.T @ T
                    st.yy_branch += (T * T).sum(0)
    return stats


def _check_spans(spans: Any, L: int) -> list[tuple[int, int]]:
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


def _no_plan():
    from ..runtime import Plan

    return Plan()


@dataclass(eq=False)
class Recovered(ModelView):
    """A pruned view whose cut spans are replaced by fitted linear operators.

    Usable everywhere a model is. ``operator(span)`` gives the ``[d, d]`` matrix ``W`` of a
    span (``h -> h @ W``); ReplaceMe's matrices act on the MLP branch of block ``s - 1``
    (``branch_operators``). ``lam`` gives the ridge used per span, ``n_tokens`` the
    calibration tokens each operator was fitted on.
    """

    lam: dict[tuple[int, int], float] = field(default_factory=dict)
    n_tokens: int = 0
    fit_error: "BoundaryError | None" = field(default=None, repr=False)

    def operator(self, span: tuple[int, int]) -> torch.Tensor:
        span = tuple(span)  # type: ignore[assignment]
        if span in self.operators:
            return self.operators[span]  # type: ignore[index]
        if self.method == "replaceme" and span[0] - 1 in self.branch_operators:
            return self.branch_operators[span[0] - 1]
        if span in self.spans and not self.operators and not self.branch_operators:
            return torch.eye(self.base.d_model, dtype=torch.float32, device=self.base.device)  # plain pruning
        raise KeyError(f"no operator for span {span}; the cut spans are {self.spans}")

    def save(self, path: str | Path) -> Path:
        """Write the operators, spans and the model's fingerprint as safetensors."""
        from safetensors.torch import save_file

        from .. import __version__

        tensors = {f"span.{s}.{e}": w.detach().float().cpu().contiguous() for (s, e), w in self.operators.items()}
        tensors.update({f"branch.{b}": w.detach().float().cpu().contiguous() for b, w in self.branch_operators.items()})
        meta = {
            "fingerprint": self.base.fingerprint,
            "model": self.base.name,
            "method": str(self.method),
            "removed": json.dumps(list(self.removed)),
            "lam": json.dumps({f"{s}.{e}": v for (s, e), v in self.lam.items()}),
            "n_tokens": str(self.n_tokens),
            "phaselens": __version__,
        }
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(path), metadata=meta)
        return path


def load_recovery(path: str | Path, model: Any) -> Recovered:
    """The recovered view saved at ``path``, on ``model``; refuses a file made for another model."""
    from safetensors import safe_open

    base = as_view(model).base
    path = Path(path)
    if not path.exists():
        raise RecoveryError(f"recovery file not found: {path}")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    if meta.get("fingerprint") != base.fingerprint:
        raise RecoveryError(
            f"{path} was fitted on model {meta.get('model')!r} (fingerprint {meta.get('fingerprint')}), not on "
            f"{base.name!r} (fingerprint {base.fingerprint}); load it with the model it was made for"
        )
    ops = {(int(k.split(".")[1]), int(k.split(".")[2])): v.to(base.device) for k, v in tensors.items() if k.startswith("span.")}
    br = {int(k.split(".")[1]): v.to(base.device) for k, v in tensors.items() if k.startswith("branch.")}
    lam = {tuple(int(x) for x in k.split(".")): v for k, v in json.loads(meta.get("lam", "{}")).items()}
    return Recovered(base, tuple(json.loads(meta["removed"])), ops, br, method=meta.get("method"), lam=lam,  # type: ignore[arg-type]
                     n_tokens=int(meta.get("n_tokens", 0)))


def _check_tokens(base, texts: list[str], seq_len: int) -> int:
    n = n_tokens(base, texts, seq_len)
    if n < MIN_TOKENS_PER_DIM * base.d_model:
        warnings.warn(
            f"only {n} calibration tokens for a {base.d_model}-wide model: an unconstrained d x d operator "
            f"will fit them too well and generalise poorly; pass at least {MIN_TOKENS_PER_DIM * base.d_model} "
            "tokens (more text, or calibration=None for the bundled corpus)",
            stacklevel=3,
        )
    return n


def fit_recoveries(
    pruned: Any,
    methods: Iterable[str] = METHODS,
    calibration: Any = None,
    *,
    lam: float | None = None,
    seq_len: int = 256,
    batch_size: int = 8,
    stats: dict[tuple[int, int], SpanStats] | None = None,
) -> dict[str, Recovered]:
    """Fit several methods on the same calibration tokens, from one dense pass.

    Args:
        pruned: a pruned view (:func:`phaselens.prune`) with at least one cut span.
        methods: any of :data:`METHODS`.
        calibration: ``None`` (the bundled fit passages), a text file, or a list of strings.
        stats: precomputed :func:`span_stats` covering every cut span of ``pruned`` (e.g. one pass shared
            by several pruned views); ``calibration``/``seq_len``/``batch_size`` are then not used.
    Returns:
        ``{method: Recovered}``; each has ``fit_error``, the per-span boundary error on the calibration
        tokens computed from the statistics (each span on the dense model's input).
    """
    view = as_view(pruned)
    methods = list(methods)
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise RecoveryError(f"unknown recovery method(s) {bad}; choose from {METHODS}")
    if not methods:
        raise RecoveryError(f"no recovery method given; choose from {METHODS}")
    if not view.removed:
        raise RecoveryError("the model has no cut spans to recover; prune it first (phaselens.prune)")
    if view.operators or view.branch_operators:
        view = ModelView(view.base, view.removed)  # refit the spans of a recovered view from scratch
    spans = view.spans
    if "replaceme" in methods and spans[0][0] == 0:
        raise RecoveryError(f"replaceme needs a block before the cut span {spans[0]}; it cannot recover a cut at block 0")
    if stats is None:
        texts = load_calibration(calibration)
        _check_tokens(view.base, texts, seq_len)
        stats = span_stats(view, spans, texts, branch="replaceme" in methods, seq_len=seq_len, batch_size=batch_size)
    else:
        missing = [sp for sp in spans if sp not in stats]
        if missing:
            raise RecoveryError(f"stats= has no statistics for the cut span(s) {missing}; pass span_stats over {spans}")
        if "replaceme" in methods and any(stats[sp].A_branch is None for sp in spans):
            raise RecoveryError("replaceme needs span_stats(..., branch=True)")
    n = stats[spans[0]].n
    out = {}
    dev = view.base.device
    for m in methods:
        ops, br, lams, res, y2 = {}, {}, {}, [], []
        for sp in spans:
            st = stats[sp]
            A, C = (st.A_branch, st.C_branch) if m == "replaceme" else (st.A, st.C)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", SingularFitWarning)
                W, lams[sp] = solve(m, A, C, lam)
            for w in caught:  # say which method and span the fallback concerns
                warnings.warn(f"{m}, cut span {sp}: {w.message}", w.category, stacklevel=2)
            # kept in float32 whatever the model's dtype (cast to the activations' dtype when applied)
            if m == "replaceme":
                br[sp[0] - 1] = W.to(dev, torch.float32)
            elif m != "identity":
                ops[sp] = W.to(dev, torch.float32)
            res.append(st.residual(W, branch=m == "replaceme"))
            y2.append(st.yy.sum() / st.A.shape[0])
        rec = Recovered(view.base, view.removed, ops, br, method=m, lam=lams, n_tokens=n)
        per_channel = (torch.stack(res) / n).cpu().numpy()
        mse = per_channel.mean(1)
        rel = mse / (torch.stack(y2).cpu().numpy() / n)
        rec.fit_error = BoundaryError(rec.name, m, spans, mse, rel, per_channel, n)
        out[m] = rec
    return out


def fit_recovery(
    pruned: Any,
    calibration: Any = None,
    method: str = "ghosted",
    *,
    lam: float | None = None,
    seq_len: int = 256,
    batch_size: int = 8,
) -> Recovered:
    """Recover a pruned model: one linear operator per cut span, fitted in closed form.

    Args:
        pruned: a pruned view (:func:`phaselens.prune`).
        calibration: ``None`` (bundled corpus), a text file, or a list of strings.
        method: ``"ghosted"`` (default), ``"identity"``, ``"scalar"``, ``"diagonal"``,
            ``"symmetric"``, ``"linearpatch"`` or ``"replaceme"``.
        lam: ridge; default ``1e-10 * tr(X^T X) / d`` (plain least squares); a singular ``X^T X``
            falls back to ``1e-4 * tr(X^T X) / d`` with a :class:`SingularFitWarning` giving it.
    """
    if method not in METHODS:
        raise RecoveryError(f"unknown recovery method {method!r}; choose from {METHODS}")
    return fit_recoveries(pruned, [method], calibration, lam=lam, seq_len=seq_len, batch_size=batch_size)[method]


@dataclass
class BoundaryError:
    """Per cut span, what the next surviving block receives versus what the dense model gives it.

    Attributes:
        spans: the cut spans ``(s, e)``.
        mse: ``[S]`` mean squared error over tokens and channels.
        relative: ``[S]`` ``mse / mean(Y^2)`` (scale-free).
        per_channel: ``[S, d]`` mean squared error per channel.
        n_tokens: calibration tokens compared.
    """

    model: str
    method: str | None
    spans: list[tuple[int, int]]
    mse: np.ndarray
    relative: np.ndarray
    per_channel: np.ndarray
    n_tokens: int

    def to_pandas(self):
        import pandas as pd

        return pd.DataFrame({"model": self.model, "method": self.method or "none", "span_start": [s for s, _ in self.spans],
                             "span_end": [e for _, e in self.spans], "mse": self.mse, "relative": self.relative,
                             "n_tokens": self.n_tokens})

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "method": self.method, "spans": [list(s) for s in self.spans], "mse": self.mse.tolist(),
                "relative": self.relative.tolist(), "per_channel": self.per_channel.tolist(), "n_tokens": self.n_tokens}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "BoundaryError":
        return cls(d["model"], d["method"], [tuple(s) for s in d["spans"]], np.asarray(d["mse"], float),
                   np.asarray(d["relative"], float), np.asarray(d["per_channel"], float), int(d["n_tokens"]))

    def plot(self, **kw):
        from ..plots import boundary_error_channels

        return boundary_error_channels([self], **kw)


def boundary_error(
    model: Any,
    calibration: Any = None,
    *,
    inputs: str = "dense",
    seq_len: int = 256,
    batch_size: int = 8,
) -> BoundaryError:
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
    """
    view = as_view(model)
    base = view.base
    spans = view.spans
    if not spans:
        raise RecoveryError("the model has no cut spans; boundary error compares a pruned model with its dense base")
    if inputs not in ("dense", "pruned"):
        raise RecoveryError(f"inputs must be 'dense' (each span on the dense model's input) or 'pruned' (the whole "
                            f"pruned model runs), got {inputs!r}")
    texts = load_calibration(calibration)
    d = base.d_model
    sq = torch.zeros(len(spans), d, dtype=torch.float64)
    y2 = torch.zeros(len(spans), dtype=torch.float64)
    n = 0
    ops, branch = view._ops, view._branch  # the very edits the view's forward applies
    with torch.inference_mode():
        for ids, att in calibration_batches(base, texts, seq_len=seq_len, batch_size=batch_size):
            mask = att.bool()
            got: dict[Any, torch.Tensor] = {}

            def grab(key: Any):
                return lambda h: got.__setitem__(key, h[mask])

            dense_out = {e - 1: grab(("y", e)) for _, e in spans}
            if inputs == "dense":
                handles = [
                    branch_module(base.blocks[s - 1]).register_forward_hook(
                        lambda m, a, out, _s=s: got.__setitem__(("m", _s), out[mask]))
                    for s, _e in spans if s - 1 in branch
                ]
                try:
                    with applied(base.blocks, _no_plan(), tap_in={s: grab(("x", s)) for s, _ in spans},
                                 tap_out=dense_out, returns_tuple=base.returns_tuple):
                        run_decoder(base.decoder, ids, att)
                finally:
                    for h in handles:
                        h.remove()
                for s, e in spans:
                    x = got[("x", s)]  # h_{s-1} of the dense model at the real tokens [n, d]
                    if s - 1 in branch:  # ReplaceMe: block s-1 with its MLP branch m -> m T
                        m = got[("m", s)]
                        x = x - m + branch[s - 1](m)
                    got[("p", e)] = ops[(s, e)](x) if (s, e) in ops else x
            else:
                with applied(base.blocks, _no_plan(), tap_out=dense_out, returns_tuple=base.returns_tuple):
                    run_decoder(base.decoder, ids, att)
                with applied(base.blocks, view.plan(), tap_out={e - 1: grab(("p", e)) for _, e in spans},
                             returns_tuple=base.returns_tuple):
                    run_decoder(base.decoder, ids, att)
            for i, (_s, e) in enumerate(spans):
                y = got[("y", e)].double().cpu()
                diff = got[("p", e)].double().cpu() - y
                sq[i] += (diff**2).sum(0)
                y2[i] += (y**2).mean(1).sum()
            n += int(mask.sum())
    per_channel = (sq / n).numpy()
    mse = per_channel.mean(1)
    return BoundaryError(view.name, view.method, spans, mse, mse / (y2.numpy() / n), per_channel, n)
