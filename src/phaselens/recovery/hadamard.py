"""Full Hadamard rotations of order ``d`` (LinearPatch rotates by one, as QuaRot does).

A Hadamard matrix has entries +-1 and orthogonal rows. Orders that are not powers of two are built as
``H = Sylvester(2^k) (x) H_m``, with ``H_m`` of a small order ``m`` from Paley's constructions:

* Paley I, ``m = q + 1`` for a prime ``q = 3 (mod 4)``: ``H = I + S``, ``S = [[0, 1^T], [-1, Q]]``;
* Paley II, ``m = 2 (q + 1)`` for a prime ``q = 1 (mod 4)``: ``H = S (x) [[1, 1], [1, -1]] + I (x) [[1, -1], [-1, -1]]``,
  ``S = [[0, 1^T], [1, Q]]``;

with ``Q`` the Jacobsthal matrix, ``Q[i, j] = chi(j - i)`` (``chi`` the quadratic character mod ``q``).
Among the orders QuaRot tabulates (172, 156, 140, 108, 60, 52, 36, 28, 40, 20, 12, in that order of
preference), the first that divides ``d`` with a power-of-two quotient and that these constructions reach
is used: 576 = 36 x 16, 640 = 40 x 16, 1536 = 12 x 128, 896 = 28 x 32. QuaRot takes its small matrices from
Sloane's library; any Hadamard matrix of the order is an equally valid rotation, and the fitted operator
depends on which one is used.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from ..errors import RecoveryError

QUAROT_ORDERS = (172, 156, 140, 108, 60, 52, 36, 28, 40, 20, 12)


def _is_prime(q: int) -> bool:
    return q >= 2 and all(q % p for p in range(2, int(q**0.5) + 1))


def _pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def _jacobsthal(q: int) -> np.ndarray:
    squares = {(x * x) % q for x in range(1, q)}
    chi = np.array([0] + [1 if a in squares else -1 for a in range(1, q)])
    i = np.arange(q)
    return chi[(i[None, :] - i[:, None]) % q]


def _paley1(q: int) -> np.ndarray:
    m = q + 1
    S = np.zeros((m, m), dtype=np.int64)
    S[0, 1:] = 1
    S[1:, 0] = -1
    S[1:, 1:] = _jacobsthal(q)
    return np.eye(m, dtype=np.int64) + S


def _paley2(q: int) -> np.ndarray:
    m = q + 1
    S = np.zeros((m, m), dtype=np.int64)
    S[0, 1:] = 1
    S[1:, 0] = 1
    S[1:, 1:] = _jacobsthal(q)
    return np.kron(S, np.array([[1, 1], [1, -1]])) + np.kron(np.eye(m, dtype=np.int64), np.array([[1, -1], [-1, -1]]))


@lru_cache(maxsize=None)
def _small(m: int) -> np.ndarray | None:
    """A +-1 Hadamard matrix of order ``m`` from Paley I / II (and doubling), or ``None``."""
    if m == 1:
        return np.ones((1, 1), dtype=np.int64)
    if m == 2:
        return np.array([[1, 1], [1, -1]])
    if m % 4:
        return None
    if _is_prime(m - 1) and (m - 1) % 4 == 3:
        return _paley1(m - 1)
    if _is_prime(m // 2 - 1) and (m // 2 - 1) % 4 == 1:
        return _paley2(m // 2 - 1)
    half = _small(m // 2)
    return None if half is None else np.kron(np.array([[1, 1], [1, -1]]), half)


def hadamard_order(d: int) -> int:
    """The small order ``m`` of the rotation of width ``d`` (``d = m * 2^k``); a :class:`RecoveryError` if none."""
    for m in QUAROT_ORDERS:
        if d % m == 0 and _pow2(d // m) and _small(m) is not None:
            return m
    if _pow2(d):
        return 1
    k = d
    while k % 2 == 0:
        k //= 2
        if _small(k) is not None:
            return k
    raise RecoveryError(f"no Hadamard matrix of order {d} is known to phaselens (it builds 2^k x m for Paley orders m, "
                        "e.g. 12, 20, 28, 36, 40, 60, 108, 140); LinearPatch needs one for this model's hidden size")


@lru_cache(maxsize=8)
def _full(d: int) -> np.ndarray:
    m = hadamard_order(d)
    h = _small(m)
    syl = np.ones((1, 1), dtype=np.int64)
    while syl.shape[0] * m < d:
        syl = np.kron(np.array([[1, 1], [1, -1]]), syl)
    return np.kron(syl, h).astype(np.float64) / np.sqrt(d)


def hadamard(d: int, *, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The orthonormal full Hadamard rotation ``[d, d]`` (entries ``+-1/sqrt(d)``)."""
    if isinstance(d, bool) or not isinstance(d, int) or d < 1:
        raise RecoveryError(f"a Hadamard order must be a positive int, got {d!r}")
    return torch.from_numpy(_full(d).copy()).to(dtype)
