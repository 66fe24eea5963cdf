"""Figures draw exactly the numbers of the result objects, on the original-block axis, with useful hover text."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import pytest
import torch

import phaselens as pl
from phaselens import plots
from phaselens.trace import DecisionTrace


def synthetic_trace(L: int = 8, N: int = 24, K: int = 4, kept: list[int] | None = None, model: str = "toy",
                    task: str = "toy-task", seed: int = 0) -> DecisionTrace:
    """A trace whose correct option overtakes the others after block ~L/2 (computed with phaselens.metrics)."""
    g = torch.Generator().manual_seed(seed)
    ans = torch.randint(0, K, (N,), generator=g)
    z = torch.randn(L, N, K, generator=g, dtype=torch.float64)
    z[torch.arange(L)[:, None], torch.arange(N)[None], ans[None]] += (torch.arange(L, dtype=torch.float64) - L / 2 + 0.5)[:, None] * 2
    kept = list(range(L)) if kept is None else kept
    z = z[kept]
    return DecisionTrace(model=model, task=task, format="cloze", n_blocks=L, blocks=np.asarray(kept), logits=z.float().numpy(),
                         answers=ans.numpy(), mask=np.ones((N, K), bool), option_chars=np.ones((N, K), int),
                         item_ids=[str(i) for i in range(N)], n_boot=200, seed=seed)


def _lines(fig: go.Figure) -> list:
    return [t for t in fig.data if isinstance(t, go.Scatter) and t.fill is None]


def _bands(fig: go.Figure) -> list:
    return [t for t in fig.data if isinstance(t, go.Scatter) and t.fill == "toself"]


def test_margin_curves_dense_and_pruned_share_the_original_block_axis():
    dense = synthetic_trace().transition(n_boot=200)
    pruned = synthetic_trace(kept=[0, 1, 2, 5, 6, 7], model="toy -3..4")
    fig = plots.margin_curves([dense, pruned])
    (a, b) = _lines(fig)
    np.testing.assert_array_equal(a.x, np.arange(8))
    np.testing.assert_array_equal(b.x, [0, 1, 2, 5, 6, 7])  # no point at the cut blocks
    np.testing.assert_allclose(a.y, dense.trace.margins)
    np.testing.assert_allclose(b.y, pruned.margins)
    # the band of each curve is its bootstrap interval: upper edge forward, lower edge backward
    band = _bands(fig)[1]
    np.testing.assert_allclose(band.y[:6], pruned.margin_ci[1])
    np.testing.assert_allclose(band.y[6:], pruned.margin_ci[0][::-1])
    assert [t.name for t in _lines(fig)] == ["toy", "toy -3..4"]


def test_margin_curve_hover_has_exact_values_counts_and_model_task():
    tr = synthetic_trace(N=24)
    fig = plots.margin_curves([tr])
    hover = _lines(fig)[0].hovertext
    j = 5
    assert f"margin {tr.margins[j]:.4f}" in hover[j]
    assert f"95% CI {tr.margin_ci[0][j]:.4f} to {tr.margin_ci[1][j]:.4f}" in hover[j]
    k = int(round(tr.accuracy[j] * 24))
    assert f"({k}/24 items)" in hover[j] and "toy on toy-task" in hover[j] and "N=24" in hover[j]
    assert "Decision Margin" in fig.layout.title.text and fig.layout.xaxis.title.text == "block (original index)"


def test_phases_are_shaded_at_the_transition():
    t = synthetic_trace(L=10).transition(n_boot=200)
    assert t.layer is not None
    fig = t.plot()
    rects = [s for s in fig.layout.shapes if s.type == "rect"]
    silent, decisive = rects
    assert (silent.x0, silent.x1) == (-0.5, t.layer - 0.5)
    assert (decisive.x0, decisive.x1) == (t.layer - 0.5, 9.5)
    lines = [s for s in fig.layout.shapes if s.type == "line" and s.x0 == s.x1]
    assert [s.x0 for s in lines] == [t.layer - 0.5]
    texts = " ".join(a.text for a in fig.layout.annotations)
    assert "silent phase" in texts and "decisive phase" in texts and f"transition: block {t.layer}" in texts


def test_auto_transition_comes_from_the_dense_result_and_none_shades_nothing():
    dense = synthetic_trace(L=10).transition(n_boot=200)
    pruned = synthetic_trace(L=10, kept=[0, 1, 2, 3, 4, 5, 9]).transition(n_boot=200)
    fig = plots.margin_curves({"pruned": pruned, "dense": dense})
    rect = [s for s in fig.layout.shapes if s.type == "rect"][0]
    assert rect.x1 == dense.layer - 0.5
    assert [t.name for t in _lines(fig)] == ["pruned", "dense"]  # dict keys are the legend
    assert not [s for s in plots.margin_curves([dense], transition=None).layout.shapes if s.type == "rect"]
    with pytest.raises(TypeError, match="transition"):
        plots.margin_curves([dense], transition=3)


def test_accuracy_and_kl_figures_hold_the_trace_values():
    tr = synthetic_trace()
    acc = tr.plot_accuracy()
    np.testing.assert_allclose(_lines(acc)[0].y, tr.accuracy)
    chance = [s for s in acc.layout.shapes if s.type == "line" and s.y0 == s.y1]
    assert chance and chance[0].y0 == pytest.approx(0.25)  # 4 options per item
    kl = tr.plot_kl()
    bias, conv = _lines(kl)
    np.testing.assert_allclose(bias.y, tr.bias_kl)
    np.testing.assert_allclose(conv.y, tr.convergence_kl)
    assert f"{tr.convergence_kl[3]:.5f}" in conv.hovertext[3]
    assert "bias KL" in kl.layout.annotations[0].text and "convergence KL" in kl.layout.annotations[1].text


def test_option_frequency_stacked_bars_and_radar_slider():
    tr = synthetic_trace(L=6, N=20, K=4)
    bars = tr.plot_option_frequency(kind="stacked")
    assert [b.name.split()[0] for b in bars.data] == ["A", "B", "C", "D"]
    of = np.stack([b.y for b in bars.data], axis=1)
    np.testing.assert_allclose(of, tr.option_frequency)
    np.testing.assert_allclose(of.sum(1), 1.0)
    cnt = int(round(tr.option_frequency[2, 1] * 20))
    assert f"({cnt}/20)" in bars.data[1].hovertext[2]
    area = tr.plot_option_frequency(kind="area")
    np.testing.assert_allclose(np.stack([t.y for t in area.data], 1), tr.option_frequency)
    radar = tr.plot_option_frequency(kind="radar")
    polys = [t for t in radar.data if t.name.startswith("block")]
    assert len(polys) == 6 and [t.visible for t in polys] == [False] * 5 + [True]
    np.testing.assert_allclose(polys[2].r[:4], tr.option_frequency[2])
    assert polys[2].r[4] == polys[2].r[0]  # closed polygon
    steps = radar.layout.sliders[0].steps
    assert [s.label for s in steps] == [str(b) for b in tr.blocks]
    assert steps[2].args[0]["visible"] == [False, False, True, False, False, False, True]  # + the answer key
    with pytest.raises(ValueError, match="kind"):
        tr.plot_option_frequency(kind="pie")


def test_cka_heatmaps_share_one_colour_scale():
    rng = np.random.default_rng(0)
    a = pl.CKAResult(rng.uniform(0.2, 1, (5, 5)), range(5), range(5), "m", "m", "decision", 10, source="t")
    b = pl.CKAResult(rng.uniform(0.2, 1, (5, 3)), range(5), [0, 1, 4], "m", "m -2..3", "decision", 10, source="t")
    fig = plots.cka_heatmaps({"dense": a, "pruned": b})
    h1, h2 = fig.data
    assert h1.coloraxis == h2.coloraxis == "coloraxis"
    assert (fig.layout.coloraxis.cmin, fig.layout.coloraxis.cmax) == (0.0, 1.0)
    np.testing.assert_allclose(h2.z, b.matrix)
    assert list(h2.x) == ["0", "1", "4"]
    assert f"CKA {b.matrix[3, 2]:.4f}" in h2.hovertext[3][2] and "m -2..3 block 4" in h2.hovertext[3][2]
    assert [x.text for x in fig.layout.annotations[:2]] == ["dense", "pruned"]
    neg = pl.CKAResult(np.array([[1.0, -0.2], [-0.2, 1.0]]), [0, 1], [0, 1], "m", "m", "all", 8, debiased=True)
    assert plots.cka_heatmaps([a, neg]).layout.coloraxis.cmin == pytest.approx(-0.2)


def test_sweep_steps_become_curves():
    from phaselens.pruning.iterative import Sweep, SweepStep

    L = 8
    steps = []
    for k, kept in enumerate([list(range(L)), [0, 1, 2, 3, 5, 6, 7], [0, 1, 3, 5, 6, 7]]):
        t = synthetic_trace(L=L, kept=kept)
        tr = t.transition(n_boot=100)
        removed = [b for b in range(L) if b not in kept]
        steps.append(SweepStep(k, removed, len(removed) / L, tr, 10.0, {}, None))
    sweep = Sweep("toy", "toy-task", "bi", None, L, 0.25, steps)
    fig = plots.margin_curves(sweep)
    assert [t.name for t in _lines(fig)] == ["0 cut (0% pruned)", "1 cut (12% pruned)", "2 cut (25% pruned)"]
    acc = plots.sweep_accuracy(sweep)
    np.testing.assert_allclose(acc.data[0].y, [s.accuracy for s in steps])
    np.testing.assert_allclose(acc.data[0].x, [0, 1 / 8, 2 / 8])


def test_real_traces_render_to_html(tiny_llama, capitals_task):
    dense = pl.transition_point(tiny_llama, capitals_task, n_boot=100)
    pruned = pl.decision_trace(pl.prune(tiny_llama, [2, 3]), capitals_task, n_boot=100)
    fig = plots.margin_curves([dense, pruned])
    np.testing.assert_array_equal(_lines(fig)[1].x, [0, 1, 4, 5])
    for f in (fig, dense.plot_accuracy(), dense.plot_kl(), dense.plot_option_frequency(kind="radar")):
        html = f.to_html(include_plotlyjs=False, full_html=False)
        assert "Plotly.newPlot" in html


def test_bad_inputs_are_clear_errors():
    with pytest.raises(TypeError, match="cannot draw a str"):
        plots.margin_curves(["not a trace"])
    with pytest.raises(ValueError, match="names"):
        plots.margin_curves([synthetic_trace()], names=["a", "b"])
    with pytest.raises(ValueError, match="one result"):
        plots.option_frequency([synthetic_trace(), synthetic_trace()])
