"""Recovery operators (Ghosted Layers and its rivals) against independent computations.

References: numpy least squares on activations collected with our own hooks, the closed-form
optimum of each constrained family solved in numpy, and the recovered model actually run.
"""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch

import phaselens as pl
from phaselens.calibration import heldout_texts, load_calibration, n_tokens, tokenize
from phaselens.errors import SingularFitWarning
from phaselens.recovery import hadamard, solve, span_stats
from phaselens.errors import RecoveryError
from phaselens.runner import patched as applied

RIVALS = ("identity", "scalar", "diagonal", "symmetric", "linearpatch")  # act on the whole residual stream


def _rel(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.fixture(scope="module")
def tiny_cal() -> list[str]:
    return load_calibration()[:12]


# ----------------------------------------------------------------------------- solvers, in numpy
def _xy(n: int, d: int):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, d)) * rng.uniform(0.2, 5.0, size=d)  # unequal channel scales
    Y = X @ rng.normal(size=(d, d)) / np.sqrt(d) + 0.3 * rng.normal(size=(n, d))
    return X, Y


@pytest.fixture(scope="module")
def xy():
    return _xy(400, 32)


def _AC(X, Y):
    return torch.tensor(X.T @ X), torch.tensor(X.T @ Y)


def test_ghosted_solver_equals_numpy_lstsq(xy):
    X, Y = xy
    W, lam = solve("ghosted", *_AC(X, Y))
    ref = np.linalg.lstsq(X, Y, rcond=None)[0]
    assert W.dtype == torch.float64 and lam > 0
    assert _rel(W.numpy(), ref) < 1e-6
    W2, lam2 = solve("ghosted", *_AC(X, Y), lam=5.0)  # an explicit ridge is used as given
    assert lam2 == 5.0
    I = np.eye(X.shape[1])  # the default ridge shrinks towards the identity (official Ghosted Layers: W = I + X^+ (Y - X))
    assert _rel(W2.numpy(), I + np.linalg.solve(X.T @ X + 5.0 * I, X.T @ (Y - X))) < 1e-10
    W3 = solve("ghosted", *_AC(X, Y), lam=5.0, target="zero")[0]
    assert _rel(W3.numpy(), np.linalg.solve(X.T @ X + 5.0 * I, X.T @ Y)) < 1e-10


def test_rival_solvers_are_the_optimum_of_their_family():
    X, Y = _xy(200, 16)
    A, C = _AC(X, Y)
    d = X.shape[1]
    # scalar: alpha = <X, Y> / <X, X>
    alpha = (X * Y).sum() / (X * X).sum()
    assert _rel(solve("scalar", A, C)[0].numpy(), alpha * np.eye(d)) < 1e-12
    # diagonal: per channel least squares
    dg = np.array([X[:, j] @ Y[:, j] / (X[:, j] @ X[:, j]) for j in range(d)])
    assert _rel(solve("diagonal", A, C)[0].numpy(), np.diag(dg)) < 1e-12
    # symmetric: least squares over the d(d+1)/2 free entries of W = W^T, by numpy lstsq
    iu = np.triu_indices(d)
    basis = []
    for i, j in zip(*iu):
        B = np.zeros((d, d))
        B[i, j] = B[j, i] = 1.0
        basis.append((X @ B).ravel())
    coef = np.linalg.lstsq(np.stack(basis, 1), Y.ravel(), rcond=None)[0]
    Wsym = np.zeros((d, d))
    Wsym[iu] = coef
    Wsym = Wsym + np.triu(Wsym, 1).T
    Ws = solve("symmetric", A, C)[0].numpy()
    assert np.allclose(Ws, Ws.T) and _rel(Ws, Wsym) < 1e-6
    assert np.array_equal(solve("identity", A, C)[0].numpy(), np.eye(d))


@pytest.mark.parametrize("d", [12, 20, 28, 36, 40, 60, 64, 96, 576, 640, 1536])
def test_hadamard_is_a_full_hadamard_matrix(d):
    """LinearPatch (and QuaRot) rotate by a full Hadamard matrix of order d, not a block-diagonal one:
    every entry is +-1/sqrt(d) and the rows are orthonormal."""
    H = hadamard(d).numpy()
    assert H.shape == (d, d)
    np.testing.assert_allclose(np.abs(H) * np.sqrt(d), 1.0, atol=1e-12)
    np.testing.assert_allclose(H @ H.T, np.eye(d), atol=1e-12)


