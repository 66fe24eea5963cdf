"""The iterative pruning sweep: recomputed criterion, resume, prefix reuse, collapse ratio."""

from __future__ import annotations

import json

import numpy as np
import pytest

import phaselens as pl
from phaselens.calibration import heldout_texts, load_calibration
from phaselens.pruning import angular_distances, block_influence
from phaselens.pruning.iterative import Sweep, SweepStep
from phaselens.runner import PrefixCache

CAL = load_calibration()[:4]
PPL = heldout_texts()[:2]
KW = {"calibration": CAL, "perplexity_texts": PPL, "n_boot": 100}


def _dicts(sweep: Sweep) -> list[dict]:
    return [s.to_dict() for s in sweep.steps]


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_gemma"])
@pytest.mark.parametrize("criterion,recovery", [("bi", None), ("angular", None), ("random", None), ("bi", "ghosted")])
def test_prefix_reuse_gives_identical_numbers(name, criterion, recovery, request, capitals_task):
    model = request.getfixturevalue(name)
    steps = min(3, model.n_blocks - 1)
    a = pl.iterative_prune(model, capitals_task, criterion=criterion, recovery=recovery, steps=steps, **KW)
    b = pl.iterative_prune(model, capitals_task, criterion=criterion, recovery=recovery, steps=steps, reuse_prefix=False,
                           **KW)
    assert _dicts(a) == _dicts(b)  # bit for bit
    assert len(a.steps) == steps + 1


def test_prefix_reuse_in_the_continuation_format(tiny_llama, capitals_task):
    task = capitals_task.with_format("continuation")
    a = pl.iterative_prune(tiny_llama, task, criterion="bi", steps=2, **KW)
    b = pl.iterative_prune(tiny_llama, task, criterion="bi", steps=2, reuse_prefix=False, **KW)
    assert _dicts(a) == _dicts(b)
    ref = pl.decision_trace(pl.prune(tiny_llama, a.steps[2].removed), task, n_boot=100)
    assert np.array_equal(a.steps[2].trace.logits, ref.logits)


def test_sleb_sweep_prefix_reuse(tiny_llama, capitals_task):
    a = pl.iterative_prune(tiny_llama, capitals_task, criterion="sleb", steps=2, **KW)
    b = pl.iterative_prune(tiny_llama, capitals_task, criterion="sleb", steps=2, reuse_prefix=False, **KW)
    assert _dicts(a) == _dicts(b)
    # the SLEB scores of each step are those of the current pruned model
    s1 = a.steps[1]
    ref = pl.pruning.sleb_scores(pl.prune(tiny_llama, s1.removed), CAL)
    assert s1.scores == pytest.approx(ref, rel=1e-12)


def test_each_step_is_the_current_pruned_model(tiny_llama, capitals_task):
    """Step k: the model with the k blocks cut so far; its trace, perplexity and criterion scores equal those
    computed from scratch on prune(model, removed); the next cut is the lowest score."""
    sweep = pl.iterative_prune(tiny_llama, capitals_task, criterion="bi", steps=3, **KW)
    removed: list[int] = []
    for k, st in enumerate(sweep.steps):
        assert st.step == k and st.removed == sorted(removed) and st.ratio == len(removed) / tiny_llama.n_blocks
        view = pl.prune(tiny_llama, removed)
        tr = pl.decision_trace(view, capitals_task, n_boot=100)
        assert np.array_equal(st.trace.logits, tr.logits) and st.trace.blocks.tolist() == view.kept
        assert st.accuracy == tr.accuracy[-1] and st.margin == tr.margins[-1]
        assert st.transition.layer == tr.transition(n_boot=100).layer
        assert st.perplexity == pl.perplexity(view, PPL)
        ref = block_influence(view, CAL)
        assert st.scores == pytest.approx(ref, abs=1e-12)
        assert st.next_cut == min(ref, key=lambda b: (ref[b], b))
        removed = removed + [st.next_cut]


def test_angular_sweep_uses_single_block_distances(tiny_llama, capitals_task):
    sweep = pl.iterative_prune(tiny_llama, capitals_task, criterion="angular", steps=1, **KW)
    assert sweep.steps[1].scores == pytest.approx(angular_distances(pl.prune(tiny_llama, sweep.steps[1].removed), 1, CAL),
                                                  abs=1e-12)


def test_recovered_sweep_refits_after_every_cut(tiny_llama, capitals_task):
    sweep = pl.iterative_prune(tiny_llama, capitals_task, criterion="bi", recovery="ghosted", steps=2, **KW)
    st = sweep.steps[2]
    rec = pl.fit_recovery(pl.prune(tiny_llama, st.removed), CAL)
    tr = pl.decision_trace(rec, capitals_task, n_boot=100)
    assert np.array_equal(st.trace.logits, tr.logits)
    assert st.perplexity == pl.perplexity(rec, PPL)


