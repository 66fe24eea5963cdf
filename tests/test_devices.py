"""Placement: device_map / max_memory / offload_folder passed to from_pretrained, checked before any weights load;
every runner path on a model whose blocks accelerate offloads (cpu and disk hooks) gives the plain load's numbers.
References: the same model loaded plainly (no hooks), and accelerate's own hooks left in place."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch

import phaselens as pl
from phaselens.runner import Runner

DISK_MAP = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk",
            "model.layers.2": "cpu", "model.layers.3": "disk", "model.layers.4": "disk", "model.layers.5": "cpu",
            "model.norm": "disk", "lm_head": "disk"}


@pytest.fixture(scope="module")
def disk_llama(tiny_llama_dir, tmp_path_factory) -> pl.Model:
    """tiny_llama loaded by from_pretrained with half its blocks, its final norm and its head offloaded to disk."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pl.load_model(tiny_llama_dir, device_map=DISK_MAP, offload_folder=tmp_path_factory.mktemp("offload"))


@pytest.fixture(scope="module")
def cpu_offload_gemma(tiny_gemma) -> pl.Model:
    """A copy of tiny_gemma whose blocks 1 and 2 run under accelerate's cpu_offload hook (weights held by the hook)."""
    from accelerate import cpu_offload

    hf = copy.deepcopy(tiny_gemma.hf)
    for b in (1, 2):
        cpu_offload(hf.model.layers[b], execution_device="cpu")
    hf.tokenizer = tiny_gemma.tokenizer
    return pl.load_model(hf)


def test_disk_offload_is_accelerate_hooked(disk_llama):
    # accelerate's forward wrapper is on every block and its weights are on the meta device where offloaded
    assert all("forward" in b.__dict__ for b in disk_llama.blocks)
    assert disk_llama.blocks[1].self_attn.q_proj.weight.device.type == "meta"
    assert disk_llama.unembed.weight.device.type == "meta" and disk_llama.W_U.device.type == "cpu"


@pytest.mark.parametrize("which", ["disk", "cpu"])
def test_offloaded_margins_equal_the_plain_load(which, disk_llama, cpu_offload_gemma, tiny_llama, tiny_gemma,
                                                capitals_task):
    off, plain = (disk_llama, tiny_llama) if which == "disk" else (cpu_offload_gemma, tiny_gemma)
    hooked = [b for b in off.blocks if "forward" in b.__dict__]
    assert hooked
    for view in (lambda m: m, lambda m: pl.prune(m, [2, 3])):
        a = pl.decision_trace(view(off), capitals_task, n_boot=100)
        b = pl.decision_trace(view(plain), capitals_task, n_boot=100)
        np.testing.assert_allclose(a.margins, b.margins, atol=1e-5, rtol=0)
        np.testing.assert_allclose(a.logits, b.logits, atol=1e-4, rtol=1e-5)
    cont = pl.load_task(capitals_task, format="continuation")
    a, b = (pl.decision_trace(m, cont, n_boot=100) for m in (off, plain))
    np.testing.assert_allclose(a.margins, b.margins, atol=1e-5, rtol=0)
    assert all(hk.__dict__.get("forward") is not None for hk in hooked)  # accelerate's wrappers are still there


def test_offloaded_recovery_noise_cka_equal_the_plain_load(disk_llama, tiny_llama, capitals_task):
    texts = pl.load_calibration(None)[:8]
    ra = pl.fit_recovery(pl.prune(disk_llama, [2, 3]), texts, seq_len=96)
    rb = pl.fit_recovery(pl.prune(tiny_llama, [2, 3]), texts, seq_len=96)
    torch.testing.assert_close(ra.operators[(2, 4)], rb.operators[(2, 4)], atol=1e-5, rtol=1e-5)
    ta, tb = (pl.decision_trace(r, capitals_task, n_boot=100) for r in (ra, rb))
    np.testing.assert_allclose(ta.margins, tb.margins, atol=1e-5, rtol=0)
    na = pl.inject_noise(disk_llama, capitals_task, blocks=[1, 4], eps=0.5, seeds=2, n_boot=100)
    nb = pl.inject_noise(tiny_llama, capitals_task, blocks=[1, 4], eps=0.5, seeds=2, n_boot=100)
    np.testing.assert_allclose(na.item_margins, nb.item_margins, atol=1e-5, rtol=0)
    ca = pl.cka(disk_llama, pl.prune(disk_llama, [3]), capitals_task)
    cb = pl.cka(tiny_llama, pl.prune(tiny_llama, [3]), capitals_task)
    np.testing.assert_allclose(ca.matrix, cb.matrix, atol=1e-5, rtol=0)


