"""``recovery_grid(...).effects()``: each method against Ghosted Layers pooled over the cuts of one model.

Checked against a hand-written numpy computation: the estimate is the pooled formula evaluated directly, and the
interval is that of a crossed bootstrap written here from scratch (cuts and passages / items drawn independently
with replacement). A duplicated cut counts once, a method missing at a cut is compared where it ran, and a noise
grid (no true difference, cut-to-cut spread) is covered by the interval about as often as the level says."""

from __future__ import annotations

import numpy as np
import pytest

import phaselens as pl
from phaselens.errors import EffectError
from phaselens.experiments.recovery_comparison import RecoveryTask

P, N = 12, 30


def comparison(blocks, rng, *, methods=("ghosted", "identity", "replaceme"), task="arc-easy", model="m",
               gap=0.3, acc_gap=0.1, ids=None, tokens=None):
    """A RecoveryComparison with known numbers: identity's NLL per token ``gap`` above ghosted's."""
    tok = np.full(P, 100.0) if tokens is None else tokens
    base = rng.normal(3.0, 0.3, P) * tok
    nll = np.stack([base + (0 if m == "ghosted" else gap) * tok + rng.normal(0, 5, P) for m in methods])
    p = {m: 0.6 if m == "ghosted" else 0.6 - acc_gap for m in methods}
    correct = np.stack([rng.random(N) < p[m] for m in methods])
    t = RecoveryTask(task=task, format="continuation", item_ids=list(ids or [f"q{i}" for i in range(N)]),
                     margins=rng.normal(0, 1, (len(methods), N)), correct=correct,
                     dense_margins=rng.normal(1, 1, N), dense_correct=rng.random(N) < 0.7)
    return pl.RecoveryComparison(model=model, n_blocks=24, blocks=list(blocks), criterion="angular",
                                 calibration_passages=32, methods=list(methods), nll=nll, tokens=tok, dense_nll=base * 0.8,
                                 fit_relative_error=np.zeros(len(methods)), tasks=[t])


def effects_of(comparisons, reference="ghosted", **kw):
    return pl.recovery_grid(comparisons, reference=reference).effects(**kw)


def by_name(effs):
    return {e.name: e for e in effs}


def hand_bootstrap(stat, shape, n_boot, seed):
    """Crossed bootstrap by hand: ``stat(rows, cols)`` on each draw of rows and columns with replacement."""
    rng = np.random.default_rng(seed)
    return np.array([stat(rng.integers(0, shape[0], shape[0]), rng.integers(0, shape[1], shape[1]))
                     for _ in range(n_boot)])


def test_estimates_and_intervals_match_a_hand_written_crossed_bootstrap():
    rng = np.random.default_rng(0)
    rcs = [comparison(range(s, s + 3), rng, gap=0.1 * (1 + s % 4)) for s in range(6)]
    effs = by_name(effects_of(rcs, n_boot=4000, boot_seed=1))
    e = effs["identity − ghosted held-out NLL per token"]
    g = np.stack([c.nll[0] for c in rcs], 1)
    i = np.stack([c.nll[1] for c in rcs], 1)
    tok = np.stack([c.tokens for c in rcs], 1)
    assert e.estimate == pytest.approx((i.sum() - g.sum()) / tok.sum(), rel=1e-9)
    assert e.n == {"items": P, "placements": 6} and e.resampled == ["items", "placements"]
    hand = hand_bootstrap(lambda r, c: (i[r][:, c].sum() - g[r][:, c].sum()) / tok[r][:, c].sum(), (P, 6), 4000, 7)
    lo, hi = np.quantile(hand, [0.025, 0.975])
    width = hi - lo
    assert abs(e.lo - lo) < 0.1 * width and abs(e.hi - hi) < 0.1 * width

    a = effs["ghosted − identity accuracy"]
    cg = np.stack([c.tasks[0].correct[0] for c in rcs], 1).astype(float)
    ci = np.stack([c.tasks[0].correct[1] for c in rcs], 1).astype(float)
    assert a.estimate == pytest.approx(cg.mean() - ci.mean(), abs=1e-12)
    hand = hand_bootstrap(lambda r, c: cg[r][:, c].mean() - ci[r][:, c].mean(), (N, 6), 4000, 8)
    lo, hi = np.quantile(hand, [0.025, 0.975])
    assert abs(a.lo - lo) < 0.1 * (hi - lo) and abs(a.hi - hi) < 0.1 * (hi - lo)
    assert a.task == "arc-easy" and a.predicted == "positive" and a.model == "m"


