"""Claims: Holm by hand, verdicts (which can fail), the Figure 8 sign, calibration on simulated nulls and power."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

import phaselens as pl
from phaselens.verdicts import CLAIMS, COLUMNS, Claim, holm, holm_alphas, register_claim
from phaselens.effects import correlation_effect, hierarchical_effect, paired_effect
from phaselens.errors import StatsWarning
from phaselens.resampling import EffectError


def _pairs_with_r(r: float, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    x = (x - x.mean()) / x.std()
    e = rng.normal(size=n)
    e = e - e.mean() - (e @ x) / (x @ x) * x
    return x, r * x + math.sqrt(1 - r * r) * e / e.std()


# ----------------------------------------------------------------------------- Holm
def test_holm_by_hand():
    p = [0.01, 0.04, 0.03, 0.005]
    # ascending: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> running max 0.02, 0.03, 0.06, 0.06
    np.testing.assert_allclose(holm(p), [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(holm_alphas(p, 0.05), [0.05 / 3, 0.05 / 1, 0.05 / 2, 0.05 / 4])
    np.testing.assert_allclose(holm([0.5, 0.9]), [1.0, 1.0])  # 0.5*2 = 1, then max(1, 0.9*1) = 1


def _effect(shift: float, seed: int, n: int = 40, **kw) -> pl.Effect:
    rng = np.random.default_rng(seed)
    return paired_effect(rng.normal(shift, 1, n), rng.normal(0, 1, n), name=f"effect {seed}", n_boot=4000, **kw)


def test_holm_families_are_papers_and_the_interval_is_at_the_holm_level():
    effs = [_effect(0.8, 0), _effect(0.6, 1), _effect(0.0, 2), _effect(0.9, 3)]
    table = pl.claims([("paper A", "c0", effs[0], "+"), ("paper A", "c1", effs[1], "+"),
                       ("paper A", "c2", effs[2], "+"), ("paper B", "c3", effs[3], "+")])
    df = table.to_pandas()
    np.testing.assert_allclose(df["p_adj"][:3], holm([e.p for e in effs[:3]]))
    assert df["p_adj"][3] == pytest.approx(effs[3].p)  # a family of one: no correction
    levels = 1 - holm_alphas([e.p for e in effs[:3]], 0.05)
    for i in range(3):
        assert (df["lo"][i], df["hi"][i]) == pytest.approx(effs[i].interval(levels[i]))
    assert list(df.columns[: len(COLUMNS)]) == list(COLUMNS)


def test_verdict_can_fail_and_states_the_minimum_detectable_effect():
    e = _effect(0.0, 5)
    table = pl.claims([Claim(paper="paper", claim="noise has an effect", effect=e, predicted="positive")])
    assert table.verdicts == ["undetermined"]
    mde = (sps.norm.ppf(0.975) + sps.norm.ppf(0.8)) * np.std(e.replicates, ddof=1)  # alpha_k = 0.05 (one claim)
    assert table.rows[0]["mde"] == pytest.approx(mde)
    assert f"±{mde:.3g}" in table.summary()
    strong = pl.claims([("p", "up", _effect(1.0, 6), "+"), ("p", "down", _effect(1.0, 7), "-")])
    assert strong.verdicts == ["agree", "disagree"]


def test_figure8_sign():
    x, y = _pairs_with_r(-0.9, 9)
    agree = pl.claims({"transition/fig8-sign": correlation_effect(x, y, name="r(l*, critical ratio)")})
    assert agree.verdicts == ["agree"] and agree.rows[0]["predicted"] == "negative"
    x, y = _pairs_with_r(0.9, 9)
    assert pl.claims({"transition/fig8-sign": correlation_effect(x, y, name="r")}).verdicts == ["disagree"]
    groups = np.repeat(["llama3-8b", "llama2-7b", "qwen3-4b"], 3)
    x, y = _pairs_with_r(-0.9, 9)
    boot = correlation_effect(x, y, name="r", groups=groups, n_boot=2000)
    assert boot.fixed == ["models"] and pl.claims({"transition/fig8-sign": boot}).verdicts == ["agree"]


def test_claims_csv_and_roundtrip(tmp_path):
    table = pl.claims([("transition/silent-cut-hurts-more", _effect(0.5, 8)), ("p", "c", _effect(0.1, 9), "-")],
                      name="demo")
    path = pl.write_claims_csv(table, tmp_path / "claims.csv")
    import pandas as pd

    df = pd.read_csv(path)
    assert list(df.columns[: len(COLUMNS)]) == list(COLUMNS) and len(df) == 2
    back = pl.load_result(table.save(tmp_path))
    assert isinstance(back, pl.Claims) and back.verdicts == table.verdicts
    assert table.plot() is not None


@pytest.mark.bad_input
def test_claim_errors():
    e = _effect(0.5, 10)
    with pytest.raises(EffectError, match="has no predicted direction"):
        pl.claims([("paper", "a claim", e)])
    with pytest.raises(EffectError, match="has no predicted direction"):
        register_claim("test/none", paper="p", claim="c", predicted=None)
    with pytest.raises(EffectError, match="no claims"):
        pl.claims([])
    with pytest.raises(EffectError):
        pl.claims({"no/such-claim": e})
    assert "transition/fig8-sign" in CLAIMS
    with pytest.warns(StatsWarning, match="raise n_boot"):
        small = paired_effect(np.arange(10.0), np.zeros(10), name="x", n_boot=100, predicted="+")
        pl.claims([("p", f"c{i}", small) for i in range(3)])


@pytest.mark.bad_input
def test_claim_without_a_predicted_direction_names_the_claim():
    e = _effect(0.5, 10)
    with pytest.raises(EffectError, match=r"claim 'silent cuts hurt more' \(decision-transition\) has no predicted"):
        Claim(paper="decision-transition", claim="silent cuts hurt more", effect=e)
    with pytest.raises(EffectError, match="claim 'test/no-direction': predicted direction ''"):
        register_claim("test/no-direction", paper="p", claim="c", predicted="")


@pytest.mark.bad_input
def test_claim_with_an_unreadable_direction_names_it():
    with pytest.raises(EffectError, match="claim 'c' \\(p\\): predicted direction 'bigger'"):
        Claim(paper="p", claim="c", effect=_effect(0.5, 10), predicted="bigger")


@pytest.mark.bad_input
def test_fewer_than_five_items_in_an_arm_names_the_arm():
    rng = np.random.default_rng(40)
    with pytest.raises(EffectError, match="arm 'decisive' holds 4 items; an effect needs at least 5"):
        paired_effect(rng.normal(size=4), rng.normal(size=4), name="silent − decisive", arms=("decisive", "silent"))
    with pytest.raises(EffectError, match="arm 'silent' holds 3 items"):
        hierarchical_effect({"silent": rng.normal(size=(3, 2, 3)), "decisive": rng.normal(size=(3, 2, 3))}, name="x")


@pytest.mark.bad_input
def test_arms_on_different_items_name_the_arm_before_any_resampling():
    rng = np.random.default_rng(41)
    ids = [f"item{i}" for i in range(10)]
    with pytest.raises(EffectError, match="arm 'recovered' was measured on different items than arm 'plain'"):
        hierarchical_effect({"plain": rng.normal(size=(10, 2, 3)), "recovered": rng.normal(size=(10, 2, 3))},
                            name="x", items={"plain": ids, "recovered": ids[1:] + ["item99"]})
    with pytest.raises(EffectError, match="arm 'recovered' has 9 items but arm 'plain' has 10"):
        hierarchical_effect({"plain": rng.normal(size=(10, 2, 3)), "recovered": rng.normal(size=(9, 2, 3))}, name="x")


@pytest.mark.bad_input
def test_one_placement_where_the_hierarchy_asks_names_the_effect_and_arms():
    rng = np.random.default_rng(42)
    arms = {"silent": rng.normal(size=(24, 1, 3)), "decisive": rng.normal(size=(24, 1, 3))}
    with pytest.raises(EffectError, match=r"effect 'silent − decisive': the hierarchy asks for placements but "
                                          r"arm\(s\) 'silent', 'decisive' hold 1"):
        hierarchical_effect(arms, name="silent − decisive")
    with pytest.raises(EffectError, match="asks for seeds"):
        hierarchical_effect(arms, name="x", require=("seeds",),
                            dims=("items", "seeds", "placements"))
    e = hierarchical_effect(arms, name="silent − decisive", require=(), n_boot=200)  # asked for nothing: fine
    assert e.n["placements"] == 1


@pytest.mark.bad_input
def test_claims_table_refuses_what_is_not_a_claim():
    with pytest.raises(EffectError, match="claims must be Claim objects, got \\['str'\\]"):
        pl.Claims(claims=["transition/fig8-sign"])
    with pytest.raises(EffectError, match="cannot read a claim from float"):
        pl.claims([0.5])
    with pytest.raises(EffectError, match="alpha must be between 0 and 1"):
        pl.claims([("p", "c", _effect(0.5, 10, predicted="+"))], alpha=5)


# ----------------------------------------------------------------------------- calibration and power
N_DATASETS = 1000
#: replicates per simulated dataset: the 2.5% tail of a 95% interval holds 10 of them, enough for a rejection
#: rate (the Monte-Carlo error of the quantile moves a dataset's verdict only near the boundary)
N_BOOT_SIM = 400
DESIGNS = [(24, 2, 3), (48, 3, 3), (100, 2, 3), (200, 3, 3)]
SD = dict(item=1.0, placement=1.0, seed=0.7, item_contrast=0.6, item_placement=0.4, cell=0.8)


def _simulate(rng: np.random.Generator, n: int, p: int, s: int, delta: float) -> dict[str, np.ndarray]:
    """Two paired arms ``[n, p, s]``: item, placement and seed effects (and item × placement) shared by both arms,
    an item-level and item × placement contrast, and cell noise; the contrast's mean is ``delta``."""
    shared = (SD["item"] * rng.normal(size=(n, 1, 1)) + SD["placement"] * rng.normal(size=(1, p, 1))
              + SD["seed"] * rng.normal(size=(1, 1, s)) + 0.5 * rng.normal(size=(n, p, 1)))
    contrast = (delta + SD["item_contrast"] * rng.normal(size=(n, 1, 1))
                + SD["item_placement"] * rng.normal(size=(n, p, 1)))
    return {"a": shared + contrast + SD["cell"] * rng.normal(size=(n, p, s)) / math.sqrt(2),
            "b": shared + SD["cell"] * rng.normal(size=(n, p, s)) / math.sqrt(2)}


