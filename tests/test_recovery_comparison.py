"""``compare_recovery(n=)`` when the criterion chooses a cut a method cannot recover (ReplaceMe at a cut that starts at
block 0): the method is skipped and named with its reason, the other methods' numbers are those of a hand-written
forward of the pruned model, and ``skipped`` survives a save / load round trip (a version-1 file, written before
methods could be skipped, loads with none skipped)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import phaselens as pl
from phaselens.calibration import tokenize
from phaselens.encoding import encode_task

pytestmark = pytest.mark.timeout(300)

SEQ = 64
#: ReplaceMe's own words (phaselens.recovery.method), written out by hand
WHY = "span (0, 2): ReplaceMe regresses the MLP branch of the block before the cut, and this cut starts at block 0"


@pytest.fixture(scope="module")
def task():
    return pl.load_task("capitals", limit=6, seed=0)


def kw():
    return dict(calibration=pl.load_calibration()[:8], heldout=pl.heldout_texts()[:6], seq_len=SEQ, n_boot=200,
                boot_seed=0)


@pytest.fixture(scope="module")
def skipped(tiny_llama, task, first_blocks):
    return pl.compare_recovery(tiny_llama, [task], n=2, criterion=first_blocks,
                               methods=["identity", "replaceme", "ghosted"], **kw())


def test_a_method_refusing_the_chosen_cut_is_skipped_with_its_reason(skipped, first_blocks):
    r = skipped
    assert r.blocks == [0, 1] and r.criterion == first_blocks
    assert r.methods == ["identity", "ghosted"]
    assert r.skipped == {"replaceme": WHY}
    assert r.nll.shape == (2, 6) and r.tasks[0].correct.shape == (2, 6) and r.fit_relative_error.shape == (2,)
    assert f"Skipped replaceme: {WHY}." in r.summary()
    with pytest.raises(pl.errors.NotFoundError, match="'replaceme' was skipped: span \\(0, 2\\)"):
        r.perplexity("replaceme")
    assert set(r.to_pandas().method) == {"dense", "identity", "ghosted"}
    assert [e.name for e in r.effects()] == ["identity − ghosted perplexity", "ghosted − identity accuracy"]


def test_the_other_methods_numbers_are_a_hand_written_forward(skipped, tiny_llama, task):
    """Plain pruning (identity): accuracy counted and per-passage NLL summed from the kept HF decoder layers called by
    hand; Ghosted Layers: the same numbers as asking for the cut and the methods that can recover it directly."""
    from test_pruning import hand_logits, hand_states  # noqa: PLC0415 (shared hand-written forward)

    r, kept = skipped, [2, 3, 4, 5]
    enc = encode_task(task, tiny_llama.tokenizer)
    right = 0
    for i, ids in enumerate(enc.prompts):
        z = hand_logits(tiny_llama, hand_states(tiny_llama, ids, kept)[-1][-1])
        k = int(enc.option_mask[i].sum())
        right += int(torch.argmax(z[enc.option_ids[i, :k]]).item() == int(enc.answers[i]))
    assert r.accuracy("identity") == right / 6
    for p, ids in enumerate(tokenize(tiny_llama.tokenizer, pl.heldout_texts()[:6], SEQ)):
        z = hand_logits(tiny_llama, hand_states(tiny_llama, ids, kept)[-1]).double()
        want = torch.nn.functional.cross_entropy(z[:-1], torch.tensor(ids[1:]), reduction="sum").item()
        assert r.tokens[p] == len(ids) - 1 and r.nll[0, p] == pytest.approx(want, rel=1e-4)
    direct = pl.compare_recovery(tiny_llama, [task], "0-1", methods=["identity", "ghosted"], **kw())
    np.testing.assert_array_equal(r.nll, direct.nll)
    np.testing.assert_array_equal(r.tasks[0].correct, direct.tasks[0].correct)
    np.testing.assert_array_equal(r.fit_relative_error, direct.fit_relative_error)
    assert direct.skipped == {}


@pytest.mark.bad_input
def test_a_given_cut_a_method_refuses_is_still_an_error(tiny_llama, task, first_blocks):
    with pytest.raises(pl.errors.RecoveryError, match=r"replaceme needs a block before the cut span \(0, 2\)"):
        pl.compare_recovery(tiny_llama, [task], "0-1", methods=["identity", "replaceme"], **kw())
    with pytest.raises(pl.errors.RecoveryError, match=r"no method of \['replaceme'\] can recover the cut \[0, 1\] "
                                                      r"chosen by first-blocks: replaceme \(span \(0, 2\)"):
        pl.compare_recovery(tiny_llama, [task], n=2, criterion=first_blocks, methods=["replaceme"], **kw())


def test_skipped_survives_save_and_load_and_a_version_1_file_loads_with_none_skipped(skipped, tmp_path):
    path = skipped.save(tmp_path, "rc")
    back = pl.load_result(path)
    assert back.skipped == {"replaceme": WHY} and back.methods == ["identity", "ghosted"]
    assert back.to_json() == skipped.to_json() and back.summary() == skipped.summary()
    doc = json.loads(path.read_text())
    assert doc["data"]["__v__"] == 2 and doc["data"]["skipped"] == {"replaceme": WHY}
    # the file as version 1 wrote it: no skipped field
    del doc["data"]["skipped"]
    doc["data"]["__v__"] = 1
    old = tmp_path / "old.json"  # its side file renamed after it, as phaselens names side files
    (tmp_path / doc["arrays"]["file"]).replace(tmp_path / doc["arrays"]["file"].replace("rc.", "old.", 1))
    doc["arrays"]["file"] = doc["arrays"]["file"].replace("rc.", "old.", 1)
    old.write_text(json.dumps(doc))
    v1 = pl.load_result(old)
    assert v1.skipped == {} and v1.methods == ["identity", "ghosted"] and "Skipped" not in v1.summary()
    np.testing.assert_array_equal(v1.nll, skipped.nll)
    doc["data"]["__v__"] = 3  # a later format than this phaselens reads
    old.write_text(json.dumps(doc))
    with pytest.raises(pl.errors.ResultsError, match="version 3 of its format"):
        pl.load_result(old)


def test_one_cut_on_several_tasks_fits_once(tiny_llama, task, monkeypatch):
    """Separate calls on the same cut (a study's one job per task) fit and score the held-out text once, and give
    what one call over both tasks gives; another model object, cut or held-out text fits again."""
    import phaselens.experiments.recovery_comparison as rc

    other = pl.load_task("languages", limit=6, seed=0)
    rc._FITS.clear()
    both = pl.compare_recovery(tiny_llama, [task, other], "2-3", methods=["identity", "ghosted"], **kw())
    rc._FITS.clear()
    fits, nlls = [], []
    real_fit, real_nll = rc.fit_recovery, rc.passage_nll
    monkeypatch.setattr(rc, "fit_recovery", lambda *a, **k: fits.append(1) or real_fit(*a, **k))
    monkeypatch.setattr(rc, "passage_nll", lambda *a, **k: nlls.append(1) or real_nll(*a, **k))
    a = pl.compare_recovery(tiny_llama, [task], "2-3", methods=["identity", "ghosted"], **kw())
    b = pl.compare_recovery(tiny_llama, [other], "2-3", methods=["identity", "ghosted"], **kw())
    assert len(fits) == 1 and len(nlls) == 3  # one fit; dense + 2 methods scored once
    for one, k in ((a, 0), (b, 1)):
        np.testing.assert_array_equal(one.nll, both.nll)
        np.testing.assert_array_equal(one.dense_nll, both.dense_nll)
        np.testing.assert_array_equal(one.tasks[0].margins, both.tasks[k].margins)
        np.testing.assert_array_equal(one.fit_relative_error, both.fit_relative_error)
    pl.compare_recovery(tiny_llama, [task], "3-4", methods=["identity", "ghosted"], **kw())  # another cut
    pl.compare_recovery(tiny_llama, [task], "2-3", methods=["identity", "ghosted"],
                        **{**kw(), "heldout": pl.heldout_texts()[:5]})  # other held-out text
    assert len(fits) == 3
    again = pl.load_model(tiny_llama.hf, tokenizer=tiny_llama.tokenizer)  # another model object: nothing kept of the first
    pl.compare_recovery(again, [task], "2-3", methods=["identity", "ghosted"], **kw())
    assert len(fits) == 4 and len(rc._FITS) == 1
    monkeypatch.setattr(rc, "_FITS_BYTES", 1)  # a byte budget below one entry: only the newest stays
    pl.compare_recovery(again, [task], "3-4", methods=["identity", "ghosted"], **kw())
    assert len(fits) == 5 and len(rc._FITS) == 1
    pl.compare_recovery(again, [task], "2-3", methods=["identity", "ghosted"], **kw())  # evicted: fitted again
    assert len(fits) == 6


class LayerCalls:
    """Counts the blocks each decoder layer computes: a hook on each HF layer's MLP (this test's own instrument, not
    phaselens'). The layer's own call is no measure: a replayed or skipped block is still called, its work replaced."""

    def __init__(self, model):
        self.layers, self.n, self.handles = model.hf.model.layers, [], []

    def __enter__(self):
        self.n = [0] * len(self.layers)
        for i, layer in enumerate(self.layers):
            self.handles.append(layer.mlp.register_forward_hook(lambda *_, i=i: self.n.__setitem__(i, self.n[i] + 1)))
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()


@pytest.mark.parametrize("fmt", ["cloze", "continuation"])
def test_recovered_models_replay_the_dense_prefix_with_the_same_numbers(tiny_llama, fmt):
    """``reuse_prefix`` (default): each recovered model starts from the dense model's stored input of the cut's first
    block, on the task and on the held-out text: the same answers and NLL as computing every block (compared to 1e-6),
    and the blocks before the cut run once per batch (the dense model's pass), not once per model."""
    import phaselens.experiments.recovery_comparison as rc

    t = pl.load_task("capitals", limit=6, seed=0, format=fmt)
    methods = ["identity", "ghosted", "replaceme"]
    rc._FITS.clear()  # each call fits and scores the held-out text itself, so only the task passes differ
    with LayerCalls(tiny_llama) as full:
        plain = pl.compare_recovery(tiny_llama, [t], blocks="3-4", methods=methods, reuse_prefix=False, **kw())
    rc._FITS.clear()
    with LayerCalls(tiny_llama) as fast:
        got = pl.compare_recovery(tiny_llama, [t], blocks="3-4", methods=methods, **kw())
    a, b = plain.tasks[0], got.tasks[0]
    np.testing.assert_allclose(b.margins, a.margins, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(b.correct, a.correct)
    np.testing.assert_allclose(b.dense_margins, a.dense_margins, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got.nll, plain.nll, rtol=1e-6)
    # blocks 0-1 (before the cut): on the task and on the held-out text (one batch each), the reuse runs them for the
    # dense model only, so once per recovered model and text fewer than the plain run; block 2 once per model and
    # text fewer but ReplaceMe's (it regresses block 2's MLP branch, so its model differs from block 2 on); blocks
    # 3-4 are cut from the recovered models either way
    assert [full.n[b] - fast.n[b] for b in range(3)] == [6, 6, 4], (full.n, fast.n)
    for b in range(3, 6):
        assert full.n[b] == fast.n[b]
    assert fast.n[3] == fast.n[4]  # blocks 3-4 ran for the dense model only, in both runs
    with pytest.raises(pl.PhaselensError, match="reuse_prefix"):
        pl.compare_recovery(tiny_llama, [t], blocks="3-4", reuse_prefix="yes", **kw())