def test_linearpatch_is_the_reference_formula(tiny_llama, tiny_cal):
    """A transcription of chenxinrui-tsinghua/LinearPatch ``get_scale_params`` (one passage per batch there):
    per passage, s = mean_t |Y H| / mean_t |X H| per rotated channel (X = input of block s, Y = input of
    block e), averaged over passages; W = H diag(s) H^T. Activations from plain HF hooks, one passage at a time."""
    s_, e_ = 2, 4
    H = hadamard(tiny_llama.d_model).numpy()
    ratios = []
    for text in tiny_cal:
        if len(tokenize(tiny_llama.tokenizer, [text], 256)) == 0:
            continue
        acts = _block_inputs(tiny_llama, [text], [s_, e_])
        XH, YH = acts[s_] @ H, acts[e_] @ H
        ratios.append(np.abs(YH).mean(0) / np.abs(XH).mean(0))
    ref = H @ np.diag(np.mean(ratios, 0)) @ H.T
    rec = pl.fit_recovery(pl.prune(tiny_llama, list(range(s_, e_))), tiny_cal, "linearpatch", batch_size=3)
    assert _rel(rec.operator((s_, e_)).double().numpy(), ref) < 1e-5


def test_fit_without_each_passages_first_token_is_the_numpy_fit_of_the_later_tokens(tiny_llama, tiny_cal, tmp_path):
    """``first_token=False``: least squares, LinearPatch's per-passage ratios and the fit error over every token but
    each passage's first (the attention sink), against numpy on plain-HF activations, one passage at a time."""
    s_, e_ = 2, 4
    texts = [t for t in tiny_cal if len(tokenize(tiny_llama.tokenizer, [t], 256))]
    H = hadamard(tiny_llama.d_model).numpy()
    per = [_block_inputs(tiny_llama, [t], [s_, e_]) for t in texts]
    X = np.concatenate([a[s_][1:] for a in per])
    Y = np.concatenate([a[e_][1:] for a in per])
    ratio = np.mean([np.abs(a[e_][1:] @ H).mean(0) / np.abs(a[s_][1:] @ H).mean(0) for a in per], 0)
    view = pl.prune(tiny_llama, list(range(s_, e_)))
    recs = pl.fit_recovery(view, texts, ["ghosted", "linearpatch"], batch_size=3, first_token=False)
    g = recs["ghosted"]
    assert g.first_token is False and g.n_tokens == len(X) and g.fit_error.first_token is False
    assert _rel(g.operator((s_, e_)).double().numpy(), np.linalg.lstsq(X, Y, rcond=None)[0]) < 1e-4
    assert _rel(recs["linearpatch"].operator((s_, e_)).double().numpy(), H @ np.diag(ratio) @ H.T) < 1e-5
    W = g.operator((s_, e_)).double().numpy()
    np.testing.assert_allclose(g.fit_error.per_channel[0], ((X @ W - Y) ** 2).mean(0), rtol=1e-4, atol=1e-9)
    every = pl.fit_recovery(view, texts, batch_size=3)
    assert every.first_token is True and every.n_tokens == len(X) + len(per)
    back = pl.load_recovery(g.save(tmp_path / "g.safetensors"), tiny_llama)
    assert back.first_token is False and torch.equal(back.operator((s_, e_)), g.operator((s_, e_)).cpu())
    stats = span_stats(tiny_llama, view.spans, texts, first_token=False)
    assert pl.fit_recovery(view, stats=stats).first_token is False
    with pytest.raises(RecoveryError, match="gathered with first_token=False"):
        pl.fit_recovery(view, stats=stats, first_token=True)
    with pytest.raises(RecoveryError, match="first_token must be True or False"):
        pl.fit_recovery(view, texts, first_token=0)


