"""Reliability: every bad input ends in a phaselens error that names the argument, before any model work; killed
runs resume bit for bit; corrupt or foreign files are detected; two runs never share a folder."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import phaselens as pl

SPEC = "smollm2-135m"  # checks on a spec string must fire before the model is loaded
CAP = pl.load_task("capitals", limit=4)


@pytest.fixture
def no_load(monkeypatch):
    """Loading a model fails the test: the bad argument must be refused first."""
    def boom(*a, **k):
        raise AssertionError("a model was loaded before the bad argument was refused")

    import phaselens.view as view_mod

    monkeypatch.setattr(view_mod, "load_model", boom)
    return boom


# (name, call, error class, pattern the message must match: the argument's name and what to do)
SPEC_CASES = [
    ("trace batch_size=0", lambda: pl.decision_trace(SPEC, CAP, batch_size=0), pl.PhaselensError, "batch_size"),
    ("trace batch_size=2.5", lambda: pl.decision_trace(SPEC, CAP, batch_size=2.5), pl.PhaselensError, "batch_size"),
    ("trace batch_size='4'", lambda: pl.decision_trace(SPEC, CAP, batch_size="4"), pl.PhaselensError, "batch_size"),
    ("trace max_tokens=-1", lambda: pl.decision_trace(SPEC, CAP, max_tokens=-1), pl.PhaselensError, "max_tokens"),
    ("trace n_boot=0", lambda: pl.decision_trace(SPEC, CAP, n_boot=0), pl.PhaselensError, "n_boot"),
    ("trace n_boot=1.5", lambda: pl.decision_trace(SPEC, CAP, n_boot=1.5), pl.PhaselensError, "n_boot"),
    ("trace seed='x'", lambda: pl.decision_trace(SPEC, CAP, seed="x"), pl.PhaselensError, "seed"),
    ("trace progress=1", lambda: pl.decision_trace(SPEC, CAP, progress=1), pl.PhaselensError, "progress"),
    ("transition n_boot=0", lambda: pl.transition_point(SPEC, CAP, n_boot=0), pl.PhaselensError, "n_boot"),
    ("sweep steps=0", lambda: pl.iterative_prune(SPEC, CAP, steps=0), pl.errors.PruningError, "steps"),
    ("sweep steps=2.5", lambda: pl.iterative_prune(SPEC, CAP, steps=2.5), pl.errors.PruningError, "steps"),
    ("sweep criterion", lambda: pl.iterative_prune(SPEC, CAP, criterion="magic"), pl.errors.PruningError, "criterion"),
    ("sweep n_boot=0", lambda: pl.iterative_prune(SPEC, CAP, n_boot=0), pl.PhaselensError, "n_boot"),
    ("sweep reuse_prefix", lambda: pl.iterative_prune(SPEC, CAP, reuse_prefix="yes"), pl.errors.PruningError, "reuse_prefix"),
    ("select n=2.5", lambda: pl.select_blocks(SPEC, 2.5), pl.errors.PruningError, "n must be an int"),
    ("select n=0", lambda: pl.select_blocks(SPEC, 0), pl.errors.PruningError, "n must be an int"),
    ("select criterion", lambda: pl.select_blocks(SPEC, 2, "magic"), pl.errors.PruningError, "criterion"),
    ("select seed", lambda: pl.select_blocks(SPEC, 2, "random", seed=1.5), pl.errors.PruningError, "seed"),
    ("recovery method", lambda: pl.fit_recovery(SPEC, None, "magic"), pl.errors.RecoveryError, "recovery method"),
    ("recovery methods twice", lambda: pl.fit_recovery(SPEC, None, ["ghosted", "ghosted"]), pl.errors.RecoveryError, "repeat"),
    ("recovery method type", lambda: pl.fit_recovery(SPEC, None, 3), pl.errors.RecoveryError, "method must be"),
    ("recovery lam=-1", lambda: pl.fit_recovery(SPEC, None, lam=-1), pl.errors.RecoveryError, "lam"),
    ("recovery lam=nan", lambda: pl.fit_recovery(SPEC, None, lam=float("nan")), pl.errors.RecoveryError, "lam"),
    ("recovery lam='x'", lambda: pl.fit_recovery(SPEC, None, lam="x"), pl.errors.RecoveryError, "lam"),
    ("recovery seq_len=0", lambda: pl.fit_recovery(SPEC, None, seq_len=0), pl.errors.CalibrationError, "seq_len"),
    ("recovery batch_size=0", lambda: pl.fit_recovery(SPEC, None, batch_size=0), pl.errors.RecoveryError, "batch_size"),
    ("boundary inputs", lambda: pl.boundary_error(SPEC, inputs="sideways"), pl.errors.RecoveryError, "inputs"),
    ("boundary seq_len", lambda: pl.boundary_error(SPEC, seq_len=1), pl.errors.CalibrationError, "seq_len"),
    ("perplexity seq_len", lambda: pl.perplexity(SPEC, seq_len=0), pl.errors.CalibrationError, "seq_len"),
    ("perplexity batch_size", lambda: pl.perplexity(SPEC, batch_size=-2), pl.errors.CalibrationError, "batch_size"),
    ("noise eps<0", lambda: pl.inject_noise(SPEC, CAP, eps=-1), pl.errors.InterventionError, "eps"),
    ("noise eps=inf", lambda: pl.inject_noise(SPEC, CAP, eps=float("inf")), pl.errors.InterventionError, "eps"),
    ("noise eps='a'", lambda: pl.inject_noise(SPEC, CAP, eps="a"), pl.errors.InterventionError, "eps"),
    ("noise eps=[]", lambda: pl.inject_noise(SPEC, CAP, eps=[]), pl.errors.InterventionError, "eps"),
    ("noise seeds=0", lambda: pl.inject_noise(SPEC, CAP, seeds=0), pl.errors.InterventionError, "seeds"),
    ("noise seeds=[1,1]", lambda: pl.inject_noise(SPEC, CAP, seeds=[1, 1]), pl.errors.InterventionError, "seeds"),
    ("noise seeds=[1.5]", lambda: pl.inject_noise(SPEC, CAP, seeds=[1.5]), pl.errors.InterventionError, "seeds"),
    ("noise seeds='3'", lambda: pl.inject_noise(SPEC, CAP, seeds="3"), pl.errors.InterventionError, "seeds"),
    ("noise n_boot=0", lambda: pl.inject_noise(SPEC, CAP, n_boot=0), pl.errors.InterventionError, "n_boot"),
    ("noise boot_seed", lambda: pl.inject_noise(SPEC, CAP, boot_seed=0.5), pl.errors.InterventionError, "boot_seed"),
    ("noise batch_size", lambda: pl.inject_noise(SPEC, CAP, batch_size=0), pl.errors.InterventionError, "batch_size"),
    ("ablate mode", lambda: pl.ablate(SPEC, CAP, mode="erase"), pl.errors.InterventionError, "mode"),
    ("ablate window", lambda: pl.ablate(SPEC, CAP, window=-1), pl.errors.InterventionError, "window"),
    ("ablate n_boot", lambda: pl.ablate(SPEC, CAP, n_boot=0), pl.errors.InterventionError, "n_boot"),
    ("ablate pairs", lambda: pl.ablate(SPEC, CAP, pairs="all"), pl.errors.InterventionError, "pairs"),
    ("ablate batch_size", lambda: pl.ablate(SPEC, CAP, batch_size=1.5), pl.errors.InterventionError, "batch_size"),
    ("phase cuts n=0", lambda: pl.compare_phase_cuts(SPEC, CAP, 0), pl.errors.PhaseCutsError, "n must be"),
    ("phase cuts n=1.5", lambda: pl.compare_phase_cuts(SPEC, CAP, 1.5), pl.errors.PhaseCutsError, "n must be"),
    ("phase cuts n_boot", lambda: pl.compare_phase_cuts(SPEC, CAP, 1, n_boot=0), pl.errors.PhaseCutsError, "n_boot"),
    ("phase cuts lam", lambda: pl.compare_phase_cuts(SPEC, CAP, 1, lam=-3), pl.errors.PhaseCutsError, "lam"),
    ("phase cuts seq_len", lambda: pl.compare_phase_cuts(SPEC, CAP, 1, seq_len=0), pl.errors.CalibrationError, "seq_len"),
    ("phase cuts batch", lambda: pl.compare_phase_cuts(SPEC, CAP, 1, batch_size=0), pl.errors.PhaseCutsError, "batch_size"),
    ("cka n_samples", lambda: pl.cka(SPEC, SPEC, CAP, n_samples=1), pl.errors.CKAError, "n_samples"),
    ("cka positions", lambda: pl.cka(SPEC, SPEC, CAP, positions="middle"), pl.errors.CKAError, "positions"),
    ("cka form", lambda: pl.cka(SPEC, SPEC, CAP, form="magic"), pl.errors.CKAError, "form"),
    ("cka batch_size", lambda: pl.cka(SPEC, SPEC, CAP, batch_size=0), pl.errors.CKAError, "batch_size"),
    ("cka debiased", lambda: pl.cka(SPEC, SPEC, CAP, debiased="yes"), pl.errors.CKAError, "debiased"),
    ("cka seed", lambda: pl.cka(SPEC, SPEC, CAP, seed=1.5), pl.errors.CKAError, "seed"),
    ("cka seq_len", lambda: pl.cka(SPEC, SPEC, None, seq_len=1), pl.errors.CKAError, "seq_len"),
]


@pytest.mark.bad_input
@pytest.mark.parametrize("name,call,err,pattern", SPEC_CASES, ids=[c[0] for c in SPEC_CASES])
def test_bad_arguments_are_refused_before_loading(no_load, name, call, err, pattern):
    with pytest.raises(err, match=pattern):
        call()


def _gguf(tmp_path: Path, data: bytes) -> str:
    p = tmp_path / "m.gguf"
    p.write_bytes(data)
    return str(p)


LOAD_CASES = [
    ("model spec type", lambda tp: pl.load_model(3.5), pl.errors.ModelError, "cannot load a model from float"),
    ("unknown name", lambda tp: pl.load_model("no-such/model-xyz"), pl.errors.ModelError, "not an embedded name"),
    ("dtype float77", lambda tp: pl.load_model(SPEC, dtype="float77"), pl.errors.ModelError, "dtype"),
    ("dtype int", lambda tp: pl.load_model(SPEC, dtype=torch.int32), pl.errors.ModelError, "dtype"),
    ("device banana", lambda tp: pl.load_model(SPEC, device="banana"), pl.errors.ModelError, "device"),
    ("device cuda", lambda tp: pl.load_model(SPEC, device="cuda"), pl.errors.ModelError, "no CUDA GPU"),
    ("device cuda:3", lambda tp: pl.load_model(SPEC, device="cuda:3"), pl.errors.ModelError, "no CUDA GPU"),
    ("gguf missing", lambda tp: pl.load_model(str(tp / "none.gguf")), pl.errors.ModelError, "not found"),
    ("gguf random bytes", lambda tp: pl.load_model(_gguf(tp, os.urandom(4096))), pl.errors.ModelError, "not a GGUF file"),
    ("gguf text", lambda tp: pl.load_model(_gguf(tp, b"hello world" * 200)), pl.errors.ModelError, "not a GGUF file"),
    ("gguf truncated", lambda tp: pl.load_model(_gguf(tp, b"GGUF\x03\x00\x00\x00" + b"\x00" * 100)), pl.errors.ModelError,
     "truncated"),
    ("gguf truncated header", lambda tp: pl.load_model(_gguf(tp, b"GGUF\x03\x00\x00\x00" + os.urandom(5000))),
     pl.errors.ModelError, "could not be read"),
]


@pytest.mark.bad_input
@pytest.mark.parametrize("name,call,err,pattern", LOAD_CASES, ids=[c[0] for c in LOAD_CASES])
def test_bad_models_and_devices(tmp_path, name, call, err, pattern):
    if "cuda" in name and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(err, match=pattern):
        call(tmp_path)


def _write(tmp_path: Path, name: str, data: bytes) -> str:
    p = tmp_path / name
    p.write_bytes(data)
    return str(p)


TASK_CASES = [
    ("limit=2.5", lambda tp: pl.load_task("capitals", limit=2.5), "limit"),
    ("limit='8'", lambda tp: pl.load_task("capitals", limit="8"), "limit"),
    ("limit=0", lambda tp: pl.load_task("capitals", limit=0), "limit"),
    ("limit=True", lambda tp: pl.load_task("capitals", limit=True), "limit"),
    ("shots=-1", lambda tp: pl.load_task("capitals", shots=-1), "shots"),
    ("shots=1.5", lambda tp: pl.load_task("capitals", shots=1.5), "shots"),
    ("format", lambda tp: pl.load_task("capitals", format="essay"), "format"),
    ("duplicates", lambda tp: pl.load_task("capitals", duplicates="keep"), "duplicates"),
    ("cloze_template", lambda tp: pl.load_task("capitals", cloze_template="{q}"), "cloze_template"),
    ("non-UTF-8 file", lambda tp: pl.load_task(_write(tp, "t.jsonl", '{"question": "caf\xe9", "options": ["a", "b"], '
                                                 '"answer": 0}\n'.encode("latin-1"))), "not UTF-8"),
    ("bad JSON line", lambda tp: pl.load_task(_write(tp, "t.jsonl", b'{"question": "q", "options": \n')), "line 1"),
    ("missing keys", lambda tp: pl.load_task(_write(tp, "t.jsonl", b'{"question": "q"}\n')), "needs keys"),
    ("empty file", lambda tp: pl.load_task(_write(tp, "t.jsonl", b"\n")), "no items"),
    ("unknown file type", lambda tp: pl.load_task(_write(tp, "t.txt", b"q")), "unknown file type"),
    ("missing file", lambda tp: pl.load_task(str(tp / "none.jsonl")), "does not exist"),
    ("one option", lambda tp: pl.load_task([{"question": "q", "options": ["a"], "answer": 0}]), "at least two options"),
    ("empty option", lambda tp: pl.load_task([{"question": "q", "options": ["a", " "], "answer": 0}]), "empty"),
    ("answer out of range", lambda tp: pl.load_task([{"question": "q", "options": ["a", "b"], "answer": 2}]), "out of range"),
    ("answer not int", lambda tp: pl.load_task([{"question": "q", "options": ["a", "b"], "answer": "0"}]), "answer must be"),
    ("repeated options, cloze", lambda tp: pl.load_task([{"question": "q", "options": ["a", "a"], "answer": 0}]),
     "repeat an option"),
    ("repeated options, continuation", lambda tp: pl.load_task([{"question": "q", "options": ["x y", " x y"], "answer": 1}],
                                                              format="continuation"), "repeat an option"),
    ("not a task", lambda tp: pl.load_task(42), "cannot make a task"),
    ("list of junk", lambda tp: pl.load_task([1, 2]), "needs keys"),
    ("mmlu subject", lambda tp: pl.load_task("mmlu:astronomyy"), "unknown MMLU subject"),
    ("arc split", lambda tp: pl.load_task("arc-easy", split="dev"), "splits"),
]


@pytest.mark.bad_input
@pytest.mark.parametrize("name,call,pattern", TASK_CASES, ids=[c[0] for c in TASK_CASES])
def test_bad_tasks(tmp_path, name, call, pattern):
    with pytest.raises(pl.errors.TaskError, match=pattern):
        call(tmp_path)


def test_repeated_options_can_be_dropped_or_read_as_letters():
    items = [{"question": "q1", "options": ["a", "a", "b"], "answer": 2}, {"question": "q2", "options": ["c", "d"], "answer": 0}]
    dropped = pl.load_task(items, duplicates="drop")
    assert len(dropped) == 1 and "leaving out 1 item" in dropped.selection
    assert len(pl.load_task(items, format="letters")) == 2  # the labels tell the options apart


# ----------------------------------------------------------------------------- views, operators, recovery files
@pytest.mark.bad_input
def test_bad_views_and_operators(tiny_llama, tmp_path):
    d, L = tiny_llama.d_model, tiny_llama.n_blocks
    cases = [
        (lambda: pl.prune(tiny_llama, 3), pl.errors.PruningError, "list of block indices"),
        (lambda: pl.prune(tiny_llama, [2.5]), pl.errors.PruningError, "ints"),
        (lambda: pl.prune(tiny_llama, [99]), pl.errors.PruningError, "out of range"),
        (lambda: pl.prune(tiny_llama, [1, 1]), pl.errors.PruningError, "repeated"),
        (lambda: pl.prune(tiny_llama, list(range(L))), pl.errors.PruningError, "leaves none"),
        (lambda: pl.prune(pl.prune(tiny_llama, [1]), [1]), pl.errors.PruningError, "already pruned"),
        (lambda: pl.ModelView(tiny_llama, (2,), {(2, 3): torch.eye(d + 1)}), pl.errors.RecoveryError, "shape"),
        (lambda: pl.ModelView(tiny_llama, (2,), {(2, 3): torch.full((d, d), float("nan"))}), pl.errors.RecoveryError, "NaN"),
        (lambda: pl.ModelView(tiny_llama, (2,), {(3, 4): torch.eye(d)}), pl.errors.RecoveryError, "cut spans"),
        (lambda: pl.ModelView(tiny_llama, (2,), {(2, 3): np.eye(d)}), pl.errors.RecoveryError, "torch tensor"),
        (lambda: pl.fit_recovery(tiny_llama, ["a b c"] * 3), pl.errors.RecoveryError, "no cut spans"),
        (lambda: pl.fit_recovery(pl.prune(tiny_llama, [2]), ["hi"]), pl.errors.RecoveryError, "no tokens"),
        (lambda: pl.fit_recovery(pl.prune(tiny_llama, [2]), []), pl.errors.CalibrationError, "empty"),
        (lambda: pl.fit_recovery(pl.prune(tiny_llama, [0]), None, "replaceme"), pl.errors.RecoveryError, "block 0"),
        (lambda: pl.decision_trace(tiny_llama, CAP, blocks=[99]), pl.errors.LensError, "not surviving"),
        (lambda: pl.decision_trace(tiny_llama, CAP, blocks="first"), pl.errors.LensError, "blocks must be"),
        (lambda: pl.inject_noise(tiny_llama, CAP, blocks=[2.5]), pl.errors.InterventionError, "ints"),
        (lambda: pl.inject_noise(pl.prune(tiny_llama, [2]), CAP, blocks=[2]), pl.errors.InterventionError, "pruned"),
        (lambda: pl.inject_noise(tiny_llama, CAP, blocks="all"), pl.errors.InterventionError, "blocks must be"),
        (lambda: pl.ablate(tiny_llama, CAP, pairs=[(1, 1)]), pl.errors.InterventionError, "two different"),
        (lambda: pl.inject_noise(tiny_llama, CAP.with_format("continuation")), pl.errors.InterventionError, "continuation"),
        (lambda: pl.inject_noise(tiny_llama, CAP, transition="block 3"), pl.errors.InterventionError, "transition must be"),
    ]
    for call, err, pattern in cases:
        with pytest.raises(err, match=pattern):
            call()


@pytest.mark.bad_input
def test_bad_recovery_files(tiny_llama, smol, tmp_path):
    from safetensors.torch import save_file

    rec = pl.fit_recovery(pl.prune(tiny_llama, [2]), ["word " * 80] * 3, "diagonal")
    good = rec.save(tmp_path / "r.safetensors")
    (tmp_path / "text.safetensors").write_text("this is not a recovery")
    (tmp_path / "pickle.safetensors").write_bytes(pickle.dumps({"W": [1, 2]}))
    save_file({"span.2.3": torch.eye(tiny_llama.d_model)}, str(tmp_path / "nometa.safetensors"))
    meta = {"fingerprint": tiny_llama.fingerprint, "model": "m", "method": "diagonal", "removed": "[99]", "lam": "{}",
            "n_tokens": "3"}
    save_file({"span.99.100": torch.eye(tiny_llama.d_model)}, str(tmp_path / "outside.safetensors"), metadata=meta)
    cases = [
        ("missing.safetensors", "not found"),
        ("text.safetensors", "looks like text"),
        ("pickle.safetensors", "looks like a pickle"),
        ("nometa.safetensors", "metadata lacks"),
        ("outside.safetensors", "outside"),
    ]
    for name, pattern in cases:
        with pytest.raises(pl.errors.RecoveryError, match=pattern):
            pl.load_recovery(tmp_path / name, tiny_llama)
    with pytest.raises(pl.errors.RecoveryError, match="fitted on model"):
        pl.load_recovery(good, smol)
    assert torch.equal(pl.load_recovery(good, tiny_llama).operator((2, 3)), rec.operator((2, 3)))


# ----------------------------------------------------------------------------- results: nothing dropped silently
@pytest.mark.bad_input
def test_corrupt_results_are_refused_and_named(tmp_path):
    from test_plots import synthetic_trace

    tr = synthetic_trace()
    pl.save_result(tr, tmp_path, "a")
    pl.save_result(tr.transition(n_boot=100), tmp_path, "b")
    doc = (tmp_path / "b.json").read_text()
    (tmp_path / "b.json").write_text(doc[: len(doc) // 2])  # truncated mid-write
    with pytest.raises(pl.errors.ResultsError, match=r"b\.json.*truncated or corrupt"):
        pl.load_results(tmp_path)
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable result file.*b\.json"):
        got = pl.load_results(tmp_path, skip_corrupt=True)
    assert list(got) == ["a"]
    # a missing field, an unknown field, an altered array file, a missing array file
    (tmp_path / "b.json").unlink()
    d = json.loads((tmp_path / "a.json").read_text())
    for label, change, pattern in [
        ("missing", lambda x: x["data"].pop("answers"), "missing field"),
        ("unknown", lambda x: x["data"].__setitem__("colour", "red"), "unknown field"),
        ("version", lambda x: x.__setitem__("format", 1), "format 1"),
    ]:
        bad = json.loads(json.dumps(d))
        change(bad)
        (tmp_path / f"{label}.json").write_text(json.dumps(bad))
        with pytest.raises(pl.errors.ResultsError, match=pattern):
            pl.load_result(tmp_path / f"{label}.json")
        (tmp_path / f"{label}.json").unlink()
    side = tmp_path / d["arrays"]["file"]
    side.write_bytes(side.read_bytes()[:-10])
    with pytest.raises(pl.errors.ResultsError, match="does not match the checksum"):
        pl.load_result(tmp_path / "a.json")
    side.unlink()
    with pytest.raises(pl.errors.ResultsError, match="is missing"):
        pl.load_result(tmp_path / "a.json")


@pytest.mark.bad_input
def test_old_format_results_are_refused_with_how_to_recompute(tmp_path):
    old = {"kind": "Transition", "phaselens": "0.1.0", "created": "2026-11-23T19:00:00+00:00",
           "provenance": {"command": "transition", "model": "smollm2-135m"}, "data": {"layer": 29}}
    (tmp_path / "t.json").write_text(json.dumps(old))
    with pytest.raises(pl.errors.ResultsError, match=r"phaselens 0\.1\.0 in results format 1.*phaselens transition.*smollm2-135m"):
        pl.load_results(tmp_path)


@pytest.mark.bad_input
def test_save_result_under_a_file(tmp_path):
    from test_plots import synthetic_trace

    (tmp_path / "f").write_text("x")
    with pytest.raises(pl.errors.ResultsError, match="is a file, not a folder"):
        pl.save_result(synthetic_trace(), tmp_path / "f" / "sub")
    with pytest.raises(pl.errors.ResultsError, match="not a phaselens result"):
        pl.save_result({"a": 1}, tmp_path)
    with pytest.raises(pl.errors.PruningError, match="is a file"):
        pl.iterative_prune(SPEC, CAP, out=tmp_path / "f")


# ----------------------------------------------------------------------------- runs: locks, kills, corrupt units
_SWEEP = textwrap.dedent("""
    import os, signal, sys
    import phaselens as pl
    import phaselens.pruning.iterative as it
    out, kill_after = sys.argv[1], int(sys.argv[2])
    saved = it.RunFolder.save
    n = [0]
    def save(self, unit, obj):
        saved(self, unit, obj)
        n[0] += 1
        if n[0] == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)  # killed between two steps, after a finished write
    it.RunFolder.save = save
    kw = dict(calibration=pl.load_calibration()[:2], perplexity_texts=pl.heldout_texts()[:1], n_boot=100)
    pl.iterative_prune("smollm2-135m", pl.load_task("capitals", limit=6), steps=4, out=out, **kw)
    print("finished")
