"""Linear CKA between the layers of two models, or of a model and a pruned view of it.

For representations ``X [n, p]`` and ``Y [n, q]`` of the same ``n`` inputs, columns centred
(``X~ = X - 1 mean(X)``)::

    CKA(X, Y) = ||Y~^T X~||_F^2 / (||X~^T X~||_F ||Y~^T Y~||_F)
              = <K~, L~>_F / (||K~||_F ||L~||_F),   K~ = X~ X~^T,  L~ = Y~ Y~^T

(Kornblith et al., 2019). ``debiased=True`` replaces each ``<K~, L~>_F`` by the unbiased
HSIC estimator of Song et al. (2012) (up to its constant factor, which cancels), exactly as
Kornblith's reference ``cka(..., debiased=True)`` / ``feature_space_linear_cka(..., debiased=True)``.

All ``L_a x L_b`` layer pairs are computed at once by :class:`CKAAccumulator`, fed minibatches
``[L_a, b, p]``, ``[L_b, b, q]`` of the two models' representations of the same inputs. It
has two exact forms, both supporting ``debiased``:

``"gram"``
    keeps the raw minibatch rows (``O(n (L_a p + L_b q))`` memory); at the end each layer's
    features are centred exactly and its ``n x n`` Gram matrix is formed in float64 (biased:
    ``X~ X~^T``; debiased: U-centred with a zero diagonal); all pairs are one matrix product
    of the flattened Grams, ``[L_a, n^2] @ [n^2, L_b]``, chunked to bound memory.
``"feature"``
    memory independent of ``n``: float64 running sums of the (shifted) rows, the
    cross-covariances ``X^T Y`` of every layer pair as one ``[L_a p, L_b q]`` matrix updated by
    a single GEMM per minibatch, and ``X^T X``, ``Y^T Y`` per layer. Centring is applied at the
    end, ``X~^T Y~ = X^T Y - n mean_x mean_y^T``. The debiased estimator also needs
    ``sum_i ||x~_i||^2 ||y~_i||^2``; it is expanded into running sums
    (``sum_i ||x_i||^2 ||y_i||^2``, ``sum_i ||x_i||^2 y_i``, ``sum_i ||y_i||^2 x_i``, ...) so it
    streams too. Every row is first shifted by the first minibatch's per-layer mean (CKA and
    its debiased form are translation invariant), which keeps the running-sum centring free of
    cancellation in float64.

``form="auto"`` (the default) starts in the Gram form and moves to the feature form, exactly,
once the Gram form would need more memory than the feature form: so the Gram form is used
whenever ``n`` is below the feature dimension (where it is always the smaller and the faster),
and the feature form once ``n`` is large enough that ``n x n`` Grams cost more than the
``L_a L_b p q`` cross-covariances.

:func:`cka` runs both models once over a task's decision positions or over text tokens and
returns a :class:`CKAResult`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

FORMS = ("auto", "gram", "feature")
POSITIONS = ("decision", "all")
_GRAM_CHUNK_BYTES = 1 << 30  # Gram matrices held at once while finishing the Gram form


class CKAError(ValueError):
    """CKA cannot be computed as asked; the message says why and what to pass instead."""


# ----------------------------------------------------------------------------- math helpers
def _u_center(K: torch.Tensor) -> torch.Tensor:
    """U-centre Gram matrices ``[..., n, n]`` in place (Song et al.; Kornblith's ``center_gram(unbiased=True)``)."""
    n = K.shape[-1]
    diag = K.diagonal(dim1=-2, dim2=-1)
    diag.zero_()
    means = K.sum(-2) / (n - 2)
    means -= means.sum(-1, keepdim=True) / (2 * (n - 1))
    K -= means[..., :, None]
    K -= means[..., None, :]
    diag.zero_()
    return K


def _debias(xty: torch.Tensor, rows_xy: torch.Tensor, sq_x: torch.Tensor, sq_y: torch.Tensor, n: int) -> torch.Tensor:
    """Kornblith's ``_debiased_dot_product_similarity_helper`` (broadcasting):
    ``<K~', L~'>`` from ``||Y~^T X~||^2``, ``sum_i ||x~_i||^2 ||y~_i||^2`` and the two ``||X~||_F^2``."""
    return xty - n / (n - 2.0) * rows_xy + sq_x * sq_y / ((n - 1.0) * (n - 2.0))


def _ratio(num: torch.Tensor, den_a: torch.Tensor, den_b: torch.Tensor) -> np.ndarray:
    num, den = num.cpu().numpy(), np.outer(den_a.cpu().numpy(), den_b.cpu().numpy())
    with np.errstate(divide="ignore", invalid="ignore"):
        return num / den  # nan for a constant layer (its CKA is undefined)


def _to_tensor(x: Any, name: str) -> torch.Tensor:
    t = x.detach() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    if not (t.is_floating_point() or t.dtype in (torch.int32, torch.int64)):
        raise CKAError(f"{name} must hold real numbers, got {t.dtype}")
    return t


# ----------------------------------------------------------------------------- accumulator
class CKAAccumulator:
    """All-pairs linear CKA between the layers of two representations, from minibatches.

    ``update(xa, xb)`` takes ``xa [L_a, b, p]`` and ``xb [L_b, b, q]`` (numpy or torch): the
    two sides' representations of the *same* ``b`` inputs, every layer at once (a single
    ``[b, p]`` matrix is taken as one layer). ``compute()`` returns ``[L_a, L_b]`` float64 numpy.
    Any split of the inputs into minibatches gives the same values as a single ``update``
    (to float64 rounding).

    Args:
        debiased: the unbiased HSIC estimator (needs ``n >= 4``); both forms support it.
        form: ``"auto"``, ``"gram"`` or ``"feature"`` (see the module docstring).
        device: where the float64 accumulators live (default: the first minibatch's device).
        dtype: accumulation dtype (float64; float32 trades exactness for speed).
    """

    def __init__(self, *, debiased: bool = False, form: str = "auto", device: str | torch.device | None = None,
                 dtype: torch.dtype = torch.float64) -> None:
        if form not in FORMS:
            raise CKAError(f"form must be one of {FORMS}, got {form!r}")
        self.debiased = bool(debiased)
        self.requested_form = form
        self.form = "feature" if form == "feature" else "gram"
        self.device = torch.device(device) if device is not None else None
        self.dtype = dtype
        self.n = 0
        self.shape: tuple[int, int, int, int] | None = None  # L_a, p, L_b, q
        self._xa: list[torch.Tensor] = []
        self._xb: list[torch.Tensor] = []
        self._f: dict[str, torch.Tensor] = {}

    # -- bookkeeping
    def _check(self, xa: Any, xb: Any) -> tuple[torch.Tensor, torch.Tensor]:
        a, b = _to_tensor(xa, "xa"), _to_tensor(xb, "xb")
        if a.dim() == 2:
            a = a[None]
        if b.dim() == 2:
            b = b[None]
        if a.dim() != 3 or b.dim() != 3:
            raise CKAError(f"expected [L, b, features] (or [b, features]) arrays, got shapes {tuple(a.shape)} and {tuple(b.shape)}")
        if a.shape[1] != b.shape[1]:
            raise CKAError(
                f"the two sides hold different numbers of samples ({a.shape[1]} vs {b.shape[1]}); CKA compares "
                "representations of the same inputs, row for row"
            )
        shape = (a.shape[0], a.shape[2], b.shape[0], b.shape[2])
        if self.shape is None:
            self.shape = shape  # type: ignore[assignment]
            self.device = self.device or a.device
        elif shape != self.shape:
            raise CKAError(f"minibatch shapes changed: [L_a, p, L_b, q] was {list(self.shape)}, now {list(shape)}")
        if not torch.isfinite(a).all() or not torch.isfinite(b).all():
            raise CKAError("representations contain inf or nan")
        return a.to(self.device), b.to(self.device)

    def _store_dtype(self, t: torch.Tensor) -> torch.dtype:
        return torch.float64 if t.dtype == torch.float64 else torch.float32

    def _gram_bytes(self, n: int) -> int:
        la, p, lb, q = self.shape  # type: ignore[misc]
        return 4 * n * (la * p + lb * q) + 8 * n * n * (la + lb)

    def _feature_bytes(self) -> int:
        la, p, lb, q = self.shape  # type: ignore[misc]
        extra = la * lb * (p + q) if self.debiased else 0
        return 8 * (la * p * lb * q + la * p * p + lb * q * q + extra)

    def update(self, xa: Any, xb: Any) -> "CKAAccumulator":
        """Add a minibatch: ``xa [L_a, b, p]``, ``xb [L_b, b, q]`` (same ``b`` inputs, same order)."""
        a, b = self._check(xa, xb)
        if a.shape[1] == 0:
            return self
        if self.form == "gram":
            self._xa.append(a.to(self._store_dtype(a)))
            self._xb.append(b.to(self._store_dtype(b)))
            self.n += a.shape[1]
            if self.requested_form == "auto" and self._gram_bytes(self.n) > self._feature_bytes():
                self._to_feature()
        else:
            self._feature_update(a, b)
        return self

    def _to_feature(self) -> None:
        """Move the stored rows into the feature-form sums (exact; shift = their mean)."""
        xa, xb = self._xa, self._xb
        self._xa, self._xb, self.form = [], [], "feature"
        n = self.n
        self.n = 0
        self._f["shift_a"] = sum(t.to(self.dtype).sum(1) for t in xa) / n
        self._f["shift_b"] = sum(t.to(self.dtype).sum(1) for t in xb) / n
        for a, b in zip(xa, xb):
            self._feature_update(a, b)

    def _feature_update(self, a: torch.Tensor, b: torch.Tensor) -> None:
        la, p, lb, q = self.shape  # type: ignore[misc]
        f, dt = self._f, self.dtype
        x, y = a.to(dt), b.to(dt)
        if "cross" not in f:
            if "shift_a" not in f:
                f["shift_a"], f["shift_b"] = x.mean(1), y.mean(1)
            z = lambda *s: torch.zeros(*s, dtype=dt, device=self.device)  # noqa: E731
            f.update(sx=z(la, p), sy=z(lb, q), cross=z(la * p, lb * q), gxx=z(la, p, p), gyy=z(lb, q, q))
            if self.debiased:
                f.update(ra=z(la), rb=z(lb), raa=z(la), rbb=z(lb), rab=z(la, lb), ax=z(la, p), by=z(lb, q),
                         ay=z(la, lb, q), bx=z(la, lb, p))
        x = x - f["shift_a"][:, None]
        y = y - f["shift_b"][:, None]
        m = x.shape[1]
        f["sx"] += x.sum(1)
        f["sy"] += y.sum(1)
        # every layer pair's X^T Y in one GEMM: [L_a p, m] @ [m, L_b q]
        f["cross"].addmm_(x.transpose(1, 2).reshape(la * p, m), y.transpose(0, 1).reshape(m, lb * q))
        f["gxx"].baddbmm_(x.transpose(1, 2), x)
        f["gyy"].baddbmm_(y.transpose(1, 2), y)
        if self.debiased:
            ra, rb = (x * x).sum(-1), (y * y).sum(-1)  # [L_a, m], [L_b, m]
            f["ra"] += ra.sum(1)
            f["rb"] += rb.sum(1)
            f["raa"] += (ra * ra).sum(1)
            f["rbb"] += (rb * rb).sum(1)
            f["rab"] += ra @ rb.T
            f["ax"] += torch.einsum("am,amp->ap", ra, x)
            f["by"] += torch.einsum("bm,bmq->bq", rb, y)
            f["ay"] += torch.einsum("am,bmq->abq", ra, y)
            f["bx"] += torch.einsum("bm,amp->abp", rb, x)
        self.n += m

    # -- results
    def compute(self) -> np.ndarray:
        """``[L_a, L_b]`` CKA of every layer pair (float64 numpy)."""
        if self.n < 2:
            raise CKAError(f"CKA needs at least 2 samples, got {self.n}")
        if self.debiased and self.n < 4:
            raise CKAError(f"debiased CKA needs at least 4 samples, got {self.n}")
        return self._gram_compute() if self.form == "gram" else self._feature_compute()

    def _gram_compute(self) -> np.ndarray:
        la, _p, lb, _q = self.shape  # type: ignore[misc]
        n, dt = self.n, self.dtype
        per = 8 * n * n
        cb = max(1, min(lb, _GRAM_CHUNK_BYTES // per))
        ca = max(1, min(la, _GRAM_CHUNK_BYTES // per))

        def grams(parts: list[torch.Tensor], idx: slice) -> torch.Tensor:
            x = torch.cat([t[idx] for t in parts], 1).to(dt)
            x -= x.mean(1, keepdim=True)
            k = torch.bmm(x, x.transpose(1, 2))
            return _u_center(k) if self.debiased else k

        num = torch.empty(la, lb, dtype=dt, device=self.device)
        norm_a = torch.empty(la, dtype=dt, device=self.device)
        norm_b = torch.empty(lb, dtype=dt, device=self.device)
        for j in range(0, lb, cb):
            kb = grams(self._xb, slice(j, j + cb)).flatten(1)
            norm_b[j : j + cb] = kb.norm(dim=1)
            for i in range(0, la, ca):
                ka = grams(self._xa, slice(i, i + ca)).flatten(1)
                if j == 0:
                    norm_a[i : i + ca] = ka.norm(dim=1)
                num[i : i + ca, j : j + cb] = ka @ kb.T
                del ka
            del kb
        return _ratio(num, norm_a, norm_b)

    def _feature_compute(self) -> np.ndarray:
        la, p, lb, q = self.shape  # type: ignore[misc]
        f, n = self._f, self.n
        mx, my = f["sx"] / n, f["sy"] / n  # means of the shifted rows
        cross = f["cross"].view(la, p, lb, q)
        num = torch.empty(la, lb, dtype=self.dtype, device=self.device)
        mid = torch.empty(la, lb, dtype=self.dtype, device=self.device)  # mean_x^T X^T Y mean_y
        for i in range(la):
            c = cross[i].permute(1, 0, 2)  # [L_b, p, q]
            mid[i] = torch.einsum("p,bpq,bq->b", mx[i], c, my)
            c = c - n * mx[i][None, :, None] * my[:, None, :]
            num[i] = c.square().sum((1, 2))
        gxx = f["gxx"] - n * mx[:, :, None] * mx[:, None, :]
        gyy = f["gyy"] - n * my[:, :, None] * my[:, None, :]
        sq_a, sq_b = gxx.square().sum((1, 2)), gyy.square().sum((1, 2))  # ||X~^T X~||_F^2
        if not self.debiased:
            return _ratio(num, sq_a.sqrt(), sq_b.sqrt())
        al, be = (mx * mx).sum(1), (my * my).sum(1)  # |mean|^2
        ta = f["ra"] - n * al  # ||X~||_F^2 = sum_i ||x~_i||^2
        tb = f["rb"] - n * be
        # sum_i ||x~_i||^2 ||y~_i||^2, expanded into the running sums
        rows = (f["rab"] - 2 * torch.einsum("abq,bq->ab", f["ay"], my) - 2 * torch.einsum("abp,ap->ab", f["bx"], mx)
                + 4 * mid + be[None] * f["ra"][:, None] + al[:, None] * f["rb"][None] - 3 * n * al[:, None] * be[None])
        rows_a = f["raa"] - 4 * (f["ax"] * mx).sum(1) + 4 * torch.einsum("ap,apr,ar->a", mx, f["gxx"], mx) + 2 * al * f["ra"] - 3 * n * al * al
        rows_b = f["rbb"] - 4 * (f["by"] * my).sum(1) + 4 * torch.einsum("bq,bqr,br->b", my, f["gyy"], my) + 2 * be * f["rb"] - 3 * n * be * be
        hxy = _debias(num, rows, ta[:, None], tb[None], n)
        hxx = _debias(sq_a, rows_a, ta, ta, n).clamp_min(0)
        hyy = _debias(sq_b, rows_b, tb, tb, n).clamp_min(0)
        return _ratio(hxy, hxx.sqrt(), hyy.sqrt())


def linear_cka(X: Any, Y: Any, *, debiased: bool = False, form: str = "auto") -> float:
    """Linear CKA of ``X [n, p]`` and ``Y [n, q]`` (numpy or torch; rows are the same inputs).

    ``CKA = ||Y~^T X~||_F^2 / (||X~^T X~||_F ||Y~^T Y~||_F)`` with centred columns, computed in
    float64. ``debiased=True``: the unbiased HSIC estimator (Song et al.; Kornblith's
    ``feature_space_linear_cka(debiased=True)``), ``n >= 4``. ``form``: ``"auto"`` (Gram form when
    ``n`` is below the feature dimension), ``"gram"`` or ``"feature"``; all agree.
    """
    x, y = _to_tensor(X, "X"), _to_tensor(Y, "Y")
    if x.dim() != 2 or y.dim() != 2:
        raise CKAError(f"X and Y must be [n, features] matrices, got shapes {tuple(x.shape)} and {tuple(y.shape)}")
    if x.shape[0] != y.shape[0]:
        raise CKAError(f"X and Y must have the same number of rows (inputs), got {x.shape[0]} and {y.shape[0]}")
    acc = CKAAccumulator(debiased=debiased, form=form)
    acc.update(x.to(torch.float64)[None], y.to(torch.float64)[None])
    return float(acc.compute()[0, 0])


# ----------------------------------------------------------------------------- result
@dataclass
class CKAResult:
    """Linear CKA of every surviving block of ``model_a`` against every block of ``model_b``.

    Attributes:
        matrix: ``[L_a, L_b]`` CKA values (rows: ``model_a``'s blocks, columns: ``model_b``'s).
        blocks_a, blocks_b: original block index of each row / column (a pruned view's
            surviving blocks keep their dense-model indices).
        model_a, model_b: model names.
        positions: ``"decision"`` (each item's last prompt token) or ``"all"`` (every token).
        n_samples: representations compared (items or tokens) after subsampling.
        debiased: whether the unbiased HSIC estimator was used.
        source: the task name, or ``"texts"`` / ``"calibration"``.
        form: ``"gram"`` or ``"feature"``, the accumulator form that computed it.
    """

    matrix: np.ndarray
    blocks_a: list[int]
    blocks_b: list[int]
    model_a: str
    model_b: str
    positions: str
    n_samples: int
    debiased: bool = False
    source: str = ""
    form: str = ""
    seed: int = 0

    def __post_init__(self) -> None:
        self.matrix = np.asarray(self.matrix, dtype=float)
        self.blocks_a = [int(b) for b in self.blocks_a]
        self.blocks_b = [int(b) for b in self.blocks_b]
        if self.matrix.shape != (len(self.blocks_a), len(self.blocks_b)):
            raise CKAError(f"matrix shape {self.matrix.shape} does not match {len(self.blocks_a)} x {len(self.blocks_b)} blocks")

    def value(self, block_a: int, block_b: int) -> float:
        """CKA between original block ``block_a`` of model_a and ``block_b`` of model_b."""
        try:
            return float(self.matrix[self.blocks_a.index(block_a), self.blocks_b.index(block_b)])
        except ValueError:
            raise KeyError(f"block pair ({block_a}, {block_b}) not in blocks_a={self.blocks_a} x blocks_b={self.blocks_b}") from None

    def matched(self) -> tuple[np.ndarray, np.ndarray]:
        """(blocks present on both sides, CKA of each such block with itself across the models)."""
        common = [b for b in self.blocks_a if b in set(self.blocks_b)]
        return np.asarray(common, dtype=int), np.asarray([self.value(b, b) for b in common])

    def to_pandas(self):
        """Long format: one row per pair, columns ``block_a``, ``block_b``, ``cka``."""
        import pandas as pd

        ia, ib = np.meshgrid(np.arange(len(self.blocks_a)), np.arange(len(self.blocks_b)), indexing="ij")
        return pd.DataFrame({
            "block_a": np.asarray(self.blocks_a)[ia.ravel()],
            "block_b": np.asarray(self.blocks_b)[ib.ravel()],
            "cka": self.matrix.ravel(),
        })

    def plot(self, **kw):
        """Plotly heatmap (see :func:`phaselens.plots.cka_heatmap`)."""
        from .plots import cka_heatmap

        return cka_heatmap(self, **kw)

    def to_dict(self) -> dict[str, Any]:
        return {
            "matrix": [[None if not math.isfinite(v) else float(v) for v in row] for row in self.matrix],
            "blocks_a": list(self.blocks_a), "blocks_b": list(self.blocks_b),
            "model_a": self.model_a, "model_b": self.model_b, "positions": self.positions,
            "n_samples": int(self.n_samples), "debiased": bool(self.debiased), "source": self.source,
            "form": self.form, "seed": int(self.seed),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CKAResult":
        kw = dict(d)
        kw["matrix"] = np.array([[np.nan if v is None else v for v in row] for row in d["matrix"]], dtype=float).reshape(
            len(d["blocks_a"]), len(d["blocks_b"]))
        return cls(**{k: v for k, v in kw.items() if k in cls.__dataclass_fields__})


# ----------------------------------------------------------------------------- models
def _is_texts(obj: Any) -> bool:
    return obj is None or (isinstance(obj, (list, tuple)) and len(obj) > 0 and all(isinstance(t, str) for t in obj))


def _same_computation(va, vb) -> bool:
    return va is vb or (va.base is vb.base and va.signature() == vb.signature())


def _prompt_ids(task, tokenizer) -> list[list[int]]:
    """Each item's prompt tokens, as :func:`phaselens.encoding.encode` tokenizes them."""
    prompts = [task.prompt(i) for i in range(len(task.items))]
    return [list(s) for s in tokenizer(prompts, add_special_tokens=True)["input_ids"]]


class _Collector:
    """Runs a view over padded batches and gathers every surviving block's output at given (row, position)."""

    def __init__(self, view) -> None:
        from .runtime import StopForward

        self.view = view
        self.kept = view.kept
        self.rows: list[torch.Tensor] = []
        self.sel: tuple[torch.Tensor, torch.Tensor] | None = None
        last = self.kept[-1]

        def make(b: int):
            def tap(h: torch.Tensor) -> None:
                r, t = self.sel  # type: ignore[misc]
                self.rows.append(h[r, t].float())
                if b == last:
                    raise StopForward  # nothing after the last surviving block is needed

            return tap

        self.taps = {b: make(b) for b in self.kept}

    def __call__(self, seqs: list[list[int]], rows: list[int], pos: list[int]) -> torch.Tensor:
        from .encoding import pad
        from .runtime import applied, run_decoder

        base = self.view.base
        ids, att = pad(seqs, base.tokenizer.pad_token_id if base.tokenizer.pad_token_id is not None else 0, base.device)
        self.sel = (torch.tensor(rows, device=base.device), torch.tensor(pos, device=base.device))
        self.rows = []
        with applied(base.blocks, self.view.plan(), tap_out=self.taps, returns_tuple=base.returns_tuple):
            run_decoder(base.decoder, ids, att)
        if len(self.rows) != len(self.kept):
            raise CKAError(f"{self.view.name}: expected {len(self.kept)} block outputs, captured {len(self.rows)}")
        return torch.stack(self.rows)  # [L, m, d]


def cka(
    model_a: Any,
    model_b: Any,
    task_or_texts: Any = None,
    *,
    positions: str | None = None,
    n_samples: int = 2048,
    debiased: bool = False,
    seed: int = 0,
    batch_size: int | None = None,
    form: str = "auto",
    seq_len: int = 256,
    progress: bool = False,
) -> CKAResult:
    """Linear CKA between every surviving block of ``model_a`` and every one of ``model_b``.

    Args:
        model_a, model_b: models, pruned/recovered views (:class:`~phaselens.view.ModelView`) or
            anything ``load_model`` takes; ``model_b`` may be ``model_a`` itself or a view of it.
        task_or_texts: a :class:`~phaselens.Task` or anything ``load_task`` takes; or a list of
            strings; or ``None``: the bundled calibration corpus (``calibration.load_calibration``).
        positions: ``"decision"``: each item's decision position (its last prompt token), one
            sample per item; the two models may have different tokenizers. ``"all"``: every
            non-padding token (texts truncated to ``seq_len`` tokens); both models must tokenize
            the inputs identically. Default: ``"decision"`` for a task, ``"all"`` for texts.
        n_samples: at most this many samples (items or tokens), drawn without replacement by a
            generator seeded with ``seed``; the same samples for both models.
        debiased: the unbiased HSIC estimator (Song et al.) instead of the plug-in one.
        batch_size: sequences per forward pass (default 16 / 8 on the CPU for decision / all,
            64 / 32 on a GPU).
        form: the accumulator form, ``"auto"``, ``"gram"`` or ``"feature"`` (same values).

    Each model runs once over the selected sequences (a view computing the same thing as
    ``model_a`` is not run twice); sequences are cut after their last sampled token (the
    models are causal), and block outputs are gathered at the sampled positions only and
    folded into a :class:`CKAAccumulator` batch by batch.
    """
    from .view import as_view

    if positions is not None and positions not in POSITIONS:
        raise CKAError(f"positions must be one of {POSITIONS}, got {positions!r}")
    if isinstance(n_samples, bool) or not isinstance(n_samples, (int, np.integer)) or n_samples < 2:
        raise CKAError(f"n_samples must be an integer >= 2 (CKA compares at least two inputs), got {n_samples!r}")
    if debiased and n_samples < 4:
        raise CKAError(f"debiased CKA needs n_samples >= 4, got {n_samples}")
    if batch_size is not None and batch_size < 1:
        raise CKAError(f"batch_size must be >= 1, got {batch_size}")
    if form not in FORMS:
        raise CKAError(f"form must be one of {FORMS}, got {form!r}")
    va, vb = as_view(model_a), as_view(model_b)
    tok_a, tok_b = va.base.tokenizer, vb.base.tokenizer

    if _is_texts(task_or_texts):
        from .calibration import load_calibration, tokenize

        source = "calibration" if task_or_texts is None else "texts"
        positions = positions or "all"
        if positions == "decision":
            raise CKAError(
                "positions='decision' needs a task (decision positions are the items' last prompt tokens); "
                "for texts use positions='all'"
            )
        texts = load_calibration(task_or_texts)
        seqs_a = tokenize(tok_a, texts, seq_len)
        seqs_b = seqs_a if tok_b is tok_a else tokenize(tok_b, texts, seq_len)
    else:
        from .tasks import Task, load_task

        task = task_or_texts if isinstance(task_or_texts, Task) else load_task(task_or_texts)
        source = task.name
        positions = positions or "decision"
        seqs_a = _prompt_ids(task, tok_a)
        seqs_b = seqs_a if tok_b is tok_a else _prompt_ids(task, tok_b)
        if len(seqs_a) != len(seqs_b):
            raise CKAError(f"the two models see {len(seqs_a)} and {len(seqs_b)} items of {source}; decision positions must pair up")
        empty = [i for i, (a, b) in enumerate(zip(seqs_a, seqs_b)) if not a or not b]
        if empty:
            raise CKAError(f"item {task.items[empty[0]].id or empty[0]} of {source} has an empty prompt for one of the tokenizers")

    if positions == "all" and seqs_a != seqs_b:
        bad = next((i for i, (a, b) in enumerate(zip(seqs_a, seqs_b)) if a != b), min(len(seqs_a), len(seqs_b)))
        raise CKAError(
            f"positions='all' pairs the two models token by token, but {va.name} and {vb.name} tokenize the "
            f"inputs differently (first at sequence {bad}); use models that share a tokenizer, or positions='decision' "
            "with a task"
        )

    # the samples: (sequence, position), the same for both models
    if positions == "decision":
        cand_seq = torch.arange(len(seqs_a))
        cand_pos_a = torch.tensor([len(s) - 1 for s in seqs_a])
        cand_pos_b = torch.tensor([len(s) - 1 for s in seqs_b])
    else:
        lens = torch.tensor([len(s) for s in seqs_a])
        cand_seq = torch.repeat_interleave(torch.arange(len(seqs_a)), lens)
        cand_pos_a = torch.cat([torch.arange(int(n)) for n in lens]) if len(lens) else torch.zeros(0, dtype=torch.long)
        cand_pos_b = cand_pos_a
    total = len(cand_seq)
    if total > n_samples:
        g = torch.Generator().manual_seed(int(seed))
        pick = torch.randperm(total, generator=g)[:n_samples].sort().values
    else:
        pick = torch.arange(total)
    n = len(pick)
    if n < 2 or (debiased and n < 4):
        raise CKAError(f"{source} gives only {n} {'items' if positions == 'decision' else 'tokens'}; CKA needs at least "
                       f"{4 if debiased else 2}")
    sel_seq, sel_a, sel_b = cand_seq[pick].tolist(), cand_pos_a[pick].tolist(), cand_pos_b[pick].tolist()
    by_seq: dict[int, list[int]] = {}
    for j, s in enumerate(sel_seq):
        by_seq.setdefault(s, []).append(j)

    # batches of sequences (similar lengths), each cut after its last sampled token
    from .encoding import batches

    gpu = va.base.device.type == "cuda"
    bs = batch_size or ((64 if gpu else 16) if positions == "decision" else (32 if gpu else 8))
    seq_ids = sorted(by_seq)
    cut_a = {s: max(sel_a[j] for j in by_seq[s]) + 1 for s in seq_ids}
    cut_b = {s: max(sel_b[j] for j in by_seq[s]) + 1 for s in seq_ids}
    groups = [[seq_ids[k] for k in g] for g in batches([cut_a[s] for s in seq_ids], bs)]

    same = _same_computation(va, vb) and seqs_a == seqs_b
    run_a = _Collector(va)
    run_b = run_a if same else _Collector(vb)
    acc = CKAAccumulator(debiased=debiased, form=form, device=va.base.device)
    it: Sequence = groups
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(groups, desc=f"cka {va.name} vs {vb.name}", leave=False)
    with torch.inference_mode():
        for grp in it:
            rows, pa, pb = [], [], []
            for r, s in enumerate(grp):
                for j in by_seq[s]:
                    rows.append(r)
                    pa.append(sel_a[j])
                    pb.append(sel_b[j])
            ha = run_a([seqs_a[s][: cut_a[s]] for s in grp], rows, pa)
            hb = ha if same else run_b([seqs_b[s][: cut_b[s]] for s in grp], rows, pb)
            acc.update(ha, hb)
    return CKAResult(
        matrix=acc.compute(), blocks_a=list(va.kept), blocks_b=list(vb.kept), model_a=va.name, model_b=vb.name,
        positions=positions, n_samples=n, debiased=bool(debiased), source=source, form=acc.form, seed=int(seed),
    )