# ----------------------------------------------------------------------------- span statistics from real activations
def _block_inputs(model: pl.Model, texts: list[str], blocks: list[int]) -> dict[int, np.ndarray]:
    """{b: [N, d]} the dense input of each block (b = L: the last block's output), one unpadded text at a
    time, with plain forward hooks on the HF decoder layers (no phaselens code)."""
    L = model.n_blocks
    blocks = sorted(set(blocks))
    got: dict[int, list] = {b: [] for b in blocks}
    hooks = [model.hf.model.layers[b].register_forward_pre_hook(
        lambda m, a, k, _b=b: got[_b].append((a[0] if a else k["hidden_states"])[0].double().numpy()), with_kwargs=True)
        for b in blocks if b < L]
    if L in blocks:
        hooks.append(model.hf.model.layers[L - 1].register_forward_hook(lambda m, a, o: got[L].append(o[0].double().numpy())))
    try:
        with torch.no_grad():
            for ids in tokenize(model.tokenizer, texts, 256):
                model.hf.model(input_ids=torch.tensor([ids]))
    finally:
        for h in hooks:
            h.remove()
    return {b: np.concatenate(v) for b, v in got.items()}


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_gemma"])
def test_span_stats_and_ghosted_equal_numpy_on_real_activations(name, request, tiny_cal):
    model = request.getfixturevalue(name)
    L = model.n_blocks
    spans = [(1, 3 if L > 4 else 2), (L - 1, L)]
    stats = span_stats(model, spans, tiny_cal, batch_size=5)  # padded batches
    acts = _block_inputs(model, tiny_cal, [b for sp in spans for b in sp])
    for s, e in spans:
        X, Y = acts[s], acts[e]
        st = stats[(s, e)]
        assert st.n == X.shape[0] == n_tokens(model, tiny_cal)
        assert _rel(st.A.numpy(), X.T @ X) < 1e-6 and _rel(st.C.numpy(), X.T @ Y) < 1e-6
        np.testing.assert_allclose(st.yy.numpy(), (Y * Y).sum(0), rtol=1e-6)
        W = solve("ghosted", st.A, st.C)[0].numpy()
        assert _rel(W, np.linalg.lstsq(X, Y, rcond=None)[0]) < 1e-6
        # the fitted operator of a view is that same least-squares solution
    rec = pl.fit_recovery(pl.prune(model, [b for s, e in spans for b in range(s, e)]), tiny_cal)
    for s, e in spans:
        ref = np.linalg.lstsq(acts[s], acts[e], rcond=None)[0]
        assert _rel(rec.operator((s, e)).double().numpy(), ref) < 1e-6


def test_default_calibration_is_the_fit_split_and_perplexity_the_heldout_split(tiny_llama, monkeypatch, tmp_path):
    """Fits default to the bundled *fit* passages, perplexity to the *held-out* ones (a small stand-in corpus)."""
    import json

    import phaselens.calibration as calmod

    fit = load_calibration()[:3]
    held = heldout_texts()[:2]
    assert set(held).isdisjoint(load_calibration())
    corpus = tmp_path / "calibration.jsonl"
    corpus.write_text("\n".join([json.dumps({"text": t, "split": "fit"}) for t in fit]
                                + [json.dumps({"text": t, "split": "heldout"}) for t in held]))
    monkeypatch.setattr(calmod, "CORPUS", corpus)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        rec = pl.fit_recovery(pl.prune(tiny_llama, [2]))
        ref = pl.fit_recovery(pl.prune(tiny_llama, [2]), fit)
    assert rec.n_tokens == n_tokens(tiny_llama, fit)
    assert torch.equal(rec.operator((2, 3)), ref.operator((2, 3)))
    assert pl.perplexity(tiny_llama) == pl.perplexity(tiny_llama, held) != pl.perplexity(tiny_llama, fit)
    assert pl.perplexity(tiny_llama, "calibration") == pl.perplexity(tiny_llama, fit)


# ----------------------------------------------------------------------------- the guarantee, on both embedded models
CUTS = {
    "smol": {"early": [2, 3], "middle": [13, 14, 15], "late": [27, 28], "two-span": [8, 9, 20, 21]},
    "gemma": {"early": [1, 2], "middle": [8, 9, 10], "late": [15, 16], "two-span": [4, 5, 12, 13]},
}


@pytest.fixture(scope="module")
def guarantee_cal() -> list[str]:
    return load_calibration()[:8]  # a modest subset: ~1,000 tokens at seq_len=128, more than d of both models


