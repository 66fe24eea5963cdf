"""Shared prompt prefixes in the continuation format: one packed row per item ([prompt, cont_1..cont_K], a 4D block
mask, restarted position ids) scores exactly what K separate prompt+option rows score.

Independent references: each option's log-likelihood from a plain transformers forward of prompt+option
(``model(input_ids).logits``, ``log_softmax``, ``gather``); for pruned and recovered views, the same computation on
a hand-edited copy of the Hugging Face model (layers taken out of its list, an operator module put in); for lm-eval
parity, its scoring rule (acc = argmax of summed log-likelihood, acc_norm = argmax of log-likelihood / len(choice)).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import phaselens as pl
from phaselens.encoding import encode_task
from phaselens.readout import option_logits
from phaselens.runner import Batch, PrefixCache, Read, Runner, block_mask, pack

ITEMS = [
    ("The capital of France is", ["Paris, the city of light", "London", "Berlin on the river Spree", "Madrid"], 0),
    ("Water boils at a temperature of", ["one hundred degrees Celsius", "zero degrees", "fifty kelvin"], 0),
    ("The largest planet of the solar system is", ["Jupiter", "the tiny planet Mercury", "Mars", "Venus", "Earth"], 0),
    ("A square has", ["four equal sides and four right angles", "three sides"], 0),
]


@pytest.fixture(scope="module")
def cont_task() -> pl.Task:
    return pl.load_task([{"question": q, "options": o, "answer": a, "id": f"it{i}"} for i, (q, o, a) in enumerate(ITEMS)],
                        format="continuation")


def _tiny_qwen2(tokenizer, sliding: bool = False) -> pl.Model:
    from transformers import AutoModelForCausalLM, Qwen2Config

    kw = dict(use_sliding_window=True, sliding_window=3, max_window_layers=2) if sliding else {}
    cfg = Qwen2Config(vocab_size=tokenizer.vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True, **kw)
    torch.manual_seed(1)
    hf = AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():
        for n, p in hf.named_parameters():
            if p.dim() == 2:
                p.mul_(8.0)
            elif n.endswith("bias"):
                p.normal_(0, 0.5)  # attention biases that matter
    hf.tokenizer = tokenizer
    return pl.load_model(hf)


@pytest.fixture(scope="module")
def tiny_qwen2(smol) -> pl.Model:
    m = _tiny_qwen2(smol.tokenizer)
    assert m.blocks[0].self_attn.q_proj.bias is not None
    return m


@pytest.fixture(scope="module")
def tiny_qwen2_sliding(smol) -> pl.Model:
    m = _tiny_qwen2(smol.tokenizer, sliding=True)
    assert "sliding_attention" in m.hf.config.layer_types
    return m


def _direct_loglik(hf, enc) -> torch.Tensor:
    """``[N*K]`` sum_j log p(cont_j | prompt, cont_<j) from plain transformers, one sequence at a time."""
    out = []
    with torch.no_grad():
        for p, c in zip(enc.prompts, enc.continuations):
            ids = torch.tensor([p + c])
            logp = torch.log_softmax(hf(input_ids=ids, use_cache=False).logits[0].float(), -1)
            out.append(sum(logp[len(p) + j - 1, t].item() for j, t in enumerate(c)))
    return torch.tensor(out)


def _final(z: torch.Tensor, enc) -> torch.Tensor:
    return torch.stack([z[-1, i, k] for i, k in enc.rows])


def _hand_edited(model: pl.Model, removed: set[int], ops: dict | None = None):
    """A copy of the HF model with ``removed`` layers taken out; ``ops[(s, e)] = W`` puts a module computing
    ``h @ W`` where the span was (no phaselens code)."""
    hf = copy.deepcopy(model.hf)
    tuple_out = model.returns_tuple

    class Op(torch.nn.Module):
        def __init__(self, w):
            super().__init__()
            self.w = w

        def forward(self, h, *a, **k):
            y = h @ self.w.to(h.dtype)
            return (y,) if tuple_out else y

    layers, types = [], []
    starts = {s: w for (s, _e), w in (ops or {}).items()}
    old_types = list(getattr(hf.config, "layer_types", None) or [])
    for i, b in enumerate(hf.model.layers):
        if i in starts:
            layers.append(Op(starts[i]))
            types.append(old_types[i] if old_types else None)
        elif i not in removed:
            layers.append(b)
            types.append(old_types[i] if old_types else None)
    hf.model.layers = torch.nn.ModuleList(layers)
    hf.config.num_hidden_layers = len(layers)
    if old_types:
        hf.config.layer_types = types
    return hf


ARCHS = ["tiny_llama", "tiny_gemma", "tiny_qwen2", "tiny_qwen2_sliding"]


@pytest.mark.parametrize("arch", ARCHS)
def test_shared_equals_unshared_and_plain_transformers(arch, request, cont_task):
    model = request.getfixturevalue(arch)
    enc = encode_task(cont_task, model.tokenizer)
    assert max(len(c) for c in enc.continuations) >= 4  # multi-token continuations
    assert max(len(p) for p in enc.prompts) > 4  # longer than tiny_gemma's sliding window
    shared = option_logits(model, cont_task, encoded=enc).z
    unshared = option_logits(model, cont_task, encoded=enc, share_prefix=False).z
    torch.testing.assert_close(shared, unshared, atol=1e-4, rtol=0)
    torch.testing.assert_close(_final(shared, enc), _direct_loglik(model.hf, enc), atol=1e-4, rtol=0)


@pytest.mark.parametrize("arch", ARCHS)
def test_pruned_shared_equals_hand_pruned_transformers(arch, request, cont_task):
    model = request.getfixturevalue(arch)
    enc = encode_task(cont_task, model.tokenizer)
    view = pl.prune(model, [1, 2])
    shared = option_logits(view, cont_task, encoded=enc).z
    torch.testing.assert_close(shared, option_logits(view, cont_task, encoded=enc, share_prefix=False).z, atol=1e-4, rtol=0)
    torch.testing.assert_close(_final(shared, enc), _direct_loglik(_hand_edited(model, {1, 2}), enc), atol=1e-4, rtol=0)


@pytest.mark.parametrize("arch", ["tiny_llama", "tiny_gemma", "tiny_qwen2"])
def test_recovered_shared_equals_hand_edited_transformers(arch, request, cont_task):
    model = request.getfixturevalue(arch)
    enc = encode_task(cont_task, model.tokenizer)
    rec = pl.fit_recovery(pl.prune(model, [1, 2]), pl.load_calibration(None)[:10], seq_len=96)
    W = rec.operators[(1, 3)]
    shared = option_logits(rec, cont_task, encoded=enc).z
    torch.testing.assert_close(shared, option_logits(rec, cont_task, encoded=enc, share_prefix=False).z, atol=1e-4, rtol=0)
    ref = _direct_loglik(_hand_edited(model, {1, 2}, {(1, 3): W.cpu()}), enc)
    torch.testing.assert_close(_final(shared, enc), ref, atol=1e-4, rtol=0)


def test_block_mask_by_hand():
    p = pack([5, 6, 7], [[8, 9], [10]])
    assert p.ids == [5, 6, 7, 8, 9, 10] and p.positions == [0, 1, 2, 3, 4, 3] and p.segments == [0, 0, 0, 1, 1, 2]
    seg = torch.tensor([p.segments + [-1]])
    pos = torch.tensor([p.positions + [0]])
    m = block_mask(seg, pos)[0, 0].int().tolist()
    assert m == [[1, 0, 0, 0, 0, 0, 0],
                 [1, 1, 0, 0, 0, 0, 0],
                 [1, 1, 1, 0, 0, 0, 0],
                 [1, 1, 1, 1, 0, 0, 0],
                 [1, 1, 1, 1, 1, 0, 0],
                 [1, 1, 1, 0, 0, 1, 0],  # continuation 2 sees the prompt and itself, not continuation 1
                 [0, 0, 0, 0, 0, 0, 1]]  # padding: only itself
    w = block_mask(seg, pos, window=2)[0, 0].int().tolist()
    assert w[4] == [0, 0, 0, 1, 1, 0, 0] and w[5] == [0, 0, 1, 0, 0, 1, 0]  # logical distance < 2


def test_first_token_readout_once_per_item(tiny_llama, cont_task, monkeypatch):
    """The full-vocabulary readout runs on one row per item for all first tokens: N + sum_k (n_k - 1) rows."""
    enc = encode_task(cont_task, tiny_llama.tokenizer)
    rows = []
    real = pl.Model.full_logits

    def count(self, h):
        rows.append(h.shape[0])
        return real(self, h)

    monkeypatch.setattr(pl.Model, "full_logits", count)
    option_logits(tiny_llama, cont_task, encoded=enc, blocks="last")
    assert sum(rows) == enc.n_items + sum(len(c) - 1 for c in enc.continuations)
    rows.clear()
    option_logits(tiny_llama, cont_task, encoded=enc, blocks="last", share_prefix=False)
    assert sum(rows) == sum(len(c) for c in enc.continuations)


def test_packed_and_unpacked_batches_never_share_cache_entries(tiny_llama):
    """Same token ids, packed (block mask) vs plain causal: different batch keys, so no replay across them."""
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    mask = torch.ones_like(ids)
    plain = Batch([0], ids, mask)
    p = pack([5, 6, 7], [[8, 9], [10]])
    packed = Batch([0], ids, mask, torch.tensor([p.positions]), torch.tensor([p.segments]))
    assert plain.key != packed.key
    cache = PrefixCache()
    reads = {"h": Read((5,), "out", "all")}
    Runner(tiny_llama, cache=cache).forward(plain, reads)
    got = Runner(pl.prune(tiny_llama, [4]), cache=cache).forward(packed, reads)["h"][5]
    ref = Runner(pl.prune(tiny_llama, [4])).forward(packed, reads)["h"][5]
    assert torch.equal(got, ref)


def test_too_long_for_the_context_is_refused_naming_the_item(tiny_llama, cont_task, monkeypatch):
    cfg = tiny_llama.hf.config
    monkeypatch.setattr(cfg, "max_position_embeddings", 8)
    calls = []
    monkeypatch.setattr(Runner, "forward", lambda *a, **k: calls.append(1))
    with pytest.raises(pl.errors.LensError, match=r"item it\d.*context of 8 tokens"):
        option_logits(tiny_llama, cont_task)
    assert not calls


@pytest.mark.slow
def test_lm_eval_scoring_rule_on_smol_arc_easy(smol):
    """acc / acc_norm per lm-eval (argmax of summed log-likelihood; of log-likelihood / len(choice) in characters)
    from plain transformers log-likelihoods, against the shared-prefix trace's final block."""
    task = pl.load_task("arc-easy", limit=6, seed=3)
    enc = encode_task(task, smol.tokenizer)
    tr = pl.decision_trace(smol, task, n_boot=100)
    ll = _direct_loglik(smol.hf, enc).numpy()
    acc, acc_norm = [], []
    for i, it in enumerate(task.items):
        lls = np.array([ll[s] for s, (ii, _k) in enumerate(enc.rows) if ii == i])
        np.testing.assert_allclose(tr.logits[-1, i, : len(lls)], lls, atol=1e-4, rtol=0)
        completion_len = np.array([float(len(c)) for c in it.options])
        acc.append(float(np.argmax(lls) == it.answer))
        acc_norm.append(float(np.argmax(lls / completion_len) == it.answer))
    assert tr.accuracy[-1] == pytest.approx(np.mean(acc))
    assert tr.acc_norm[-1] == pytest.approx(np.mean(acc_norm))
