"""The forward runner: patches that nest and restore, the content-keyed prefix cache, token batching,
concurrent use, and NaN detection. References are plain Hugging Face forwards (no phaselens code)."""

from __future__ import annotations

import threading

import pytest
import torch

import phaselens as pl
from phaselens.runner import Batch, Plan, PrefixCache, Read, Runner, identity, patched, token_batches
from phaselens.runner.masks import pack


def _ids(model: pl.Model, n: int = 3, T: int = 7, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(5, model.W_U.shape[0], (n, T), generator=g)


def _hand_pruned_logits(model: pl.Model, ids: torch.Tensor, removed: set[int]) -> torch.Tensor:
    """The causal LM with ``removed`` layers taken out of a copy of its layer list (no phaselens code)."""
    import copy

    hf = copy.deepcopy(model.hf)
    hf.model.layers = torch.nn.ModuleList([b for i, b in enumerate(hf.model.layers) if i not in removed])
    hf.config.num_hidden_layers = len(hf.model.layers)
    if getattr(hf.config, "layer_types", None):
        hf.config.layer_types = [t for i, t in enumerate(hf.config.layer_types) if i not in removed]
    for i, layer in enumerate(hf.model.layers):
        if hasattr(layer.self_attn, "layer_idx"):
            layer.self_attn.layer_idx = i
    with torch.no_grad():
        return hf(input_ids=ids).logits


def test_nested_plans_run_the_inner_then_restore_the_outer(tiny_llama):
    ids = _ids(tiny_llama)
    blocks = tiny_llama.blocks
    with torch.no_grad():
        dense = tiny_llama.hf(input_ids=ids).logits
        with patched(blocks, Plan(replace={2: identity})):
            outer = tiny_llama.hf(input_ids=ids).logits
            with patched(blocks, Plan(replace={2: identity, 4: identity})):
                inner = tiny_llama.hf(input_ids=ids).logits
            again = tiny_llama.hf(input_ids=ids).logits
        after = tiny_llama.hf(input_ids=ids).logits
    torch.testing.assert_close(outer, _hand_pruned_logits(tiny_llama, ids, {2}), atol=1e-5, rtol=0)
    torch.testing.assert_close(inner, _hand_pruned_logits(tiny_llama, ids, {2, 4}), atol=1e-5, rtol=0)
    assert torch.equal(again, outer) and torch.equal(after, dense)
    assert all("forward" not in b.__dict__ for b in blocks)


def test_a_forward_installed_by_another_library_survives(tiny_llama):
    """accelerate (device_map offload) sets an instance ``forward`` on blocks: a pass must put it back."""
    blk = tiny_llama.blocks[3]
    calls = []
    original = type(blk).forward.__get__(blk)

    def theirs(*a, **k):
        calls.append(1)
        return original(*a, **k)

    blk.forward = theirs
    try:
        ids = _ids(tiny_llama)
        view = pl.prune(tiny_llama, [3])
        pl.decision_trace(view, pl.load_task("capitals", limit=4), n_boot=100)
        assert blk.__dict__["forward"] is theirs
        with torch.no_grad():
            tiny_llama.hf(input_ids=ids)
        assert calls, "the other library's forward no longer runs"
    finally:
        del blk.forward


def test_an_exception_mid_forward_leaves_the_model_clean(tiny_llama):
    ids = _ids(tiny_llama)
    with torch.no_grad():
        ref = tiny_llama.hf(input_ids=ids).logits

    def boom(h):
        raise RuntimeError("boom")

    before = [(dict(b.__dict__.get("forward", {}) and {"f": b.__dict__["forward"]}), dict(b._forward_hooks),
               dict(b._forward_pre_hooks)) for b in tiny_llama.blocks]
    runner = Runner(pl.prune(tiny_llama, [1]))
    with pytest.raises(RuntimeError, match="boom"):
        runner.forward(Batch([0, 1, 2], ids, torch.ones_like(ids)), {"h": Read((5,), "out", "last")},
                       edits=Plan(after={3: boom}))
    after = [(dict(b.__dict__.get("forward", {}) and {"f": b.__dict__["forward"]}), dict(b._forward_hooks),
              dict(b._forward_pre_hooks)) for b in tiny_llama.blocks]
    assert after == before  # no patch and no hook of the failed pass is left behind
    with torch.no_grad():
        assert torch.equal(tiny_llama.hf(input_ids=ids).logits, ref)


def test_a_forward_replaced_mid_pass_is_named_and_the_other_blocks_are_still_restored(tiny_llama):
    """Someone replaces one patched block's forward during a pass: that one is left as they set it (named in the
    error), and every other patched block gets its own forward back."""
    blocks = tiny_llama.blocks
    ids = _ids(tiny_llama)
    with torch.no_grad():
        ref = tiny_llama.hf(input_ids=ids).logits
    theirs = lambda *a, **k: None  # noqa: E731
    with pytest.raises(pl.PhaselensError, match="replaced by someone else"):
        with patched(blocks, Plan(replace={2: identity, 4: identity})):
            blocks[4].forward = theirs
    try:
        assert "forward" not in blocks[2].__dict__  # restored although block 4 (popped first) failed
        assert blocks[4].__dict__["forward"] is theirs
    finally:
        del blocks[4].forward
    with torch.no_grad():
        assert torch.equal(tiny_llama.hf(input_ids=ids).logits, ref)
    with patched(blocks, Plan(replace={2: identity})):  # the per-module stacks are still paired
        pass
    assert all("forward" not in b.__dict__ for b in blocks)


def test_one_cache_handed_to_two_models_never_replays_across_them(tiny_llama):
    """Same batch, same (empty) view signature, different weights: the second model runs from block 0 and gives
    its own plain Hugging Face hidden state, not the first model's replayed activations."""
    import copy

    other_hf = copy.deepcopy(tiny_llama.hf)
    with torch.no_grad():
        for p in other_hf.model.layers[0].parameters():
            p.mul_(-1.0)
    other_hf.tokenizer = tiny_llama.tokenizer
    other = pl.load_model(other_hf)
    ids = _ids(tiny_llama, seed=3)
    mask = torch.ones_like(ids)
    reads = {"h": Read((4,), "out", "last")}
    cache = PrefixCache()
    Runner(pl.ModelView(tiny_llama), cache=cache).forward(Batch([0, 1, 2], ids, mask), reads)
    cache.recording = False
    got = Runner(pl.ModelView(other), cache=cache).forward(Batch([0, 1, 2], ids, mask), reads)["h"][4]
    with torch.no_grad():
        ref = other_hf(input_ids=ids, output_hidden_states=True).hidden_states[5][:, -1]  # block 4's output
        mine = tiny_llama.hf(input_ids=ids, output_hidden_states=True).hidden_states[5][:, -1]
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)
    assert not torch.allclose(ref, mine, atol=1e-3)  # the two models differ where the cache would have replayed