def test_resume_gives_the_same_sweep(tiny_llama, capitals_task, tmp_path):
    full = pl.iterative_prune(tiny_llama, capitals_task, criterion="bi", steps=4, out=tmp_path / "full", **KW)
    part = tmp_path / "part"
    first = pl.iterative_prune(tiny_llama, capitals_task, criterion="bi", steps=2, out=part, **KW)  # "interrupted"
    assert _dicts(first) == _dicts(full)[:3]
    state = part / ".phaselens" / "sweep"
    assert sorted(p.name for p in state.glob("step_*.json")) == ["step_000.json", "step_001.json", "step_002.json"]
    resumed = pl.iterative_prune(tiny_llama, capitals_task, criterion="bi", steps=4, out=part, **KW)
    assert _dicts(resumed) == _dicts(full)
    # a step file lost mid-write: the rerun recomputes it (and only the missing steps) identically
    (state / "step_004.json").unlink()
    (state / "step_003.json").unlink()
    again = pl.iterative_prune(tiny_llama, capitals_task, criterion="bi", steps=4, out=part, **KW)
    assert _dicts(again) == _dicts(full)
    # load_sweep reads the same sweep back
    back = pl.load_sweep(part)
    assert _dicts(back) == _dicts(full) and back.collapse_ratio == full.collapse_ratio
    assert back.chance == pytest.approx(full.chance)
    # a finished sweep is not recomputed: every step is read from the folder
    import phaselens.pruning.iterative as it_mod

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(it_mod, "decision_trace", lambda *a, **k: (_ for _ in ()).throw(AssertionError("recomputed")))
        assert _dicts(pl.iterative_prune(tiny_llama, capitals_task, criterion="bi", steps=4, out=part, **KW)) == _dicts(full)
    # a step file altered on disk does not match the folder's checksum: it is recomputed, and said so
    doc = json.loads((state / "step_001.json").read_text())
    doc["data"]["perplexity"] = -1.0
    (state / "step_001.json").write_text(json.dumps(doc))
    with pytest.warns(UserWarning, match="step_001.json does not match its recorded checksum"):
        fixed = pl.iterative_prune(tiny_llama, capitals_task, criterion="bi", steps=4, out=part, **KW)
    assert _dicts(fixed) == _dicts(full)


def test_out_folder_with_other_arguments_is_refused(tiny_llama, capitals_task, tmp_path):
    pl.iterative_prune(tiny_llama, capitals_task, criterion="bi", steps=1, out=tmp_path, **KW)
    with pytest.raises(ValueError, match="other arguments"):
        pl.iterative_prune(tiny_llama, capitals_task, criterion="angular", steps=1, out=tmp_path, **KW)
    with pytest.raises(ValueError, match="other arguments"):
        pl.iterative_prune(tiny_llama, capitals_task, criterion="bi", steps=1, out=tmp_path,
                           **{**KW, "calibration": CAL[:3]})


def test_collapse_ratio_against_its_definition(tiny_llama, capitals_task):
    sweep = pl.iterative_prune(tiny_llama, capitals_task, criterion="random", steps=5, **KW)
    chance = np.mean([1 / len(it.options) for it in capitals_task.items])
    assert sweep.chance == pytest.approx(chance)
    dense = pl.decision_trace(tiny_llama, capitals_task, n_boot=100).accuracy[-1]
    assert sweep.dense_accuracy == dense
    thr = chance + 0.5 * (dense - chance)
    assert sweep.threshold == pytest.approx(thr)
    below = [s.ratio for s in sweep.steps if s.accuracy < thr]
    assert sweep.collapse_ratio == (min(below) if below else None)
    df = sweep.to_pandas()
    assert list(df["ratio"]) == [k / 6 for k in range(6)]
    # synthetic accuracies: the first ratio below the threshold, not a later recovery
    accs = dict(enumerate([0.9, 0.85, 0.5, 0.8, 0.2, 0.2]))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(SweepStep, "accuracy", property(lambda st: accs[st.step]))
        sweep.chance = 0.25
        assert sweep.threshold == pytest.approx(0.25 + 0.5 * (0.9 - 0.25))
        assert sweep.collapse_ratio == pytest.approx(2 / 6)
        accs.update(dict.fromkeys(accs, 0.9))
        assert sweep.collapse_ratio is None


