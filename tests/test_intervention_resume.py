"""``inject_noise(out=...)`` and ``ablate(out=...)``: each edited pass's answers saved as it finishes, resumed after a
kill, reused by a rerun with more blocks, scales, seeds or pairs.

The numbers are checked against the plain call (itself checked against a hand-run Hugging Face forward in
test_interventions.py), the resumption by counting the forward passes a rerun makes.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

import phaselens as pl
from phaselens import final_readout
from phaselens.ablation import ablate
from phaselens.errors import RunFolderError
from phaselens.noise import inject_noise, noise_unit
from phaselens.study.runs import RUNS

torch.set_num_threads(1)


@pytest.fixture
def passes(monkeypatch):
    """Counts FinalRunner passes: ``"clean"`` for the unedited one, ``"edit"`` for each edited one."""
    real, seen = final_readout.FinalRunner._run, []

    def counted(self, edits):
        seen.append("clean" if edits is None else "edit")
        return real(self, edits)

    monkeypatch.setattr(final_readout.FinalRunner, "_run", counted)
    return seen


def killed_at(monkeypatch, k):
    """Make the ``k``-th edited pass from now raise KeyboardInterrupt (the run is killed there); returns the undo."""
    real, calls = final_readout.FinalRunner.run, []

    def dies(self, edits):
        calls.append(1)
        if len(calls) == k:
            raise KeyboardInterrupt
        return real(self, edits)

    monkeypatch.setattr(final_readout.FinalRunner, "run", dies)
    return lambda: monkeypatch.setattr(final_readout.FinalRunner, "run", real)


def _state(out, run):
    return out / ".phaselens" / run


def _same(a, b):
    np.testing.assert_allclose(a.item_margins if hasattr(a, "item_margins") else a.single_margins,
                               b.item_margins if hasattr(b, "item_margins") else b.single_margins, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(a.clean_margins, b.clean_margins, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(a.clean_correct, b.clean_correct)
    assert a.transition == b.transition


def test_noise_units_give_the_plain_numbers(tiny_llama, capitals_task, tmp_path):
    kw = dict(blocks=[0, 2], eps=[0.5, 2.0], seeds=2, n_boot=200)
    plain = inject_noise(tiny_llama, capitals_task, **kw)
    got = inject_noise(tiny_llama, capitals_task, out=tmp_path, **kw)
    _same(got, plain)
    np.testing.assert_array_equal(got.item_correct, plain.item_correct)
    units = sorted(p.stem for p in _state(tmp_path, "noise").glob("*.json") if p.stem not in ("args", "manifest"))
    want = sorted(["clean"] + [noise_unit(b, e, s) for b in (0, 2) for e in (0.5, 2.0) for s in (0, 1)])
    assert units == want
    assert (tmp_path / ".phaselens" / "trace").is_dir()  # the dense trace (the phases) is resumable too
    assert got.layer_margins is not None and np.allclose(got.layer_margins, plain.layer_margins, atol=1e-6)


def test_a_finished_noise_run_makes_no_forward_pass(tiny_llama, capitals_task, tmp_path, passes, monkeypatch):
    kw = dict(blocks=[1], eps=[1.0], seeds=2, n_boot=200)
    first = inject_noise(tiny_llama, capitals_task, out=tmp_path, **kw)
    assert passes.count("edit") == 2 and passes.count("clean") == 1
    passes.clear()
    import phaselens.trace as trace_mod

    monkeypatch.setattr(trace_mod, "option_logits", lambda *a, **k: pytest.fail("the dense trace was read again"))
    again = inject_noise(tiny_llama, capitals_task, out=tmp_path, **kw)
    assert passes == []
    _same(again, first)


def test_a_killed_noise_run_reruns_only_what_is_missing(tiny_llama, capitals_task, tmp_path, passes, monkeypatch):
    kw = dict(blocks=[0, 1, 2], eps=[0.5], seeds=2, n_boot=200)
    plain = inject_noise(tiny_llama, capitals_task, **kw)
    undo = killed_at(monkeypatch, 4)  # killed during the 4th of 6 edited passes
    with pytest.raises(KeyboardInterrupt):
        inject_noise(tiny_llama, capitals_task, out=tmp_path, **kw)
    undo()
    assert not (_state(tmp_path, "noise") / "lock").exists()
    passes.clear()
    got = inject_noise(tiny_llama, capitals_task, out=tmp_path, **kw)
    assert passes.count("edit") == 3  # 3 finished before the kill, 3 left
    assert passes.count("clean") == 1  # the prefix to replay is recorded again; its answers are read back
    _same(got, plain)


def test_more_seeds_scales_and_blocks_reuse_the_finished_units(tiny_llama, capitals_task, tmp_path, passes):
    inject_noise(tiny_llama, capitals_task, blocks=[1], eps=[0.5], seeds=1, n_boot=200, out=tmp_path)
    passes.clear()
    kw = dict(blocks=[1, 3], eps=[0.5, 1.0], seeds=2, n_boot=200)
    got = inject_noise(tiny_llama, capitals_task, out=tmp_path, **kw)
    assert passes.count("edit") == 2 * 2 * 2 - 1
    _same(got, inject_noise(tiny_llama, capitals_task, **kw))


def test_a_noise_folder_is_refused_for_another_task_before_any_pass(tiny_llama, capitals_task, tmp_path, passes):
    inject_noise(tiny_llama, capitals_task, blocks=[0], eps=[0.5], seeds=1, n_boot=200, out=tmp_path)
    passes.clear()
    other = dataclasses.replace(capitals_task, items=capitals_task.items[:5])
    with pytest.raises(RunFolderError, match="other arguments"):
        inject_noise(tiny_llama, other, blocks=[0], eps=[0.5], seeds=1, n_boot=200, out=tmp_path)
    assert passes == []
    pruned = pl.prune(tiny_llama, [3])
    with pytest.raises(RunFolderError, match="other arguments"):
        inject_noise(pruned, capitals_task, blocks=[0], eps=[0.5], seeds=1, n_boot=200, out=tmp_path)


def test_an_altered_noise_unit_is_recomputed_with_a_warning(tiny_llama, capitals_task, tmp_path, passes):
    kw = dict(blocks=[2], eps=[1.0], seeds=1, n_boot=200)
    first = inject_noise(tiny_llama, capitals_task, out=tmp_path, **kw)
    f = _state(tmp_path, "noise") / f"{noise_unit(2, 1.0, 0)}.json"
    doc = json.loads(f.read_text())
    f.write_text(json.dumps(doc).replace("0", "1", 3))
    passes.clear()
    with pytest.warns(UserWarning, match="does not match its recorded checksum"):
        got = inject_noise(tiny_llama, capitals_task, out=tmp_path, **kw)
    assert passes.count("edit") == 1
    _same(got, first)


@pytest.mark.parametrize("mode", ["skip", "mean"])
def test_ablation_units_resume_and_give_the_plain_numbers(tiny_llama, capitals_task, tmp_path, passes, monkeypatch,
                                                          mode):
    kw = dict(blocks=[0, 1, 2], mode=mode, pairs=[(0, 2)], n_boot=200)
    plain = ablate(tiny_llama, capitals_task, **kw)
    undo = killed_at(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        ablate(tiny_llama, capitals_task, out=tmp_path, **kw)
    undo()
    passes.clear()
    got = ablate(tiny_llama, capitals_task, out=tmp_path, **kw)
    assert passes.count("edit") == 2  # 2 of the 4 ablations (3 singles, 1 pair) were done before the kill
    _same(got, plain)
    np.testing.assert_allclose(got.pair_margins, plain.pair_margins, rtol=1e-6, atol=1e-6)
    units = sorted(p.stem for p in _state(tmp_path, "ablation").glob(f"{mode}_*.json"))
    assert units == sorted(f"{mode}_{u}" for u in ("0", "1", "2", "0-2"))
    passes.clear()
    mean_updates = final_readout.FinalRunner.mean_updates
    monkeypatch.setattr(final_readout.FinalRunner, "mean_updates",
                        lambda self, b: pytest.fail("mean updates computed with nothing left to run"))
    ablate(tiny_llama, capitals_task, out=tmp_path, **kw)
    assert passes == []
    monkeypatch.setattr(final_readout.FinalRunner, "mean_updates", mean_updates)


def test_study_noise_and_ablate_jobs_keep_their_units_in_the_job_scratch(tiny_llama, capitals_task, tmp_path):
    scratch = tmp_path / "scratch"
    RUNS["noise"].run(tiny_llama, capitals_task, 0, {"blocks": [1], "eps": [0.5], "seeds": 1, "n_boot": 200},
                           scratch)
    RUNS["ablate"].run(tiny_llama, capitals_task, 0, {"blocks": [1], "pairs": False, "n_boot": 200}, scratch)
    assert (scratch / ".phaselens" / "noise" / f"{noise_unit(1, 0.5, 0)}.json").is_file()
    assert (scratch / ".phaselens" / "ablation" / "skip_1.json").is_file()
    assert "out" not in RUNS["noise"].allowed() and "out" not in RUNS["ablate"].allowed()
