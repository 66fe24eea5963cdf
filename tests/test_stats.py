"""transition_vs_collapse against scipy.stats.pearsonr by hand; seed intervals; degenerate inputs."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy import stats as sps

import phaselens as pl
from phaselens.pruning.iterative import Sweep, SweepStep
from phaselens.results import load_results, save_result
from phaselens.errors import StatsError, StatsWarning
from phaselens.experiments import CollapseStudy
from phaselens.study.collapse import transition_vs_collapse
from phaselens.stats import pearson, seed_interval
from phaselens.trace import DecisionTrace


def _trace(margins: list[float], name: str, n: int = 5) -> DecisionTrace:
    """A trace whose per-item margins all equal ``margins`` (so the transition is where they turn positive)."""
    L = len(margins)
    z = np.zeros((L, n, 2))
    z[:, :, 0] = np.asarray(margins, float)[:, None]  # option 0 (the answer) ahead of option 1 by the margin
    return DecisionTrace(model=name, task="toy", format="cloze", n_blocks=L, blocks=np.arange(L), logits=z,
                         answers=np.zeros(n, int), mask=np.ones((n, 2), bool), option_chars=np.ones((n, 2), int))


def _sweep(name: str, L: int, layer: int, collapse_step: int | None, task: str = "toy") -> tuple:
    """(Transition with decisive phase from ``layer``, Sweep of L blocks whose accuracy collapses at ``collapse_step``)."""
    tr = _trace([-1.0] * layer + [1.0] * (L - layer), name).transition(n_boot=100)
    steps = []
    for k in range(L):
        acc = 0.9 if collapse_step is None or k < collapse_step else 0.2
        z = np.zeros((1, 10, 2))
        z[0, :, 0] = np.where(np.arange(10) < round(acc * 10), 1.0, -1.0)  # the first acc * 10 items correct
        step_tr = DecisionTrace(model=name, task=task, format="cloze", n_blocks=L, blocks=np.array([L - 1]), logits=z,
                                answers=np.zeros(10, int), mask=np.ones((10, 2), bool), option_chars=np.ones((10, 2), int))
        steps.append(SweepStep(k, list(range(k)), k / L, tr if k == 0 else step_tr.transition(n_boot=100), 10.0, {}, k))
    steps[0] = SweepStep(0, [], 0.0, tr, 10.0, {}, 0)
    return tr, Sweep(name, task, "bi", None, L, 0.5, steps)


POINTS = [("a", 30, 18, 9), ("b", 18, 8, 4), ("c", 24, 20, 12), ("d", 12, 3, 5)]


def test_matches_pearsonr_by_hand():
    pairs = [_sweep(*p) for p in POINTS]
    study = transition_vs_collapse(pairs)
    x = [layer / L for _, L, layer, _ in POINTS]  # fraction = layer / L
    y = [step / L for _, L, _, step in POINTS]  # collapse ratio = first step below threshold, as a share of blocks
    r, p = sps.pearsonr(x, y)
    assert study.r == pytest.approx(r, abs=1e-12) and study.p == pytest.approx(p, abs=1e-12)
    np.testing.assert_allclose(study.x, x)
    np.testing.assert_allclose(study.y, y)
    assert study.n == 4 and not study.excluded
    slope, icept = np.polyfit(x, y, 1)
    assert study.fit() == pytest.approx((slope, icept))
    # Sweeps alone: the transition is the sweep's dense step
    again = transition_vs_collapse([sw for _, sw in pairs])
    assert again.r == pytest.approx(r, abs=1e-12)


def test_excluded_points_and_too_few():
    pairs = [_sweep(*p) for p in POINTS[:2]] + [_sweep("never", 10, 4, None)]
    with pytest.warns(StatsWarning) as rec:
        study = transition_vs_collapse(pairs)
    msgs = " ".join(str(w.message) for w in rec)
    assert "no collapse" in msgs and "at least 3 points" in msgs
    assert math.isnan(study.r) and math.isnan(study.p) and study.n == 2 and len(study.excluded) == 1
    assert "Left out" in study.summary() and "undefined" in study.summary()
    fig = study.plot()
    assert "undefined" in fig.layout.title.text


def test_constant_input_is_nan_with_warning():
    pairs = [_sweep("a", 10, 5, 3), _sweep("b", 20, 10, 9), _sweep("c", 30, 15, 4)]  # all fractions 0.5
    with pytest.warns(StatsWarning, match="constant"):
        study = transition_vs_collapse(pairs)
    assert math.isnan(study.r)
    with pytest.warns(StatsWarning, match="constant"):
        assert math.isnan(pearson([1, 2, 3], [4, 4, 4])[0])
    with pytest.raises(StatsError, match="same length"):
        pearson([1, 2, 3], [1, 2])


def test_study_roundtrip_plot_and_folders(tmp_path):
    pairs = [_sweep(*p) for p in POINTS]
    study = transition_vs_collapse(pairs)
    back = CollapseStudy.from_dict(study.to_dict())
    assert back.r == pytest.approx(study.r) and back.to_pandas().equals(study.to_pandas())
    save_result(study, tmp_path / "res")
    assert isinstance(load_results(tmp_path / "res")["collapse_study"], CollapseStudy)
    fig = study.plot()
    assert f"{study.r:+.2f}" in fig.layout.title.text and len(fig.data) == 2
    # results folders: one holding a Transition and a Sweep each
    folders = []
    for (tr, sw), (name, *_rest) in zip(pairs, POINTS):
        f = tmp_path / name
        save_result(tr, f)
        save_result(sw, f)
        folders.append(str(f))
    from_folders = transition_vs_collapse(folders)
    assert from_folders.r == pytest.approx(study.r, abs=1e-12)
    with pytest.raises(StatsError, match="not found"):
        transition_vs_collapse([str(tmp_path / "missing")])
    with pytest.raises(StatsError, match="either"):
        transition_vs_collapse(pairs, models=["x"], tasks=["y"])


def test_runs_sweeps_itself_and_resumes(tiny_llama, tiny_gemma, capitals_task, tmp_path):
    cal = ["The committee met on a rainy Tuesday to discuss the budget of the new library.",
           "Water boils at one hundred degrees Celsius at sea level, and freezes at zero."]
    kw = dict(models=[tiny_llama, tiny_gemma], tasks=[capitals_task], criterion="random", out=tmp_path, chunk=2,
              calibration=cal, perplexity_texts=cal, n_boot=100)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", StatsWarning)
        study = transition_vs_collapse(**kw)
    assert len(study.points) == 2
    for q, L in zip(study.points, (6, 4)):
        sw = pl.load_sweep(q.source)
        assert q.n_blocks == L and q.collapse_ratio == sw.collapse_ratio and q.transition == sw.steps[0].transition.layer
        assert sw.collapse_ratio is not None or len(sw.steps) == L  # extended until collapse or the end
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", StatsWarning)
        again = transition_vs_collapse(**kw)  # resumes from the folders
    assert again.to_dict()["points"] == study.to_dict()["points"]


def test_seed_interval():
    v = np.array([[1.0, 2.0], [2.0, 2.0], [4.0, 2.0]])
    mean, lo, hi = seed_interval(v)
    half = sps.t.ppf(0.975, 2) * v[:, 0].std(ddof=1) / np.sqrt(3)
    assert mean[0] == pytest.approx(7 / 3) and lo[0] == pytest.approx(7 / 3 - half) and hi[1] == pytest.approx(2.0)
    _, lo1, _ = seed_interval(v[:1])
    assert np.isnan(lo1).all()


def test_cli_collapse_from_results(tmp_path):
    import json

    from typer.testing import CliRunner

    from phaselens.cli import app

    folders = []
    for p in POINTS:
        tr, sw = _sweep(*p)
        f = tmp_path / p[0]
        save_result(sw, f)
        folders += ["--results", str(f)]
    res = CliRunner().invoke(app, ["collapse", *folders, "--json", "--out", str(tmp_path / "out"), "--html", str(tmp_path / "s.html")])
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)
    r, _ = sps.pearsonr([l / L for _, L, l, _ in POINTS], [s / L for _, L, _, s in POINTS])
    assert d["r"] == pytest.approx(r) and len(d["points"]) == 4
    assert (tmp_path / "s.html").exists() and load_results(tmp_path / "out")