@pytest.mark.parametrize("name", ["smol", "gemma"])
def test_ghosted_boundary_error_never_above_any_rival(name, request, guarantee_cal):
    """Per cut span, on the calibration tokens: ghosted <= every rival acting on the whole residual stream."""
    model = request.getfixturevalue(name)
    views = {label: pl.prune(model, cut) for label, cut in CUTS[name].items()}
    spans = [sp for v in views.values() for sp in v.spans]
    stats = span_stats(model, spans, guarantee_cal, branch=True, linearpatch=True, seq_len=128)  # one pass for every cut
    for label, view in views.items():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            recs = pl.fit_recovery(view, None, ("ghosted", *RIVALS, "replaceme"), stats=stats)
        # the fit is plain least squares (no ridge fallback) for ghosted; ReplaceMe's branch may be singular
        assert not [w for w in caught if str(w.message).startswith("ghosted")], [str(w.message) for w in caught]
        g = recs["ghosted"].fit_error
        assert g.spans == view.spans and g.n_tokens == n_tokens(model, guarantee_cal, 128)
        for m in RIVALS:
            r = recs[m].fit_error
            assert np.all(g.mse <= r.mse * (1 + 1e-6)), (label, m, g.mse, r.mse)
        assert np.all(np.isfinite(recs["replaceme"].fit_error.mse))  # compared without the guarantee
        assert np.all(g.mse < recs["identity"].fit_error.mse)  # and it does recover something


@pytest.mark.parametrize("name", ["smol", "gemma"])
def test_fitted_errors_equal_the_recovered_models_boundary_error(name, request, guarantee_cal):
    """The errors computed from the float64 statistics are what running the recovered model gives."""
    model = request.getfixturevalue(name)
    cal, kw = guarantee_cal[:6], {"seq_len": 128}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        one = pl.fit_recovery(pl.prune(model, CUTS[name]["middle"]), cal, ("ghosted", "replaceme"), **kw)
        two = pl.fit_recovery(pl.prune(model, CUTS[name]["two-span"]), cal, **kw)
    for rec in one.values():
        run = pl.boundary_error(rec, cal, inputs="pruned", **kw)  # the recovered model itself runs
        assert run.n_tokens == rec.fit_error.n_tokens == rec.n_tokens
        np.testing.assert_allclose(run.mse, rec.fit_error.mse, rtol=2e-3)
        np.testing.assert_allclose(run.relative, rec.fit_error.relative, rtol=2e-3)
    iso = pl.boundary_error(one["ghosted"], cal, **kw)
    np.testing.assert_allclose(iso.mse, one["ghosted"].fit_error.mse, rtol=2e-3)
    # two spans: inputs="dense" feeds each span the dense model's input (the fitted quantity); when the
    # whole model runs, the second span also receives the first span's error
    iso = pl.boundary_error(two, cal, **kw)
    np.testing.assert_allclose(iso.mse, two.fit_error.mse, rtol=2e-3)
    run = pl.boundary_error(two, cal, inputs="pruned", **kw)
    np.testing.assert_allclose(run.mse[0], iso.mse[0], rtol=2e-3)
    assert np.all(np.isfinite(run.mse))


# ----------------------------------------------------------------------------- recovered models as models
def _final_logits(view, ids: torch.Tensor) -> torch.Tensor:
    base = view.base
    with torch.no_grad(), applied(base.blocks, view.plan(), returns_tuple=base.returns_tuple):
        return base.hf(input_ids=ids).logits


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_gemma"])
def test_identity_operator_reproduces_the_pruned_model(name, request, tiny_cal, capitals_task):
    model = request.getfixturevalue(name)
    cut = (1, 2)
    plain = pl.prune(model, cut)
    eye = pl.ModelView(model, cut, {(1, 3): torch.eye(model.d_model)})
    ids = torch.tensor([tokenize(model.tokenizer, tiny_cal[:1], 64)[0]])
    assert torch.equal(_final_logits(eye, ids), _final_logits(plain, ids))
    fitted = pl.fit_recovery(plain, tiny_cal, "identity")
    assert torch.equal(_final_logits(fitted, ids), _final_logits(plain, ids))
    assert torch.equal(fitted.operator((1, 3)), torch.eye(model.d_model))
    a = pl.decision_trace(plain, capitals_task, n_boot=100)
    b = pl.decision_trace(fitted, capitals_task, n_boot=100)
    assert np.array_equal(a.logits, b.logits)


