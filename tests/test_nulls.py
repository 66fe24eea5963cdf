"""Null baselines (phaselens.nulls): the bias KL's slot-relabelling null and the operator's split-half null,
each checked against an independent computation (scipy, an exact enumeration, the true operator of a simulation)
and against simulations: no slot preference is not called a preference, an exactly symmetric operator fitted at
12.5 tokens per dimension is not called asymmetric, beyond the nominal rate."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy import stats as sps

import phaselens as pl
from phaselens import metrics
from phaselens.errors import EffectError
from phaselens.nulls import (
    antisymmetric_share,
    antisymmetry_effect,
    antisymmetry_null,
    bias_kl_effect,
    bias_kl_null,
    split_half_noise,
)
from phaselens.verdicts import Claim

try:  # one BLAS thread: the simulations are thousands of tiny solves, which threads only slow down
    from threadpoolctl import threadpool_limits
except ImportError:  # pragma: no cover
    from contextlib import nullcontext as threadpool_limits


@pytest.fixture(autouse=True)
def _one_blas_thread():
    with threadpool_limits(1):
        yield

#: one-sided 99% binomial bound of a rate whose nominal value is 5%, over n simulated data sets
def _bound(n: int, rate: float = 0.05) -> float:
    return sps.binom.ppf(0.99, n, rate) / n


def _verdict(e) -> str:
    return pl.claims([Claim(paper="sim", claim="c", effect=e)]).verdicts[0]


# ----------------------------------------------------------------------------- bias KL
def _choices(rng, n: int, k: int, acc: float, layers: int = 1, prefer: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Scores ``[L, N, K]`` whose argmax is the answer with probability ``acc``, else slot 0 with probability
    ``prefer`` and a uniformly random other slot otherwise; answers uniform over the slots."""
    ans = rng.integers(0, k, size=n)
    z = rng.normal(size=(layers, n, k))
    for l in range(layers):
        right = rng.random(n) < acc
        pick = np.where(right, ans, (ans + rng.integers(1, k, size=n)) % k)
        pick = np.where(~right & (rng.random(n) < prefer), 0, pick)
        z[l, np.arange(n), pick] = 10.0
    return z, ans


def test_observed_bias_kl_is_scipys_kl_of_the_smoothed_counts():
    rng = np.random.default_rng(0)
    z, ans = _choices(rng, 66, 4, 0.6, layers=3)
    obs, null = bias_kl_null(z, ans, n_perm=200)
    assert null.shape == (200, 3)
    for l in range(3):
        of = np.bincount(z[l].argmax(-1), minlength=4)
        pi = np.bincount(ans, minlength=4)
        want = sps.entropy((of + 0.5) / (66 + 2), (pi + 0.5) / (66 + 2))
        assert obs[l] == pytest.approx(want, rel=1e-12)
    np.testing.assert_allclose(obs, metrics.bias_kl(torch.from_numpy(z), torch.from_numpy(ans)), rtol=1e-12)


def test_null_distribution_matches_exact_enumeration():
    """5 items, 2 slots: the 2^5 relabellings are equally likely; the Monte-Carlo null's distribution of values
    equals the exact one (within sampling error)."""
    rng = np.random.default_rng(1)
    z, ans = _choices(rng, 5, 2, 0.6)
    pred = z[0].argmax(-1)
    exact = {}
    for flips in itertools.product([0, 1], repeat=5):
        f = np.array(flips)
        p2, a2 = np.where(f, 1 - pred, pred), np.where(f, 1 - ans, ans)
        of, pi = np.bincount(p2, minlength=2), np.bincount(a2, minlength=2)
        v = round(float(sps.entropy((of + 0.5) / 6, (pi + 0.5) / 6)), 10)
        exact[v] = exact.get(v, 0) + 1 / 32
    _, null = bias_kl_null(z, ans, n_perm=20000, boot_seed=3)
    got = {}
    for v in np.round(null[:, 0], 10):
        got[v] = got.get(v, 0) + 1 / null.shape[0]
    assert set(got) <= set(exact)
    for v, pr in exact.items():
        assert abs(got.get(v, 0) - pr) <= 4 * math.sqrt(pr * (1 - pr) / 20000) + 1e-9, (v, pr, got.get(v))


def test_padded_slots_are_never_relabelled_into():
    rng = np.random.default_rng(2)
    z, ans = _choices(rng, 12, 4, 0.5)
    z[:, :6, 3] = -np.inf  # six items have three options
    ans[:6] = ans[:6] % 3
    z[0, np.arange(6), ans[:6]] = 10.0
    obs, null = bias_kl_null(z, ans, n_perm=300)
    assert np.isfinite(null).all() and null.shape == (300, 1)


