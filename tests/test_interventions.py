"""Noise injection and ablation against hand-run Hugging Face layers, pruning, and the clean trace."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import phaselens as pl
from phaselens import metrics, results
from phaselens.ablation import AblationResult, ablate
from phaselens.errors import InterventionError
from phaselens.noise import NoiseResult, add_noise, inject_noise, noise_draw
from phaselens.view import EditedView
from phaselens.runner import Plan

torch.set_num_threads(1)


# ----------------------------------------------------------------------------- independent forward
def _hand_logits(model, task, edit_block=None, edit=None):
    """[N, K] final option logits, running the HF embedding, layers, norm and lm_head by hand, one
    unpadded prompt at a time. ``edit(i, b, h_in, h_out) -> h_out`` changes block ``edit_block``'s output."""
    hf = model.hf
    inner = hf.model
    from phaselens.encoding import encode_task

    enc = encode_task(task, model.tokenizer)
    out = torch.full((enc.n_items, enc.n_options), float("-inf"))
    with torch.no_grad():
        for i, p in enumerate(enc.prompts):
            ids = torch.tensor([p])
            h = inner.embed_tokens(ids)
            pos = torch.arange(len(p))[None]
            pe = inner.rotary_emb(h, position_ids=pos)
            for b, layer in enumerate(inner.layers):
                h_in = h
                h = layer(h, attention_mask=None, position_embeddings=pe, position_ids=pos)
                h = h[0] if isinstance(h, tuple) else h
                if edit is not None and b in (edit_block if isinstance(edit_block, tuple) else (edit_block,)):
                    h = edit(i, b, h_in, h)
            logits = hf.lm_head(inner.norm(h))[0, -1]
            k = int(enc.option_mask[i].sum())
            out[i, :k] = logits[enc.option_ids[i, :k]]
    return out, enc.answers


def _m(z, answers):
    from phaselens.metrics import item_margins

    return item_margins(z[None], answers)[:, 0]


def test_hand_forward_matches_model(tiny_llama, capitals_task):
    """The hand forward is a faithful reference: it reproduces the model's own final margins."""
    z, ans = _hand_logits(tiny_llama, capitals_task)
    tr = pl.decision_trace(tiny_llama, capitals_task)
    np.testing.assert_allclose(_m(z, ans), tr.item_margins[:, -1], atol=1e-4)


# ----------------------------------------------------------------------------- noise
def test_noise_matches_hand_computation(tiny_llama, capitals_task):
    b, eps, seed = 2, 0.7, 11
    r = inject_noise(tiny_llama, capitals_task, blocks=[b], eps=eps, seeds=[seed], batch_size=4, n_boot=100)
    d = tiny_llama.d_model

    def edit(i, blk, h_in, h):
        sigma = h.std(-1, keepdim=True, correction=0)
        return h + eps * sigma * noise_draw(seed, blk, i, h.shape[1], d)[None]

    z, ans = _hand_logits(tiny_llama, capitals_task, b, edit)
    np.testing.assert_allclose(r.item_margins[0, 0, 0], _m(z, ans), atol=1e-4)
    assert not np.allclose(r.item_margins[0, 0, 0], r.clean_margins, atol=1e-3)  # the noise did something
    np.testing.assert_array_equal(r.item_correct[0, 0, 0], (z.argmax(-1) == ans).numpy())


def test_noise_eps_zero_is_the_clean_trace(tiny_llama, capitals_task):
    tr = pl.transition_point(tiny_llama, capitals_task, batch_size=4, n_boot=100)
    r = inject_noise(tiny_llama, capitals_task, eps=[0.0, 0.5], seeds=2, batch_size=4, transition=tr, n_boot=100)
    assert r.item_margins.shape == (6, 2, 2, len(capitals_task.items))
    clean = tr.trace.item_margins[:, -1]
    # the same forward as the lens; only the readout's einsum shape differs ([B, d] vs [L, B, d]): float32 rounding
    np.testing.assert_allclose(r.clean_margins, clean, rtol=0, atol=1e-5)
    for b in range(6):
        for s in range(2):
            np.testing.assert_array_equal(r.item_margins[b, 0, s], r.clean_margins)  # bitwise: h + 0 * noise = h
    assert not np.allclose(r.item_margins[:, 1], clean[None, None])


