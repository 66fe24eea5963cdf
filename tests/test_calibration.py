"""Calibration of the claim machinery (hierarchical_effect -> pl.claims) at the experiments' real design sizes.

Simulated data sets of two paired arms ``[items, placements, seeds]`` whose values carry between-item,
between-placement, between-seed and item x placement variance, and whose *contrast* carries item, placement,
seed, item x placement and cell variance. With fewer than 5 placements or seeds those levels are held fixed, so
the claim is about the placements and seeds measured: the null is "the contrast averages 0 over them" (each
data set's placement and seed effects on the contrast are centred; they still differ between placements).

* Null: *agree* at most at the nominal rate (5% plus binomial error); agree + disagree at most at the percentile
  bootstrap's analytic two-sided rate for the design (5.2% at 200 items, 6.8% at 24: a small sample's plug-in
  standard error is too small by sqrt((n-1)/n) and its quantile is normal, not t).
* Known effect: the detection rate equals the power computed analytically for the design: a percentile bootstrap
  of the mean per-item contrast ``d_i`` (iid normal here, variance ``s_u^2 + s_x^2/P + s_e^2/(P S)``) says *agree*
  when ``t = mean / (s / sqrt(n)) > z_{0.975} sqrt((n - 1) / n)`` (the bootstrap's plug-in standard error), so
  power = ``P(T_{n-1, ncp} > that)`` with ``ncp = delta sqrt(n) / s_d`` (scipy's noncentral t).

The CI-sized tests use 1,000 data sets cycling over the designs; ``-m slow`` runs 1,000 per design.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

import phaselens as pl
from phaselens.effects import hierarchical_effect
from phaselens.verdicts import Claim

try:  # one BLAS thread: thousands of tiny products, which threads only slow down on a shared machine
    from threadpoolctl import threadpool_limits
except ImportError:  # pragma: no cover
    from contextlib import nullcontext as threadpool_limits

#: (items, placements, seeds) of the experiments: compare_phase_cuts at size (200 items x 2-3 placements x 3
#: seeds), and a 24-item single-placement design (the lettered Qwen runs, ablation/noise per block)
DESIGNS = [(200, 2, 3), (200, 3, 3), (24, 1, 3), (24, 2, 3)]
N_SETS = 1000
N_BOOT = 400
SD = dict(item=1.0, placement=1.0, seed=0.7, item_placement=0.5,  # shared by both arms
          u=0.6, v=0.5, w=0.3, x=0.4, e=0.8)  # the contrast: item, placement, seed, item x placement, cell


@pytest.fixture(autouse=True)
def _one_blas_thread():
    with threadpool_limits(1):
        yield


def _sd_item_contrast(p: int, s: int) -> float:
    """SD of the per-item contrast averaged over the (fixed) placements and seeds."""
    return math.sqrt(SD["u"] ** 2 + SD["x"] ** 2 / p + SD["e"] ** 2 / (p * s))


def _simulate(rng: np.random.Generator, n: int, p: int, s: int, delta: float) -> dict[str, np.ndarray]:
    shared = (SD["item"] * rng.normal(size=(n, 1, 1)) + SD["placement"] * rng.normal(size=(1, p, 1))
              + SD["seed"] * rng.normal(size=(1, 1, s)) + SD["item_placement"] * rng.normal(size=(n, p, 1)))
    v = SD["v"] * rng.normal(size=(1, p, 1))
    w = SD["w"] * rng.normal(size=(1, 1, s))
    contrast = (delta + SD["u"] * rng.normal(size=(n, 1, 1)) + (v - v.mean()) + (w - w.mean())
                + SD["x"] * rng.normal(size=(n, p, 1)) + SD["e"] * rng.normal(size=(n, p, s)))
    noise = rng.normal(size=(n, p, s))  # measurement noise shared by both arms' cells
    return {"a": shared + noise + contrast, "b": shared + noise}


def _power(n: int, p: int, s: int, delta: float) -> float:
    c = sps.norm.ppf(0.975) * math.sqrt((n - 1) / n)
    return float(sps.nct.sf(c, n - 1, delta * math.sqrt(n) / _sd_item_contrast(p, s)))


def _run(designs, n_per: int, delta_in_se: float, seed: int) -> dict[tuple, list[str]]:
    rng = np.random.default_rng(seed)
    out: dict[tuple, list[str]] = {d: [] for d in designs}
    for k in range(n_per * len(designs)):
        n, p, s = designs[k % len(designs)]
        delta = delta_in_se * _sd_item_contrast(p, s) / math.sqrt(n)
        e = hierarchical_effect(_simulate(rng, n, p, s, delta), name="a − b", predicted="positive", require=(),
                                n_boot=N_BOOT, boot_seed=k, per_cluster=False)
        assert e.n == {"items": n, "placements": p, "seeds": s}
        out[(n, p, s)].append(pl.claims([Claim(paper="sim", claim="a > b", effect=e)]).verdicts[0])
    return out


def _two_sided_rate(n: int) -> float:
    """The percentile bootstrap's two-sided rejection rate under the null: ``2 P(T_{n-1} > z sqrt((n-1)/n))``
    (6.8% at 24 items, 5.2% at 200: the plug-in standard error and the normal quantile of a small sample)."""
    return float(2 * sps.t.sf(sps.norm.ppf(0.975) * math.sqrt((n - 1) / n), n - 1))


def _check_null(verdicts: list[str], designs) -> None:
    m = len(verdicts)
    bound = sps.binom.ppf(0.99, m, 0.05) / m  # one-sided 99% binomial bound of the nominal 5%
    agree, either = verdicts.count("agree") / m, (verdicts.count("agree") + verdicts.count("disagree")) / m
    two = float(np.mean([_two_sided_rate(n) for n, _, _ in designs]))
    bound2 = sps.binom.ppf(0.99, m, two) / m
    print(f"null: agree {agree:.3f} (bound {bound:.3f}), agree or disagree {either:.3f} (analytic {two:.3f}, bound "
          f"{bound2:.3f}) over {m} data sets")
    assert agree <= bound, (agree, bound)  # the claim machinery's promise: agree at most at the nominal rate
    assert either <= bound2, (either, two, bound2)  # and both verdicts together at the design's analytic rate


def _check_power(verdicts: list[str], power: float) -> None:
    m = len(verdicts)
    rate = verdicts.count("agree") / m
    half = sps.norm.ppf(0.995) * math.sqrt(power * (1 - power) / m)  # 99% binomial error
    print(f"effect: agree {rate:.3f} over {m} data sets, analytic power {power:.3f} ± {half:.3f}")
    assert abs(rate - power) <= half + 0.01, (rate, power, half)  # + 0.01: the bootstrap quantiles' own error
    assert verdicts.count("disagree") == 0


def test_null_says_agree_at_most_at_the_nominal_rate():
    v = _run(DESIGNS, N_SETS // len(DESIGNS), 0.0, seed=1)
    _check_null([x for d in DESIGNS for x in v[d]], DESIGNS)


def test_detection_rate_matches_the_analytic_power():
    shift = 2.5  # the true effect, in standard errors of the design's mean contrast
    v = _run(DESIGNS, N_SETS // len(DESIGNS), shift, seed=2)
    all_v = [x for d in DESIGNS for x in v[d]]
    power = float(np.mean([_power(n, p, s, shift * _sd_item_contrast(p, s) / math.sqrt(n)) for n, p, s in DESIGNS]))
    assert 0.6 < power < 0.75  # a rate with room on both sides
    _check_power(all_v, power)


def test_analytic_power_is_the_normal_power_at_large_n():
    """The noncentral-t power tends to the textbook Phi(shift - z) as items grow (an independent check of _power)."""
    n, p, s, shift = 20000, 2, 3, 2.5
    delta = shift * _sd_item_contrast(p, s) / math.sqrt(n)
    assert _power(n, p, s, delta) == pytest.approx(sps.norm.cdf(shift - sps.norm.ppf(0.975)), abs=1e-3)


@pytest.mark.slow
@pytest.mark.parametrize("design", DESIGNS, ids=lambda d: "x".join(map(str, d)))
def test_full_null_per_design(design):
    _check_null(_run([design], N_SETS, 0.0, seed=10 + sum(design))[design], [design])


@pytest.mark.slow
@pytest.mark.parametrize("design", DESIGNS, ids=lambda d: "x".join(map(str, d)))
def test_full_power_per_design(design):
    n, p, s = design
    shift = 2.5
    v = _run([design], N_SETS, shift, seed=20 + sum(design))[design]
    _check_power(v, _power(n, p, s, shift * _sd_item_contrast(p, s) / math.sqrt(n)))
