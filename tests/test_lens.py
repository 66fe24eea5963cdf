"""The lens against independent computations: the model's own logits and hidden states."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import phaselens as pl
from phaselens.readout import option_logits
from phaselens.encoding import encode

MODELS = ["tiny_llama", "tiny_gemma", "smol", "gemma"]


def _own_logits(model: pl.Model, task: pl.Task) -> torch.Tensor:
    """[N, K] the model's real output logits at t*, one unpadded prompt at a time."""
    enc = encode(task, model.tokenizer)
    out = torch.full((enc.n_items, enc.n_options), float("-inf"))
    with torch.no_grad():
        for i, p in enumerate(enc.prompts):
            logits = model.hf(input_ids=torch.tensor([p])).logits[0, -1].float()
            k = int(enc.option_mask[i].sum())
            out[i, :k] = logits[enc.option_ids[i, :k]]
    return out


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("fmt", ["cloze", "letters"])
def test_last_layer_equals_model_logits(name, fmt, request, capitals_task):
    model = request.getfixturevalue(name)
    task = capitals_task.with_format(fmt)
    z = option_logits(model, task, batch_size=4).z
    ref = _own_logits(model, task)
    mask = torch.isfinite(ref)
    assert torch.equal(mask, torch.isfinite(z[-1]))
    torch.testing.assert_close(z[-1][mask], ref[mask], atol=1e-4, rtol=0)


def test_every_layer_matches_numpy_lens(tiny_llama, capitals_task):
    """z_l = W_U[o] . RMSNorm(h_l) evaluated by hand in numpy from HF's own hidden states."""
    m = tiny_llama
    enc = encode(capitals_task, m.tokenizer)
    z = option_logits(m, capitals_task).z.numpy()
    w_norm = m.final_norm.weight.detach().double().numpy()
    eps = m.hf.config.rms_norm_eps
    W = m.W_U.detach().double().numpy()
    for i, p in enumerate(enc.prompts):
        with torch.no_grad():
            hs = m.hf(input_ids=torch.tensor([p]), output_hidden_states=True).hidden_states
        k = int(enc.option_mask[i].sum())
        ids = enc.option_ids[i, :k].numpy()
        for l in range(m.n_blocks - 1):  # hs[l + 1] is block l's output (the last entry is normed by HF)
            h = hs[l + 1][0, -1].double().numpy()
            x = h / np.sqrt((h**2).mean() + eps) * w_norm
            np.testing.assert_allclose(z[l, i, :k], W[ids] @ x, atol=1e-4)


@pytest.mark.parametrize("name", ["tiny_gemma", "smol"])
@pytest.mark.parametrize("fmt", ["cloze", "continuation"])
def test_padding_invariance(name, fmt, request, capitals_task):
    """A batch of mixed-length prompts gives the per-item values of one prompt at a time."""
    model = request.getfixturevalue(name)
    task = capitals_task.with_format(fmt)
    one = option_logits(model, task, batch_size=1).z
    many = option_logits(model, task, batch_size=len(task) * 4).z
    torch.testing.assert_close(many, one, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", ["tiny_llama", "smol"])
def test_continuation_equals_direct_loglikelihood(name, request, capitals_task):
    """Last-layer continuation scores = sum of log p(continuation tokens) from plain transformers."""
    model = request.getfixturevalue(name)
    task = capitals_task.with_format("continuation")
    z = option_logits(model, task, batch_size=3).z[-1]
    tok = model.tokenizer
    for i, it in enumerate(task.items):
        ctx = tok(it.question)["input_ids"]
        for k, opt in enumerate(it.options):
            whole = tok(it.question + " " + opt)["input_ids"]
            assert whole[: len(ctx)] == ctx
            with torch.no_grad():
                logp = torch.log_softmax(model.hf(input_ids=torch.tensor([whole])).logits[0].float(), -1)
            direct = sum(logp[t - 1, whole[t]].item() for t in range(len(ctx), len(whole)))
            assert z[i, k].item() == pytest.approx(direct, abs=1e-3)


def test_continuation_intermediate_layers(tiny_llama, capitals_task):
    """Per-layer continuation scores read every block through norm + W_U (checked on block 2)."""
    m = tiny_llama
    task = capitals_task.with_format("continuation")
    z = option_logits(m, task).z
    it = task.items[0]
    tok = m.tokenizer
    ctx = tok(it.question)["input_ids"]
    whole = tok(it.question + " " + it.options[1])["input_ids"]
    with torch.no_grad():
        h = m.hf(input_ids=torch.tensor([whole]), output_hidden_states=True).hidden_states[3][0]
        logp = torch.log_softmax(m.full_logits(h), -1)
    direct = sum(logp[t - 1, whole[t]].item() for t in range(len(ctx), len(whole)))
    assert z[2, 0, 1].item() == pytest.approx(direct, abs=1e-4)


def test_hidden_states_returned(tiny_llama, capitals_task):
    ol = option_logits(tiny_llama, capitals_task, return_hidden=True)
    assert ol.hidden.shape == (tiny_llama.n_blocks, len(capitals_task), tiny_llama.d_model)
    z = tiny_llama.readout(ol.hidden, ol_ids := encode(capitals_task, tiny_llama.tokenizer).option_ids)
    assert ol_ids.shape[0] == len(capitals_task)
    torch.testing.assert_close(z.masked_fill(~ol.mask, float("-inf")), ol.z, atol=1e-5, rtol=0)