def test_recovered_model_equals_hand_forward(tiny_llama, tiny_cal, capitals_task):
    """Ghosted model = embeddings -> blocks before the span -> h @ W -> blocks after -> norm -> lm_head."""
    from test_pruning import hand_logits, hand_states  # noqa: PLC0415 (shared hand-written forward)

    rec = pl.fit_recovery(pl.prune(tiny_llama, [2, 3]), tiny_cal)
    W = rec.operator((2, 4))
    assert W.shape == (64, 64)
    ids = tokenize(tiny_llama.tokenizer, tiny_cal[:2], 48)
    for seq in ids:
        h = hand_states(tiny_llama, seq, [0, 1])[-1]
        with torch.no_grad():
            h = h @ W
            for b in (4, 5):
                h = _layer(tiny_llama, b, h)
        ref = hand_logits(tiny_llama, h)
        got = _final_logits(rec, torch.tensor([seq]))[0]
        torch.testing.assert_close(got, ref, atol=2e-4, rtol=1e-5)
    assert math.isfinite(pl.perplexity(rec, tiny_cal[:3]))
    tr = pl.decision_trace(rec, capitals_task, n_boot=100)
    assert tr.blocks.tolist() == [0, 1, 4, 5]


def _layer(model, b, h):
    T = h.shape[0]
    inner = model.hf.model
    pos = torch.arange(T)[None]
    mask = torch.full((T, T), float("-inf")).triu(1)[None, None]
    return inner.layers[b](h[None], attention_mask=mask, position_embeddings=inner.rotary_emb(h[None], pos),
                           position_ids=pos)[0]


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_gemma"])
def test_replaceme_edits_the_mlp_branch(name, request, tiny_cal):
    """ReplaceMe maps block s-1's MLP-branch output m -> m T (Gemma: the post-feedforward norm's output, the
    term actually added to the residual). Its fitted error equals the recovered model's real boundary error
    only if the branch is the right module."""
    from phaselens.parts import mlp_branch as branch_module

    model = request.getfixturevalue(name)
    br = branch_module(model.blocks[1])
    expected = "post_feedforward_layernorm" if "gemma" in name else "mlp"
    assert br is getattr(model.blocks[1], expected)
    rec = pl.fit_recovery(pl.prune(model, [2]), tiny_cal, "replaceme")
    assert set(rec.branch_operators) == {1} and not rec.operators
    run = pl.boundary_error(rec, tiny_cal, inputs="pruned")
    np.testing.assert_allclose(run.mse, rec.fit_error.mse, rtol=1e-3)
    ident = pl.boundary_error(pl.prune(model, [2]), tiny_cal)
    assert run.mse[0] < ident.mse[0]


# ----------------------------------------------------------------------------- save / load
def test_save_load_roundtrip(tiny_llama, tiny_cal, capitals_task, tmp_path):
    rec = pl.fit_recovery(pl.prune(tiny_llama, [1, 2, 4]), tiny_cal)
    path = rec.save(tmp_path / "ghost.safetensors")
    back = pl.load_recovery(path, tiny_llama)
    assert back.removed == rec.removed and back.method == "ghosted" and back.spans == [(1, 3), (4, 5)]
    assert back.n_tokens == rec.n_tokens and back.lam == rec.lam
    for sp in rec.spans:
        assert torch.equal(back.operator(sp), rec.operator(sp))
    a = pl.decision_trace(rec, capitals_task, n_boot=100)
    b = pl.decision_trace(back, capitals_task, n_boot=100)
    assert np.array_equal(a.logits, b.logits)
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    assert meta["fingerprint"] == tiny_llama.fingerprint and meta["removed"] == "[1, 2, 4]"
    ident = pl.load_recovery(pl.fit_recovery(pl.prune(tiny_llama, [3]), tiny_cal, "identity").save(tmp_path / "i.st"),
                             tiny_llama)
    assert ident.method == "identity" and not ident.operators and ident.removed == (3,)
    rm = pl.fit_recovery(pl.prune(tiny_llama, [3]), tiny_cal, "replaceme")
    back_rm = pl.load_recovery(rm.save(tmp_path / "rm.safetensors"), tiny_llama)
    assert torch.equal(back_rm.branch_operators[2], rm.branch_operators[2])


