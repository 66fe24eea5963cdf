"""Every metric of DecisionTrace against a hand computation in numpy (loops, no shared code)."""

from __future__ import annotations

import math

import numpy as np
import pytest

import phaselens as pl
from phaselens.readout import option_logits
from phaselens import metrics


@pytest.fixture(scope="module")
def trace_and_z(tiny_llama, capitals_task):
    tr = pl.decision_trace(tiny_llama, capitals_task, n_boot=200, seed=3)
    z = option_logits(tiny_llama, capitals_task).z.numpy()
    return tr, z, np.array(capitals_task.answers), [len(it.options) for it in capitals_task.items]


def test_final_row_is_the_models_own_logits(trace_and_z, tiny_llama, capitals_task):
    """The trace's last row is the model's own output logits at the decision position (plain HF forward)."""
    import torch

    from phaselens.encoding import encode_task

    tr = trace_and_z[0]
    enc = encode_task(capitals_task, tiny_llama.tokenizer)
    for i, p in enumerate(enc.prompts):
        with torch.no_grad():
            logits = tiny_llama.hf(input_ids=torch.tensor([p])).logits[0, -1]
        k = int(enc.option_mask[i].sum())
        np.testing.assert_allclose(tr.logits[-1, i, :k], logits[enc.option_ids[i, :k]].numpy(), atol=1e-4)


def test_margins_accuracy_frequency_by_hand(trace_and_z):
    tr, z, ans, ks = trace_and_z
    L, N, K = z.shape
    for l in range(L):
        margins, correct, counts = [], 0, [0] * K
        for i in range(N):
            row = list(z[l, i, : ks[i]])
            best_other = max(v for j, v in enumerate(row) if j != ans[i])
            margins.append(row[ans[i]] - best_other)
            pick = row.index(max(row))
            correct += pick == ans[i]
            counts[pick] += 1
        np.testing.assert_allclose(tr.item_margins[:, l], margins, atol=1e-6)
        assert tr.margins[l] == pytest.approx(sum(margins) / N, abs=1e-6)
        assert tr.accuracy[l] == pytest.approx(correct / N)
        np.testing.assert_allclose(tr.option_frequency[l], [c / N for c in counts])


def test_margin_is_the_same_in_log_probability_space(trace_and_z):
    """Log-softmax over the options subtracts one constant per item: margins do not change."""
    tr, z, ans, ks = trace_and_z
    for i, k in enumerate(ks):
        row = z[-1, i, :k].astype(float)
        logp = row - math.log(sum(math.exp(v - row.max()) for v in row)) - row.max()
        m = logp[ans[i]] - max(v for j, v in enumerate(logp) if j != ans[i])
        assert tr.item_margins[i, -1] == pytest.approx(m, abs=1e-5)


def test_bias_kl_by_hand(trace_and_z):
    tr, z, ans, ks = trace_and_z
    L, N, K = z.shape
    a = metrics.BIAS_KL_SMOOTHING
    prior = [(sum(1 for x in ans if x == k) + a) / (N + a * K) for k in range(K)]
    for l in range(L):
        picks = [int(np.argmax(z[l, i, : ks[i]])) for i in range(N)]
        of = [(picks.count(k) + a) / (N + a * K) for k in range(K)]
        kl = sum(p * math.log(p / q) for p, q in zip(of, prior))
        assert tr.bias_kl[l] == pytest.approx(kl, abs=1e-9)


def test_convergence_kl_by_hand(trace_and_z):
    tr, z, ans, ks = trace_and_z
    L, N, _ = z.shape

    def softmax(v):
        e = [math.exp(x - max(v)) for x in v]
        return [x / sum(e) for x in e]

    for l in range(L):
        kls = []
        for i in range(N):
            p, q = softmax(list(z[-1, i, : ks[i]])), softmax(list(z[l, i, : ks[i]]))
            kls.append(sum(pi * math.log(pi / qi) for pi, qi in zip(p, q)))
        assert tr.convergence_kl[l] == pytest.approx(sum(kls) / N, abs=1e-6)
    assert tr.convergence_kl[-1] == pytest.approx(0.0, abs=1e-12)


def test_bootstrap_intervals_agree_with_scipy(tiny_llama, capitals_task):
    """The percentile bootstrap over items agrees with scipy.stats.bootstrap (an independent implementation and
    generator) up to Monte Carlo error at 20,000 resamples."""
    from scipy import stats

    tr = pl.decision_trace(tiny_llama, capitals_task, n_boot=20_000, seed=3)
    for l in range(tr.n_read):
        x = tr.item_margins[:, l]
        ref = stats.bootstrap((x,), np.mean, n_resamples=20_000, method="percentile", random_state=0).confidence_interval
        tol = 0.05 * x.std() + 1e-9
        assert tr.margin_ci[0, l] == pytest.approx(ref.low, abs=tol) and tr.margin_ci[1, l] == pytest.approx(ref.high, abs=tol)
    assert np.all((tr.accuracy_ci >= 0) & (tr.accuracy_ci <= 1))
    again = pl.decision_trace(tiny_llama, capitals_task, n_boot=20_000, seed=3)
    np.testing.assert_array_equal(again.margin_ci, tr.margin_ci)  # seeded: the same intervals


def test_to_pandas_and_roundtrip(trace_and_z):
    tr = trace_and_z[0]
    df = tr.to_pandas()
    assert len(df) == tr.n_read and {"margin", "accuracy", "bias_kl", "convergence_kl", "of_A", "of_E"} <= set(df.columns)
    back = pl.DecisionTrace.from_dict(tr.to_dict())
    np.testing.assert_array_equal(back.item_margins, tr.item_margins)
    np.testing.assert_array_equal(back.blocks, tr.blocks)
