"""Effects and their resampling, each against an independent computation (scipy, a hand loop, a formula)."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from scipy import stats as sps

import phaselens as pl
from phaselens.effects import (
    Effect,
    correlation_effect,
    hierarchical_effect,
    paired_effect,
    permutation_effect,
    transition_layer,
)
from phaselens.phases import transition_index
from phaselens.resampling import EffectError, bootstrap_p, count_weights, weighted_means


def _mc_tol(se: float, b: int) -> float:
    """Generous Monte-Carlo tolerance for a 2.5% percentile of ``b`` replicates of a statistic with SD ``se``."""
    return 6 * math.sqrt(0.025 * 0.975 / b) / sps.norm.pdf(1.96) * se


# ----------------------------------------------------------------------------- paired bootstrap
def test_paired_bootstrap_matches_scipy_paired():
    rng = np.random.default_rng(0)
    a, b = rng.normal(0.4, 1, 40), rng.normal(0, 1, 40) + 0.5 * rng.normal(size=40)
    e = paired_effect(a, b, name="a − b", n_boot=20000, boot_seed=1)
    ref = sps.bootstrap((a, b), lambda x, y, axis: np.mean(x - y, axis=axis), paired=True, vectorized=True,
                        method="percentile", n_resamples=20000, random_state=2)
    se = ref.standard_error
    assert e.estimate == pytest.approx(np.mean(a - b))
    assert e.lo == pytest.approx(ref.confidence_interval.low, abs=_mc_tol(se, 20000))
    assert e.hi == pytest.approx(ref.confidence_interval.high, abs=_mc_tol(se, 20000))
    assert e.se == pytest.approx(se, rel=0.05)


def test_paired_bootstrap_variance_is_the_plugin_formula():
    rng = np.random.default_rng(1)
    d = rng.exponential(size=30)
    e = paired_effect(d, np.zeros(30), name="d", n_boot=40000)
    exact = np.sum((d - d.mean()) ** 2) / d.size ** 2  # bootstrap variance of a mean, by hand
    assert e.replicates.var() == pytest.approx(exact, rel=0.04)


def test_paired_effect_aligns_items_by_id():
    rng = np.random.default_rng(2)
    ids = [f"q{i}" for i in range(12)]
    a, b = rng.normal(size=12), rng.normal(size=12)
    perm = rng.permutation(12)
    e1 = paired_effect(a, b, name="x", items=ids, n_boot=200)
    e2 = paired_effect(a, b[perm], name="x", items=(ids, [ids[i] for i in perm]), n_boot=200)
    assert e2.estimate == pytest.approx(np.mean(a - b))
    np.testing.assert_allclose(e1.replicates, e2.replicates)


# ----------------------------------------------------------------------------- hierarchical bootstrap
def test_hierarchical_replicates_match_a_hand_loop_over_indices():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(9, 5, 6))
    e = hierarchical_effect(x, name="x", n_boot=150, boot_seed=7)
    r = np.random.default_rng(7)  # the same draws, level by level, turned into index lists by hand
    ii, pp, ss = (r.integers(0, n, size=(150, n)) for n in x.shape)
    hand = np.array([x[ii[b]][:, pp[b]][:, :, ss[b]].mean() for b in range(150)])
    np.testing.assert_allclose(e.replicates, hand, rtol=1e-12)
    assert e.resampled == ["items", "placements", "seeds"] and e.fixed == []


def test_crossed_bootstrap_variance_of_an_additive_design_is_the_sum_of_level_variances():
    rng = np.random.default_rng(4)
    a, bp, cs = rng.normal(size=20), 2 * rng.normal(size=6), rng.normal(size=7)
    x = a[:, None, None] + bp[None, :, None] + cs[None, None, :]
    e = hierarchical_effect(x, name="x", n_boot=30000)
    exact = sum(np.var(v) / v.size for v in (a, bp, cs))  # each level's plug-in variance of its mean
    assert e.replicates.var() == pytest.approx(exact, rel=0.05)
    # fewer than 5 placements: placements are held fixed, their variance leaves the interval
    x3 = x[:, :3]
    e3 = hierarchical_effect(x3, name="x", n_boot=30000, per_cluster=False)
    assert e3.fixed == ["placements"] and e3.resampled == ["items", "seeds"]
    assert e3.replicates.var() == pytest.approx(np.var(a) / 20 + np.var(cs) / 7, rel=0.05)


def test_few_clusters_report_each_cluster_and_the_pooled_estimate():
    rng = np.random.default_rng(5)
    a, b = rng.normal(1, 1, (24, 3, 3)), rng.normal(0, 1, (24, 3, 3))
    e = hierarchical_effect({"silent": a, "decisive": b}, name="silent − decisive margin drop", n_boot=300,
                            labels={"placements": ["early", "mid", "late"]})
    assert e.fixed == ["placements", "seeds"] and e.resampled == ["items"]
    assert [c.name for c in e.clusters][:3] == [f"silent − decisive margin drop [placement {p}]"
                                                for p in ("early", "mid", "late")]
    per_placement = [c.estimate for c in e.clusters[:3]]
    np.testing.assert_allclose(per_placement, (a - b).mean(axis=(0, 2)))
    assert e.estimate == pytest.approx(np.mean(per_placement))  # pooled fixed effect: equal-weight mean
    assert "placements, seeds" in e.summary()


def test_summary_reads_as_asked():
    rng = np.random.default_rng(6)
    a, b = rng.normal(1.4, 1, (24, 3, 3)), rng.normal(0, 1, (24, 3, 3))
    e = hierarchical_effect({"silent": a, "decisive": b}, name="silent − decisive margin drop", n_boot=1000)
    first = e.summary().splitlines()[0]
    assert re.fullmatch(r"silent − decisive margin drop: \+\d\.\d\d \[\+\d\.\d\d, \+\d\.\d\d\], p [=<] 0\.\d{3} "
                        r"\(24 items × 3 placements × 3 seeds\)", first), first


def test_transition_hook_is_reestimated_per_replicate_with_undefined_share():
    rng = np.random.default_rng(8)
    L, n = 6, 30
    m = rng.normal(size=(n, L)) + np.array([-1, -1, -0.5, 0.1, 0.3, 0.25])  # a borderline final margin
    e = hierarchical_effect({"margins": m}, name="l*", dims=("items",), n_boot=400, boot_seed=3,
                            statistic=lambda means: transition_layer(means["margins"]))
    idx = np.random.default_rng(3).integers(0, n, size=(400, n))
    hand = [transition_index(m[i].mean(0)) for i in idx]
    assert e.undefined == pytest.approx(sum(h is None for h in hand) / 400)
    assert 0 < e.undefined < 1
    np.testing.assert_array_equal(np.isnan(e.replicates), [h is None for h in hand])
    assert e.estimate == transition_index(m.mean(0))


def test_weighted_means_chunks_agree_with_one_product(monkeypatch):
    import phaselens.resampling as rs

    rng = np.random.default_rng(9)
    x = rng.normal(size=(7, 3, 4, 5))
    w = [count_weights(n, 50, rng) for n in x.shape[:3]]
    full = weighted_means(x, w)
    monkeypatch.setattr(rs, "CHUNK_CELLS", 60)
    np.testing.assert_allclose(weighted_means(x, w), full)
    b = 11
    hand = np.einsum("i,p,s,ipsl->l", w[0][b], w[1][b], w[2][b], x) / (7 * 3 * 4)
    np.testing.assert_allclose(full[b], hand)


def test_bootstrap_p_is_dual_to_the_percentile_interval():
    reps = np.r_[np.full(3, -1.0), np.linspace(0.1, 2, 997)]
    assert bootstrap_p(reps) == pytest.approx(2 * 4 / 1001)


# ----------------------------------------------------------------------------- correlations
def _pairs_with_r(r: float, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``x, y`` whose sample Pearson correlation is exactly ``r``."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    x = (x - x.mean()) / x.std()
    e = rng.normal(size=n)
    e = e - e.mean() - (e @ x) / (x @ x) * x
    e = e / e.std()
    return x, r * x + math.sqrt(1 - r * r) * e


def test_fisher_interval_matches_scipy_pearsonr():
    x, y = _pairs_with_r(-0.6, 25)
    e = correlation_effect(x, y, name="r")
    res = sps.pearsonr(x, y)
    ci = res.confidence_interval(0.95)
    assert e.estimate == pytest.approx(res.statistic)
    assert (e.lo, e.hi) == pytest.approx((ci.low, ci.high))
    z, se = math.atanh(res.statistic), 1 / math.sqrt(22)
    assert e.p == pytest.approx(2 * sps.norm.sf(abs(z) / se))
    assert e.interval(0.99) == pytest.approx((math.tanh(z - 2.5758293 * se), math.tanh(z + 2.5758293 * se)))


def test_spearman_fisher_interval_by_hand():
    rng = np.random.default_rng(10)
    x = rng.normal(size=20)
    y = x + rng.normal(size=20)
    e = correlation_effect(x, y, name="rho", method="spearman")
    rho = sps.spearmanr(x, y).statistic
    se = math.sqrt(1.06 / 17)
    assert e.estimate == pytest.approx(rho)
    assert (e.lo, e.hi) == pytest.approx((math.tanh(math.atanh(rho) - 1.959964 * se),
                                          math.tanh(math.atanh(rho) + 1.959964 * se)))


def test_pair_bootstrap_matches_scipy():
    x, y = _pairs_with_r(0.5, 30, seed=1)
    e = correlation_effect(x, y, name="r", interval="bootstrap", n_boot=20000)
    ref = sps.bootstrap((x, y), lambda a, b, axis: sps.pearsonr(a, b, axis=axis).statistic, paired=True,
                        vectorized=True, method="percentile", n_resamples=20000, random_state=0)
    tol = _mc_tol(ref.standard_error, 20000)
    assert e.lo == pytest.approx(ref.confidence_interval.low, abs=tol)
    assert e.hi == pytest.approx(ref.confidence_interval.high, abs=tol)


def test_pairs_resampled_within_models():
    from phaselens.effects import pair_indices

    groups = np.repeat(["llama", "qwen", "gemma"], 4)
    idx = pair_indices(12, 300, np.random.default_rng(0), groups)
    assert (groups[idx] == groups[None]).all()  # every slot keeps its model: models fixed (3 < 5)
    groups6 = np.repeat(list("abcdef"), 3)
    idx6 = pair_indices(18, 300, np.random.default_rng(0), groups6)
    g = groups6[idx6].reshape(300, 6, 3)
    assert (g == g[:, :, :1]).all()  # each drawn block of 3 comes from one model
    assert len({tuple(row) for row in g[:, :, 0]}) > 1  # and models themselves are resampled


# ----------------------------------------------------------------------------- permutation tests
@pytest.mark.parametrize("kind,n", [("samples", 9), ("independent", 6), ("pairings", 7)])
def test_permutation_p_matches_scipy_exact(kind, n):
    rng = np.random.default_rng(11)
    x = rng.normal(0.6, 1, n)
    y = rng.normal(0, 1, n - 1 if kind == "independent" else n) + (0.5 * x if kind == "pairings" else 0)
    if kind == "samples":
        stat = lambda a, b, axis=-1: np.mean(a - b, axis=axis)  # noqa: E731
    elif kind == "independent":
        stat = lambda a, b, axis=-1: np.mean(a, axis=axis) - np.mean(b, axis=axis)  # noqa: E731
    else:
        stat = lambda a, b, axis=-1: sps.pearsonr(a, b, axis=axis).statistic  # noqa: E731
    exact = sps.permutation_test((x, y), stat, permutation_type=kind, vectorized=True, n_resamples=10 ** 6,
                                 alternative="two-sided").pvalue
    e = permutation_effect(x, y, name="p", permutation_type=kind, n_resamples=20000, n_boot=1000)
    assert e.p == pytest.approx(exact, abs=4 * math.sqrt(exact * (1 - exact) / 20000) + 2e-4)
    assert e.estimate == pytest.approx(stat(x, y))


# ----------------------------------------------------------------------------- results protocol
def test_effect_saves_and_loads(tmp_path):
    rng = np.random.default_rng(12)
    e = hierarchical_effect({"a": rng.normal(size=(10, 2, 3)), "b": rng.normal(size=(10, 2, 3))}, name="a − b",
                            predicted="+", n_boot=200, model="smollm2-135m", task="capitals")
    back = pl.load_result(e.save(tmp_path))
    assert isinstance(back, pl.Effect)
    assert back.summary() == e.summary() and back.predicted == "positive" and len(back.clusters) == 5
    np.testing.assert_array_equal(back.replicates, e.replicates)
    assert set(e.to_pandas().columns) >= {"name", "estimate", "lo", "hi", "p", "n_items", "n_placements"}
    assert e.plot() is not None


# ----------------------------------------------------------------------------- bad input
@pytest.mark.bad_input
def test_arms_on_different_items_are_refused_naming_the_arm():
    rng = np.random.default_rng(13)
    a, b = rng.normal(size=8), rng.normal(size=8)
    ids = [f"q{i}" for i in range(8)]
    with pytest.raises(EffectError, match="arm 'decisive' was measured on different items than arm 'silent'"):
        paired_effect(a, b, name="x", arms=("silent", "decisive"), items=(ids, ids[:7] + ["q99"]))
    with pytest.raises(EffectError, match="arm 'decisive' has 7 items but arm 'silent' has 8"):
        paired_effect(a, b[:7], name="x", arms=("silent", "decisive"))
    with pytest.raises(EffectError, match="arm 'y' holds 7 items"):
        permutation_effect(a, b[:7], name="x")


@pytest.mark.bad_input
def test_bad_designs_and_settings_raise_effect_error():
    rng = np.random.default_rng(14)
    with pytest.raises(EffectError, match="at least 2 placements"):
        hierarchical_effect({"a": rng.normal(size=(10, 1, 3)), "b": rng.normal(size=(10, 1, 3))}, name="x")
    with pytest.raises(EffectError, match="arm 'b' holds 4 items; an effect needs at least 5"):
        hierarchical_effect({"b": rng.normal(size=(4, 2, 3))}, name="x")
    with pytest.raises(EffectError, match="n_boot=99 is too few"):
        paired_effect(rng.normal(size=10), rng.normal(size=10), name="x", n_boot=99)
    with pytest.raises(EffectError, match=r"n_boot=1000 is too few .*n_boot >= 2000"):
        paired_effect(rng.normal(size=10), rng.normal(size=10), name="x", n_boot=1000, level=0.999)
    with pytest.raises(EffectError, match="predicted direction 'up'"):
        paired_effect(rng.normal(size=10), rng.normal(size=10), name="x", predicted="up", n_boot=100)
    with pytest.raises(EffectError, match="at least 5 pairs"):
        correlation_effect([1, 2, 3, 4], [1, 3, 2, 4], name="r")
    with pytest.raises(EffectError, match="trailing axes"):
        hierarchical_effect({"a": rng.normal(size=(10, 2, 3, 4))}, name="x")
    assert issubclass(EffectError, pl.PhaselensError)
    assert isinstance(Effect(name="x", estimate=0.0, lo=-1.0, hi=1.0, p=1.0), pl.Result)
