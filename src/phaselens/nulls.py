"""Null baselines measured beside a value (issue 21, "Null baselines, measured and reported beside the value").

A number such as a bias KL of 0.008 or an antisymmetric share of 0.45 means nothing until it is set against
what the same design gives when the effect is absent. Two nulls, each at the design of the value it judges:

* :func:`bias_kl_null` -- the **bias KL** (``KL(OF_l || pi)``, :func:`phaselens.metrics.bias_kl`) under *slot
  relabelling*: inside every item the option slots are permuted at random (among the item's valid slots), the
  prediction and the answer together, so every item keeps its correctness and its score pattern while any
  systematic preference for a slot is destroyed. Same ``N`` items, same ``K`` slots, same smoothing.
  :func:`bias_kl_effect` turns it into an :class:`~phaselens.effects.Effect`: the excess of the observed bias KL
  (mean over the chosen blocks) over the null's mean.
* :func:`antisymmetry_null` -- the **antisymmetric share** ``||(D - D^T)/2||_F / ||(D + D^T)/2||_F`` of
  ``D = W - I`` of a least-squares operator ``W`` fitted at ``n`` tokens (``n / d`` tokens per dimension), under
  an *exactly symmetric* true operator. Estimation noise alone gives ``D`` an antisymmetric part (about 0.45 at
  12.5 tokens per dimension). The null is a **split-half** null at the same tokens per dimension: the
  calibration tokens come in ``G`` groups (e.g. passages), each group's contribution to the fit's error is
  ``u_g = (A + lam I)^-1 (C_g - A_g W)``, and a random half-split ``h`` gives the noise replicate
  ``N_h = c (sum_{g in h} u_g - sum_{g not in h} u_g)``, the linearised ``(W_h - W_{not h}) / 2`` of two
  half-fits, rescaled (``c = sqrt(n/(n-d))``, the leverage of a least-squares
  residual) to the noise of one fit on all ``n`` tokens. The null
  share of a replicate is ``||anti(N_h)||_F / ||sym(D)||_F``: what the antisymmetric part would be, against the
  same symmetric part, if the true operator had none. :func:`antisymmetry_effect` is the Effect.

Both effects have ``replicates = observed - null`` (so their interval at any level is the band of the null
around the observed value, percentile), ``p`` the two-sided permutation p-value of the observed value in its
null, and ``se`` the null's standard deviation (what the minimum detectable effect is stated from).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from .effects import Effect
from .errors import EffectError
from .metrics import BIAS_KL_SMOOTHING
from .resampling import MIN_ITEMS, N_BOOT, check_n_boot, percentile_interval, permutation_p

#: item-by-replicate cells handled per chunk of the slot-relabelling null
CHUNK = 1 << 22


# ----------------------------------------------------------------------------- bias KL under slot relabelling
def _bias_kl_from_slots(pred: np.ndarray, ans: np.ndarray, k: int) -> np.ndarray:
    """``[..., L]`` smoothed ``KL(OF || pi)`` from predicted slots ``pred [..., L, N]`` and answers ``ans [..., N]``."""
    n = pred.shape[-1]
    of = np.stack([(pred == j).sum(-1) for j in range(k)], -1)  # [..., L, K]
    pi = np.stack([(ans == j).sum(-1) for j in range(k)], -1)[..., None, :]  # [..., 1, K]
    p = (of + BIAS_KL_SMOOTHING) / (n + BIAS_KL_SMOOTHING * k)
    q = (pi + BIAS_KL_SMOOTHING) / (n + BIAS_KL_SMOOTHING * k)
    return (p * (np.log(p) - np.log(q))).sum(-1)


def _slots(z: Any, answers: Any, mask: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(predictions [L, N], answers [N], valid [N, K])`` from option scores ``z [L, N, K]`` (``-inf`` pads)."""
    z = np.asarray(z, dtype=float)
    if z.ndim != 3:
        raise EffectError(f"option scores must be [layers, items, options], got shape {z.shape}")
    ans = np.asarray(answers).astype(int).reshape(-1)
    L, n, k = z.shape
    if ans.shape[0] != n:
        raise EffectError(f"{ans.shape[0]} answers for {n} items: pass one answer slot per item")
    if n < MIN_ITEMS:
        raise EffectError(f"the bias-KL null needs at least {MIN_ITEMS} items, got {n}")
    valid = np.isfinite(z).any(0) if mask is None else np.asarray(mask, dtype=bool)
    if valid.shape != (n, k):
        raise EffectError(f"mask has shape {valid.shape}; it must be [items, options] = {(n, k)}")
    if ((ans < 0) | (ans >= k)).any() or not valid[np.arange(n), ans].all():
        raise EffectError("an answer points at a slot outside its item's options; check the answers and the mask")
    zz = np.where(valid[None], z, -np.inf)
    return zz.argmax(-1), ans, valid  # argmax: first slot on ties, as metrics.predictions