def test_sweep_from_a_pruned_view_keeps_the_dense_reference(tiny_llama, capitals_task, tmp_path):
    view = pl.prune(tiny_llama, [3])
    sweep = pl.iterative_prune(view, capitals_task, criterion="bi", steps=1, out=tmp_path, **KW)
    assert sweep.steps[0].removed == [3] and sweep.steps[0].ratio == 1 / 6
    assert sweep.dense_accuracy == pl.decision_trace(tiny_llama, capitals_task, n_boot=100).accuracy[-1]
    assert pl.load_sweep(tmp_path).dense_accuracy == sweep.dense_accuracy
    assert Sweep.from_dict(sweep.to_dict()).dense_accuracy == sweep.dense_accuracy


@pytest.mark.parametrize(
    "kw,msg",
    [
        ({"criterion": "silent"}, "iterative criterion"),
        ({"steps": 6}, "steps must be"),
        ({"steps": -1}, "steps must be"),
        ({"recovery": "magic"}, "unknown recovery"),
    ],
)
def test_iterative_bad_arguments(tiny_llama, capitals_task, kw, msg):
    with pytest.raises(ValueError, match=msg):
        pl.iterative_prune(tiny_llama, capitals_task, **{**KW, **kw})


def test_prefix_cache_equals_a_full_forward(tiny_llama):
    """A pass that replays stored block inputs gives the numbers of a full pass, bit for bit."""
    cache = PrefixCache()
    a = pl.prune(tiny_llama, [1])
    b = pl.prune(tiny_llama, [1, 4])
    assert pl.perplexity(a, PPL, cache=cache) == pl.perplexity(a, PPL)
    assert pl.perplexity(b, PPL, cache=cache) == pl.perplexity(b, PPL)  # replays the input of block 4
    c = pl.prune(tiny_llama, [1, 2, 4])
    assert pl.perplexity(c, PPL, cache=cache) == pl.perplexity(c, PPL)  # the inputs of block 2 are those of b too


def _count_block_runs(model, fn) -> list[int]:
    """How many times each block's attention actually ran during ``fn()`` (a replayed or skipped block does not)."""
    counts = [0] * model.n_blocks
    hooks = [blk.self_attn.register_forward_pre_hook(lambda m, a, _b=b: counts.__setitem__(_b, counts[_b] + 1))
             for b, blk in enumerate(model.blocks)]
    try:
        fn()
    finally:
        for h in hooks:
            h.remove()
    return counts


def test_each_step_recomputes_only_from_the_first_changed_block(tiny_llama, capitals_task):
    box = {}
    reuse = _count_block_runs(tiny_llama, lambda: box.setdefault("s", pl.iterative_prune(tiny_llama, capitals_task,
                                                                                        steps=2, **KW)))
    c1, c2 = box["s"].steps[0].next_cut, box["s"].steps[1].next_cut
    full = _count_block_runs(tiny_llama, lambda: pl.iterative_prune(tiny_llama, capitals_task, steps=2,
                                                                    reuse_prefix=False, **KW))
    per_step = full[c1]  # block c1 runs in step 0 only: the forward passes of one step (trace, perplexity, criterion)
    assert per_step > 0
    for b in range(tiny_llama.n_blocks):
        in_model = [b != c for c in (None, c1)] + [b not in (c1, c2)]  # is block b present at steps 0, 1, 2
        assert full[b] == per_step * sum(in_model)
        starts = (0, c1, c2)  # step k recomputes from the block it changed
        assert reuse[b] == per_step * sum(p and b >= s for p, s in zip(in_model, starts))


def test_saving_the_sweep_into_its_own_out_folder_keeps_it_resumable(tiny_llama, capitals_task, tmp_path):
    """save_result(sweep, out) into the folder iterative_prune(out=...) resumes from: the saved file sits beside
    the run's state (out/.phaselens/sweep/), so load_sweep and a rerun still read every step, with nothing recomputed."""
    import phaselens.pruning.iterative as it_mod

    sw = pl.iterative_prune(tiny_llama, capitals_task, criterion="bi", steps=2, out=tmp_path, **KW)
    for name in ("sweep", "args", "step_000"):  # the names of the run's own state files, too
        pl.save_result(sw, tmp_path, name)
    assert _dicts(pl.load_sweep(tmp_path)) == _dicts(sw)
    assert _dicts(pl.load_sweep(tmp_path / "sweep.json")) == _dicts(sw)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(it_mod, "decision_trace", lambda *a, **k: (_ for _ in ()).throw(AssertionError("recomputed")))
        again = pl.iterative_prune(tiny_llama, capitals_task, criterion="bi", steps=2, out=tmp_path, **KW)
    assert _dicts(again) == _dicts(sw)
    assert set(pl.load_results(tmp_path)) == {"sweep", "args", "step_000"}