def test_load_recovery_refuses_another_model(tiny_llama, tiny_gemma, smol, tiny_cal, tmp_path):
    path = pl.fit_recovery(pl.prune(tiny_llama, [2]), tiny_cal).save(tmp_path / "r.safetensors")
    for other in (tiny_gemma, smol):
        with pytest.raises(RecoveryError, match="fitted on model"):
            pl.load_recovery(path, other)
    with pytest.raises(RecoveryError, match="not found"):
        pl.load_recovery(tmp_path / "missing.safetensors", tiny_llama)


# ----------------------------------------------------------------------------- singular systems and bad inputs
def test_too_few_tokens_falls_back_to_ridge_with_a_warning(tiny_llama):
    few = ["The cat sat on the mat."]  # ~8 tokens for a 64-wide model: X^T X is singular
    with pytest.warns(SingularFitWarning, match=r"lam=\d"):
        rec = pl.fit_recovery(pl.prune(tiny_llama, [2]), few)
    W = rec.operator((2, 3))
    assert torch.isfinite(W).all()
    assert rec.lam[(2, 3)] > 0


def test_duplicated_inputs_fall_back_to_ridge_with_a_warning():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(300, 16))
    X[:, 5] = X[:, 3]  # a duplicated channel: X^T X is singular whatever the number of tokens
    Y = rng.normal(size=(300, 16))
    A, C = _AC(X, Y)
    with pytest.warns(SingularFitWarning, match="lam=") as rec:
        W, lam = solve("ghosted", A, C)
    assert torch.isfinite(W).all() and lam > 0 and f"{lam:.3g}" in str(rec[0].message)
    with pytest.warns(SingularFitWarning):
        solve("ghosted", A, C, lam=0.0)  # lam=0 cannot solve a singular system either
    with pytest.warns(SingularFitWarning):
        Ws, _ = solve("symmetric", A, C)
    assert torch.isfinite(Ws).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        solve("ghosted", A, C, lam=1.0)  # a ridge the user chose is not a fallback


def test_recovery_errors(tiny_llama, tiny_cal):
    with pytest.raises(RecoveryError, match="unknown recovery method"):
        pl.fit_recovery(pl.prune(tiny_llama, [2]), tiny_cal, "magic")
    with pytest.raises(RecoveryError, match="unknown recovery method"):
        pl.fit_recovery(pl.prune(tiny_llama, [2]), tiny_cal, ["ghosted", "nope"])
    with pytest.raises(RecoveryError, match="no cut spans"):
        pl.fit_recovery(tiny_llama, tiny_cal)
    with pytest.raises(RecoveryError, match="no cut spans"):
        pl.fit_recovery(pl.prune(tiny_llama, []), tiny_cal)
    with pytest.raises(RecoveryError, match="block 0"):
        pl.fit_recovery(pl.prune(tiny_llama, [0, 1]), tiny_cal, "replaceme")
    with pytest.raises(RecoveryError, match="no cut spans"):
        pl.boundary_error(tiny_llama, tiny_cal)
    with pytest.raises(RecoveryError, match="inputs must be"):
        pl.boundary_error(pl.prune(tiny_llama, [2]), tiny_cal, inputs="both")
    with pytest.raises(RecoveryError, match="half-open"):
        span_stats(tiny_llama, [(3, 3)], tiny_cal)
    with pytest.raises(RecoveryError, match="half-open"):
        span_stats(tiny_llama, [(4, 9)], tiny_cal)
    with pytest.raises(RecoveryError, match="no spans"):
        span_stats(tiny_llama, [], tiny_cal)
    with pytest.raises(ValueError, match="lam must be"):
        pl.fit_recovery(pl.prune(tiny_llama, [2]), tiny_cal, lam=-1.0)
    with pytest.raises(pl.errors.CalibrationError):
        pl.fit_recovery(pl.prune(tiny_llama, [2]), [])
    with pytest.raises(ValueError, match="operator for span"):
        pl.ModelView(tiny_llama, (2,), {(2, 4): torch.eye(64)})


# ----------------------------------------------------------------------------- perplexity
@pytest.mark.parametrize("name", ["smol", "gemma"])
def test_dense_perplexity_equals_hf_loss(name, request):
    model = request.getfixturevalue(name)
    texts = heldout_texts()[:3]
    nll, count = 0.0, 0
    with torch.no_grad():
        for ids in tokenize(model.tokenizer, texts, 128):
            x = torch.tensor([ids])
            loss = model.hf(input_ids=x, labels=x).loss.item()  # mean NLL over the T-1 predicted tokens
            nll += loss * (len(ids) - 1)
            count += len(ids) - 1
    assert pl.perplexity(model, texts, seq_len=128, batch_size=2) == pytest.approx(math.exp(nll / count), rel=1e-4)