def _se(n: int, p: int, s: int) -> float:
    """Standard error of the mean contrast with placements and seeds fixed (the design's own SE)."""
    return math.sqrt(SD["item_contrast"] ** 2 / n + SD["item_placement"] ** 2 / (n * p) + SD["cell"] ** 2 / (n * p * s))


def _verdicts(delta_in_se: float, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    out = []
    for k in range(N_DATASETS):
        n, p, s = DESIGNS[k % len(DESIGNS)]
        arms = _simulate(rng, n, p, s, delta_in_se * _se(n, p, s))
        e = hierarchical_effect(arms, name="a − b", predicted="+", n_boot=N_BOOT_SIM, boot_seed=k, per_cluster=False)
        out.append(pl.claims([Claim(paper="sim", claim="a > b", effect=e)]).verdicts[0])
    return out


def test_calibration_on_simulated_nulls():
    v = _verdicts(0.0, seed=100)
    bound = sps.binom.ppf(0.99, N_DATASETS, 0.05) / N_DATASETS  # upper 99% binomial bound of the nominal 5%
    agree, disagree = v.count("agree") / N_DATASETS, v.count("disagree") / N_DATASETS
    assert agree <= bound and agree + disagree <= bound, (agree, disagree, bound)


def test_detection_rate_matches_analytic_power():
    shift = 2.5  # the true effect, in units of the design's standard error
    v = _verdicts(shift, seed=200)
    z = sps.norm.ppf(0.975)
    power = sps.norm.cdf(shift - z)  # two-sided test at 5%, the agreeing side
    rate = v.count("agree") / N_DATASETS
    half = sps.norm.ppf(0.995) * math.sqrt(power * (1 - power) / N_DATASETS)
    assert abs(rate - power) <= half, (rate, power, half)
    assert v.count("disagree") == 0


def test_calibration_with_resampled_placements_and_seeds():
    """5 placements x 5 seeds: both levels resampled, and the null contrast itself varies by placement and seed
    (population null: no effect on average over placements and seeds)."""
    rng = np.random.default_rng(300)
    n, p, s = 48, 5, 5
    v = []
    for k in range(N_DATASETS):
        shared = rng.normal(size=(n, 1, 1)) + rng.normal(size=(1, p, 1)) + rng.normal(size=(1, 1, s))
        contrast = (0.6 * rng.normal(size=(n, 1, 1)) + 0.2 * rng.normal(size=(1, p, 1))
                    + 0.2 * rng.normal(size=(1, 1, s)) + 0.8 * rng.normal(size=(n, p, s)))
        e = hierarchical_effect({"a": shared + contrast, "b": shared}, name="a − b", predicted="+", n_boot=N_BOOT_SIM,
                                boot_seed=k, per_cluster=False)
        assert e.resampled == ["items", "placements", "seeds"]
        v.append(pl.claims([Claim(paper="sim", claim="a > b", effect=e)]).verdicts[0])
    bound = sps.binom.ppf(0.99, N_DATASETS, 0.05) / N_DATASETS
    rate = (v.count("agree") + v.count("disagree")) / N_DATASETS
    assert v.count("agree") / N_DATASETS <= bound and rate <= bound, (rate, bound)


# ----------------------------------------------------------------------------- the HTML report's claims table
def test_report_shows_a_claims_table_when_given_claims(tmp_path):
    effs = [_effect(1.5, 0, predicted="+"), _effect(0.0, 2, predicted="+"), _effect(-1.5, 3, predicted="+")]
    table = pl.claims([("paper A", f"claim {i}", e) for i, e in enumerate(effs)])
    page = pl.report.report_html({"one effect": effs[0]}, claims=table)
    assert "Claims: claims" in page and "claim 0" in page and "claim 2" in page
    for word in table.verdicts:
        assert f">{word}<" in page
    assert table.verdicts == ["agree", "undetermined", "disagree"]
    # a saved Claims result in a results folder gets the same table
    table.save(tmp_path, "claims")
    effs[0].save(tmp_path, "effect")
    page = pl.report.report_html(tmp_path)
    assert "Claims: claims" in page and page.count(">disagree<") == 1