def test_noise_seeded_and_batch_independent(tiny_llama, capitals_task):
    kw = dict(blocks=[1, 4], eps=[0.3, 1.0], seeds=[0, 1, 2], n_boot=100)
    a = inject_noise(tiny_llama, capitals_task, batch_size=4, **kw)
    b = inject_noise(tiny_llama, capitals_task, batch_size=4, **kw)
    np.testing.assert_array_equal(a.item_margins, b.item_margins)
    c = inject_noise(tiny_llama, capitals_task, batch_size=1, reuse_prefix=False, **kw)  # other batches, no replay
    np.testing.assert_allclose(a.item_margins, c.item_margins, atol=1e-4)
    assert not np.allclose(a.item_margins[:, :, 0], a.item_margins[:, :, 1])  # seeds differ
    # the draw depends on (seed, block, item) only
    assert torch.equal(noise_draw(3, 2, 5, 7, 8), noise_draw(3, 2, 5, 7, 8))
    assert not torch.equal(noise_draw(3, 2, 5, 7, 8), noise_draw(3, 1, 5, 7, 8))
    assert not torch.equal(noise_draw(3, 2, 5, 7, 8), noise_draw(3, 2, 4, 7, 8))


def test_add_noise_formula():
    """h + eps * sigma(h) * n with sigma the population std over channels, per token, by a hand loop in numpy."""
    h = torch.randn(2, 3, 10)
    n = torch.randn(2, 3, 10)
    got = add_noise(h, 0.25, n).numpy()
    H, N = h.double().numpy(), n.double().numpy()
    for b in range(2):
        for t in range(3):
            x = H[b, t]
            mu = sum(x) / len(x)
            sigma = (sum((v - mu) ** 2 for v in x) / len(x)) ** 0.5
            np.testing.assert_allclose(got[b, t], x + 0.25 * sigma * N[b, t], rtol=1e-5, atol=1e-6)


def test_noise_on_pruned_view_and_result_roundtrip(tiny_llama, capitals_task, tmp_path):
    view = pl.prune(tiny_llama, [1])
    r = inject_noise(view, capitals_task, eps=0.5, seeds=2, batch_size=4, n_boot=100)
    assert r.blocks == [0, 2, 3, 4, 5]
    with pytest.raises(InterventionError, match="pruned"):
        inject_noise(view, capitals_task, blocks=[1], eps=0.5)
    df = r.to_pandas()
    assert len(df) == 5 and {"margin_seed_lo", "margin_item_hi", "accuracy"} <= set(df.columns)
    assert df.margin.iloc[0] == pytest.approx(r.item_margins[0, 0].mean())
    back = NoiseResult.from_dict(r.to_dict())
    np.testing.assert_array_equal(back.item_margins, r.item_margins)
    path = results.save_result(r, tmp_path)
    loaded = results.load_results(tmp_path)
    assert isinstance(next(iter(loaded.values())), NoiseResult)
    fig = r.plot()
    assert len(fig.data) >= 2
    s = r.sensitivity()
    assert set(s.eps) == {0.5}
    assert path.exists()


def test_noise_sensitivity_by_hand():
    """The silent/decisive summary is the item mean of per-phase averaged drops."""
    rng = np.random.default_rng(0)
    m = rng.normal(size=(4, 1, 3, 20))
    clean = rng.normal(size=20) + 2
    r = NoiseResult("m", "t", 4, [0, 1, 2, 3], [0.5], [0, 1, 2], m, (m > 0).astype(float), clean, np.ones(20), 2, n_boot=200)
    s = r.sensitivity().set_index("phase")
    drop = clean[None] - m[:, 0].mean(1)  # [4, N]
    assert s.loc["silent", "margin_drop"] == pytest.approx(drop[:2].mean())
    assert s.loc["decisive", "margin_drop"] == pytest.approx(drop[2:].mean())
    assert s.loc["silent - decisive", "margin_drop"] == pytest.approx(drop[:2].mean() - drop[2:].mean())
    assert "silent" in r.summary() and "decisive" in r.summary()
    # the seed interval is the Student-t interval of the per-seed means
    from scipy import stats

    per_seed = m[1, 0].mean(1)
    half = stats.t.ppf(0.975, 2) * per_seed.std(ddof=1) / np.sqrt(3)
    assert r.seed_ci()[0, 1, 0] == pytest.approx(per_seed.mean() - half)


