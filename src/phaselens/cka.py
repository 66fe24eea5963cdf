"""Linear CKA between the layers of two models, or of a model and a pruned view of it.

For representations ``X [n, p]`` and ``Y [n, q]`` of the same ``n`` inputs, columns centred
(``X~ = X - 1 mean(X)``)::

    CKA(X, Y) = ||Y~^T X~||_F^2 / (||X~^T X~||_F ||Y~^T Y~||_F)
              = <K~, L~>_F / (||K~||_F ||L~||_F),   K~ = X~ X~^T,  L~ = Y~ Y~^T

(Kornblith et al., 2019). ``debiased=True`` replaces each ``<K~, L~>_F`` by the unbiased
HSIC estimator of Song et al. (2012) (up to its constant factor, which cancels), exactly as
Kornblith's reference ``cka(..., debiased=True)`` / ``feature_space_linear_cka(..., debiased=True)``.
``debiased="auto"`` (the default of :func:`linear_cka` and :func:`phaselens.cka`) uses the unbiased estimator
whenever the number of samples ``n`` is below the feature dimension (the larger of ``p`` and ``q``): there the
plug-in value of *independent* representations is far from 0 (about 0.99 for two random 8 x 576 matrices), while
the unbiased one is centred on 0.

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

:func:`phaselens.cka` (in :mod:`phaselens.similarity`) runs both models and feeds this accumulator.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .errors import CKAError

FORMS = ("auto", "gram", "feature")
#: values ``debiased`` takes: the unbiased estimator, the plug-in one, or ``"auto"`` (unbiased when n < features)
DEBIASED = (True, False, "auto")
_GRAM_CHUNK_BYTES = 1 << 30  # Gram matrices held at once while finishing the Gram form
_NULL_CHUNK_BYTES = 1 << 28  # permuted Gram matrices held at once while building the floor's null


def resolve_debiased(debiased: Any, n: int, p: int, q: int) -> bool:
    """``debiased`` as a bool: ``"auto"`` is the unbiased estimator when ``n < max(p, q)`` (fewer samples than
    features), the plug-in one otherwise."""
    if debiased == "auto" and not isinstance(debiased, bool):
        return n < max(p, q)
    if not isinstance(debiased, (bool, np.bool_)):
        raise CKAError(f"debiased must be True, False or 'auto', got {debiased!r}")
    return bool(debiased)


# ----------------------------------------------------------------------------- math helpers
def u_center(K: torch.Tensor) -> torch.Tensor:
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
        debiased: the unbiased HSIC estimator (needs ``n >= 4``); ``"auto"``: unbiased when ``n`` is below the
            feature dimension (decided at :meth:`compute`; :attr:`resolved` then says which); both forms support it.
        form: ``"auto"``, ``"gram"`` or ``"feature"`` (see the module docstring).
        device: where the float64 accumulators live (default: the first minibatch's device).
        dtype: accumulation dtype (float64; float32 trades exactness for speed).
    """

    def __init__(self, *, debiased: bool | str = False, form: str = "auto", device: str | torch.device | None = None,
                 dtype: torch.dtype = torch.float64) -> None:
        if form not in FORMS:
            raise CKAError(f"form must be one of {FORMS}, got {form!r}")
        if not (isinstance(debiased, (bool, np.bool_)) or debiased == "auto"):
            raise CKAError(f"debiased must be True, False or 'auto', got {debiased!r}")
        self.requested_debiased = debiased if debiased == "auto" and not isinstance(debiased, bool) else bool(debiased)
        self.debiased = self.requested_debiased is not False  # keep the unbiased estimator's running sums
        self.resolved: bool | None = None  # the estimator compute() used
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
    def compute(self, debiased: bool | None = None) -> np.ndarray:
        """``[L_a, L_b]`` CKA of every layer pair (float64 numpy); ``debiased`` overrides the estimator (``False``:
        the plug-in value, always available; ``True``: needs an accumulator built with ``debiased`` not False)."""
        if self.n < 2:
            raise CKAError(f"CKA needs at least 2 samples, got {self.n}")
        la, p, lb, q = self.shape  # type: ignore[misc]
        use = resolve_debiased(self.requested_debiased if debiased is None else debiased, self.n, p, q)
        if use and not self.debiased:
            raise CKAError("this accumulator was built with debiased=False; build it with debiased=True or 'auto'")
        if use and self.n < 4:
            raise CKAError(f"debiased CKA needs at least 4 samples, got {self.n}"
                           + ("; pass debiased=False for the plug-in value" if debiased is None else ""))
        if debiased is None:
            self.resolved = use
        return self._gram_compute(use) if self.form == "gram" else self._feature_compute(use)

    def floor(self, *, debiased: bool | None = None, n_perm: int = 0, pairs: list[tuple[int, int]] | None = None,
              seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """The CKA of a shuffled pairing (the sample order of side b permuted at random, seeded), Gram form only:
        ``([L_a, L_b]`` under one shuffle, ``[n_perm, M]`` for the layer pairs ``pairs`` (``(i, j)`` row/column
        indices) under ``n_perm`` further shuffles): the permutation null of "no pairing". NaN in the feature form
        (the rows are not kept)."""
        la, p, lb, q = self.shape  # type: ignore[misc]
        pairs = list(pairs or [])
        if self.form != "gram":
            return np.full((la, lb), np.nan), np.full((n_perm, len(pairs)), np.nan)
        use = resolve_debiased(self.requested_debiased if debiased is None else debiased, self.n, p, q)
        rng = np.random.default_rng(seed)
        one = self._gram_compute(use, torch.as_tensor(rng.permutation(self.n), device=self.device))
        null = np.full((n_perm, len(pairs)), np.nan)
        if n_perm and pairs:
            perms = torch.as_tensor(np.argsort(rng.random((n_perm, self.n)), axis=1), device=self.device)
            chunk = max(1, min(n_perm, _NULL_CHUNK_BYTES // (8 * self.n * self.n)))
            for k, (i, j) in enumerate(pairs):
                ka = self._grams(self._xa, slice(i, i + 1), use)[0]
                kb = self._grams(self._xb, slice(j, j + 1), use)[0]
                den = float(ka.norm() * kb.norm())
                for s0 in range(0, n_perm, chunk):
                    pi = perms[s0:s0 + chunk]
                    kp = kb[pi[:, :, None], pi[:, None, :]]  # [c, n, n]
                    with np.errstate(divide="ignore", invalid="ignore"):
                        null[s0:s0 + chunk, k] = ((kp * ka).sum((1, 2)) / den).cpu().numpy()
        return one, null

    def _grams(self, parts: list[torch.Tensor], idx: slice, debiased: bool, perm: torch.Tensor | None = None) -> torch.Tensor:
        """``[layers, n, n]`` Gram matrices (centred; U-centred when ``debiased``), rows permuted by ``perm``."""
        x = torch.cat([t[idx] for t in parts], 1).to(self.dtype)
        if perm is not None:
            x = x[:, perm]
        x -= x.mean(1, keepdim=True)
        k = torch.bmm(x, x.transpose(1, 2))
        return u_center(k) if debiased else k

    def _gram_compute(self, debiased: bool, perm_b: torch.Tensor | None = None) -> np.ndarray:
        la, _p, lb, _q = self.shape  # type: ignore[misc]
        n, dt = self.n, self.dtype
        per = 8 * n * n
        cb = max(1, min(lb, _GRAM_CHUNK_BYTES // per))
        ca = max(1, min(la, _GRAM_CHUNK_BYTES // per))

        num = torch.empty(la, lb, dtype=dt, device=self.device)
        norm_a = torch.empty(la, dtype=dt, device=self.device)
        norm_b = torch.empty(lb, dtype=dt, device=self.device)
        for j in range(0, lb, cb):
            kb = self._grams(self._xb, slice(j, j + cb), debiased, perm_b).flatten(1)
            norm_b[j : j + cb] = kb.norm(dim=1)
            for i in range(0, la, ca):
                ka = self._grams(self._xa, slice(i, i + ca), debiased).flatten(1)
                if j == 0:
                    norm_a[i : i + ca] = ka.norm(dim=1)
                num[i : i + ca, j : j + cb] = ka @ kb.T
                del ka
            del kb
        return _ratio(num, norm_a, norm_b)

    def _feature_compute(self, debiased: bool) -> np.ndarray:
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
        if not debiased:
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


def linear_cka(X: Any, Y: Any, *, debiased: bool | str = "auto", form: str = "auto") -> float:
    """Linear CKA of ``X [n, p]`` and ``Y [n, q]`` (numpy or torch; rows are the same inputs).

    ``CKA = ||Y~^T X~||_F^2 / (||X~^T X~||_F ||Y~^T Y~||_F)`` with centred columns, computed in
    float64. ``debiased=True``: the unbiased HSIC estimator (Song et al.; Kornblith's
    ``feature_space_linear_cka(debiased=True)``), ``n >= 4``; ``False``: the plug-in value; ``"auto"`` (default):
    unbiased when ``n < max(p, q)``, plug-in otherwise. ``form``: ``"auto"`` (Gram form when
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