""")


def _dicts(sweep) -> list:
    return [s.to_dict() for s in sweep.steps]


def test_a_sweep_killed_between_steps_resumes_bit_for_bit(smol, tmp_path):
    script = tmp_path / "sweep.py"
    script.write_text(_SWEEP)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(pl.__file__).parents[1]), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": str(torch.get_num_threads())}  # the parent's thread count: bit-equal sums
    killed = subprocess.run([sys.executable, str(script), str(tmp_path / "run"), "3"], env=env, capture_output=True,
                            text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    state = tmp_path / "run" / ".phaselens" / "sweep"
    assert sorted(p.name for p in state.glob("step_*.json")) == ["step_000.json", "step_001.json", "step_002.json"]
    assert (state / "lock").exists()  # the killed run's lock is left behind ...
    kw = dict(calibration=pl.load_calibration()[:2], perplexity_texts=pl.heldout_texts()[:1], n_boot=100)
    task = pl.load_task("capitals", limit=6)
    with pytest.warns(UserWarning, match="taking over the lock of a run that is gone"):  # ... and taken over
        resumed = pl.iterative_prune(smol, task, steps=4, out=tmp_path / "run", **kw)
    fresh = pl.iterative_prune(smol, task, steps=4, **kw)
    assert _dicts(resumed) == _dicts(fresh)
    assert all(np.array_equal(a.trace.logits, b.trace.logits) for a, b in zip(resumed.steps, fresh.steps))


def test_truncated_and_foreign_step_files_are_recomputed(smol, tmp_path):
    kw = dict(calibration=pl.load_calibration()[:2], perplexity_texts=pl.heldout_texts()[:1], n_boot=100)
    task = pl.load_task("capitals", limit=6)
    full = pl.iterative_prune(smol, task, steps=2, out=tmp_path / "a", **kw)
    pl.iterative_prune(smol, task, steps=2, out=tmp_path / "b", criterion="random", **kw)
    state = tmp_path / "a" / ".phaselens" / "sweep"
    (state / "step_001.json").write_bytes((state / "step_001.json").read_bytes()[:200])  # truncated
    (state / "step_002.json").write_bytes((tmp_path / "b" / ".phaselens" / "sweep" / "step_002.json").read_bytes())  # foreign
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again = pl.iterative_prune(smol, task, steps=2, out=tmp_path / "a", **kw)
    said = " ".join(str(w.message) for w in caught)
    assert "step_001.json does not match its recorded checksum" in said and "recomputing" in said
    assert _dicts(again) == _dicts(full)


def test_two_runs_on_one_folder_are_refused(smol, tmp_path):
    from phaselens.resume import RunFolder

    args = {"model": "m"}
    with RunFolder(tmp_path, "sweep", args, "a sweep"):
        # a run of another live process holds the folder: the second is refused, naming the holder's PID
        lock = tmp_path / ".phaselens" / "sweep" / "lock"
        info = json.loads(lock.read_text())
        holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        try:
            lock.write_text(json.dumps({**info, "pid": holder.pid}))
            with pytest.raises(pl.errors.RunFolderError, match=rf"in use by another run .*PID {holder.pid}"):
                pl.iterative_prune(smol, CAP, steps=1, out=tmp_path, calibration=["a b c d e f"] * 2, n_boot=100)
        finally:
            holder.kill()
            holder.wait()
            lock.write_text(json.dumps(info))


def test_an_old_run_folder_is_refused_with_how_to_recompute(tmp_path):
    (tmp_path / "sweep.json").write_text(json.dumps({"model": "smollm2-135m", "criterion": "bi", "steps": 3}))
    (tmp_path / "step_000.json").write_text(json.dumps({"step": 0, "removed": []}))
    with pytest.raises(pl.errors.RunFolderError, match=r"written by phaselens 0\.1 .*sweep\.json.*new out= folder"):
        pl.iterative_prune(SPEC, CAP, steps=1, out=tmp_path)
    with pytest.raises(pl.errors.RunFolderError, match=r"written by phaselens 0\.1 .*Rerun into a new out= folder"):
        pl.load_sweep(tmp_path)  # reading it back says the same


def test_taking_over_a_killed_runs_lock_deletes_only_its_temporary_files(tmp_path):
    """A run killed inside an atomic write leaves ``.NAME.tmpPID``; the run that takes its lock deletes those
    (they were never renamed into place) and leaves every other file, a live process's temporary included."""
    import socket

    from phaselens.resume import RunFolder

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(gone.stdout)  # that process has exited
    state = tmp_path / ".phaselens" / "sweep"
    state.mkdir(parents=True)
    (state / "lock").write_text(json.dumps({"pid": dead, "host": socket.gethostname(), "since": "earlier"}))
    left = [state / f".manifest.json.tmp{dead}", tmp_path / f".r.json.tmp{dead}", state / "scratch" / f".x.tmp{dead}"]
    kept = [state / f".manifest.json.tmp{os.getpid()}", state / "step_000.json", tmp_path / f"notes.tmp{dead}"]
    for f in left + kept:
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text("{")
    with pytest.warns(UserWarning, match="taking over the lock of a run that is gone"):
        with RunFolder(tmp_path, "sweep", {"a": 1}):
            assert [f.exists() for f in left] == [False] * 3
            assert [f.exists() for f in kept] == [True] * 3