def test_noise_input_errors(tiny_llama, capitals_task):
    with pytest.raises(InterventionError, match="eps"):
        inject_noise(tiny_llama, capitals_task, eps=-1.0)
    with pytest.raises(InterventionError, match="seeds"):
        inject_noise(tiny_llama, capitals_task, eps=0.1, seeds=0)
    with pytest.raises(InterventionError, match="not a block"):
        inject_noise(tiny_llama, capitals_task, blocks=[6], eps=0.1)
    cont = pl.load_task([{"question": "The capital of France is", "options": ["Paris", "London"], "answer": 0}] * 2,
                        format="continuation")
    with pytest.raises(InterventionError, match="continuation"):
        inject_noise(tiny_llama, cont, eps=0.1, transition=pl.transition_point(tiny_llama, capitals_task, n_boot=100))


# ----------------------------------------------------------------------------- ablation
def test_skip_ablation_equals_pruning(tiny_llama, capitals_task):
    r = ablate(tiny_llama, capitals_task, mode="skip", pairs=[(1, 3)], batch_size=4, n_boot=100)
    assert r.singles == list(range(6))
    for i, b in enumerate(r.singles):
        tr = pl.decision_trace(pl.prune(tiny_llama, [b]), capitals_task, batch_size=4, n_boot=100)
        np.testing.assert_allclose(r.single_margins[i], tr.item_margins[:, -1], atol=1e-5)
    tr = pl.decision_trace(pl.prune(tiny_llama, [1, 3]), capitals_task, batch_size=4, n_boot=100)
    np.testing.assert_allclose(r.pair_margins[0], tr.item_margins[:, -1], atol=1e-5)
    dense = pl.decision_trace(tiny_llama, capitals_task, batch_size=4, n_boot=100).item_margins[:, -1]
    assert r.single_drop[2] == pytest.approx((dense - r.single_margins[2]).mean(), abs=1e-6)


def test_zero_ablation_by_hand_and_equals_skip(tiny_llama, capitals_task):
    r = ablate(tiny_llama, capitals_task, blocks=[2, 4], mode="zero", batch_size=4, n_boot=100)
    assert r.pairs == [(2, 4)]
    z, ans = _hand_logits(tiny_llama, capitals_task, (2, 4), lambda i, b, h_in, h: h_in)  # no write into the stream
    np.testing.assert_allclose(r.pair_margins[0], _m(z, ans), atol=1e-4)
    s = ablate(tiny_llama, capitals_task, blocks=[2, 4], mode="skip", batch_size=4, n_boot=100)
    np.testing.assert_allclose(r.single_margins, s.single_margins, atol=1e-5)
    np.testing.assert_allclose(r.pair_margins, s.pair_margins, atol=1e-5)


def test_zero_ablation_gemma_branches(tiny_gemma, capitals_task):
    """Gemma: the attention write is post_attention_layernorm's output; zeroing both writes = skipping."""
    r = ablate(tiny_gemma, capitals_task, blocks=[1], mode="zero", batch_size=4, n_boot=100)
    s = ablate(tiny_gemma, capitals_task, blocks=[1], mode="skip", batch_size=4, n_boot=100)
    np.testing.assert_allclose(r.single_margins, s.single_margins, atol=1e-5)
    assert not np.allclose(r.single_margins[0], r.clean_margins, atol=1e-3)