def test_a_loaded_model_is_dispatched_by_device_map(tiny_llama, capitals_task, tmp_path):
    hf = copy.deepcopy(tiny_llama.hf)
    hf.tokenizer = tiny_llama.tokenizer
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = pl.load_model(hf, device_map={"": "cpu", "model.layers.4": "disk"}, offload_folder=tmp_path)
    assert m.blocks[4].mlp.up_proj.weight.device.type == "meta"
    a, b = (pl.decision_trace(x, capitals_task, n_boot=100) for x in (m, tiny_llama))
    np.testing.assert_allclose(a.margins, b.margins, atol=1e-5, rtol=0)


@pytest.mark.slow
def test_embedded_model_with_disk_offload_equals_the_plain_load(smol, capitals_task, tmp_path):
    dm = {"": "cpu", **{f"model.layers.{b}": "disk" for b in range(12, 18)}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        off = pl.load_model("smollm2-135m", device_map=dm, offload_folder=tmp_path)
    assert off.blocks[14].mlp.up_proj.weight.device.type == "meta"
    task = pl.load_task(capitals_task, name="capitals4")
    a, b = (pl.decision_trace(pl.prune(m, [20, 21]), task, n_boot=100) for m in (off, smol))
    np.testing.assert_allclose(a.margins, b.margins, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kw, match", [
    (dict(device_map={"": "cuda:3"}), r"cuda:3"),
    (dict(device_map="cuda:3"), r"cuda:3"),
    (dict(device_map={"model.layers.0": "cpu", "model.blocks.1": "cpu", "": "cpu"}), r"model\.blocks\.1.*does not have"),
    (dict(device_map={"model.layers.0": "cpu", "lm_head": "cpu"}), r"without a device"),
    (dict(device_map={"": "cpu", "model.layers.1": "disk"}), r"offload_folder"),
    (dict(device_map={"": "tpu"}), r"not a device name"),
    (dict(device_map="auto", max_memory={"cpu": "lots"}), r"not a size"),
    (dict(max_memory={"cpu": "1GiB"}), r"only applies with device_map"),
    (dict(device_map="auto", device="cpu"), r"not both"),
])
def test_bad_placement_is_refused_before_any_weights_load(kw, match, tiny_llama_dir, monkeypatch):
    import transformers

    def no_load(*a, **k):
        raise AssertionError("weights were loaded before the placement was checked")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_load)
    with pytest.raises(pl.errors.ModelError, match=match):
        pl.load_model(tiny_llama_dir, **kw)


def test_fake_out_of_memory_halves_the_batch_and_says_so_once(tiny_llama, capitals_task, monkeypatch):
    """A pass of more than 2 sequences raises CUDA's OOM: the runner halves until it fits, warning once."""
    import phaselens.runner.core as core

    ref = pl.decision_trace(tiny_llama, capitals_task, n_boot=100)
    real = Runner.forward
    sizes = []

    def oom(self, batch, reads, **kw):
        sizes.append(batch.size)
        if batch.size > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (fake)")
        return real(self, batch, reads, **kw)

    monkeypatch.setattr(Runner, "forward", oom)
    monkeypatch.setattr(core, "_OOM_WARNED", False)
    with pytest.warns(RuntimeWarning, match="out of GPU memory") as rec:
        got = pl.decision_trace(tiny_llama, capitals_task, n_boot=100, batch_size=6)
    assert sum("out of GPU memory" in str(w.message) for w in rec) == 1
    assert sizes[0] == 6 and max(s for s in sizes if s <= 2) == 2
    # other batches pad to other widths: float32 rounding of the (x8-scaled) tiny model differs by up to ~1.5e-6
    np.testing.assert_allclose(got.margins, ref.margins, atol=1e-5, rtol=0)
