"""The layer schedule (issue 24): every batch through block 0, then every batch through block 1, ... It changes no
number: each pass below is run under both schedules and must agree (bit-equality is expected; 1e-5 is allowed).
With accelerate's disk offload, a counting wrapper around its offloaded-weight loader sees every block tensor read
once per wave (the batch schedule: once per batch), and the weights back on the meta device afterwards.
References: the batch schedule (the model's own decoder forward), and the plain load of the same weights."""

from __future__ import annotations

import collections
import copy
import types
import warnings

import numpy as np
import pytest
import torch

import phaselens as pl
from conftest import tiny_model
from phaselens.runner import PrefixCache, Read, Runner, schedule
from phaselens.view import ModelView

NO_TRANSITION = types.SimpleNamespace(layer=None)  # skips the dense-transition trace of noise / ablation


def _close(a, b) -> None:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def tiny_qwen2(smol) -> pl.Model:
    """A small random Qwen2 with sliding-window layers (window 4; blocks 2 and 3 slide)."""
    from transformers import Qwen2Config

    cfg = Qwen2Config(vocab_size=smol.tokenizer.vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, use_sliding_window=True, sliding_window=4,
                      max_window_layers=2, tie_word_embeddings=False)
    assert "sliding_attention" in cfg.layer_types
    return tiny_model(cfg, smol.tokenizer)


def _long_task(n_tokens: int, tokenizer) -> pl.Task:
    """Two items whose prompts run past ``n_tokens`` tokens (Gemma-3's sliding window is 512)."""
    filler = "The river runs north past the old mill, and the bell rings twice at noon. "
    reps = n_tokens // len(tokenizer(filler)["input_ids"]) + 2
    items = [{"question": filler * reps + "So the capital of France is", "options": ["Paris", "London", "Rome"], "answer": 0},
             {"question": filler * (reps - 1) + "So the capital of Italy is", "options": ["Paris", "Madrid", "Rome"], "answer": 2}]
    return pl.load_task(items, name="long")