def test_mean_ablation_by_hand(tiny_llama, capitals_task):
    b = 3
    from phaselens.encoding import encode_task

    enc = encode_task(capitals_task, tiny_llama.tokenizer)
    # the mean update of block b over every prompt token, by hand
    ups = []
    with torch.no_grad():
        for p in enc.prompts:
            hs = tiny_llama.hf(input_ids=torch.tensor([p]), output_hidden_states=True, use_cache=False).hidden_states
            ups.append((hs[b + 1] - hs[b])[0].double())  # hs[l + 1] = block l's output (l < L - 1)
    mu = torch.cat(ups).mean(0)
    r = ablate(tiny_llama, capitals_task, blocks=[b], mode="mean", batch_size=4, n_boot=100)
    z, ans = _hand_logits(tiny_llama, capitals_task, b, lambda i, blk, h_in, h: h_in + mu.float())
    np.testing.assert_allclose(r.single_margins[0], _m(z, ans), atol=1e-4)
    skip = ablate(tiny_llama, capitals_task, blocks=[b], mode="skip", batch_size=4, n_boot=100)
    assert not np.allclose(r.single_margins, skip.single_margins, atol=1e-3)


def test_ablation_ci_pairs_and_roundtrip(tiny_llama, capitals_task, tmp_path):
    from types import SimpleNamespace

    r = ablate(tiny_llama, capitals_task, mode="skip", window=1, transition=SimpleNamespace(layer=3), batch_size=4, n_boot=300)
    assert r.pairs == [(2, 3), (2, 4), (3, 4)] and r.transition == 3  # every pair within 1 block of the transition
    with pytest.warns(UserWarning, match="no transition"):
        none = ablate(tiny_llama, capitals_task, blocks=None, pairs=None, transition=SimpleNamespace(layer=None), n_boot=100)
    assert none.pairs == []
    drops = r.clean_margins[None] - r.single_margins
    idx = metrics.bootstrap_indices(r.n_items, 300, 0)
    want = np.quantile(drops.T[idx].mean(1), [0.025, 0.975], axis=0)
    np.testing.assert_allclose(r.single_ci(), want)
    back = AblationResult.from_dict(r.to_dict())
    np.testing.assert_array_equal(back.single_margins, r.single_margins)
    assert back.pairs == r.pairs
    df = r.to_pandas()
    assert (df.kind == "single").sum() == 6
    fig = r.plot()
    assert fig.data[0].type == "bar"
    bl, mat = AblationResult("m", "t", "skip", 4, [1, 2], [(1, 2)], [[1.0, 1.0], [0.0, 2.0]], [[1, 1], [0, 1]],
                             [[-1.0, 0.0]], [[0, 0]], [2.0, 2.0], [1, 1], 2).pair_matrix()
    assert bl == [1, 2]
    np.testing.assert_allclose(mat, [[1.0, 2.5], [2.5, 1.0]])


def test_ablation_errors(tiny_llama, capitals_task):
    with pytest.raises(InterventionError, match="mode"):
        ablate(tiny_llama, capitals_task, mode="resample")
    with pytest.raises(InterventionError, match="two different"):
        ablate(tiny_llama, capitals_task, blocks=[1], pairs=[(1, 1)])


def test_edited_view_traces_the_intervention(tiny_llama, capitals_task):
    """EditedView carries a plan through every phaselens function (here decision_trace)."""
    from phaselens.runner import identity

    v = EditedView.of(tiny_llama, Plan(replace={2: identity}))
    a = pl.decision_trace(v, capitals_task, n_boot=100)
    b = pl.decision_trace(pl.prune(tiny_llama, [2]), capitals_task, n_boot=100)
    np.testing.assert_allclose(a.item_margins[:, -1], b.item_margins[:, -1], atol=1e-6)
    assert v.signature() != pl.ModelView(tiny_llama).signature()


# ----------------------------------------------------------------------------- embedded model (small)
def test_smol_noise_and_ablation_smoke(smol, capitals_task):
    task = pl.load_task(capitals_task, limit=4)
    r = inject_noise(smol, task, blocks=[0, 29], eps=[0.0, 1.0], seeds=2, n_boot=100)
    np.testing.assert_array_equal(r.item_margins[:, 0, 0], np.broadcast_to(r.clean_margins, (2, 4)))
    a = ablate(smol, task, blocks=[29], mode="skip", n_boot=100)
    tr = pl.decision_trace(pl.prune(smol, [29]), task, n_boot=100)
    np.testing.assert_allclose(a.single_margins[0], tr.item_margins[:, -1], atol=1e-3)


