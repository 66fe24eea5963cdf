"""Fit recovery operators for the cut spans of a pruned model; save and load them.

Spans are fitted independently, each on dense-model inputs, from the float64 statistics of
:func:`~phaselens.recovery.stats.span_stats` (one dense pass over the calibration tokens).
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from .. import checks
from ..calibration import check_seq_len, load_calibration, tokenize
from ..errors import NotFoundError, RecoveryError, SingularFitWarning
from ..files import check_writable, write_safetensors
from ..view import ModelView, as_view, fmt_blocks
from ..registry import PLUGINS_ENV
from ..tensorfile import meta_json, read_tensor_file
from .boundary import BoundaryErrorResult
from .method import METHODS, RecoveryMethod, fit_operator, get_method
from .solvers import check_target, choose_lam
from .stats import SpanStats, check_first_token, span_stats
from ..types import ModelLike
from ..version import __version__
from ..runner.layered import scheduled  # schedule= / act_budget= / act_store= (issue 24)

#: A fit with fewer calibration tokens than this many times the hidden size warns: an
#: unconstrained d x d operator would memorise its calibration text.
MIN_TOKENS_PER_DIM = 8


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
    first_token: bool = True  # whether the fit read each calibration passage's first token (the attention sink)
    fit_error: Any = field(default=None, repr=False)  # a BoundaryErrorResult on the calibration tokens

    def operator(self, span: tuple[int, int]) -> torch.Tensor:
        span = tuple(span)  # type: ignore[assignment]
        if span in self.operators:
            return self.operators[span]  # type: ignore[index]
        if span[0] - 1 in self.branch_operators:  # a method acting on the MLP branch of the block before the span
            return self.branch_operators[span[0] - 1]
        if span in self.spans and not self.operators and not self.branch_operators:
            return torch.eye(self.base.d_model, dtype=torch.float32, device=self.base.device)  # plain pruning
        raise NotFoundError(f"no operator for span {span}; the cut spans are {self.spans}")

    def save(self, path: str | Path) -> Path:
        """Write the operators, spans and the model's fingerprint as safetensors."""
        tensors = {f"span.{s}.{e}": w.detach().float().cpu().contiguous() for (s, e), w in self.operators.items()}
        tensors.update({f"branch.{b}": w.detach().float().cpu().contiguous() for b, w in self.branch_operators.items()})
        meta = {
            "fingerprint": self.base.fingerprint, "model": self.base.name, "method": str(self.method),
            "removed": json.dumps(list(self.removed)), "lam": json.dumps({f"{s}.{e}": v for (s, e), v in self.lam.items()}),
            "n_tokens": str(self.n_tokens), "first_token": json.dumps(bool(self.first_token)), "phaselens": __version__,
        }
        path = Path(path)
        if path.parent.exists() and not path.parent.is_dir():
            raise RecoveryError(f"cannot save under {path.parent}: it is a file, not a folder")
        check_writable(path, "file", what="path", error=RecoveryError, parents=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_safetensors(path, tensors, meta)
        return path


_META_KEYS = ("fingerprint", "model", "method", "removed", "lam", "n_tokens")


def load_recovery(path: str | Path, model: ModelLike) -> Recovered:
    """The recovered view saved at ``path``, on ``model``; refuses a file made for another model, or any file
    that is not a recovery written by :meth:`Recovered.save`."""
    base = as_view(model).base
    path = Path(path)
    meta, tensors = read_tensor_file(path, "recovery", "Recovered.save", _META_KEYS, RecoveryError)
    if meta["fingerprint"] != base.fingerprint:
        raise RecoveryError(
            f"{path} was fitted on model {meta['model']!r} (fingerprint {meta['fingerprint']}), not on "
            f"{base.name!r} (fingerprint {base.fingerprint}); load it with the model it was made for")
    removed, lam, ops, br, n_tok = _parse_saved(path, meta, tensors)
    first = meta.get("first_token", "true")  # files of 0.3 have none: their fits read every token
    if first not in ("true", "false"):
        raise RecoveryError(f"{path}: its metadata 'first_token' is {first!r:.40}, not true or false; the recovery file "
                            "was altered or not written by phaselens")
    _check_saved_method(path, meta["method"])
    L = base.n_blocks
    bad = [b for b in removed if not 0 <= b < L] + [b for s in ops for b in s if not 0 <= b <= L]
    if bad:
        raise RecoveryError(f"{path} cuts blocks {sorted(set(bad))}, outside {base.name}'s 0..{L - 1}: it was made for "
                            "another model")
    try:
        rec = Recovered(base, removed, {s: w.to(base.device) for s, w in ops.items()},
                        {b: w.to(base.device) for b, w in br.items()}, method=meta["method"], lam=lam, n_tokens=n_tok,
                        first_token=first == "true")
    except Exception as e:  # a PruningError / RecoveryError from the view's own checks
        raise RecoveryError(f"{path}: {e}") from e
    _check_complete(path, rec)
    return rec


def _ints(path: Path, key: str, value: Any) -> list[int]:
    if not isinstance(value, list) or not all(isinstance(b, int) and not isinstance(b, bool) for b in value):
        raise RecoveryError(f"{path}: its metadata {key!r} must be a JSON list of block indices (ints), it holds "
                            f"{value!r:.80}; the recovery file was altered or not written by phaselens")
    return value


def _parse_saved(path: Path, meta: dict[str, str], tensors: dict[str, torch.Tensor]) -> tuple:
    """``(removed, lam, ops, branch_ops, n_tokens)`` of a recovery file, each checked for its type and form."""
    removed = tuple(_ints(path, "removed", meta_json(path, meta, "removed", list, "recovery", RecoveryError)))
    raw_lam = meta_json(path, meta, "lam", dict, "recovery", RecoveryError)
    lam = {}
    for k, v in raw_lam.items():
        parts = k.split(".")
        if len(parts) != 2 or not all(x.isdigit() for x in parts) or isinstance(v, bool) \
                or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise RecoveryError(f"{path}: its metadata 'lam' has the entry {k!r}: {v!r}; each entry maps a cut span "
                                "'<start>.<end>' to a ridge >= 0 (the recovery file was altered)")
        lam[(int(parts[0]), int(parts[1]))] = float(v)
    ops, br = {}, {}
    for key, w in tensors.items():
        parts = key.split(".")
        if parts[0] == "span" and len(parts) == 3 and all(x.isdigit() for x in parts[1:]):
            ops[(int(parts[1]), int(parts[2]))] = w
        elif parts[0] == "branch" and len(parts) == 2 and parts[1].isdigit():
            br[int(parts[1])] = w
        else:
            raise RecoveryError(f"{path} holds a tensor named {key!r}; a recovery file holds only 'span.<start>.<end>' "
                                "and 'branch.<block>' operators (the file was altered or not written by phaselens)")
    try:
        n_tok = int(meta["n_tokens"])
    except ValueError:
        n_tok = -1
    if n_tok < 0:
        raise RecoveryError(f"{path}: its metadata 'n_tokens' is {meta['n_tokens']!r:.40}, not a count of tokens")
    return removed, lam, ops, br, n_tok


def _check_complete(path: Path, rec: Recovered) -> None:
    """The operators and ridges of a loaded recovery match its cut spans: one operator per span where its method
    places it (none for a method that fits nothing), and a ridge only for a cut span."""
    spans = set(rec.spans)
    stray = sorted(set(rec.lam) - spans)
    if stray:
        raise RecoveryError(f"{path}: its metadata 'lam' gives ridges for {stray}, which are not cut spans of "
                            f"-{fmt_blocks(rec.removed)} ({sorted(spans)}); the recovery file was altered")
    if rec.method in (None, "None") or rec.method not in METHODS:
        return
    m = get_method(rec.method)
    want = {m.place(sp) for sp in rec.spans} if m.fitted else set()
    have = set(rec.branch_operators if m.acts_on == "branch" else rec.operators)
    other = rec.operators if m.acts_on == "branch" else rec.branch_operators
    if have != want or other:
        raise RecoveryError(
            f"{path}: a {m.name} recovery of -{fmt_blocks(rec.removed)} has {'branch ' if m.acts_on == 'branch' else ''}"
            f"operators for {sorted(want)}, but the file holds {sorted(have)}"
            + (f" and {'span' if m.acts_on == 'branch' else 'branch'} operators for {sorted(other)}" if other else "")
            + "; the recovery file was altered or cut short: refit it")


def _check_saved_method(path: Path, name: str) -> None:
    """A saved recovery's method must be registered here (a plugin's method: load the plugin first)."""
    if name == "None" or name in METHODS:  # "None": a hand-made Recovered saved without a method
        return
    raise RecoveryError(
        f"{path} was fitted with the recovery method {name!r}, which is not registered in this process (registered: "
        f"{', '.join(METHODS.names())}); register it first: import the module that defines it "
        f"(phaselens.register_method), or name that module or .py file in {PLUGINS_ENV} / "
        "phaselens.registry.load_plugins([...]) / a 'phaselens.plugins' entry point")


def _warn_few_tokens(base, n: int) -> None:
    if n < MIN_TOKENS_PER_DIM * base.d_model:
        warnings.warn(
            f"only {n} calibration tokens for a {base.d_model}-wide model: an unconstrained d x d operator "
            f"will fit them too well and generalise poorly; pass at least {MIN_TOKENS_PER_DIM * base.d_model} "
            "tokens (more text, or calibration=None for the bundled corpus)", stacklevel=4)


def _methods(method: Any) -> list[str]:
    ms = [method] if isinstance(method, str) else list(method) if isinstance(method, (list, tuple)) else None
    if ms is None:
        raise RecoveryError(f"method must be a method name or a list of them ({METHODS.names()}), got {method!r}")
    ms = list(METHODS.check(ms))
    if len(set(ms)) != len(ms):
        raise RecoveryError(f"methods {ms} repeat a method; list each once")
    return ms


@scheduled
def fit_recovery(
    pruned: ModelLike,
    calibration: Any = None,
    method: str | Sequence[str] = "ghosted",
    *,
    lam: float | None = None,
    seq_len: int = 256,
    batch_size: int | None = None,
    max_tokens: int | None = None,
    stats: dict[tuple[int, int], SpanStats] | None = None,
    target: str | None = None,
    first_token: bool | None = None,
) -> "Recovered | dict[str, Recovered]":
    """Recover a pruned model: one linear operator per cut span, fitted in closed form.

    Args:
        pruned: a pruned view (:func:`phaselens.prune`) with at least one cut span.
        calibration: ``None`` (the bundled fit passages), a text file, or a list of strings.
        method: a registered recovery method (:data:`~phaselens.recovery.METHODS`: ``"ghosted"`` (default),
            ``"identity"``, ``"scalar"``, ``"diagonal"``, ``"symmetric"``, ``"linearpatch"``, ``"replaceme"``, or
            one added with :func:`phaselens.register_method`); or a list of them, fitted on the same tokens from
            one pass.
        lam: ridge; default ``1e-10 * tr(X^T X) / d`` (plain least squares); a singular ``X^T X``
            falls back to ``1e-4 * tr(X^T X) / d`` with a :class:`SingularFitWarning` giving it.
        stats: precomputed :func:`span_stats` covering every cut span (one pass shared by several views);
            ``calibration``, ``seq_len``, ``batch_size``, ``max_tokens`` are then not used.
        target: what the ridge of ``ghosted`` shrinks towards: ``"identity"`` (``W = I + (X^T X + lam I)^-1
            X^T (Y - X)``, the official Ghosted Layers code) or ``"zero"``; default
            :data:`~phaselens.recovery.solvers.RIDGE_TARGET`. Equal up to float error at the default ``lam``.
        first_token: whether the fit reads each calibration passage's first token. Default: yes (every
            non-padding token). That token's residual is the attention sink (SmolLM2: ~98% of ``tr(Y^T Y)`` after
            block 18 from 64 of 16,000 tokens), so with it the operator is fitted mostly to the sink. Given
            ``stats`` say it themselves (``span_stats(..., first_token=)``); a value that contradicts them is an
            error.

    Returns:
        a :class:`Recovered` for one method, ``{method: Recovered}`` for a list; each has ``fit_error``, the
        per-span boundary error on the calibration tokens computed from the statistics.
    """
    methods = _methods(method)
    if first_token is not None:
        check_first_token(first_token)
    view = _check_fit(pruned, methods, lam, target, seq_len, batch_size, max_tokens)
    if stats is None:
        stats = _gather(view, methods, calibration, seq_len, batch_size, max_tokens, first_token is not False)
    else:
        _check_given_stats(view.spans, methods, stats, first_token)
    out = {}
    for m in methods:
        out[m] = _fit_method(view, get_method(m), stats, lam, target)
    return out[methods[0]] if isinstance(method, str) else out


def _check_fit(pruned: ModelLike, methods: list[str], lam: Any, target: Any, seq_len: int, batch_size: Any,
               max_tokens: Any) -> ModelView:
    """The plainly pruned view to fit (every argument checked before any model work)."""
    check_target(target)
    choose_lam(torch.eye(1, dtype=torch.float64), lam)  # validates lam before any model work
    checks.batching(batch_size, max_tokens, RecoveryError)
    check_seq_len(seq_len)
    view = as_view(pruned)
    if not view.removed:
        raise RecoveryError("the model has no cut spans to recover; prune it first (phaselens.prune)")
    if view.operators or view.branch_operators:
        view = ModelView(view.base, view.removed)  # refit the spans of a recovered view from scratch
    for m in methods:
        for sp in view.spans:
            get_method(m).check_span(sp)
    return view


def _gather(view: ModelView, methods: list[str], calibration: Any, seq_len: int, batch_size: int | None,
            max_tokens: int | None, first_token: bool = True) -> dict[tuple[int, int], SpanStats]:
    """One dense pass over the calibration text for the statistics every method needs."""
    texts = load_calibration(calibration)
    n = sum(len(s) - (not first_token) for s in tokenize(view.base.tokenizer, texts, seq_len))  # the tokens fitted on
    if n == 0:
        raise RecoveryError("the calibration text gives no tokens to fit on (every passage is shorter than 2 tokens); "
                            "pass more text, or calibration=None for the bundled corpus")
    if any(get_method(m).fitted for m in methods):
        _warn_few_tokens(view.base, n)
    return span_stats(view, view.spans, texts, methods=methods, seq_len=seq_len, batch_size=batch_size,
                      max_tokens=max_tokens, first_token=first_token)


def _check_given_stats(spans: list[tuple[int, int]], methods: list[str], stats: dict, first_token: bool | None) -> None:
    missing = [sp for sp in spans if sp not in stats]
    if missing:
        raise RecoveryError(f"stats= has no statistics for the cut span(s) {missing}; pass span_stats over {spans}")
    read = {bool(stats[sp].first_token) for sp in spans}
    if len(read) > 1:
        raise RecoveryError("stats= mixes statistics with and without each passage's first token; gather every span's "
                            "with one span_stats(..., first_token=) call")
    if first_token is not None and read != {first_token}:
        raise RecoveryError(f"first_token={first_token} but the given stats were gathered with "
                            f"first_token={read.pop()}; drop first_token= or gather the stats again with it")
    for m in methods:
        lacking = sorted({nd for nd in get_method(m).needs for sp in spans if not stats[sp].has(nd)})
        if lacking:
            raise RecoveryError(f"{m} needs the statistics {lacking}; pass span_stats(..., methods=[{m!r}]) "
                                f"(or needs={set(lacking)})")


def _fit_method(view: ModelView, method: RecoveryMethod, stats: dict, lam: float | None,
                target: str | None) -> Recovered:
    """Fit ``method`` on every cut span of ``view``; the :class:`Recovered` with its fitted boundary error."""
    spans, dev = view.spans, view.base.device
    n = stats[spans[0]].n
    ops, br, lams, res, y2 = {}, {}, {}, [], []
    for sp in spans:
        st = stats[sp]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", SingularFitWarning)
            W, lams[sp] = fit_operator(method, st, lam, target=target)
        for w in caught:  # say which method and span the fallback concerns
            warnings.warn(f"{method.name}, cut span {sp}: {w.message}", w.category, stacklevel=3)
        # kept in float32 whatever the model's dtype (cast to the activations' dtype when applied)
        if method.fitted:
            (br if method.acts_on == "branch" else ops)[method.place(sp)] = W.to(dev, torch.float32)
        res.append(method.residual(st, W))
        y2.append(st.yy.sum() / st.A.shape[0])
    first = stats[spans[0]].first_token
    rec = Recovered(view.base, view.removed, ops, br, method=method.name, lam=lams, n_tokens=n, first_token=first)
    per_channel = (torch.stack(res) / n).cpu().numpy()
    mse = per_channel.mean(1)
    rel = mse / (torch.stack(y2).cpu().numpy() / n)
    rec.fit_error = BoundaryErrorResult(rec.name, method.name, spans, mse, rel, per_channel, n, first)
    return rec


__all__ = ["MIN_TOKENS_PER_DIM", "Recovered", "fit_recovery", "load_recovery"]
