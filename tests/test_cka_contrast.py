"""cka_contrast: decision-token against hidden-state CKA on the same items, checked against Hugging Face hidden states
(the dense model and a pruned deep copy) and an unbiased-HSIC formula and jackknife written out in numpy."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from scipy import stats

import phaselens as pl
from phaselens.errors import CKAError
from phaselens.view import ModelView


def _hsic_u(K: np.ndarray, L: np.ndarray) -> float:
    """Song et al.'s unbiased HSIC, term by term (Kornblith et al., eq. 5), times n (n - 3)."""
    n = K.shape[0]
    K, L = K.copy(), L.copy()
    np.fill_diagonal(K, 0)
    np.fill_diagonal(L, 0)
    one = np.ones(n)
    return float(np.trace(K @ L) + (one @ K @ one) * (one @ L @ one) / ((n - 1) * (n - 2))
                 - 2 / (n - 2) * one @ K @ L @ one)


def _cka(X: np.ndarray, Y: np.ndarray) -> float:
    K, L = X @ X.T, Y @ Y.T
    return _hsic_u(K, L) / np.sqrt(_hsic_u(K, K) * _hsic_u(L, L))


def _states(hf, prompts):
    """Per prompt, ``[n_layers - 1, len, d]`` block outputs (HF normalises the last one: left out)."""
    with torch.no_grad():
        return [torch.stack(hf(input_ids=torch.tensor([p]), output_hidden_states=True, use_cache=False).hidden_states[1:-1])[:, 0]
                .double().numpy() for p in prompts]


def test_against_hf_hidden_states_and_a_numpy_jackknife(tiny_llama, capitals_task):
    removed = (1, 2)
    view = ModelView(tiny_llama, removed=removed)
    r = pl.cka_contrast(tiny_llama, view, capitals_task, n_tokens=100_000, groups=6, seed=3)
    assert r.blocks == [3, 4, 5] and r.removed == [1, 2]
    prompts = [tiny_llama.tokenizer(capitals_task.prompt(i))["input_ids"] for i in range(len(capitals_task.items))]
    assert r.n_items == len(prompts) and r.n_tokens == sum(len(p) - 1 for p in prompts)  # every token but the first
    m = copy.deepcopy(tiny_llama.hf)
    m.model.layers = torch.nn.ModuleList([b for i, b in enumerate(m.model.layers) if i not in removed])
    m.config.num_hidden_layers = len(m.model.layers)
    dense, pruned = _states(tiny_llama.hf, prompts), _states(m, prompts)
    g = np.asarray(r.item_group)
    assert sorted(np.bincount(g).tolist()) == [len(prompts) // 6] * 6 or len(set(g)) == 6
    for m_, (blk, row_b) in enumerate([(3, 1), (4, 2)]):  # dense block 3 is the pruned model's block 1, ...
        dec_a = np.stack([s[blk, -1] for s in dense])
        dec_b = np.stack([s[row_b, -1] for s in pruned])
        ctl_a = np.stack([s[blk, -2] for s in dense])
        ctl_b = np.stack([s[row_b, -2] for s in pruned])
        hid_a = np.concatenate([s[blk, 1:] for s in dense])
        hid_b = np.concatenate([s[row_b, 1:] for s in pruned])
        tok_item = np.concatenate([np.full(len(p) - 1, i) for i, p in enumerate(prompts)])
        assert r.decision[m_] == pytest.approx(_cka(dec_a, dec_b), abs=1e-6)
        assert r.hidden[m_] == pytest.approx(_cka(hid_a, hid_b), abs=1e-6)
        assert r.control[m_] == pytest.approx(_cka(ctl_a, ctl_b), abs=1e-6)
        for k in range(6):
            keep_i, keep_t = g != k, g[tok_item] != k
            assert r.jackknife[k, m_, 0] == pytest.approx(_cka(dec_a[keep_i], dec_b[keep_i]), abs=1e-6)
            assert r.jackknife[k, m_, 1] == pytest.approx(_cka(hid_a[keep_t], hid_b[keep_t]), abs=1e-6)
            assert r.jackknife[k, m_, 2] == pytest.approx(_cka(ctl_a[keep_i], ctl_b[keep_i]), abs=1e-6)
    # the last block (HF normalises it) against pl.cka's accumulator at decision positions
    ref = pl.cka(tiny_llama, view, capitals_task, debiased=True)
    assert r.decision[2] == pytest.approx(ref.value(5, 5), abs=1e-6)
    e, c = r.effects()
    assert c.estimate == pytest.approx(float(np.mean(r.control - r.decision))) and c.predicted == "positive"
    creps = (r.jackknife[:, :, 2] - r.jackknife[:, :, 0]).mean(1)
    assert c.se == pytest.approx(np.sqrt(5 / 6 * ((creps - creps.mean()) ** 2).sum()))
    reps = (r.jackknife[:, :, 1] - r.jackknife[:, :, 0]).mean(1)
    se = np.sqrt(5 / 6 * ((reps - reps.mean()) ** 2).sum())
    est = float(np.mean(r.hidden - r.decision))
    q = stats.t.ppf(0.975, 5)
    assert e.estimate == pytest.approx(est) and e.se == pytest.approx(se)
    assert (e.lo, e.hi) == pytest.approx((est - q * se, est + q * se))
    assert e.p == pytest.approx(2 * stats.t.sf(abs(est) / se, 5))
    assert e.interval(0.99) == pytest.approx((est - stats.t.ppf(0.995, 5) * se, est + stats.t.ppf(0.995, 5) * se))
    assert e.predicted == "positive" and e.n == {"items": r.n_items, "tokens": r.n_tokens}


def test_result_roundtrip_table_plot_and_summary(tiny_llama, capitals_task, tmp_path):
    r = pl.cka_contrast(tiny_llama, pl.prune(tiny_llama, [2]), capitals_task, n_tokens=20, groups=5)
    assert r.n_tokens == 20 and r.blocks == [3, 4, 5]
    pl.save_result(r, tmp_path, "c")
    back = pl.load_result(tmp_path / "c.json")
    np.testing.assert_allclose(back.jackknife, r.jackknife)
    assert back.item_group == r.item_group and back.effects()[0].estimate == pytest.approx(r.effects()[0].estimate)
    df = r.to_pandas()
    assert list(df.columns) == ["block", "decision", "hidden", "control", "difference"] and len(df) == 3
    assert len(r.plot().data) == 3 and "hidden − decision" in r.summary() and "control − decision" in r.summary()
    r2 = pl.cka_contrast(tiny_llama, pl.prune(tiny_llama, [2]), capitals_task, n_tokens=20, groups=5, seed=1)
    assert r2.item_group != r.item_group


def test_bad_arguments_fail_before_any_forward(tiny_llama, capitals_task):
    view = pl.prune(tiny_llama, [2])
    with pytest.raises(CKAError, match="groups"):
        pl.cka_contrast(tiny_llama, view, capitals_task, groups=3)
    with pytest.raises(CKAError, match="more than the"):
        pl.cka_contrast(tiny_llama, view, capitals_task, groups=10_000)
    with pytest.raises(CKAError, match="pruned view"):
        pl.cka_contrast(tiny_llama, tiny_llama, capitals_task)
    with pytest.raises(CKAError, match="no block after its first cut"):
        pl.cka_contrast(tiny_llama, pl.prune(tiny_llama, [5]), capitals_task)
    with pytest.raises(CKAError, match="first_token"):
        pl.cka_contrast(tiny_llama, view, capitals_task, first_token="no")