# ----------------------------------------------------------------------------- command line
def test_cli_noise_ablate_cka(smol, tmp_path):
    import json

    from typer.testing import CliRunner

    from phaselens.cli import app

    run = CliRunner()
    res = run.invoke(app, ["noise", "-m", "smollm2-135m", "-t", "capitals", "--blocks", "0,29", "--eps", "0,0.5",
                           "--seeds", "2", "--limit", "4", "--json", "--out", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)
    assert d["blocks"] == [0, 29] and d["eps"] == [0.0, 0.5] and np.asarray(d["item_margins"]).shape == (2, 2, 2, 4)
    np.testing.assert_array_equal(np.asarray(d["item_margins"])[:, 0, 0], np.broadcast_to(d["clean_margins"], (2, 4)))
    res = run.invoke(app, ["ablate", "-m", "smollm2-135m", "-t", "capitals", "--blocks", "28-29", "--mode", "mean",
                           "--limit", "4", "--out", str(tmp_path / "r"), "--html", str(tmp_path / "a.html")])
    assert res.exit_code == 0, res.output
    assert "28,29" in res.stdout and (tmp_path / "a.html").stat().st_size > 100_000
    res = run.invoke(app, ["cka", "--model-a", "smollm2-135m", "--prune-b", "10,11,12", "-t", "capitals", "--limit", "6",
                           "--json", "--out", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    c = json.loads(res.stdout)
    assert len(c["blocks_b"]) == 27 and 11 not in c["blocks_b"] and c["positions"] == "decision"
    n = {}
    for flag, first in (([], False), (["--first-token"], True)):
        res = run.invoke(app, ["cka", "--model-a", "smollm2-135m", "--prune-b", "10,11,12", "-t", "capitals",
                               "--limit", "6", "--positions", "all", "--n-samples", "4096", "--json", *flag])
        assert res.exit_code == 0, res.output
        c = json.loads(res.stdout)
        assert c["positions"] == "all" and c["first_token"] is first
        n[first] = c["n_samples"]
    assert n[True] == n[False] + 6  # 6 prompts: one first token each
    res = run.invoke(app, ["cka-contrast", "-m", "smollm2-135m", "--prune-b", "10,11,12", "-t", "capitals", "--limit",
                           "6", "--n-tokens", "20", "--groups", "5", "--json", "--out", str(tmp_path / "c")])
    assert res.exit_code == 0, res.output
    c = json.loads(res.stdout)
    assert c["removed"] == [10, 11, 12] and c["blocks"][0] == 13 and c["n_items"] == 6 and c["n_tokens"] == 20
    got = results.load_results(tmp_path / "c")
    (r,) = got.values()
    want = pl.cka_contrast(smol, pl.prune(smol, [10, 11, 12]), pl.load_task("capitals", limit=6, seed=0), n_tokens=20,
                           groups=5)
    np.testing.assert_allclose(r.jackknife, want.jackknife)
    bad = run.invoke(app, ["cka-contrast", "--criterion-b", "decisive", "-t", "capitals"])
    assert bad.exit_code == 2 and "--criterion-b" in bad.output
    bad = run.invoke(app, ["cka-contrast", "--groups", "2", "-t", "capitals"])
    assert bad.exit_code == 2 and "--groups" in bad.output
    kinds = {type(v).__name__ for v in results.load_results(tmp_path / "r").values()}
    assert kinds == {"NoiseResult", "AblationResult", "CKAResult"}
    bad = run.invoke(app, ["ablate", "-m", "smollm2-135m", "--mode", "resample", "--limit", "4"])
    assert bad.exit_code == 2 and "mode" in bad.output
    bad = run.invoke(app, ["cka", "--prune-b", "1", "--criterion-b", "bi", "-n", "2"])
    assert bad.exit_code == 2 and "either" in bad.output