def _numbers(model: pl.Model, task: pl.Task, kind: str, batch_size: int | None = 1, packed: bool = True
             ) -> dict[str, np.ndarray]:
    """Every kind of pass, under schedule ``kind`` (``packed``: also a continuation trace, whose full-vocabulary
    readout at every block is the slow part on a large vocabulary)."""
    L, d = model.n_blocks, model.d_model
    cut = [L // 2, L // 2 + 1]
    g = torch.Generator().manual_seed(1)
    op = torch.eye(d) + 0.01 * torch.randn(d, d, generator=g)
    out: dict[str, np.ndarray] = {}
    with schedule(kind):
        out["dense"] = pl.decision_trace(model, task, n_boot=100, batch_size=batch_size).logits
        out["pruned"] = pl.decision_trace(pl.prune(model, cut), task, n_boot=100, batch_size=batch_size).logits
        recovered = ModelView(model, removed=frozenset(cut), operators={(cut[0], cut[-1] + 1): op})
        out["recovered"] = pl.decision_trace(recovered, task, n_boot=100, batch_size=batch_size).logits
        out["noisy"] = pl.inject_noise(model, task, blocks=[1], eps=0.5, seeds=1, n_boot=100, batch_size=batch_size,
                                       transition=NO_TRANSITION).item_margins
        out["ablated"] = pl.ablate(model, task, blocks=[L - 2], mode="zero", pairs=False, n_boot=100, batch_size=batch_size,
                                   transition=NO_TRANSITION).single_margins
        cont = pl.load_task(task, format="continuation")
        if packed:
            out["packed"] = pl.decision_trace(model, cont, n_boot=100, batch_size=batch_size).logits
        # prefix cache: a dense pass records every block input, a pruned view replays up to its first cut
        cache = PrefixCache()
        seqs = [model.tokenizer(it.question)["input_ids"] for it in task.items][:2]
        reads = {"h": Read(tuple(range(L)), "out", "last"), "m": Read((L - 1,), "mlp", "last")}
        first = [o for _, o in Runner(model, cache=cache).passes(seqs, reads, batch_size=batch_size)]
        cache.recording = False
        again = [o for _, o in Runner(pl.prune(model, [L - 2]), cache=cache).passes(seqs, reads, batch_size=batch_size)]
        assert cache.nbytes > 0
        out["cached"] = np.stack([torch.stack([o["h"][b] for b in range(L) if b != L - 2]).numpy() for o in again])
        out["recorded"] = np.stack([torch.stack(list(o["h"].values()) + [o["m"][L - 1]]).numpy() for o in first])
    return out


def _equal_under_both(model: pl.Model, task: pl.Task, **kw) -> None:
    a, b = _numbers(model, task, "batch", **kw), _numbers(model, task, "layer", **kw)
    for k in a:
        _close(a[k], b[k])
        assert np.array_equal(a[k], b[k], equal_nan=True), f"{k}: the schedules agree within 1e-5 but not bit for bit"


@pytest.mark.slow
def test_schedules_agree_on_smollm2(smol, capitals_task):
    _equal_under_both(smol, pl.load_task(capitals_task.items[:2], name="cap2"))


@pytest.mark.slow
def test_schedules_agree_on_gemma3_past_its_sliding_window(gemma):
    task = _long_task(600, gemma.tokenizer)
    enc = [len(gemma.tokenizer(it.question)["input_ids"]) for it in task.items]
    assert min(enc) > 512 + 20
    _equal_under_both(gemma, task, batch_size=None, packed=False)  # one padded batch; packed rows: the tiny Qwen2


def test_schedules_agree_on_qwen2_with_sliding_layers(tiny_qwen2, capitals_task):
    _equal_under_both(tiny_qwen2, capitals_task)


# ----------------------------------------------------------------------------- offloaded weights, read once per wave
@pytest.fixture(scope="module")
def all_disk(tiny_llama_dir, tmp_path_factory) -> pl.Model:
    dm = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", **{f"model.layers.{b}": "disk" for b in range(6)},
          "model.norm": "cpu", "lm_head": "cpu"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pl.load_model(tiny_llama_dir, device_map=dm, offload_folder=tmp_path_factory.mktemp("offload"))


@pytest.fixture()
def reads(monkeypatch):
    """Counts every read of accelerate's offloaded-weight loader, by tensor name."""
    from accelerate.utils import offload

    counts: collections.Counter = collections.Counter()
    real = offload.OffloadedWeightsLoader.__getitem__

    def counting(self, key):
        counts[key] += 1
        return real(self, key)

    monkeypatch.setattr(offload.OffloadedWeightsLoader, "__getitem__", counting)
    return counts


def _block_reads(counts) -> collections.Counter:
    return collections.Counter(v for k, v in counts.items() if ".layers." in k)


def test_each_offloaded_weight_is_read_once_per_wave(all_disk, tiny_llama, capitals_task, reads, tmp_path):
    plain = pl.decision_trace(tiny_llama, capitals_task, n_boot=100, batch_size=2)  # 3 batches
    assert pl.runner.is_offloaded(all_disk)
    pl.decision_trace(all_disk, capitals_task, n_boot=100, batch_size=2, schedule="layer")  # the per-model check, once
    n_tensors = len(all_disk.blocks[0].state_dict()) * 6
    from phaselens.encoding import encode
    from phaselens.runner.layered import batch_bytes

    batches = Runner(all_disk).batches(encode(capitals_task, all_disk.tokenizer).prompts, batch_size=2)
    sizes = [batch_bytes(b, all_disk.d_model, 4) for b in batches]
    small = sizes[0]  # a budget of the first (largest) batch: it alone, then the other two together
    assert len(batches) == 3 and sizes[0] < sizes[0] + sizes[1] and sizes[1] + sizes[2] <= small
    runs = {}
    for kind, budget, store, waves in (("batch", None, None, 3), ("layer", None, None, 1), ("auto", None, None, 1),
                                       ("layer", small, None, 2), ("layer", None, tmp_path / "acts", 1)):
        reads.clear()
        t = pl.decision_trace(all_disk, capitals_task, n_boot=100, batch_size=2, schedule=kind, act_budget=budget,
                              act_store=store)
        got = _block_reads(reads)
        assert got == collections.Counter({waves: n_tensors}), (kind, budget, got)
        runs[(kind, budget, store)] = t.logits
        assert all(p.device.type == "meta" for b in all_disk.blocks for p in b.parameters())
    for logits in runs.values():
        assert np.array_equal(logits, plain.logits, equal_nan=True)
    assert not list((tmp_path / "acts").iterdir())  # the wave's memmaps are removed


def test_the_per_model_check_reads_each_offloaded_weight_once(all_disk, reads):
    """The check runs the model's own decoder and the layer schedule's block calls in one pass: one read per
    offloaded tensor (it read them twice before), the weights back off-device, and the verdict cached."""
    from phaselens.runner import layered

    layered._CHECKED.pop(all_disk.hf, None)
    reads.clear()
    assert layered.check_model(Runner(all_disk), layered.Schedule("layer")) is None
    n_tensors = len(all_disk.blocks[0].state_dict()) * 6
    assert _block_reads(reads) == collections.Counter({1: n_tensors})
    assert all(p.device.type == "meta" for b in all_disk.blocks for p in b.parameters())
    reads.clear()
    assert layered.check_model(Runner(all_disk), layered.Schedule("layer")) is None and not reads  # once per model


def test_bad_schedule_arguments_are_refused_before_any_weights_load(all_disk, capitals_task, reads, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    cases = [(dict(schedule="diagonal"), r"schedule='diagonal'"), (dict(act_budget=0), r"act_budget=0"),
             (dict(act_budget=True), r"act_budget=True"), (dict(schedule="layer", act_budget=1000), r"act_budget=1000.*too small"),
             (dict(act_store=tmp_path / "file.txt"), r"file\.txt")]
    (tmp_path / "file.txt").write_text("x")
    import os

    if os.geteuid() != 0:  # root writes anywhere
        cases.append((dict(act_store=locked / "sub"), r"locked"))
    for kw, match in cases:
        reads.clear()
        with pytest.raises(pl.PhaselensError, match=match):
            pl.decision_trace(all_disk, capitals_task, n_boot=100, batch_size=2, **kw)
        assert not reads, kw


def test_a_decoder_feeding_block_arguments_from_earlier_blocks_is_refused(tiny_llama, capitals_task):
    """A toy decoder scales block b's rotary table by a function of block b-1's output: recorded arguments differ."""
    from transformers.modeling_outputs import BaseModelOutputWithPast

    hf = copy.deepcopy(tiny_llama.hf)
    hf.tokenizer = tiny_llama.tokenizer
    m = pl.load_model(hf)
    dec = m.decoder

    def forward(input_ids=None, attention_mask=None, position_ids=None, use_cache=False, **kw):
        h = dec.embed_tokens(input_ids)
        pos = torch.arange(h.shape[1])[None]
        for layer in dec.layers:
            cos, sin = dec.rotary_emb(h, pos)
            s = 1 + 0.5 * torch.tanh(h.mean())
            h = layer(h, attention_mask=None, position_embeddings=(cos * s, sin * s), position_ids=pos)
            h = h[0] if isinstance(h, tuple) else h
        return BaseModelOutputWithPast(last_hidden_state=dec.norm(h))

    dec.forward = forward
    with pytest.raises(pl.PhaselensError, match=r"schedule='layer' is refused.*block \d+"):
        pl.decision_trace(m, capitals_task, n_boot=100, schedule="layer")
    pl.decision_trace(m, capitals_task, n_boot=100, schedule="auto")  # not offloaded: batch schedule, no check


def test_nonfinite_under_the_layer_schedule_names_the_block(tiny_llama):
    seqs = [[5, 9, 14, 2, 7], [3, 8, 1]]
    bad = pl.runner.Plan(after={2: lambda h: h * float("nan")}, names={2: "block 2 with a broken edit"})
    with pytest.raises(pl.errors.NonFiniteError, match=r"first in the output of block 2 .*broken edit"):
        list(Runner(tiny_llama, schedule="layer").passes(seqs, {"h": Read((4,), "out", "last")}, edits=bad))


def test_an_offloaded_head_is_read_by_rows_for_a_readout(tiny_llama_dir, tiny_llama, capitals_task, reads, tmp_path):
    dm = {"": "cpu", "model.layers.2": "disk", "lm_head": "disk"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = pl.load_model(tiny_llama_dir, device_map=dm, offload_folder=tmp_path)
    assert m.unembed.weight.device.type == "meta" and not m._offloaded  # the load's check did not keep it
    reads.clear()
    got = pl.decision_trace(m, capitals_task, n_boot=100)
    assert reads["lm_head.weight"] == 0 and not m._offloaded
    assert np.array_equal(got.logits, pl.decision_trace(tiny_llama, capitals_task, n_boot=100).logits, equal_nan=True)