def bias_kl_null(z: Any, answers: Any, *, mask: Any = None, n_perm: int = N_BOOT,
                 boot_seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The bias KL per layer and its slot-relabelling null.

    Args:
        z: option scores ``[L, N, K]`` (``-inf`` in padded slots), e.g. ``trace.scores``.
        answers: ``[N]`` answer slot of each item.
        mask: ``[N, K]`` valid slots (default: the finite scores).
        n_perm: null replicates; boot_seed: their seed.

    Returns:
        ``(observed [L], null [n_perm, L])``: each null replicate permutes every item's valid slots at random,
        prediction and answer together, and recomputes the smoothed bias KL at the same ``N``, ``K``.
    """
    check_n_boot(n_perm, 0.95, "n_perm")
    pred, ans, valid = _slots(z, answers, mask)
    L, n = pred.shape
    k = valid.shape[1]
    observed = _bias_kl_from_slots(pred, ans, k)
    rank = np.cumsum(valid, 1) - 1  # position of each valid slot among its item's valid slots
    rng = np.random.default_rng(boot_seed)
    null = np.empty((n_perm, L))
    chunk = max(1, CHUNK // max(L * n, 1))
    items = np.arange(n)
    for start in range(0, n_perm, chunk):
        b = min(chunk, n_perm - start)
        keys = np.where(valid[None], rng.random((b, n, k)), np.inf)
        order = np.argsort(keys, -1)  # [b, N, K]: the first k_i entries are the valid slots in random order
        # slot s of item i goes to order[i, rank[i, s]]
        new_ans = order[:, items, rank[items, ans]]  # [b, N]
        new_pred = order[:, items[None, :], rank[items[None, :], pred]]  # [b, L, N]
        null[start:start + b] = _bias_kl_from_slots(new_pred, new_ans, k)
    return observed, null


def _null_effect(name: str, observed: float, null: np.ndarray, *, level: float, predicted: Any, n: dict,
                 method: str, n_boot: int, boot_seed: int, model: str, task: str, format: str) -> Effect:
    null = np.asarray(null, dtype=float)
    reps = observed - null
    lo, hi = percentile_interval(reps, level)
    ok = null[np.isfinite(null)]
    return Effect(name=name, estimate=float(observed - ok.mean()), lo=lo, hi=hi, p=permutation_p(null, observed),
                  level=level, predicted=predicted, n=n, resampled=[], fixed=[], method=method,
                  se=float(ok.std(ddof=1)), replicates=reps, n_boot=n_boot, boot_seed=boot_seed, model=model,
                  task=task, format=format)


def bias_kl_effect(trace: Any = None, *, z: Any = None, answers: Any = None, mask: Any = None,
                   blocks: Sequence[int] | None = None, name: str = "bias KL over its slot-relabelling null",
                   predicted: Any = "positive", n_perm: int = N_BOOT, boot_seed: int = 0, level: float = 0.95,
                   model: str = "", task: str = "", format: str = "") -> Effect:
    """Excess of the bias KL (mean over ``blocks``) over its slot-relabelling null (:func:`bias_kl_null`).

    ``trace``: a :class:`~phaselens.trace.DecisionTrace` (its scores, answers, mask, model, task, format), or
    ``z [L, N, K]`` and ``answers [N]``. ``blocks``: original block indices (with a trace) or layer positions
    (with ``z``) to average over (default: all). The estimate is ``observed - mean(null)``; the replicates are
    ``observed - null``; ``p`` is the permutation p-value.
    """
    pos_of = None
    if trace is not None:
        z, answers, mask = trace.scores.numpy(), trace.answers, trace.mask
        model, task, format = model or trace.model, task or getattr(trace, "task", ""), format or trace.format
        pos_of = {int(b): j for j, b in enumerate(trace.blocks)}
    if z is None or answers is None:
        raise EffectError("bias_kl_effect needs a trace, or z= [layers, items, options] and answers= [items]")
    L = np.shape(z)[0]
    if blocks is None:
        pos = list(range(L))
    else:
        pos = []
        for b in blocks:
            j = pos_of.get(int(b)) if pos_of is not None else (int(b) if 0 <= int(b) < L else None)
            if j is None:
                raise EffectError(f"block {b} is not read by this trace (it reads {sorted(pos_of) if pos_of else L})")
            pos.append(j)
        if not pos:
            raise EffectError("blocks= is empty: name at least one block to average the bias KL over")
    observed, null = bias_kl_null(z, answers, mask=mask, n_perm=n_perm, boot_seed=boot_seed)
    n_items, k = np.shape(z)[1], np.shape(z)[2]
    return _null_effect(name, float(observed[pos].mean()), null[:, pos].mean(1), level=level, predicted=predicted,
                        n={"items": int(n_items)},
                        method=f"slot-relabelling permutation null (N = {n_items}, K = {k}, smoothing "
                               f"{BIAS_KL_SMOOTHING}, {n_perm} permutations); interval: observed − null, percentile",
                        n_boot=n_perm, boot_seed=boot_seed, model=model, task=task, format=format)


# ----------------------------------------------------------------------------- antisymmetric share of W - I
def parts(M: Any) -> tuple[float, float]:
    """``(||(M + M^T)/2||_F, ||(M - M^T)/2||_F)`` in float64."""
    M = np.asarray(M, dtype=float)
    return float(np.linalg.norm((M + M.T) / 2)), float(np.linalg.norm((M - M.T) / 2))


def antisymmetric_share(W: Any, *, minus_identity: bool = True) -> float:
    """``||anti(D)||_F / ||sym(D)||_F`` of ``D = W - I`` (or of ``W`` with ``minus_identity=False``)."""
    D = np.asarray(W, dtype=float)
    if minus_identity:
        D = D - np.eye(D.shape[0])
    s, a = parts(D)
    return a / s if s > 0 else math.nan


def _as_np(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=float)


def _group_stats(groups: Sequence[Any]) -> tuple[np.ndarray, np.ndarray, int]:
    """``(A_g [G, d, d], C_g [G, d, d], n)`` from ``(A_g, C_g, n_g)`` tuples or SpanStats-like objects."""
    As, Cs, n = [], [], 0
    for g in groups:
        if hasattr(g, "A") and hasattr(g, "C"):
            A, C, ng = g.A, g.C, getattr(g, "n", 0)
        else:
            A, C, ng = g
        As.append(_as_np(A))
        Cs.append(_as_np(C))
        n += int(ng)
    if len(As) < 4:
        raise EffectError(f"the split-half null needs at least 4 groups of calibration tokens (passages), got "
                          f"{len(As)}: fit the statistics per passage group (recovery.span_stats on each group)")
    d = As[0].shape[0]
    if any(a.shape != (d, d) for a in As) or any(c.shape != (d, d) for c in Cs):
        raise EffectError("every group's A = X^T X and C = X^T Y must be [d, d] of the same d")
    return np.stack(As), np.stack(Cs), n


def _contributions(groups: Sequence[Any], lam: float | None) -> tuple[np.ndarray, np.ndarray, int, float]:
    """``(W, U [G, d, d], n, c)``: the fit on all groups, each group's contribution to its error, the token count
    and the rescaling ``c = sqrt(n / (n - d))`` of a split's noise to that of one fit on all ``n`` tokens."""
    from scipy.linalg import cho_factor, cho_solve  # scipy.linalg costs at import; only this null needs it

    A_g, C_g, n = _group_stats(groups)
    G, d = A_g.shape[0], A_g.shape[1]
    A, C = A_g.sum(0), C_g.sum(0)
    lam = 1e-10 * float(np.trace(A)) / d if lam is None else float(lam)
    factor = cho_factor(A + lam * np.eye(d))
    W = np.eye(d) + cho_solve(factor, C - A)
    R = (C_g - A_g @ W).transpose(1, 0, 2).reshape(d, G * d)  # each group's normal-equation residual, side by side
    U = cho_solve(factor, R).reshape(d, G, d).transpose(1, 0, 2)  # [G, d, d]: its contribution to the fit's error
    scale = math.sqrt(n / (n - d)) if n > 2 * d else math.sqrt(2.0)
    return W, U, n, scale


def split_half_noise(groups: Sequence[Any], *, n_null: int = 200, boot_seed: int = 0, lam: float | None = None,
                     signs: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, int]:
    """The ridge least-squares fit ``W`` on all groups and ``n_null`` split-half noise replicates of it.

    Args:
        groups: per group of calibration tokens, ``(A_g = X_g^T X_g, C_g = X_g^T Y_g, n_g)`` (or SpanStats).
        lam: ridge (default ``1e-10 tr(A)/d``, the recovery fit's), shrinking ``W`` towards the identity.
        signs: ``[n_null, G]`` of ±1 (balanced half-splits) to share between spans fitted on the same groups.

    Returns:
        ``(W [d, d], noise [n_null, d, d], n tokens)`` (``n_null * d * d`` floats: for large ``d`` use
        :func:`antisymmetry_null`, which needs only their norms).
    """
    W, U, n, scale = _contributions(groups, lam)
    if signs is None:
        signs = half_splits(U.shape[0], n_null, boot_seed)
    noise = scale * np.tensordot(signs.astype(float), U, axes=(1, 0))  # [n_null, d, d]
    return W, noise, n


def half_splits(G: int, n_null: int, boot_seed: int = 0) -> np.ndarray:
    """``[n_null, G]`` signs, +1 for the groups of a random half and -1 for the rest (balanced; odd ``G``: one
    group more on the + side, alternating)."""
    rng = np.random.default_rng(boot_seed)
    ranks = np.argsort(np.argsort(rng.random((n_null, G)), 1), 1)
    out = np.where(ranks < (G + 1) // 2, 1, -1)
    if G % 2:
        out[1::2] *= -1
    return out


def antisymmetry_null(groups: Sequence[Any], *, n_null: int = 200, boot_seed: int = 0, lam: float | None = None,
                      signs: np.ndarray | None = None) -> tuple[float, np.ndarray, dict]:
    """The antisymmetric share of ``D = W - I`` and its split-half null under a symmetric true operator.

    Returns ``(observed share, null shares [n_null], info)``: ``null_r = ||anti(N_r)||_F / ||sym(D)||_F`` with
    ``N_r`` the split-half noise replicates (:func:`split_half_noise`); ``info`` holds ``n`` (tokens), ``d``,
    ``tokens_per_dim``, ``groups``, ``sym``/``anti`` (the norms of ``D``) and ``W``.
    """
    W, U, n, scale = _contributions(groups, lam)
    if signs is None:
        signs = half_splits(U.shape[0], n_null, boot_seed)
    d = W.shape[0]
    s, a = parts(W - np.eye(d))
    anti_u = (U - U.transpose(0, 2, 1)) / 2
    K = np.einsum("gij,hij->gh", anti_u, anti_u)  # Gram of the groups' antisymmetric parts
    sg = signs.astype(float)
    anti_noise = scale * np.sqrt(np.maximum(np.einsum("rg,gh,rh->r", sg, K, sg), 0.0))  # ||anti(N_r)||_F
    info = {"n": n, "d": d, "tokens_per_dim": n / d, "groups": len(groups), "sym": s, "anti": a, "W": W}
    return a / s, anti_noise / s, info


def antisymmetry_effect(spans: Sequence[Sequence[Any]] | dict, *, name: str = "antisymmetric share of W − I over "
                        "its split-half null", statistic: str = "median", predicted: Any = "positive",
                        n_null: int = 200, boot_seed: int = 0, lam: float | None = None, level: float = 0.95,
                        model: str = "", task: str = "", format: str = "") -> Effect:
    """Excess of the antisymmetric share of ``W - I`` (``statistic`` over spans: ``"median"`` or ``"mean"``) over
    its split-half null (:func:`antisymmetry_null`); every span fitted on the same groups shares each replicate's
    half-split. ``spans``: per span, its groups (``{span: groups}`` or a list)."""
    items = list(spans.values()) if isinstance(spans, dict) else list(spans)
    if not items:
        raise EffectError("antisymmetry_effect needs at least one span's group statistics")
    if statistic not in ("median", "mean"):
        raise EffectError(f"statistic must be 'median' or 'mean', got {statistic!r}")
    check_n_boot(n_null, level, "n_null")
    G = len(items[0])
    if any(len(g) != G for g in items):
        raise EffectError("every span must be fitted on the same groups of calibration tokens (same G)")
    signs = half_splits(G, n_null, boot_seed)
    obs, nulls, infos = [], [], []
    for groups in items:
        o, nl, info = antisymmetry_null(groups, lam=lam, signs=signs)
        obs.append(o)
        nulls.append(nl)
        infos.append(info)
    return antisymmetry_effect_from(obs, nulls, groups=G, tokens_per_dim=infos[0]["tokens_per_dim"], name=name,
                                    statistic=statistic, predicted=predicted, boot_seed=boot_seed, level=level,
                                    model=model, task=task, format=format)


def antisymmetry_effect_from(observed: Sequence[float], nulls: Sequence[np.ndarray], *, groups: int,
                             tokens_per_dim: float, name: str = "antisymmetric share of W − I over its split-half "
                             "null", statistic: str = "median", predicted: Any = "positive", boot_seed: int = 0,
                             level: float = 0.95, model: str = "", task: str = "", format: str = "") -> Effect:
    """:func:`antisymmetry_effect` from per-span results of :func:`antisymmetry_null` computed with the same
    ``signs=half_splits(groups, n_null, boot_seed)`` (spans fitted a few at a time, to bound memory)."""
    if statistic not in ("median", "mean"):
        raise EffectError(f"statistic must be 'median' or 'mean', got {statistic!r}")
    nl = np.stack([np.asarray(x, dtype=float) for x in nulls])
    if nl.shape[0] != len(observed):
        raise EffectError(f"{len(observed)} observed shares but {nl.shape[0]} nulls: one null per span")
    f = np.median if statistic == "median" else np.mean
    observed_s, null = float(f(np.asarray(observed, dtype=float))), f(nl, axis=0)
    n_null = nl.shape[1]
    return _null_effect(name, observed_s, null, level=level, predicted=predicted,
                        n={"spans": len(observed), "groups": groups},
                        method=f"split-half null of a symmetric operator ({groups} token groups, {n_null} half-splits, "
                               f"{tokens_per_dim:.1f} tokens per dimension; {statistic} over {len(observed)} span(s)); "
                               "interval: observed − null, percentile",
                        n_boot=n_null, boot_seed=boot_seed, model=model, task=task, format=format)


def group_span_stats(model: Any, spans: list[tuple[int, int]], calibration: Sequence[str], groups: int = 16,
                     **kw: Any) -> dict[tuple[int, int], list[Any]]:
    """Per span, the recovery statistics (``A = X^T X``, ``C = X^T Y``) of each of ``groups`` groups of the
    calibration passages (passages dealt round-robin), for :func:`antisymmetry_effect`; their sums are the
    statistics of one fit on every passage."""
    from .recovery.stats import span_stats  # the model pass lives with recovery

    texts = list(calibration)
    if len(texts) < groups:
        raise EffectError(f"{len(texts)} calibration passages cannot make {groups} groups: pass at least {groups} "
                          "passages or fewer groups (at least 4)")
    out: dict[tuple[int, int], list[Any]] = {tuple(sp): [] for sp in spans}
    for g in range(groups):
        st = span_stats(model, spans, texts[g::groups], **kw)
        for sp in out:
            out[sp].append(st[sp])
    return out
