"""Linear CKA against direct numpy evaluations, reference values, and independently captured hidden states."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch

import phaselens as pl
from phaselens.readout import option_logits
from phaselens.cka import CKAAccumulator, linear_cka
from phaselens.errors import CKAError
from phaselens.similarity import CKAResult, cka
from phaselens.view import ModelView

torch.set_num_threads(1)


# ----------------------------------------------------------------------------- direct references
def direct_cka(X, Y):
    """||Y~^T X~||_F^2 / (||X~^T X~||_F ||Y~^T Y~||_F), centred columns, float64."""
    X = np.asarray(X, float) - np.mean(X, 0)
    Y = np.asarray(Y, float) - np.mean(Y, 0)
    return np.linalg.norm(Y.T @ X) ** 2 / (np.linalg.norm(X.T @ X) * np.linalg.norm(Y.T @ Y))


def hsic_unbiased(K, L):
    """Song et al. (2012), eq. 5: the unbiased HSIC estimator from Gram matrices."""
    n = K.shape[0]
    K, L = K.copy(), L.copy()
    np.fill_diagonal(K, 0)
    np.fill_diagonal(L, 0)
    one = np.ones(n)
    return (np.trace(K @ L) + (one @ K @ one) * (one @ L @ one) / ((n - 1) * (n - 2))
            - 2 / (n - 2) * one @ K @ L @ one) / (n * (n - 3))


def direct_debiased_cka(X, Y, center=True):
    """HSIC_u(K, L) / sqrt(HSIC_u(K, K) HSIC_u(L, L)) with K = X X^T, L = Y Y^T. The estimator is
    translation invariant; ``center`` centres the columns first, which keeps the reference well
    conditioned for data far from the origin (``center=False`` checks the invariance)."""
    X, Y = np.asarray(X, float), np.asarray(Y, float)
    if center:
        X, Y = X - X.mean(0), Y - Y.mean(0)
    K, L = X @ X.T, Y @ Y.T
    return float(hsic_unbiased(K, L) / np.sqrt(hsic_unbiased(K, K) * hsic_unbiased(L, L)))


def kornblith_xy():
    np.random.seed(1337)
    X = np.random.randn(100, 10)
    Y = np.random.randn(100, 10) + X
    return X, Y


FORMS = ["gram", "feature", "auto"]


# ----------------------------------------------------------------------------- linear_cka
@pytest.mark.parametrize("form", FORMS)
def test_reference_values(form):
    X, Y = kornblith_xy()
    assert linear_cka(X, Y, debiased=False, form=form) == pytest.approx(0.55761, abs=5e-6)
    assert linear_cka(X, Y, debiased=True, form=form) == pytest.approx(0.51346, abs=5e-6)
    assert linear_cka(torch.tensor(X), torch.tensor(Y), debiased=False, form=form) == pytest.approx(0.55761, abs=5e-6)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("n,p,q", [(40, 60, 25), (200, 12, 30), (7, 3, 3)])
def test_matches_direct_numpy(form, n, p, q):
    rng = np.random.default_rng(n + p + q)
    X = rng.normal(size=(n, p)) + 3.0
    Y = X[:, :min(p, q)] @ rng.normal(size=(min(p, q), q)) + rng.normal(size=(n, q)) * 2.0 - 7.0
    assert linear_cka(X, Y, debiased=False, form=form) == pytest.approx(direct_cka(X, Y), rel=1e-10)
    assert linear_cka(X, Y, debiased=True, form=form) == pytest.approx(direct_debiased_cka(X, Y), rel=1e-10, abs=1e-13)
    assert linear_cka(X, Y, debiased=True, form=form) == pytest.approx(direct_debiased_cka(X, Y, center=False), rel=1e-7)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("debiased", [False, True])
def test_self_similarity_is_one(form, debiased):
    X = np.random.default_rng(0).normal(size=(30, 8))
    assert linear_cka(X, X, debiased=debiased, form=form) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("form", ["gram", "feature"])
@pytest.mark.parametrize("debiased", [False, True])
def test_invariances(form, debiased):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(50, 12))
    Y = X @ rng.normal(size=(12, 9)) + rng.normal(size=(50, 9))
    Q, _ = np.linalg.qr(rng.normal(size=(12, 12)))
    R, _ = np.linalg.qr(rng.normal(size=(9, 9)))
    ref = linear_cka(X, Y, debiased=debiased, form=form)
    for Xt, Yt in [(X @ Q, Y), (X, Y @ R), (X @ Q, Y @ R), (7.5 * X, Y), (X, 0.01 * Y), (X + 100.0, Y - 3.0)]:
        assert linear_cka(Xt, Yt, debiased=debiased, form=form) == pytest.approx(ref, rel=1e-9)


def test_linear_cka_errors():
    X = np.zeros((5, 3))
    with pytest.raises(CKAError, match="same number of rows"):
        linear_cka(X, np.zeros((4, 3)))
    with pytest.raises(CKAError, match="at least 2"):
        linear_cka(X[:1], X[:1])
    with pytest.raises(CKAError, match="at least 4"):
        linear_cka(np.eye(3), np.eye(3), debiased=True)
    with pytest.raises(CKAError, match="form"):
        linear_cka(X, X, form="svd")
    with pytest.raises(CKAError, match="matrices"):
        linear_cka(np.zeros(5), np.zeros(5))


# ----------------------------------------------------------------------------- accumulator
def _layers(seed=0, la=3, lb=4, n=90, p=20, q=14):
    rng = np.random.default_rng(seed)
    A = np.cumsum(rng.normal(size=(la, n, p)), 0) + 50.0  # residual-stream-like: drifting layers, a large offset
    B = np.concatenate([A[:, :, :q], rng.normal(size=(lb - la, n, q))], 0) if lb > la else A[:lb, :, :q]
    B = B + rng.normal(size=B.shape) * 0.5 - 20.0
    return A, B


@pytest.mark.parametrize("debiased", [False, True])
@pytest.mark.parametrize("form", FORMS)
def test_minibatches_equal_one_shot(form, debiased):
    A, B = _layers()
    one = CKAAccumulator(debiased=debiased, form=form).update(A, B).compute()
    acc = CKAAccumulator(debiased=debiased, form=form)
    for lo, hi in [(0, 1), (1, 8), (8, 40), (40, 41), (41, 90)]:
        acc.update(A[:, lo:hi], torch.tensor(B[:, lo:hi]))
    np.testing.assert_allclose(acc.compute(), one, rtol=1e-10, atol=1e-13)
    direct = direct_debiased_cka if debiased else direct_cka
    ref = np.array([[direct(a, b) for b in B] for a in A])
    np.testing.assert_allclose(one, ref, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("debiased", [False, True])
def test_gram_form_equals_feature_form(debiased):
    for n, p in [(25, 40), (90, 20)]:  # n < p and n > p
        A, B = _layers(seed=n, n=n, p=p, q=p // 2)
        g = CKAAccumulator(debiased=debiased, form="gram").update(A, B).compute()
        f = CKAAccumulator(debiased=debiased, form="feature")
        for i in range(0, n, 16):
            f.update(A[:, i:i + 16], B[:, i:i + 16])
        np.testing.assert_allclose(f.compute(), g, rtol=1e-9, atol=1e-12)


def test_auto_switches_form_exactly():
    A, B = _layers(n=200, p=6, q=5)
    acc = CKAAccumulator(debiased=True)
    acc.update(A[:, :4], B[:, :4])
    assert acc.form == "gram"  # n < features: Gram form
    for i in range(4, 200, 9):
        acc.update(A[:, i:i + 9], B[:, i:i + 9])
    assert acc.form == "feature"  # n^2 Grams would outweigh the cross-covariances
    g = CKAAccumulator(debiased=True, form="gram").update(A, B).compute()
    np.testing.assert_allclose(acc.compute(), g, rtol=1e-9, atol=1e-12)


def test_accumulator_errors():
    acc = CKAAccumulator()
    with pytest.raises(CKAError, match="different numbers of samples"):
        acc.update(np.zeros((2, 5, 3)), np.zeros((2, 4, 3)))
    acc.update(np.random.randn(2, 5, 3), np.random.randn(1, 5, 4))
    with pytest.raises(CKAError, match="shapes changed"):
        acc.update(np.random.randn(2, 5, 3), np.random.randn(2, 5, 4))
    with pytest.raises(CKAError, match="nan"):
        acc.update(np.full((2, 1, 3), np.nan), np.zeros((1, 1, 4)))
    with pytest.raises(CKAError, match="at least 2"):
        CKAAccumulator().compute()


# ----------------------------------------------------------------------------- models
def _hf_block_outputs(hf, prompts: list[list[int]], where) -> np.ndarray:
    """[L_hf - 1, n, d]: outputs of every block but the last (HF normalises that one), from
    output_hidden_states, one unpadded prompt at a time, at positions where(len)."""
    rows = []
    with torch.no_grad():
        for p in prompts:
            hs = hf(input_ids=torch.tensor([p]), output_hidden_states=True, use_cache=False).hidden_states
            pos = where(len(p))
            rows.append(torch.stack([h[0, pos] for h in hs[1:-1]]).double())  # hs[l + 1] = block l's output
    return torch.cat(rows, 1).numpy() if rows[0].dim() == 3 else torch.stack(rows, 1).numpy()


def _pruned_hf(hf, removed):
    """An independent pruned HF model: a deep copy with the blocks deleted."""
    m = copy.deepcopy(hf)
    m.model.layers = torch.nn.ModuleList([b for i, b in enumerate(m.model.layers) if i not in set(removed)])
    m.config.num_hidden_layers = len(m.model.layers)
    return m


def _ids(model, task):
    return [model.tokenizer(task.prompt(i))["input_ids"] for i in range(len(task.items))]


def test_dense_vs_dense_decision(tiny_llama, capitals_task):
    r = cka(tiny_llama, tiny_llama, capitals_task)
    assert r.matrix.shape == (6, 6) and r.positions == "decision" and r.n_samples == len(capitals_task.items)
    np.testing.assert_allclose(np.diag(r.matrix), 1.0, atol=1e-9)
    np.testing.assert_allclose(r.matrix, r.matrix.T, atol=1e-9)
    assert r.blocks_a == r.blocks_b == list(range(6))


@pytest.mark.parametrize("debiased", [False, True])
def test_dense_vs_pruned_decision_against_hf(tiny_llama, capitals_task, debiased):
    removed = (2, 3)
    view = ModelView(tiny_llama, removed=removed)
    r = cka(tiny_llama, view, capitals_task, debiased=debiased, batch_size=4)
    assert r.blocks_a == [0, 1, 2, 3, 4, 5] and r.blocks_b == [0, 1, 4, 5]
    assert r.matrix.shape == (6, 4) and r.model_b == view.name
    # blocks before the cut compute the same thing in both models
    assert r.value(0, 0) == pytest.approx(1.0, abs=1e-9) and r.value(1, 1) == pytest.approx(1.0, abs=1e-9)
    # independent capture: HF hidden states of the dense model and of a pruned deep copy
    prompts = _ids(tiny_llama, capitals_task)
    dense = _hf_block_outputs(tiny_llama.hf, prompts, lambda n: n - 1)  # blocks 0..4
    pruned = _hf_block_outputs(_pruned_hf(tiny_llama.hf, removed), prompts, lambda n: n - 1)  # kept blocks 0, 1, 4
    for a, (jb, b) in [(3, (2, 4)), (1, (2, 4)), (4, (1, 1)), (2, (0, 0))]:
        want = linear_cka(dense[a], pruned[jb], debiased=debiased)
        assert r.value(a, b) == pytest.approx(want, abs=1e-5), (a, b)
    # the lens path's hidden states give the same matrix
    ha = option_logits(tiny_llama, capitals_task, return_hidden=True).hidden
    hb = option_logits(view, capitals_task, return_hidden=True).hidden
    ref = CKAAccumulator(debiased=debiased).update(ha, hb).compute()
    np.testing.assert_allclose(r.matrix, ref, atol=1e-6)


def test_an_operator_at_the_end_is_part_of_the_final_row(tiny_llama, capitals_task):
    """A recovery operator standing in for a cut that reaches the last block is what the recovered model outputs:
    its final row is h_3 @ W (h_3 = the dense output of block 3, from HF's own hidden states), not plain pruning's."""
    L = tiny_llama.n_blocks
    W = torch.eye(tiny_llama.d_model) + 0.3 * torch.randn(tiny_llama.d_model, tiny_llama.d_model,
                                                           generator=torch.Generator().manual_seed(0))
    rec = ModelView(tiny_llama, removed=(L - 2, L - 1), operators={(L - 2, L): W})
    r = cka(tiny_llama, rec, capitals_task)
    plain = cka(tiny_llama, pl.prune(tiny_llama, [L - 2, L - 1]), capitals_task)
    prompts = _ids(tiny_llama, capitals_task)
    with torch.no_grad():
        hs = [tiny_llama.hf(input_ids=torch.tensor([p]), output_hidden_states=True).hidden_states for p in prompts]
    h3 = np.stack([h[L - 2][0, -1].double().numpy() for h in hs])  # the output of block L-3 = the input of the cut
    dense_last = _hf_block_outputs(tiny_llama.hf, prompts, lambda n: n - 1)[L - 3]  # dense block L-3's output
    final_rec = h3 @ W.double().numpy()  # the recovered model's final state
    want = linear_cka(dense_last, final_rec)
    assert r.blocks_b[-1] == L - 3  # the last surviving block labels the final row
    assert r.value(L - 3, L - 3) == pytest.approx(want, abs=1e-5)
    assert plain.value(L - 3, L - 3) == pytest.approx(1.0, abs=1e-9) and want < 0.999  # not plain pruning's final row


def test_all_positions_texts_against_hf(tiny_llama):
    texts = ["The quick brown fox jumps over the lazy dog.", "Paris is the capital of France, and Berlin that of Germany.",
             "Water boils at one hundred degrees Celsius at sea level."]
    view = ModelView(tiny_llama, removed=(1,))
    prompts = tiny_llama.tokenizer(texts)["input_ids"]
    for first, start in ((False, 1), (True, 0)):  # by default every token but each sequence's first (the sink)
        r = cka(tiny_llama, view, texts, n_samples=10_000, batch_size=2, first_token=first)  # every token
        assert r.positions == "all" and r.source == "texts" and r.first_token is first
        assert r.n_samples == sum(len(p) - start for p in prompts)
        dense = _hf_block_outputs(tiny_llama.hf, prompts, lambda n: slice(start, n))
        pruned = _hf_block_outputs(_pruned_hf(tiny_llama.hf, (1,)), prompts, lambda n: slice(start, n))  # kept 0, 2-4
        assert r.value(3, 4) == pytest.approx(linear_cka(dense[3], pruned[3]), abs=1e-5)
        assert r.value(4, 2) == pytest.approx(linear_cka(dense[4], pruned[1]), abs=1e-5)
        assert r.value(0, 0) == pytest.approx(1.0, abs=1e-9)
        assert ("first token" in r.summary()) is first and ("but each sequence's first" in r.summary()) is not first


def test_a_massive_first_token_decides_cka_unless_skipped():
    """Why positions='all' skips each sequence's first token: a row with a norm ~100x the others' (the attention
    sink's massive activation, shared by the dense and pruned models) drives linear CKA to ~1 between unrelated
    representations; without it CKA reads the other rows (numpy, independent of phaselens' accumulator)."""
    rng = np.random.default_rng(0)
    n, d = 400, 32
    x, y = rng.standard_normal((n, d)), rng.standard_normal((n, d))  # unrelated tokens
    sink = np.zeros(d)
    sink[3] = 150.0
    rows = np.arange(0, n, 20)  # one sequence start in 20 tokens
    xs, ys = x.copy(), y.copy()
    xs[rows] += sink
    ys[rows] += sink
    assert linear_cka(xs, ys) > 0.9
    keep = np.setdiff1d(np.arange(n), rows)
    assert abs(linear_cka(xs[keep], ys[keep], debiased=True)) < 0.05


def test_results_saved_before_first_token_existed_read_every_token(tiny_llama, capitals_task):
    r = cka(tiny_llama, ModelView(tiny_llama, removed=(2,)), ["Some text to read here, long enough."], n_samples=8)
    doc = r.to_dict()
    for k in ("__v__", "first_token"):
        assert k in doc
    doc["__v__"] = 2
    del doc["first_token"]
    assert CKAResult.from_dict(doc).first_token is True  # version 2's "all" read each sequence's first token
    dec = cka(tiny_llama, tiny_llama, capitals_task).to_dict()
    dec["__v__"] = 2
    del dec["first_token"]
    assert CKAResult.from_dict(dec).first_token is False
    with pytest.raises(CKAError, match="first_token"):
        cka(tiny_llama, tiny_llama, ["Some text"], first_token="yes")


def test_subsampling_same_tokens_for_both_models(tiny_llama):
    view = ModelView(tiny_llama, removed=(4,))
    texts = [f"Passage {i}: the committee met on a rainy Tuesday to discuss the budget for the new library, "
             f"and after {i + 2} hours agreed to fund its roof." for i in range(6)]
    r = cka(tiny_llama, view, texts, n_samples=64, seed=3, batch_size=8)
    assert r.n_samples == 64 and r.source == "texts" and r.positions == "all"
    # blocks 0..3 run identically in both models: 1.0 only if both saw the same sampled tokens
    for b in range(4):
        assert r.value(b, b) == pytest.approx(1.0, abs=1e-9)
    r2 = cka(tiny_llama, view, texts, n_samples=64, seed=4, batch_size=8)
    assert not np.allclose(r.matrix, r2.matrix)
    r3 = cka(tiny_llama, view, texts, n_samples=64, seed=3, batch_size=3)
    np.testing.assert_allclose(r.matrix, r3.matrix, atol=1e-6)  # batching does not change the samples


def test_bundled_calibration_corpus(tiny_llama):
    from phaselens.calibration import CORPUS

    if not CORPUS.exists():
        pytest.skip("the bundled calibration corpus is not in this checkout yet")
    r = cka(tiny_llama, ModelView(tiny_llama, removed=(2,)), None, n_samples=48)
    assert r.source == "calibration" and r.positions == "all" and r.n_samples == 48 and r.matrix.shape == (6, 5)


def test_result_roundtrip_pandas_plot(tiny_llama, capitals_task):
    r = cka(tiny_llama, ModelView(tiny_llama, removed=(0, 5)), capitals_task)
    df = r.to_pandas()
    assert list(df.columns) == ["block_a", "block_b", "cka"] and len(df) == 6 * 4
    row = df[(df.block_a == 2) & (df.block_b == 3)]
    assert float(row.cka.iloc[0]) == pytest.approx(r.value(2, 3))
    back = CKAResult.from_dict(r.to_dict())
    np.testing.assert_allclose(back.matrix, r.matrix)
    assert back.blocks_b == [1, 2, 3, 4] and back.model_b == r.model_b and back.positions == r.positions
    blocks, vals = r.matched()
    assert blocks.tolist() == [1, 2, 3, 4] and vals.shape == (4,)
    fig = r.plot()
    assert list(fig.data[0].x) == ["1", "2", "3", "4"] and list(fig.data[0].y) == [str(b) for b in range(6)]


class _ShiftedTokenizer:
    """Another tokenizer: the same one with a token prepended to every sequence."""

    def __init__(self, tok):
        self._tok = tok
        self.pad_token_id = tok.pad_token_id

    def __call__(self, texts, **kw):
        out = self._tok(texts, **kw)
        return {"input_ids": [[7] + list(s) for s in out["input_ids"]]}


def test_errors(tiny_llama, capitals_task):
    other = dataclasses.replace(tiny_llama, tokenizer=_ShiftedTokenizer(tiny_llama.tokenizer), name="shifted")
    r = cka(tiny_llama, other, capitals_task)  # decision positions pair up items across tokenizers
    assert r.matrix.shape == (6, 6) and r.n_samples == len(capitals_task.items)
    with pytest.raises(CKAError, match="tokenize the inputs differently"):
        cka(tiny_llama, other, capitals_task, positions="all")
    with pytest.raises(CKAError, match="needs a task"):
        cka(tiny_llama, tiny_llama, ["some text here"], positions="decision")
    with pytest.raises(CKAError, match="n_samples"):
        cka(tiny_llama, tiny_llama, capitals_task, n_samples=1)
    with pytest.raises(CKAError, match="positions"):
        cka(tiny_llama, tiny_llama, capitals_task, positions="last")
    with pytest.raises(CKAError, match="only 3 items"):
        cka(tiny_llama, tiny_llama, pl.load_task(capitals_task, limit=3), debiased=True)


def test_smol_pruned_view(smol, capitals_task):
    task = pl.load_task(capitals_task, limit=5)
    view = ModelView(smol, removed=(10, 11))
    r = cka(smol, view, task, batch_size=5)
    assert r.matrix.shape == (30, 28) and r.blocks_b == [b for b in range(30) if b not in (10, 11)]
    np.testing.assert_allclose([r.value(b, b) for b in range(10)], 1.0, atol=1e-6)
    h = option_logits(smol, task, return_hidden=True).hidden
    hv = option_logits(view, task, return_hidden=True).hidden
    assert r.value(5, 20) == pytest.approx(linear_cka(h[5], hv[view.kept.index(20)]), abs=1e-5)
    assert r.value(25, 9) == pytest.approx(linear_cka(h[25], h[9]), abs=1e-5)  # blocks before the cut are the dense ones