def test_perplexity_accepts_text_files_and_iterables(tiny_llama, tmp_path):
    texts = heldout_texts()[:3]
    f = tmp_path / "cal.txt"
    f.write_text("\n\n".join(texts))
    a = pl.perplexity(tiny_llama, texts)
    assert pl.perplexity(tiny_llama, str(f)) == a
    assert pl.perplexity(tiny_llama, (t for t in texts)) == a
    with pytest.raises(pl.errors.CalibrationError):
        pl.perplexity(tiny_llama, "not a file and not a list")


def test_singularity_check_agrees_with_numpys_smallest_eigenvalue():
    """is_singular (one Cholesky of A - t I) says what numpy's eigvalsh says: smallest eigenvalue <= t = rtol tr(A)/d."""
    from phaselens.recovery.solvers import SINGULAR_RTOL, is_singular

    rng = np.random.default_rng(0)
    d = 40
    cases = []
    for n, cols in ((200, d), (30, d), (200, d - 1)):  # full rank; fewer tokens than channels; a duplicated channel
        X = rng.standard_normal((n, d)) * np.logspace(-1, 1, d)
        if cols < d:
            X[:, -1] = X[:, 0]
        cases.append(X.T @ X)
    Q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    for ratio in (1e-12, 1e-9, 1e-6):  # around the threshold: smallest eigenvalue at ratio x the mean one
        ev = np.ones(d)
        ev[0] = ratio
        cases.append((Q * ev) @ Q.T)
    got = [is_singular(torch.from_numpy(A)) for A in cases]
    want = [bool(np.linalg.eigvalsh(A)[0] <= SINGULAR_RTOL * np.trace(A) / d) for A in cases]
    assert got == want == [False, True, True, True, False, False]


def test_boundary_error_without_each_passages_first_token_matches_numpy(smol, guarantee_cal, tmp_path):
    """``first_token=False`` leaves each passage's first token (the attention sink) out of the boundary error:
    checked against Hugging Face hidden states of the dense model, the fitted ``W`` applied in numpy."""
    texts, seq_len = guarantee_cal[:4], 64
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 256 tokens for 576 channels: a ridge fit, which is all this test needs
        rec = pl.fit_recovery(pl.prune(smol, CUTS["smol"]["middle"]), texts, seq_len=seq_len)
    (s, e), = rec.spans
    W = rec.operator((s, e)).double().numpy()
    xs, ys = [], []
    for ids in tokenize(smol.tokenizer, texts, seq_len):
        with torch.no_grad():
            hs = smol.hf(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states
        xs.append(hs[s][0].double().numpy())  # h_{s-1}: the input of block s
        ys.append(hs[e][0].double().numpy())  # h_{e-1}: what block e receives in the dense model
    for first, cut in ((True, 0), (False, 1)):
        X = np.concatenate([x[cut:] for x in xs])
        Y = np.concatenate([y[cut:] for y in ys])
        per = ((X @ W - Y) ** 2).mean(0)
        got = pl.boundary_error(rec, texts, seq_len=seq_len, first_token=first)
        assert got.n_tokens == len(X) and got.first_token is first
        np.testing.assert_allclose(got.per_channel[0], per, rtol=2e-3, atol=1e-6 * per.max())
        np.testing.assert_allclose(got.relative[0], per.mean() / (Y**2).mean(), rtol=2e-3)
    assert got.n_tokens == pl.boundary_error(rec, texts, seq_len=seq_len).n_tokens - len(xs)
    back = pl.load_result(pl.save_result(got, tmp_path, "b"))
    assert back.first_token is False and "first token left out" in back.summary()
    old = pl.save_result(pl.boundary_error(rec, texts[:1], seq_len=seq_len), tmp_path, "old")
    doc = json.loads(old.read_text())  # a version-1 file (before first_token) compared every token
    rec_doc = doc["data"]
    rec_doc.pop("first_token")
    rec_doc["__v__"] = 1
    old.write_text(json.dumps(doc))
    assert pl.load_result(old).first_token is True
    with pytest.raises(RecoveryError, match="first_token must be True or False"):
        pl.boundary_error(rec, texts, first_token="no")