def test_same_cut_counts_once_and_missing_methods_use_the_cuts_they_ran_on():
    rng = np.random.default_rng(1)
    rcs = [comparison(range(s, s + 3), rng) for s in range(5)]
    dup = comparison(range(0, 3), rng)  # another criterion chose cut 0-2 again: the same measurement
    dup.criterion = "bi"
    no_rm = [comparison(range(10 + s, 13 + s), rng, methods=("ghosted", "identity")) for s in range(2)]
    effs = by_name(effects_of([*rcs, dup, *no_rm], n_boot=200))
    assert effs["identity − ghosted held-out NLL per token"].n["placements"] == 7
    assert effs["replaceme − ghosted held-out NLL per token"].n["placements"] == 5
    assert effs["ghosted − replaceme accuracy"].n["placements"] == 5
    grid = pl.recovery_grid([*rcs, dup, *no_rm])
    table = grid.to_pandas()
    assert len(grid.cuts) == 7 and grid.cuts[0] == "0-2 (angular/bi)"
    assert "identity" in grid.summary() and len(grid.plot().data) == 4 * 2  # 4 arms (dense too) x (perplexity, 1 task)
    assert len(table[table.method == "dense"]) == 7
    assert set(table.calibration_passages) == {rcs[0].calibration_passages}  # what each cut's operators were fit on
    assert table.loc[(table.cut == "0-2 (angular/bi)") & (table.method == "identity"), "perplexity"].item() == \
        pytest.approx(np.exp(rcs[0].nll[1].sum() / rcs[0].tokens.sum()))


def test_a_method_on_fewer_than_two_cuts_is_named_in_a_warning_not_dropped_in_silence():
    rng = np.random.default_rng(5)
    rcs = [comparison(range(s, s + 3), rng, methods=("ghosted", "identity")) for s in range(3)]
    one = comparison(range(9, 12), rng, methods=("ghosted", "identity", "replaceme"))  # replaceme ran at one cut only
    with pytest.warns(UserWarning, match=r"no effect for replaceme held-out text \(1 cut\), replaceme on arc-easy"):
        effs = by_name(effects_of([*rcs, one], n_boot=100))
    assert not any("replaceme" in k for k in effs) and "identity − ghosted held-out NLL per token" in effs
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a grid where every method ran at 2+ cuts warns about nothing
        effects_of(rcs, n_boot=100)


def test_items_are_aligned_by_id_and_other_item_lists_refused():
    rng = np.random.default_rng(2)
    rcs = [comparison(range(s, s + 3), rng) for s in range(5)]
    shuffled = comparison(range(7, 10), rng, ids=[f"q{i}" for i in reversed(range(N))])
    a = by_name(effects_of([*rcs, shuffled], n_boot=100))["ghosted − identity accuracy"]
    cg = np.concatenate([*(c.tasks[0].correct[0] for c in rcs), shuffled.tasks[0].correct[0]]).astype(float)
    ci = np.concatenate([*(c.tasks[0].correct[1] for c in rcs), shuffled.tasks[0].correct[1]]).astype(float)
    assert a.estimate == pytest.approx(cg.mean() - ci.mean())  # a mean does not depend on the order...
    other = comparison(range(12, 15), rng, ids=[f"z{i}" for i in range(N)])
    with pytest.raises(EffectError, match="other items"):  # ...but other items cannot be paired
        effects_of([*rcs, other], n_boot=100)


def test_bad_input_is_refused_by_name():
    rng = np.random.default_rng(3)
    a, b = comparison(range(3), rng), comparison(range(3, 6), rng, model="other")
    with pytest.raises(EffectError, match="one model"):
        effects_of([a, b])
    with pytest.raises(EffectError, match="at least one"):
        effects_of([])
    c = comparison(range(3, 6), rng, tokens=np.full(P, 90.0))
    with pytest.raises(EffectError, match="other held-out passages"):
        effects_of([a, c])
    with pytest.raises(EffectError, match="no 'linearpatch' arm"):
        effects_of([a, comparison(range(3, 6), rng)], reference="linearpatch")


def test_a_noise_grid_is_covered_at_about_the_level():
    """No true difference between the arms, but each cut has its own random offset: an interval that resampled only
    passages would miss 0 far too often; resampling cuts too covers it at about the nominal 95%."""
    hits = 0
    sims = 60
    for s in range(sims):
        rng = np.random.default_rng(100 + s)
        rcs = []
        for c in range(8):
            rcs.append(comparison(range(c, c + 2), rng, gap=rng.normal(0, 0.2), acc_gap=0.0))
        e = by_name(effects_of(rcs, n_boot=400, boot_seed=s))["identity − ghosted held-out NLL per token"]
        hits += e.lo <= 0 <= e.hi
    assert hits / sims >= 0.8  # nominal 0.95; 8 clusters make percentile intervals a little narrow


def test_the_grid_is_a_result_that_saves_and_loads(tmp_path):
    rng = np.random.default_rng(4)
    grid = pl.recovery_grid([comparison(range(s, s + 3), rng) for s in range(5)], n_boot=300)
    back = pl.load_result(pl.save_result(grid, tmp_path, "grid"))
    assert isinstance(back, pl.RecoveryGrid) and back.cuts == grid.cuts
    for a, b in zip(grid.effects(), back.effects()):
        assert (a.name, a.estimate, a.lo, a.hi) == (b.name, b.estimate, b.lo, b.hi)