def test_two_batches_of_equal_shape_never_share_cache_entries(tiny_llama):
    """Same shape, same last tokens, different content: each batch replays only its own stored inputs."""
    a = _ids(tiny_llama, seed=1)
    b = a.clone()
    b[:, 1] = (b[:, 1] + 1) % tiny_llama.W_U.shape[0]  # differ only in the second token
    mask = torch.ones_like(a)
    cache = PrefixCache()
    dense = Runner(pl.ModelView(tiny_llama), cache=cache)
    reads = {"h": Read((5,), "out", "last")}
    dense.forward(Batch([0, 1, 2], a, mask), reads)  # records a's block inputs
    cache.recording = False
    pruned = Runner(pl.prune(tiny_llama, [4]), cache=cache)
    got_b = pruned.forward(Batch([0, 1, 2], b, mask), reads)["h"][5]  # nothing of b is stored: runs from block 0
    ref_b = Runner(pl.prune(tiny_llama, [4])).forward(Batch([0, 1, 2], b, mask), reads)["h"][5]
    assert torch.equal(got_b, ref_b)
    got_a = pruned.forward(Batch([0, 1, 2], a, mask), reads)["h"][5]  # replays a's input of block 4
    ref_a = Runner(pl.prune(tiny_llama, [4])).forward(Batch([0, 1, 2], a, mask), reads)["h"][5]
    assert torch.equal(got_a, ref_a)


def test_the_cache_never_replays_past_a_different_block(tiny_llama):
    """A view that differs at block 1 must not replay inputs recorded for block 3 under another view."""
    ids = _ids(tiny_llama, seed=2)
    batch = Batch([0, 1, 2], ids, torch.ones_like(ids))
    cache = PrefixCache()
    reads = {"h": Read(tuple(range(6)), "out", "last")}
    Runner(pl.prune(tiny_llama, [4]), cache=cache).forward(batch, reads)
    got = Runner(pl.prune(tiny_llama, [1, 4]), cache=cache).forward(batch, reads)["h"]
    ref = Runner(pl.prune(tiny_llama, [1, 4])).forward(batch, reads)["h"]
    assert all(torch.equal(got[b], ref[b]) for b in ref)