def test_no_slot_preference_is_not_called_a_preference_beyond_the_nominal_rate():
    """1,000 data sets at the design of kl_option_frequency (N = 66 items, K = 4 slots, smoothing 0.5), answers
    and errors spread over the slots: the claim "this layer prefers slots" is called *agree* at most 5% plus
    binomial error."""
    rng = np.random.default_rng(10)
    n_sets = 1000
    v = []
    for k in range(n_sets):
        z, ans = _choices(rng, 66, 4, acc=rng.uniform(0.2, 0.9))
        v.append(_verdict(bias_kl_effect(z=z, answers=ans, n_perm=200, boot_seed=k)))
    agree = v.count("agree") / n_sets
    assert agree <= _bound(n_sets), agree


def test_a_real_slot_preference_is_found():
    rng = np.random.default_rng(11)
    v = []
    for k in range(100):
        z, ans = _choices(rng, 66, 4, acc=0.4, prefer=0.7)  # most errors go to slot A
        v.append(_verdict(bias_kl_effect(z=z, answers=ans, n_perm=200, boot_seed=k)))
    assert v.count("agree") >= 90 and v.count("disagree") == 0


def test_bias_kl_effect_averages_the_chosen_blocks():
    rng = np.random.default_rng(12)
    z, ans = _choices(rng, 30, 4, acc=0.5, layers=4)
    e = bias_kl_effect(z=z, answers=ans, blocks=[1, 3], n_perm=300, boot_seed=5)
    obs, null = bias_kl_null(z, ans, n_perm=300, boot_seed=5)
    assert e.estimate == pytest.approx(obs[[1, 3]].mean() - null[:, [1, 3]].mean())
    assert e.n == {"items": 30} and e.predicted == "positive" and "slot-relabelling" in e.method


@pytest.mark.bad_input
def test_bias_kl_null_refuses_bad_inputs():
    rng = np.random.default_rng(13)
    z, ans = _choices(rng, 10, 4, 0.5)
    with pytest.raises(EffectError, match="3 answers for 10 items"):
        bias_kl_null(z, ans[:3])
    with pytest.raises(EffectError, match="at least 5 items"):
        bias_kl_null(z[:, :4], ans[:4])
    with pytest.raises(EffectError, match=r"\[layers, items, options\]"):
        bias_kl_null(z[0], ans)
    with pytest.raises(EffectError, match="block 7 is not read"):
        bias_kl_effect(z=z, answers=ans, blocks=[7], n_perm=100)


# ----------------------------------------------------------------------------- operator symmetry
def _groups(X: np.ndarray, Y: np.ndarray, G: int) -> list[tuple[np.ndarray, np.ndarray, int]]:
    return [(X[g::G].T @ X[g::G], X[g::G].T @ Y[g::G], len(X[g::G])) for g in range(G)]


def _fit(rng, d: int, tokens_per_dim: float, anti: float = 0.0, G: int = 16, noise: float = 1.0):
    """Data of a true operator ``I + S + anti * K`` (``S`` symmetric, ``K`` antisymmetric) at ``tokens_per_dim``."""
    n = int(round(tokens_per_dim * d))
    M = rng.normal(size=(d, d)) / math.sqrt(d)
    S, K = 0.3 * (M + M.T) / 2, (M - M.T) / 2
    W = np.eye(d) + S + anti * K
    X = rng.normal(size=(n, d)) * np.linspace(0.5, 2.0, d)
    Y = X @ W + noise * rng.normal(size=(n, d))
    return X, Y, W


def test_fit_is_the_least_squares_operator_and_the_share_is_by_hand():
    rng = np.random.default_rng(20)
    X, Y, _ = _fit(rng, 12, 12.5)
    W, noise, n = split_half_noise(_groups(X, Y, 8), n_null=50)
    np.testing.assert_allclose(W, np.linalg.lstsq(X, Y, rcond=None)[0], atol=1e-8)
    D = W - np.eye(12)
    assert antisymmetric_share(W) == pytest.approx(np.linalg.norm(D - D.T) / np.linalg.norm(D + D.T))
    assert n == X.shape[0] and noise.shape == (50, 12, 12)


def test_linearised_split_half_is_the_difference_of_two_half_fits():
    """With plenty of tokens, the replicate of a half-split (before its rescaling) equals (W_h - W_rest) / 2 of two
    ordinary least-squares fits on the halves."""
    rng = np.random.default_rng(21)
    X, Y, _ = _fit(rng, 8, 400.0)
    G = 8
    signs = np.array([[1, -1, 1, -1, 1, -1, 1, -1]])
    _, noise, n = split_half_noise(_groups(X, Y, G), signs=signs)
    half = np.concatenate([np.arange(n)[g::G] for g in range(0, G, 2)])
    rest = np.setdiff1d(np.arange(n), half)
    W1 = np.linalg.lstsq(X[half], Y[half], rcond=None)[0]
    W2 = np.linalg.lstsq(X[rest], Y[rest], rcond=None)[0]
    lin = noise[0] / math.sqrt(n / (n - 8))
    assert np.corrcoef(lin.ravel(), ((W1 - W2) / 2).ravel())[0, 1] > 0.99
    assert np.linalg.norm(lin) == pytest.approx(np.linalg.norm((W1 - W2) / 2), rel=0.05)


