"""The logit-lens picture (``pl.lens_heatmap``) against plain transformers: ``output_hidden_states`` through the
model's own final norm and ``lm_head``, and (last block) the model's own output logits."""

from __future__ import annotations

import json

import numpy as np
import plotly.graph_objects as go
import pytest
import torch
from typer.testing import CliRunner

import phaselens as pl
from phaselens.cli import app

PROMPT = "The capital of France is Paris, and the capital of Spain is"


def _reference(model: pl.Model, prompt: str, k: int, lens: pl.Lens | None = None):
    """``(top ids [L, T, k], top probs [L, T, k], own-logit probs [T, V])`` with plain transformers only: every block's
    output from ``output_hidden_states`` (block ``b``: entry ``b + 1``; the last entry is the final block's output
    already normed in some versions, so the last row is the model's own logits), the lens's ``h @ W + b`` by hand,
    then ``hf.model.norm`` and ``hf.lm_head`` (and Gemma's soft-cap)."""
    hf = model.hf
    ids = model.tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        out = hf(**ids, output_hidden_states=True)
        L = hf.config.num_hidden_layers
        cap = getattr(hf.config, "final_logit_softcapping", None)
        rows = []
        for b in range(L - 1):
            h = out.hidden_states[b + 1][0].float()
            if lens is not None and b in lens.params:
                h = h @ lens.params[b]["W"] + lens.params[b]["b"]
            z = hf.lm_head(hf.model.norm(h)).float()
            if cap:
                z = torch.tanh(z / cap) * cap
            rows.append(torch.softmax(z, -1))
        own = torch.softmax(out.logits[0].float(), -1)
        rows.append(own)
        p = torch.stack(rows)
    v, i = torch.topk(p, k, -1)
    return i.numpy(), v.numpy(), own.numpy()


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_gemma"])
def test_top_tokens_equal_plain_transformers(name, request):
    model = request.getfixturevalue(name)
    hm = pl.lens_heatmap(model, PROMPT, lens="logit", top_k=5)
    ids, probs, own = _reference(model, PROMPT, 5)
    T = len(model.tokenizer(PROMPT)["input_ids"])
    assert hm.top_ids.shape == (model.n_blocks, T, 5) and hm.blocks == list(range(model.n_blocks))
    np.testing.assert_array_equal(hm.top_ids, ids)
    np.testing.assert_allclose(hm.top_probs, probs, atol=2e-5)
    # the last block is the model's own next-token distribution
    own_top = np.argsort(-own, -1)[:, :5]
    np.testing.assert_array_equal(hm.top_ids[-1], own_top)
    np.testing.assert_allclose(hm.top_probs[-1], np.take_along_axis(own, own_top, -1), atol=2e-5)
    # the token texts are the tokenizer's own
    assert hm.tokens == [model.tokenizer.decode([i]) for i in model.tokenizer(PROMPT)["input_ids"]]
    assert hm.top_tokens[2, 3, 0] == model.tokenizer.decode([int(ids[2, 3, 0])])


def test_a_fitted_lens_is_applied_before_the_norm(tiny_llama):
    lens = pl.fit_lens(tiny_llama, "linear", pl.load_calibration()[:6])
    hm = pl.lens_heatmap(tiny_llama, PROMPT, lens=lens, top_k=3)
    ids, probs, _ = _reference(tiny_llama, PROMPT, 3, lens)
    assert hm.lens == "linear"
    np.testing.assert_array_equal(hm.top_ids, ids)
    np.testing.assert_allclose(hm.top_probs, probs, atol=2e-5)


def test_pruned_view_rows_are_its_surviving_blocks(tiny_llama):
    view = pl.prune(tiny_llama, [2, 3])
    hm = pl.lens_heatmap(view, PROMPT, top_k=2)
    assert hm.blocks == [0, 1, 4, 5]
    full = pl.lens_heatmap(tiny_llama, PROMPT, top_k=2)  # blocks 0, 1 come before the cut: the same cells
    np.testing.assert_array_equal(hm.top_ids[:2], full.top_ids[:2])
    assert not np.array_equal(hm.top_ids[-1], full.top_ids[-1])


def test_result_protocol_figure_and_save(tiny_llama, tmp_path):
    hm = pl.lens_heatmap(tiny_llama, PROMPT, top_k=5)
    df = hm.to_pandas()
    R, T = hm.n_read, hm.n_positions
    assert len(df) == R * T * 5
    cell = df[(df.block == 4) & (df.position == 2)].sort_values("rank")
    np.testing.assert_allclose(cell.prob.to_numpy(), hm.top_probs[4, 2], rtol=1e-6)
    assert "predicts" in hm.summary() and tiny_llama.name in hm.summary()
    fig = hm.plot()
    (heat,) = [t for t in fig.data if isinstance(t, go.Heatmap)]
    np.testing.assert_allclose(np.asarray(heat.z, dtype=float), hm.top_probs[..., 0], rtol=1e-6)
    hover = heat.hovertext[4][2]
    for j in range(5):
        assert f"{hm.top_probs[4, 2, j]:.3f}" in hover  # the hover lists the top 5 with their probabilities
    back = pl.load_result(hm.save(tmp_path, "heat"))
    np.testing.assert_array_equal(back.top_ids, hm.top_ids)
    assert back.vocab == hm.vocab and back.tokens == hm.tokens
    page = pl.build_report(tmp_path, tmp_path / "r.html").read_text()
    assert "LensHeatmap" in page and page.count('<div id="fig-') == 1


@pytest.mark.bad_input
def test_bad_heatmap_input_is_refused_before_any_pass(tiny_llama, count_forwards):
    with count_forwards(tiny_llama) as c:
        with pytest.raises(pl.errors.LensError, match="prompt"):
            pl.lens_heatmap(tiny_llama, "   ")
        with pytest.raises(pl.errors.LensError, match="top_k"):
            pl.lens_heatmap(tiny_llama, PROMPT, top_k=0)
        with pytest.raises(pl.errors.LensError, match="tunde"):
            pl.lens_heatmap(tiny_llama, PROMPT, lens="tunde")
    assert c.n == 0


def test_cli_heatmap(tiny_llama_dir, tmp_path):
    runner = CliRunner()
    html, out = tmp_path / "heat.html", tmp_path / "res"
    res = runner.invoke(app, ["heatmap", "-m", tiny_llama_dir, "--prompt", PROMPT, "--html", str(html), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert max(len(x) for x in res.stdout.splitlines()) <= 80
    assert html.stat().st_size > 100_000 and "heatmap" in html.read_text()[-200_000:].lower()
    (saved,) = pl.load_results(out).values()
    assert isinstance(saved, pl.LensHeatmap)
    res = runner.invoke(app, ["heatmap", "-m", tiny_llama_dir, "--prompt", PROMPT, "--json", "--top-k", "2"])
    assert res.exit_code == 0, res.output
    assert np.asarray(json.loads(res.stdout)["top_ids"]).shape[2] == 2


@pytest.mark.bad_input
@pytest.mark.parametrize("args,flag", [(["--lens", "tunde"], "--lens"), (["--prompt", " "], "--prompt"),
                                       (["--top-k", "0"], "--top-k")])
def test_cli_heatmap_bad_options(tiny_llama_dir, args, flag):
    res = CliRunner().invoke(app, ["heatmap", "-m", tiny_llama_dir, "--prompt", PROMPT, *args])
    assert res.exit_code == 2 and flag in res.output, res.output