def test_token_batches_keep_the_budget():
    lengths = [5, 30, 7, 7, 12, 3, 30, 1]
    groups = token_batches(lengths, max_tokens=40)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    for g in groups:
        assert len(g) * max(lengths[i] for i in g) <= 40 or len(g) == 1
    assert all(len(g) <= 2 for g in token_batches(lengths, max_tokens=1000, max_rows=2))
    with pytest.raises(pl.errors.RunnerError, match="max_tokens"):
        token_batches(lengths, max_tokens=0)


def test_two_threads_on_one_model_get_a_clear_error(tiny_llama):
    ids = _ids(tiny_llama)
    batch = Batch([0, 1, 2], ids, torch.ones_like(ids))
    inside, release = threading.Event(), threading.Event()

    def hold(h):
        inside.set()
        release.wait(10)
        return h

    def first():
        Runner(tiny_llama).forward(batch, {"h": Read((5,), "out", "last")}, edits=Plan(after={2: hold}))

    t = threading.Thread(target=first)
    t.start()
    assert inside.wait(10)
    try:
        with pytest.raises(pl.errors.RunnerError, match="another thread"):
            Runner(tiny_llama).forward(batch, {"h": Read((5,), "out", "last")})
    finally:
        release.set()
        t.join(10)
    assert all("forward" not in b.__dict__ for b in tiny_llama.blocks)


def test_nan_is_stopped_and_named_at_its_block(tiny_llama):
    ids = _ids(tiny_llama)
    batch = Batch([0, 1, 2], ids, torch.ones_like(ids))
    bad = Plan(after={2: lambda h: h * float("nan")}, names={2: "block 2 with a broken edit"})
    with pytest.raises(pl.errors.NonFiniteError, match=r"first in the output of block 2 .*broken edit"):
        Runner(tiny_llama).forward(batch, {"h": Read((5,), "out", "last")}, edits=bad)
    W = torch.eye(tiny_llama.d_model)
    W[0, 0] = float("inf")
    with pytest.raises(pl.errors.RecoveryError, match="NaN or Inf"):
        pl.ModelView(tiny_llama, (2, 3), {(2, 4): W})