def _race_for_the_lock(folder: str, barrier, results) -> None:
    from phaselens.resume import RunFolder

    barrier.wait()
    try:
        with RunFolder(folder, "sweep", {"a": 1}, "a sweep"):
            results.put("took")
            time.sleep(1.5)  # hold it while the others try
    except pl.errors.RunFolderError as e:
        results.put("refused" if "in use by another run" in str(e) else f"other: {e}")


def test_runs_starting_at_the_same_moment_get_the_lock_once(tmp_path):
    """Six processes released together by a barrier: exactly one holds the folder, every other is refused naming
    the holder; none takes over a live run's lock (a lock is never seen half-written)."""
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    barrier, results = ctx.Barrier(6), ctx.Queue()
    procs = [ctx.Process(target=_race_for_the_lock, args=(str(tmp_path), barrier, results)) for _ in range(6)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    got = sorted(results.get(timeout=5) for _ in procs)
    assert got == ["refused"] * 5 + ["took"], got
    assert not (tmp_path / ".phaselens" / "sweep" / "lock").exists()  # released by the one that held it


def test_an_unreadable_lock_is_read_again_before_anything_is_taken_over(tmp_path, monkeypatch):
    """An empty lock (an older phaselens between creating and writing it) is not a dead run: the second run reads
    it again, and once it names a live holder, is refused; a lock unreadable for longer than the grace is taken."""
    import socket
    import threading

    from phaselens.resume import RunFolder

    state = tmp_path / ".phaselens" / "sweep"
    state.mkdir(parents=True)
    lock = state / "lock"
    lock.write_text("")
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        info = {"pid": holder.pid, "host": socket.gethostname(), "since": "now"}
        threading.Timer(0.3, lambda: lock.write_text(json.dumps(info))).start()
        with pytest.raises(pl.errors.RunFolderError, match=rf"in use by another run .*PID {holder.pid}"):
            with RunFolder(tmp_path, "sweep", {"a": 1}):
                pass
    finally:
        holder.kill()
        holder.wait()
    lock.write_text("")
    monkeypatch.setattr(RunFolder, "UNREADABLE_GRACE", 0.2)
    time.sleep(0.3)
    with pytest.warns(UserWarning, match="taking over the lock of a run that is gone"):
        with RunFolder(tmp_path, "sweep", {"a": 1}):
            assert json.loads(lock.read_text())["pid"] == os.getpid()


def test_a_dependency_failing_on_bad_input_is_kept_as_the_cause(tiny_llama, tmp_path):
    """At phaselens' boundary the dependency's own exception (the GGUF reader, torch's device parser, the UTF-8
    decoder, JSON, safetensors) is re-raised as a phaselens error whose ``__cause__`` is the original."""
    import json as _json

    from safetensors import SafetensorError

    from test_plots import synthetic_trace

    (tmp_path / "text.safetensors").write_text("this is not a recovery")
    pl.save_result(synthetic_trace(), tmp_path / "res", "a")
    doc = tmp_path / "res" / "a.json"
    doc.write_text(doc.read_text()[:40])
    cases = [
        (lambda: pl.load_model(_gguf(tmp_path, b"GGUF\x03\x00\x00\x00" + os.urandom(5000))), pl.errors.ModelError, Exception),
        (lambda: pl.load_model(SPEC, device="banana"), pl.errors.ModelError, RuntimeError),
        (lambda: pl.load_task(_write(tmp_path, "t.jsonl", '{"question": "caf\xe9", "options": ["a", "b"], '
                                     '"answer": 0}\n'.encode("latin-1"))), pl.errors.TaskError, UnicodeDecodeError),
        (lambda: pl.load_task(_write(tmp_path, "u.jsonl", b'{"question": "q", "options": \n')), pl.errors.TaskError,
         _json.JSONDecodeError),
        (lambda: pl.load_recovery(tmp_path / "text.safetensors", tiny_llama), pl.errors.RecoveryError, (SafetensorError, OSError)),
        (lambda: pl.load_results(tmp_path / "res"), pl.errors.ResultsError, (_json.JSONDecodeError, UnicodeDecodeError)),
    ]
    for call, err, cause in cases:
        with pytest.raises(err) as info:
            call()
        root = info.value.__cause__
        while isinstance(root, pl.PhaselensError):  # a folder-level error wraps the file's, which wraps the original
            root = root.__cause__
        assert isinstance(root, cause), (info.value, repr(root))


def test_noise_that_overflows_is_stopped_and_named_at_its_block(tiny_llama):
    """eps is finite, but eps * sigma overflows float32: the pass stops at the noised block, naming it and the eps,
    instead of reporting a NaN margin."""
    with pytest.raises(pl.errors.NonFiniteError, match=r"block 2 with noise eps=1e\+39"):
        pl.inject_noise(tiny_llama, CAP, blocks=[2], eps=[1e39], seeds=1, n_boot=100)
    r = pl.inject_noise(tiny_llama, CAP, blocks=[2], eps=[1.0], seeds=1, n_boot=100)
    assert np.isfinite(r.item_margins).all()