@pytest.mark.parametrize("tokens_per_dim", [5.0, 12.5])
def test_null_noise_has_the_size_of_the_fits_own_error(tokens_per_dim):
    """Over simulations, the null replicates' antisymmetric energy equals that of the fit's true error W_hat - W
    (known here), at the same tokens per dimension."""
    rng = np.random.default_rng(22)
    num, den = [], []
    for k in range(30):
        X, Y, Wt = _fit(rng, 24, tokens_per_dim)
        W, noise, _ = split_half_noise(_groups(X, Y, 16), n_null=50, boot_seed=k)
        E = W - Wt
        den.append(np.linalg.norm((E - E.T) / 2) ** 2)
        num.append(np.mean(np.linalg.norm((noise - noise.transpose(0, 2, 1)) / 2, axis=(1, 2)) ** 2))
    assert np.mean(num) / np.mean(den) == pytest.approx(1.0, abs=0.05)


def test_symmetric_operator_at_12_5_tokens_per_dim_is_not_called_asymmetric():
    """An exactly symmetric true operator fitted at 12.5 tokens per dimension: the old rule (share >= 0.25) says
    "substantial" every time (the share is about 0.45); the split-half null says *agree* (asymmetric) at most 5% plus
    binomial error over 1,000 fits, and *disagree* no more often."""
    rng = np.random.default_rng(23)
    n_sets, v = 1000, []
    for k in range(n_sets):
        X, Y, _ = _fit(rng, 16, 12.5)
        e = antisymmetry_effect([_groups(X, Y, 16)], n_null=200, boot_seed=k)
        v.append(_verdict(e))
    assert v.count("agree") / n_sets <= _bound(n_sets), v.count("agree")
    assert v.count("disagree") / n_sets <= _bound(n_sets), v.count("disagree")


def test_old_rule_passes_on_a_symmetric_operator_the_null_does_not():
    rng = np.random.default_rng(24)
    X, Y, _ = _fit(rng, 32, 12.5)
    obs, null, info = antisymmetry_null(_groups(X, Y, 16), n_null=200)
    assert obs >= 0.25  # what the old rule called "substantial"
    assert info["tokens_per_dim"] == pytest.approx(12.5)
    assert abs(obs - null.mean()) < 4 * null.std()  # inside its null


def test_a_real_antisymmetric_part_is_found():
    rng = np.random.default_rng(25)
    v = [_verdict(antisymmetry_effect([_groups(*_fit(rng, 16, 12.5, anti=0.3)[:2], 16)], n_null=200, boot_seed=k))
         for k in range(50)]
    assert v.count("agree") >= 45


def test_spans_share_each_replicates_half_split():
    rng = np.random.default_rng(26)
    X, Y, _ = _fit(rng, 12, 12.5)
    X2, Y2, _ = _fit(rng, 12, 12.5)
    a, b = _groups(X, Y, 8), _groups(X2, Y2, 8)
    e = antisymmetry_effect({(1, 2): a, (3, 5): b}, statistic="mean", n_null=100, boot_seed=4)
    oa, na, _ = antisymmetry_null(a, n_null=100, boot_seed=4)
    ob, nb, _ = antisymmetry_null(b, n_null=100, boot_seed=4)
    assert e.estimate == pytest.approx((oa + ob) / 2 - ((na + nb) / 2).mean())
    assert e.n == {"spans": 2, "groups": 8}


@pytest.mark.bad_input
def test_antisymmetry_null_refuses_bad_inputs():
    rng = np.random.default_rng(27)
    X, Y, _ = _fit(rng, 6, 12.5)
    with pytest.raises(EffectError, match="at least 4 groups"):
        antisymmetry_null(_groups(X, Y, 3))
    with pytest.raises(EffectError, match="same groups"):
        antisymmetry_effect([_groups(X, Y, 4), _groups(X, Y, 5)], n_null=100)
    with pytest.raises(EffectError, match="statistic must be"):
        antisymmetry_effect([_groups(X, Y, 4)], statistic="max", n_null=100)


def test_null_shares_are_the_norms_of_the_noise_replicates():
    """antisymmetry_null reads each replicate's norm from a G x G Gram (no [n_null, d, d] array); the same norms
    straight from split_half_noise's replicates."""
    rng = np.random.default_rng(28)
    X, Y, _ = _fit(rng, 10, 12.5)
    groups = _groups(X, Y, 8)
    obs, null, info = antisymmetry_null(groups, n_null=64, boot_seed=9)
    W, noise, _ = split_half_noise(groups, n_null=64, boot_seed=9)
    want = np.linalg.norm((noise - noise.transpose(0, 2, 1)) / 2, axis=(1, 2)) / info["sym"]
    np.testing.assert_allclose(null, want, rtol=1e-10)
    assert obs == pytest.approx(antisymmetric_share(W))