def test_kept_leaves_out_each_rows_first_token_padded_and_packed():
    """``Batch.kept(False)`` over the real tokens in row-major order, against a loop over the rows: a padded batch
    drops column 0 of each row; a packed row (prompt + continuations, positions restarting after the prompt) drops
    only its prompt's first token, the one sequence start it holds."""
    ids = torch.tensor([[5, 6, 7, 0], [8, 9, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    b = Batch(rows=[0, 1], ids=ids, mask=mask)
    want = [j != 0 for r in range(2) for j in range(int(mask[r].sum()))]
    assert b.kept(False).tolist() == want and b.kept(True).tolist() == [True] * 5

    rows = [pack([1, 2, 3], [[4, 5], [6]]), pack([7, 8], [[9], [10, 11]])]
    T = max(len(p.ids) for p in rows)
    pad = lambda xs, v: [x + [v] * (T - len(x)) for x in xs]  # noqa: E731
    pb = Batch(rows=[0, 1], ids=torch.tensor(pad([p.ids for p in rows], 0)),
               mask=torch.tensor(pad([[1] * len(p.ids) for p in rows], 0)),
               positions=torch.tensor(pad([p.positions for p in rows], 0)),
               segments=torch.tensor(pad([p.segments for p in rows], -1)))
    assert pb.packed
    want = [j != 0 for p in rows for j in range(len(p.ids))]  # the prompt's first token is the row's first
    assert pb.kept(False).tolist() == want and sum(want) == len(want) - 2


def test_a_bounded_prefix_cache_gives_the_same_numbers(tiny_llama):
    """max_bytes: past the bound a block input is not stored (one warning), the cache stays within it, and passes
    that replay what it kept give the numbers of a full pass; a bad bound is refused."""
    ids = _ids(tiny_llama, seed=4)
    batch = Batch([0, 1, 2], ids, torch.ones_like(ids))
    reads = {"h": Read(tuple(range(6)), "out", "last")}
    one = ids.numel() * tiny_llama.d_model * 4  # one block input of this batch, float32
    cache = PrefixCache(max_bytes=3 * one + 10)
    with pytest.warns(UserWarning, match="max_bytes"):
        Runner(pl.prune(tiny_llama, [4]), cache=cache).forward(batch, reads)
    assert cache.nbytes == 3 * one and cache.dropped > 0
    for cut in ([4], [2, 4], [5]):
        got = Runner(pl.prune(tiny_llama, cut), cache=cache).forward(batch, reads)["h"]
        ref = Runner(pl.prune(tiny_llama, cut)).forward(batch, reads)["h"]
        assert all(torch.equal(got[b], ref[b]) for b in ref)
    assert cache.nbytes <= 3 * one + 10
    assert PrefixCache().max_bytes > 0
    with pytest.raises(pl.PhaselensError, match="max_bytes"):
        PrefixCache(max_bytes=-1)


def test_default_memory_bounds_take_this_process_share_of_the_machine(monkeypatch):
    """PHASELENS_MEMORY_SHARE scales the RAM defaults: a CPU prefix cache takes half the available RAM times the
    share, the layer schedule's RAM wave budget a quarter times it (16 GiB available, written out by hand); a share
    outside (0, 1] is refused naming the variable."""
    import phaselens.runner.cache as cache_mod
    import phaselens.runner.layered as layered
    from phaselens.runner.layered import Schedule, default_budget

    gib = 1 << 30
    monkeypatch.setattr(cache_mod, "available_memory", lambda: 16 * gib)
    monkeypatch.setattr(layered, "available_memory", lambda: 16 * gib)
    monkeypatch.delenv("PHASELENS_MEMORY_SHARE", raising=False)
    assert PrefixCache().max_bytes == 8 * gib
    assert default_budget(Schedule("layer"), torch.device("cpu")) == 4 * gib
    monkeypatch.setenv("PHASELENS_MEMORY_SHARE", "0.25")
    assert PrefixCache().max_bytes == 2 * gib
    assert default_budget(Schedule("layer"), torch.device("cpu")) == gib
    for bad in ("0", "1.5", "-0.1", "half", "nan"):
        monkeypatch.setenv("PHASELENS_MEMORY_SHARE", bad)
        with pytest.raises(pl.PhaselensError, match=f"PHASELENS_MEMORY_SHARE='{bad}'.*in \\(0, 1\\]"):
            PrefixCache()


def test_default_gpu_bounds_take_this_process_share_of_the_gpu(monkeypatch):
    """PHASELENS_GPU_SHARE scales the GPU defaults: a GPU prefix cache takes half the free GPU memory times the share,
    the layer schedule's device wave budget half times it (12 GiB free, written out by hand; no GPU needed: the free
    memory is read through torch.cuda.mem_get_info, replaced here)."""
    from phaselens.runner.layered import Schedule, default_budget

    gib = 1 << 30
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (12 * gib, 80 * gib))
    monkeypatch.delenv("PHASELENS_GPU_SHARE", raising=False)
    assert PrefixCache(device="cuda:0").max_bytes == 6 * gib
    assert default_budget(Schedule("layer", act_store="device"), torch.device("cuda:0")) == 6 * gib
    monkeypatch.setenv("PHASELENS_GPU_SHARE", "0.25")
    assert PrefixCache(device="cuda:0").max_bytes == int(1.5 * gib)
    assert default_budget(Schedule("layer", act_store="device"), torch.device("cuda:0")) == int(1.5 * gib)
    monkeypatch.setenv("PHASELENS_MEMORY_SHARE", "0.5")  # the RAM share leaves GPU bounds alone
    assert PrefixCache(device="cuda:0").max_bytes == int(1.5 * gib)
    for bad in ("0", "2", "x"):
        monkeypatch.setenv("PHASELENS_GPU_SHARE", bad)
        with pytest.raises(pl.PhaselensError, match=f"PHASELENS_GPU_SHARE='{bad}'.*in \\(0, 1\\]"):
            PrefixCache(device="cuda:0")


def _shares():
    from phaselens.runner.cache import gpu_share, memory_share

    return memory_share(), gpu_share()


def test_a_process_pool_worker_takes_its_part_of_the_memory(tmp_path, monkeypatch):
    """The processes executor's n workers each get 1 / n of this process's RAM and GPU shares (read inside a
    worker)."""
    from types import SimpleNamespace

    from phaselens.study.executors import ProcessExecutor

    monkeypatch.setenv("PHASELENS_MEMORY_SHARE", "0.5")
    monkeypatch.delenv("PHASELENS_GPU_SHARE", raising=False)
    ex = ProcessExecutor(SimpleNamespace(workers=None, num_cpus=1.0, models_per_worker=1), str(tmp_path), workers=2)
    try:
        assert ex.pool.submit(_shares).result(timeout=120) == (0.25, 0.5)
    finally:
        ex.close()
