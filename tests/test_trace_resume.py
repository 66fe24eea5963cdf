"""``decision_trace(out=...)``: a trace read in units of items, each saved as it finishes, resumed after a kill.

The numbers are checked against a plain trace (itself checked against Hugging Face logits in test_lens.py and
TransformerLens in test_layers.py), the resumption by counting which units a rerun reads.
"""

import dataclasses
import json

import numpy as np
import pytest

import phaselens as pl
import phaselens.trace as trace_mod
from phaselens.errors import PhaselensError, RunFolderError


@pytest.fixture
def small_units(monkeypatch):
    monkeypatch.setattr(trace_mod, "TRACE_CHUNK", 4)  # the 6 capitals items in 2 units of 4 and 2


def test_units_give_the_plain_trace(tiny_llama, capitals_task, small_units, tmp_path):
    plain = pl.decision_trace(tiny_llama, capitals_task, n_boot=200)
    got = pl.decision_trace(tiny_llama, capitals_task, n_boot=200, out=tmp_path)
    n = len(capitals_task.items)
    units = sorted(p.name for p in (tmp_path / ".phaselens" / "trace").glob("items_*.json"))
    assert units == [f"items_{a:06d}.json" for a in range(0, n, 4)] and n == 6
    assert got.logits.shape == plain.logits.shape
    np.testing.assert_allclose(got.logits, plain.logits, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(got.answers, plain.answers)
    np.testing.assert_array_equal(got.mask, plain.mask)
    assert got.item_ids == plain.item_ids and got.complete and got.n_boot == 200
    np.testing.assert_allclose(got.margins, plain.margins, rtol=1e-5, atol=1e-6)
    assert got.transition().layer == plain.transition().layer


def test_a_killed_trace_reruns_only_its_unfinished_units(tiny_llama, capitals_task, small_units, tmp_path, monkeypatch):
    real, calls = trace_mod.option_logits, []

    def dies_on_third(view, task, **kw):
        calls.append(len(task.items))
        if len(calls) == 2:
            raise KeyboardInterrupt  # the run is killed while it reads the second unit
        return real(view, task, **kw)

    monkeypatch.setattr(trace_mod, "option_logits", dies_on_third)
    with pytest.raises(KeyboardInterrupt):
        pl.decision_trace(tiny_llama, capitals_task, out=tmp_path)
    monkeypatch.setattr(trace_mod, "option_logits", lambda view, task, **kw: calls.append(len(task.items)) or real(view, task, **kw))
    calls.clear()
    got = pl.decision_trace(tiny_llama, capitals_task, out=tmp_path)
    n = len(capitals_task.items)
    assert calls == [n - 4]  # the finished unit was read back, only the last one was computed
    plain = pl.decision_trace(tiny_llama, capitals_task)
    np.testing.assert_allclose(got.logits, plain.logits, rtol=1e-5, atol=1e-5)


def test_an_altered_unit_is_recomputed(tiny_llama, capitals_task, small_units, tmp_path):
    first = pl.decision_trace(tiny_llama, capitals_task, out=tmp_path)
    unit = tmp_path / ".phaselens" / "trace" / "items_000004.json"
    doc = json.loads(unit.read_text())
    doc["data"]["task"] = "something else"
    unit.write_text(json.dumps(doc))
    with pytest.warns(UserWarning, match="items_000004"):
        again = pl.decision_trace(tiny_llama, capitals_task, out=tmp_path)
    np.testing.assert_array_equal(again.logits, first.logits)
    assert again.task == first.task


def test_another_model_task_or_blocks_is_refused_in_the_same_folder(tiny_llama, tiny_gemma, capitals_task, small_units,
                                                                     tmp_path, count_forwards):
    pl.decision_trace(tiny_llama, capitals_task, out=tmp_path)
    for kw in (dict(model=tiny_llama, task=capitals_task.with_items(capitals_task.items[:4])),
               dict(model=pl.prune(tiny_llama, [2]), task=capitals_task), dict(model=tiny_gemma, task=capitals_task),
               dict(model=tiny_llama, task=capitals_task, blocks="last")):
        with count_forwards(tiny_llama) as c, count_forwards(tiny_gemma) as g, pytest.raises(RunFolderError, match="arguments|differ"):
            pl.decision_trace(kw.pop("model"), kw.pop("task"), out=tmp_path, **kw)
        assert c.n == g.n == 0


def test_a_bad_out_is_a_clear_error(tiny_llama, capitals_task, tmp_path, count_forwards):
    with count_forwards(tiny_llama) as c, pytest.raises(PhaselensError, match="out must be a folder path"):
        pl.decision_trace(tiny_llama, capitals_task, out=3)
    (tmp_path / "f").write_text("x")
    with pytest.raises(RunFolderError, match="is a file, not a folder"):
        pl.decision_trace(tiny_llama, capitals_task, out=tmp_path / "f")
    assert c.n == 0


def test_units_keep_the_whole_tasks_fewshot_prompts(monkeypatch):
    """lm-eval's sampler draws each item's shots in item order: a unit's prompts are the whole task's."""
    task = pl.load_task("arc-easy", limit=20, sample=False, shots=2)
    parts = [trace_mod._items_of(task, a, a + 6) for a in range(0, 20, 6)]
    assert [p.prompt(i) for p in parts for i in range(len(p.items))] == [task.prompt(i) for i in range(20)]
    fresh = task.with_items(task.items[6:12])  # what a unit without the whole task's draws would show
    assert [fresh.prompt(i) for i in range(6)] != [task.prompt(i) for i in range(6, 12)]


def test_join_items_pads_option_slots(tiny_llama):
    """Parts with 2 and 4 options: the joined trace's per-item margins are the parts', computed by hand."""
    rng = np.random.default_rng(0)

    def part(n, k, ids):
        z = rng.normal(size=(3, n, k)).astype(np.float32)
        return pl.DecisionTrace(model="m", task="t", format="cloze", n_blocks=3, blocks=np.arange(3), logits=z,
                                answers=np.zeros(n, int), mask=np.ones((n, k), bool), option_chars=np.ones((n, k), int),
                                item_ids=ids)

    a, b = part(4, 2, list("abcd")), part(3, 4, list("efg"))
    j = trace_mod.join_items([a, b], n_boot=100, seed=3)
    assert j.logits.shape == (3, 7, 4) and j.item_ids == list("abcdefg") and (j.n_boot, j.seed) == (100, 3)
    assert not j.mask[:4, 2:].any() and np.isneginf(j.logits[:, :4, 2:]).all()

    def margin(z):  # correct option's log-softmax minus the best other option's, over the options present
        lp = z - np.logaddexp.reduce(z, axis=-1, keepdims=True)
        return lp[..., 0] - lp[..., 1:].max(-1)

    want = np.concatenate([margin(a.logits), margin(b.logits)], axis=1).T  # [N, L]
    np.testing.assert_allclose(j.item_margins, want, rtol=1e-5, atol=1e-5)
    with pytest.raises(PhaselensError, match="same blocks"):
        trace_mod.join_items([a, dataclasses.replace(a, blocks=np.array([0, 1, 5]))])
