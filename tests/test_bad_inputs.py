"""Bad inputs, round three (issue 20): study specs, bootstrap counts, the order of checks, output locations.

Every case asserts the phaselens error class, that its message names the bad thing, and, where the refusal must come
"before", that no forward pass ran (``count_forwards``) or no model loaded. The property tests (hypothesis) generate
many specs of random nesting, types, sizes and non-finite numbers: each ends in a spec or a ``StudyError``, never in
another exception, and a refused grid is refused without being made.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import phaselens as pl
from phaselens import checks
from phaselens.cli import app
from phaselens.errors import (InterventionError, PhaselensError, PruningError, ResultsError, RunFolderError,
                              StudyError)
from phaselens.files import check_writable
from phaselens.resume import RunFolder
from phaselens.study import spec as spec_mod
from phaselens.study.spec import MAX_DEPTH, MAX_JOBS, parse_spec

bad_input = pytest.mark.bad_input
runner = CliRunner()


def _spec(*runs, **top) -> dict:
    return {"models": ["smollm2-135m"], "tasks": ["capitals"], "runs": list(runs) or [{"kind": "trace"}], **top}


def _nested(depth: int, leaf=1):
    v = leaf
    for _ in range(depth):
        v = [v]
    return v


# ----------------------------------------------------------------------------- study specs: values
SPEC_CASES = [
    ("kind a list", _spec({"kind": ["trace"]}), r"runs\[0\]\.kind"),
    ("kind a table", _spec({"kind": {"trace": 1}}), r"runs\[0\]\.kind"),
    ("format a list", {**_spec(), "tasks": [{"name": "capitals", "format": ["letters"]}]}, r"tasks\[0\]\.format"),
    ("mode a list", _spec({"kind": "ablate", "mode": [["skip"]]}), r"mode"),
    ("criterion a table", _spec({"kind": "sweep", "criterion": {"bi": 1}}), r"criterion"),
    ("num_cpus nan", _spec(resources={"num_cpus": math.nan}), r"resources\.num_cpus"),
    ("num_gpus inf", _spec(resources={"num_gpus": math.inf}), r"resources\.num_gpus"),
    ("num_cpus huge", _spec(resources={"num_cpus": 1e300}), r"resources\.num_cpus"),
    ("workers huge", _spec(resources={"workers": 10 ** 9}), r"resources\.workers"),
    ("eps -1", _spec({"kind": "noise", "eps": -1.0}), r"runs\[0\].*eps.*-1"),
    ("eps nan", _spec({"kind": "noise", "eps": math.nan}), r"eps"),
    ("eps in a grid -1", _spec({"kind": "noise", "eps": [[0.5], [-1.0]]}), r"eps"),
    ("noise seeds 0", _spec({"kind": "noise", "seeds": 0}), r"seeds"),
    ("blocks bogus", _spec({"kind": "noise", "blocks": "x-y"}), r"blocks"),
    ("blocks repeated", _spec({"kind": "ablate", "blocks": [1, 1]}), r"blocks"),
    ("pairs [5]", _spec({"kind": "ablate", "pairs": [5]}), r"pairs"),
    ("pairs same block", _spec({"kind": "ablate", "pairs": [[2, 2]]}), r"pairs"),
    ("window -1", _spec({"kind": "ablate", "window": -1}), r"window"),
    ("n_boot 1", _spec({"kind": "trace", "n_boot": 1}), r"n_boot.*100"),
    ("n_boot 10**12", _spec({"kind": "trace", "n_boot": 10 ** 12}), r"n_boot"),
    ("n_boot a string", _spec({"kind": "trace", "n_boot": "1000"}), r"n_boot"),
    ("batch_size 0", _spec({"kind": "trace", "batch_size": 0}), r"batch_size"),
    ("max_tokens -5", _spec({"kind": "noise", "max_tokens": -5}), r"max_tokens"),
    ("reuse_prefix a string", _spec({"kind": "noise", "reuse_prefix": "yes"}), r"reuse_prefix"),
    ("placement bogus", _spec({"kind": "phase-cuts", "n": 1, "placement": "bogus"}), r"placement"),
    ("placement pair bogus", _spec({"kind": "phase-cuts", "n": 1, "placement": [["adjacent", "nowhere"]]}),
     r"placement.*nowhere"),
    ("lam negative", _spec({"kind": "phase-cuts", "n": 1, "lam": -1.0}), r"lam"),
    ("seq_len 1", _spec({"kind": "cka", "seq_len": 1}), r"seq_len"),
    ("n_samples 0", _spec({"kind": "cka", "n_samples": 0}), r"n_samples"),
    ("schedule bogus", _spec({"kind": "trace", "schedule": "bogus"}), r"schedule"),
    ("act_budget 0", _spec({"kind": "trace", "act_budget": 0}), r"act_budget"),
    ("int beyond 64 bits", _spec(seeds=[2 ** 70]), r"seeds\[0\].*64 bits"),
    ("a set", _spec(seeds={0, 1}), r"seeds.*set"),
    ("bytes", {**_spec(), "name": b"study"}, r"name.*bytes"),
    ("an object", _spec({"kind": "trace", "lens": object()}), r"runs\[0\]\.lens.*object"),
    ("a key that is not a string", {**_spec(), "resources": {1: 2}}, r"resources.*keys must be strings"),
    ("nested 40 deep", _spec({"kind": "trace", "n_boot": _nested(40)}), r"nested.*16"),
    ("a list of 200,000", _spec(seeds=list(range(200_000))), r"seeds.*200,000 entries"),
    ("one list shared a million times", _spec(seeds=[list(range(1000))] * 2000), r"more than 1,000,000 values"),
    ("a grid of 10^8 jobs", {**_spec({"kind": "noise", "eps": [[float(i)] for i in range(100)],
                                      "blocks": [[i] for i in range(100)], "seeds": [[i + 1] for i in range(100)]}),
                             "seeds": list(range(100))}, r"100,000,000 jobs.*10,000"),
    ("an empty grid axis", _spec({"kind": "trace", "batch_size": []}), r"runs\[0\].*empty list"),
]


@bad_input
@pytest.mark.parametrize("name,spec,pattern", SPEC_CASES, ids=[c[0] for c in SPEC_CASES])
def test_bad_spec_values_are_study_errors(name, spec, pattern):
    with pytest.raises(StudyError, match=pattern):
        parse_spec(spec)


@bad_input
def test_eps_minus_one_is_refused_before_any_model_loads(tmp_path, monkeypatch):
    """The issue's case: eps = -1.0 used to fail only after the model loaded; now run_study refuses the spec."""
    import phaselens.loading as loading

    monkeypatch.setattr(loading, "load_model", lambda *a, **k: pytest.fail("a model loaded before the spec was checked"))
    text = 'models = ["smollm2-135m"]\ntasks = ["capitals"]\n[[runs]]\nkind = "noise"\neps = -1.0\n'
    with pytest.raises(StudyError, match=r"eps.*-1"):
        pl.run_study(text, tmp_path / "s")
    assert not (tmp_path / "s").exists()


@bad_input
def test_a_huge_grid_is_refused_without_being_made(monkeypatch):
    """10^8 jobs from a few lines: refused at once, naming its size and the limit; expand() never runs."""
    monkeypatch.setattr(spec_mod, "expand", lambda run: pytest.fail("the grid was expanded before its size was checked"))
    axis = [[i] for i in range(1000)]
    spec = _spec({"kind": "ablate", "blocks": axis, "pairs": [[[0, i + 1]] for i in range(1000)],
                  "window": list(range(100))})
    assert len(json.dumps(spec)) < 60_000
    t = time.perf_counter()
    with pytest.raises(StudyError, match=rf"100,000,000 jobs.*limit of {MAX_JOBS:,}"):
        parse_spec(spec)
    assert time.perf_counter() - t < 5


# ----------------------------------------------------------------------------- study specs: files
@bad_input
def test_a_binary_spec_file_is_refused_naming_it(tmp_path):
    f = tmp_path / "spec.toml"
    f.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe" + os.urandom(256))
    with pytest.raises(StudyError, match=r"spec\.toml is not UTF-8 text"):
        parse_spec(f)


@bad_input
def test_a_spec_with_nul_bytes_is_refused(tmp_path):
    f = tmp_path / "spec.toml"
    f.write_bytes(b'models = ["a"]\x00\n')
    with pytest.raises(StudyError, match=r"spec\.toml holds NUL bytes"):
        parse_spec(f)


@bad_input
@pytest.mark.parametrize("suffix", ["toml", "json"])
def test_deeply_nested_spec_files_are_refused(tmp_path, suffix):
    f = tmp_path / f"spec.{suffix}"
    deep = "[" * 100_000 + "]" * 100_000
    f.write_text(f"models = {deep}\n" if suffix == "toml" else f'{{"models": {deep}}}')
    with pytest.raises(StudyError, match=rf"spec\.{suffix} is nested too deeply"):
        parse_spec(f)


@bad_input
def test_nesting_below_the_recursion_limit_is_refused_by_the_depth_limit(tmp_path):
    f = tmp_path / "spec.toml"
    f.write_text('models = ["m"]\ntasks = ["capitals"]\n[[runs]]\nkind = "trace"\nn_boot = ' + "[" * 50 + "1" + "]" * 50 + "\n")
    with pytest.raises(StudyError, match=rf"runs\[0\]\.n_boot.*more than the {MAX_DEPTH} levels"):
        parse_spec(f)


@bad_input
def test_a_spec_file_over_the_size_limit_is_refused_unread(tmp_path, monkeypatch):
    monkeypatch.setattr(spec_mod, "MAX_SPEC_BYTES", 1000)
    f = tmp_path / "big.toml"
    f.write_text('name = "' + "x" * 2000 + '"\n')
    with pytest.raises(StudyError, match=r"big\.toml is 2,010 bytes, over the limit of 1,000"):
        parse_spec(f)


@bad_input
def test_a_fifo_spec_is_refused_without_blocking(tmp_path):
    f = tmp_path / "spec.toml"
    os.mkfifo(f)
    with pytest.raises(StudyError, match=r"spec\.toml is not a regular file"):
        parse_spec(f)


@bad_input
def test_a_folder_as_spec_is_refused(tmp_path):
    with pytest.raises(StudyError, match="is a folder"):
        parse_spec(tmp_path)


@bad_input
@pytest.mark.parametrize("doc", ["[]", '"text"', "3"])
def test_a_json_spec_that_is_not_a_table_is_refused(tmp_path, doc):
    f = tmp_path / "spec.json"
    f.write_text(doc)
    with pytest.raises(StudyError, match=r"spec\.json must hold a table"):
        parse_spec(f)


def test_a_json_spec_reads_like_the_toml_one(tmp_path):
    d = _spec({"kind": "noise", "eps": [[0.5], [1.0]]}, seeds=[0, 1])
    (tmp_path / "s.json").write_text(json.dumps(d))
    a, b = parse_spec(tmp_path / "s.json"), parse_spec(d)
    assert [j.config() for j in a.jobs()] == [j.config() for j in b.jobs()]
    assert len(a.jobs()) == 2 * 2  # seeds x eps


# ----------------------------------------------------------------------------- resume state files
@bad_input
@pytest.mark.parametrize("doc", ["[]", "3", '"x"', "[" * 50_000 + "]" * 50_000])
def test_a_run_state_holding_something_else_is_refused_naming_it(tmp_path, doc):
    state = tmp_path / ".phaselens" / "sweep"
    state.mkdir(parents=True)
    (state / "args.json").write_text(doc)
    with pytest.raises(RunFolderError, match=r"args\.json is corrupt.*delete"):
        with RunFolder(tmp_path, "sweep", {"a": 1}):
            pass
    assert not (state / "lock").exists()  # the lock taken is released


@bad_input
def test_a_manifest_holding_a_list_is_recomputed_with_a_warning(tmp_path):
    with RunFolder(tmp_path, "sweep", {"a": 1}) as rf:
        (rf.path / "manifest.json").write_text("[]")
        with pytest.warns(UserWarning, match=r"manifest\.json is corrupt"):
            assert rf.units() == []


@bad_input
@pytest.mark.parametrize("doc", ["{}", "[1, 2]", '[{"no_job": 1}]'])
def test_a_study_plan_holding_something_else_is_refused(tmp_path, doc):
    plan = tmp_path / ".phaselens" / "study" / "plan.json"
    plan.parent.mkdir(parents=True)
    plan.write_text(doc)
    with pytest.raises(StudyError, match=r"plan\.json is corrupt"):
        pl.study.load_plan(tmp_path)


# ----------------------------------------------------------------------------- bootstrap counts
@bad_input
@pytest.mark.parametrize("n_boot,level,pattern", [
    (1, 0.95, r"n_boot=1 is too few.*>= 100"), (99, 0.95, r"n_boot=99 is too few"),
    (150, 0.99, r"n_boot=150 is too few.*>= 200"), (10 ** 12, 0.95, r"at most 100,000"),
    (1.5, 0.95, r"n_boot must be an int"), (True, 0.95, r"n_boot must be an int"), (1000, 1.0, r"level"),
])
def test_the_one_bootstrap_check(n_boot, level, pattern):
    with pytest.raises(PhaselensError, match=pattern):
        checks.check_n_boot(n_boot, level=level)


def test_the_bootstrap_check_accepts_the_bounds():
    assert checks.check_n_boot(100) == 100 and checks.check_n_boot(200, level=0.99) == 200
    assert checks.check_n_boot(checks.MAX_BOOT) == checks.MAX_BOOT
    assert checks.check_n_boot(np.int64(500), n_items=10) == 500


@bad_input
def test_a_bootstrap_beyond_the_memory_limit_is_refused(capitals_task):
    n = checks.MAX_BOOT_BYTES // 8 // checks.MAX_BOOT + 1  # items at which MAX_BOOT resamples pass the limit
    with pytest.raises(PhaselensError, match=r"n_boot=100000 over .* items needs .* GiB"):
        checks.check_n_boot(checks.MAX_BOOT, n_items=n)


@bad_input
def test_a_transition_of_a_saved_trace_refuses_n_boot_1(tiny_llama, capitals_task):
    tr = pl.decision_trace(tiny_llama, capitals_task)
    with pytest.raises(PhaselensError, match=r"n_boot=1 is too few"):
        tr.transition(n_boot=1)


@bad_input
@pytest.mark.parametrize("fn", ["paired_effect", "correlation_effect"])
def test_effects_refuse_n_boot_below_100(fn):
    x, y = np.arange(10.0), np.arange(10.0)[::-1] + 1
    with pytest.raises(pl.errors.EffectError, match=r"n_boot=20 is too few"):
        getattr(pl, fn)(x, y, name="x", n_boot=20)


# ----------------------------------------------------------------------------- every argument before the first forward pass
def _calls(m, t):
    """(name, call, error class, pattern): every public experiment function, one bad argument at a time."""
    L = m.n_blocks
    cal = ["The quick brown fox jumps over the lazy dog. " * 4]
    pruned = pl.prune(m, [2])
    return [
        ("trace n_boot=1", lambda: pl.decision_trace(m, t, n_boot=1), PhaselensError, "n_boot=1"),
        ("trace n_boot=10**12", lambda: pl.decision_trace(m, t, n_boot=10 ** 12), PhaselensError, "n_boot"),
        ("trace blocks=[99]", lambda: pl.decision_trace(m, t, blocks=[99]), PhaselensError, "99"),
        ("trace lens=bogus", lambda: pl.decision_trace(m, t, lens="bogus"), PhaselensError, "bogus"),
        ("trace schedule=bogus", lambda: pl.decision_trace(m, t, schedule="bogus"), PhaselensError, "schedule"),
        ("trace act_budget=-1", lambda: pl.decision_trace(m, t, act_budget=-1), PhaselensError, "act_budget"),
        ("trace progress='yes'", lambda: pl.decision_trace(m, t, progress="yes"), PhaselensError, "progress"),
        ("transition n_boot=10**12", lambda: pl.transition_point(m, t, n_boot=10 ** 12), PhaselensError, "n_boot"),
        ("noise n_boot=1", lambda: pl.inject_noise(m, t, n_boot=1), InterventionError, "n_boot=1"),
        ("noise n_boot=10**12", lambda: pl.inject_noise(m, t, n_boot=10 ** 12), InterventionError, "n_boot"),
        ("noise eps=-1", lambda: pl.inject_noise(m, t, eps=-1.0), InterventionError, "eps"),
        ("noise eps=nan", lambda: pl.inject_noise(m, t, eps=[0.5, math.nan]), InterventionError, "eps"),
        ("noise seeds=0", lambda: pl.inject_noise(m, t, seeds=0), InterventionError, "seeds"),
        ("noise blocks=[99]", lambda: pl.inject_noise(m, t, blocks=[99]), InterventionError, "99"),
        ("noise transition='x'", lambda: pl.inject_noise(m, t, transition="x"), PhaselensError, "transition"),
        ("noise lens=bogus", lambda: pl.inject_noise(m, t, lens="bogus"), PhaselensError, "bogus"),
        ("ablate pairs=[5]", lambda: pl.ablate(m, t, pairs=[5]), InterventionError, r"pairs.*5"),
        ("ablate pairs=[(1, 1)]", lambda: pl.ablate(m, t, pairs=[(1, 1)]), InterventionError, "two different"),
        ("ablate pairs=[(1, 99)]", lambda: pl.ablate(m, t, pairs=[(1, 99)]), InterventionError, "99"),
        ("ablate pairs=[('a', 'b')]", lambda: pl.ablate(m, t, pairs=[("a", "b")]), InterventionError, "'a'"),
        ("ablate pruned pair block", lambda: pl.ablate(pruned, t, pairs=[(1, 2)]), InterventionError, "pruned"),
        ("ablate mode=bogus", lambda: pl.ablate(m, t, mode="bogus"), InterventionError, "mode"),
        ("ablate window=-1", lambda: pl.ablate(m, t, window=-1), InterventionError, "window"),
        ("ablate n_boot=10**12", lambda: pl.ablate(m, t, n_boot=10 ** 12), InterventionError, "n_boot"),
        ("select placement=bogus", lambda: pl.select_blocks(m, 1, "silent", task=t, placement="bogus"), PruningError,
         "placement"),
        ("select placement=bogus (bi)", lambda: pl.select_blocks(m, 1, "bi", calibration=cal, placement="bogus"),
         PruningError, "placement"),
        ("select placement=-1", lambda: pl.select_blocks(m, 1, "silent", task=t, placement=-1), PruningError,
         "placement"),
        ("select n=L", lambda: pl.select_blocks(m, L, "bi", calibration=cal), PruningError, "n must be"),
        ("select criterion=[bi]", lambda: pl.select_blocks(m, 1, ["bi"]), PruningError, "criterion"),
        ("phase cuts n=0", lambda: pl.compare_phase_cuts(m, t, 0), PhaselensError, r"\bn\b"),
        ("phase cuts placement=bogus", lambda: pl.compare_phase_cuts(m, t, 1, placement="bogus"), PhaselensError,
         "placement"),
        ("phase cuts placement=(0, bogus)", lambda: pl.compare_phase_cuts(m, t, 1, placement=(0, "bogus")),
         PhaselensError, "bogus"),
        ("phase cuts methods=[bogus]", lambda: pl.compare_phase_cuts(m, t, 1, methods=["bogus"]), PhaselensError, "bogus"),
        ("phase cuts n_boot=1", lambda: pl.compare_phase_cuts(m, t, 1, n_boot=1), PhaselensError, "n_boot"),
        ("phase cuts seeds=-1", lambda: pl.compare_phase_cuts(m, t, 1, seeds=-1), PhaselensError, "seeds"),
        ("phase cuts lam=-1", lambda: pl.compare_phase_cuts(m, t, 1, lam=-1.0), PhaselensError, "lam"),
        ("phase cuts out under a file", lambda: pl.compare_phase_cuts(m, t, 1, out="/etc/hostname/x"), PhaselensError,
         "/etc/hostname"),
        ("sweep n_boot=1", lambda: pl.iterative_prune(m, t, n_boot=1), PhaselensError, "n_boot"),
        ("sweep criterion=bogus", lambda: pl.iterative_prune(m, t, criterion="bogus"), PhaselensError, "bogus"),
        ("sweep steps=0", lambda: pl.iterative_prune(m, t, steps=0), PhaselensError, "steps"),
        ("sweep recovery=bogus", lambda: pl.iterative_prune(m, t, recovery="bogus"), PhaselensError, "bogus"),
        ("sweep out in /proc", lambda: pl.iterative_prune(m, t, out="/proc/x/sweep"), PhaselensError, "/proc/x"),
        ("cka n_samples=0", lambda: pl.cka(m, pruned, t, n_samples=0), PhaselensError, "n_samples"),
        ("cka positions=bogus", lambda: pl.cka(m, pruned, t, positions="bogus"), PhaselensError, "positions"),
        ("cka form=bogus", lambda: pl.cka(m, pruned, t, form="bogus"), PhaselensError, "form"),
        ("cka seq_len=0", lambda: pl.cka(m, pruned, cal, seq_len=0), PhaselensError, "seq_len"),
        ("recovery method=bogus", lambda: pl.fit_recovery(pruned, cal, "bogus"), PhaselensError, "bogus"),
        ("recovery lam=-1", lambda: pl.fit_recovery(pruned, cal, lam=-1.0), PhaselensError, "lam"),
        ("recovery seq_len=0", lambda: pl.fit_recovery(pruned, cal, seq_len=0), PhaselensError, "seq_len"),
        ("recovery calibration=5", lambda: pl.fit_recovery(pruned, 5), PhaselensError, "calibration"),
        ("lens kind=bogus", lambda: pl.fit_lens(m, "bogus", cal), PhaselensError, "bogus"),
        ("lens calibration=5", lambda: pl.fit_lens(m, "linear", 5), PhaselensError, "calibration"),
        ("lens_kl seq_len=0", lambda: pl.lens_kl(m, cal, seq_len=0), PhaselensError, "seq_len"),
        ("lens_kl lens=bogus", lambda: pl.lens_kl(m, cal, lens="bogus"), PhaselensError, "bogus"),
        ("perplexity seq_len=0", lambda: pl.perplexity(m, cal, seq_len=0), PhaselensError, "seq_len"),
        ("perplexity texts=5", lambda: pl.perplexity(m, 5), PhaselensError, "not int"),
        ("boundary inputs=bogus", lambda: pl.boundary_error(pruned, cal, inputs="bogus"), PhaselensError, "inputs"),
        ("collapse chunk=0", lambda: pl.transition_vs_collapse(models=[m], tasks=[t], chunk=0), PhaselensError, "chunk"),
        ("collapse criterion=bogus", lambda: pl.transition_vs_collapse(models=[m], tasks=[t], criterion="bogus"),
         PhaselensError, "bogus"),
        ("collapse tasks=5", lambda: pl.transition_vs_collapse(models=[m], tasks=5), PhaselensError, "tasks"),
        ("trace cache=5", lambda: pl.decision_trace(m, t, cache=5), PhaselensError, "cache"),
        ("select transition=5", lambda: pl.select_blocks(m, 1, "silent", task=t, transition=5), PruningError,
         "transition"),
        ("phase cuts n=L", lambda: pl.compare_phase_cuts(m, t, L), PhaselensError, rf"1\.\.{L - 1}"),
        ("lens seed='x'", lambda: pl.fit_lens(m, "linear", cal, seed="x"), PhaselensError, "seed"),
        ("evaluate tasks=5", lambda: pl.evaluate(m, 5), PhaselensError, "tasks"),
        ("evaluate tasks=[]", lambda: pl.evaluate(m, []), PhaselensError, "tasks"),
        ("evaluate max_tokens=0", lambda: pl.evaluate(m, ["x"], max_tokens=0), PhaselensError, "max_tokens"),
        ("evaluate limit=-1", lambda: pl.evaluate(m, ["x"], limit=-1), PhaselensError, "limit"),
        ("evaluate an unknown keyword", lambda: pl.evaluate(m, ["x"], bogus=1), PhaselensError, "bogus"),
        ("evaluate an unknown task", lambda: pl.evaluate(m, ["no_such_task_xyz"]), PhaselensError, "no_such_task_xyz"),
        ("collapse out under a file", lambda: pl.transition_vs_collapse(models=[m], tasks=[t], out="/etc/hostname/x"),
         PhaselensError, "/etc/hostname"),
    ]


CALL_NAMES = [
    "trace n_boot=1", "trace n_boot=10**12", "trace blocks=[99]", "trace lens=bogus", "trace schedule=bogus",
    "trace act_budget=-1", "trace progress='yes'", "transition n_boot=10**12", "noise n_boot=1", "noise n_boot=10**12",
    "noise eps=-1", "noise eps=nan", "noise seeds=0", "noise blocks=[99]", "noise transition='x'", "noise lens=bogus",
    "ablate pairs=[5]", "ablate pairs=[(1, 1)]", "ablate pairs=[(1, 99)]", "ablate pairs=[('a', 'b')]",
    "ablate pruned pair block", "ablate mode=bogus", "ablate window=-1", "ablate n_boot=10**12",
    "select placement=bogus", "select placement=bogus (bi)", "select placement=-1", "select n=L", "select criterion=[bi]",
    "phase cuts n=0", "phase cuts placement=bogus", "phase cuts placement=(0, bogus)", "phase cuts methods=[bogus]", "phase cuts n_boot=1",
    "phase cuts seeds=-1", "phase cuts lam=-1", "phase cuts out under a file", "sweep n_boot=1", "sweep criterion=bogus",
    "sweep steps=0", "sweep recovery=bogus", "sweep out in /proc", "cka n_samples=0", "cka positions=bogus",
    "cka form=bogus", "cka seq_len=0", "recovery method=bogus", "recovery lam=-1", "recovery seq_len=0",
    "recovery calibration=5", "lens kind=bogus", "lens calibration=5", "lens_kl seq_len=0", "lens_kl lens=bogus",
    "perplexity seq_len=0", "perplexity texts=5", "boundary inputs=bogus", "collapse chunk=0", "collapse criterion=bogus",
    "collapse tasks=5", "trace cache=5", "select transition=5", "phase cuts n=L", "lens seed='x'", "evaluate tasks=5",
    "evaluate tasks=[]", "evaluate max_tokens=0", "evaluate limit=-1", "evaluate an unknown keyword",
    "evaluate an unknown task", "collapse out under a file",
]


@bad_input
@pytest.mark.parametrize("name", CALL_NAMES)
def test_every_argument_is_checked_before_the_first_forward_pass(tiny_llama, capitals_task, count_forwards, name):
    calls = {c[0]: c[1:] for c in _calls(tiny_llama, capitals_task)}
    call, err, pattern = calls[name]
    with count_forwards(tiny_llama) as c:
        with pytest.raises(err, match=pattern):
            call()
    assert c.n == 0, f"{name}: {c.n} forward pass(es) before the refusal"


def test_the_table_of_calls_is_the_table_of_names(tiny_llama, capitals_task):
    assert [c[0] for c in _calls(tiny_llama, capitals_task)] == CALL_NAMES


# ----------------------------------------------------------------------------- output locations
def _no_model(monkeypatch):
    import phaselens.commands.common as common
    import phaselens.loading as loading

    def boom(*a, **k):
        raise AssertionError("a model was loaded before the output location was checked")

    monkeypatch.setattr(loading, "load_model", boom)
    monkeypatch.setattr(common, "open_model", boom)


def _read_only(monkeypatch, folder: Path):
    """``folder`` takes no new file (what a read-only folder does to root too): the probe's create fails there."""
    import tempfile

    real = tempfile.mkstemp

    def mkstemp(*a, dir=None, **k):
        if dir is not None and Path(dir).resolve() == folder.resolve():
            raise PermissionError(13, "Permission denied")
        return real(*a, dir=dir, **k)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if ".tmp" in p.name or "phaselens-probe" in p.name)


@bad_input
@pytest.mark.parametrize("args,pattern", [
    (["transition", "--out", "/etc/hostname/x"], r"--out.*/etc/hostname is a file"),
    (["transition", "--out", "/proc/x/results"], r"--out.*/proc/x/results.*not writable"),
    (["transition", "--html", "/proc/x/t.html"], r"--html.*/proc/x.*does not exist"),
    (["noise", "--out", "/etc/hostname/x"], r"--out.*/etc/hostname"),
    (["ablate", "--html", "/etc/hostname/x.html"], r"--html.*/etc/hostname"),
    (["sweep", "--out", "/proc/x/s"], r"--out.*/proc/x/s"),
    (["phase-cuts", "-n", "1", "--out", "/etc/hostname/x"], r"--out.*/etc/hostname"),
    (["collapse", "--sweeps", "/etc/hostname/x"], r"--sweeps.*/etc/hostname"),
    (["lens", "fit", "--kind", "linear", "--lens-file", "/proc/x/l.safetensors"], r"--lens-file.*/proc/x"),
    (["lens", "fit", "--lens-file", "l.safetensors", "--resume", "/etc/hostname/ckpt"], r"--resume.*/etc/hostname"),
])
def test_cli_output_locations_are_checked_before_the_work(monkeypatch, args, pattern):
    _no_model(monkeypatch)
    res = runner.invoke(app, args)
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    assert re.search(pattern, " ".join(res.output.split())), res.output


@bad_input
def test_transition_into_a_read_only_folder_is_refused_before_the_trace(monkeypatch, tmp_path):
    _no_model(monkeypatch)
    ro = tmp_path / "ro"
    ro.mkdir()
    _read_only(monkeypatch, ro)
    res = runner.invoke(app, ["transition", "--out", str(ro)])
    assert res.exit_code == 2 and "not writable" in res.output and "ro" in res.output, res.output
    assert _leftovers(tmp_path) == []


@bad_input
@pytest.mark.parametrize("target", ["/proc/x/report.html", "FOLDER", "/etc/hostname/r.html"])
def test_report_into_a_missing_parent_or_onto_a_folder_is_refused_leaving_nothing(tmp_path, target):
    res_dir = tmp_path / "results"
    pl.save_result(_tiny_transition(), res_dir, "t")
    out = str(tmp_path) if target == "FOLDER" else target
    before = sorted(p.name for p in tmp_path.rglob("*"))
    for flag in ("--html", "-o"):
        res = runner.invoke(app, ["report", str(res_dir), flag, out])
        assert res.exit_code == 2 and "Traceback" not in res.output, res.output
        assert out.split("/")[1] in res.output or str(tmp_path) in " ".join(res.output.split())
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # no temporary file left behind


def _tiny_transition():
    from phaselens.trace import DecisionTrace

    rng = np.random.default_rng(0)
    z = rng.normal(size=(6, 8, 4))
    z[:, 4:, 0] += 5
    tr = DecisionTrace(model="toy", task="toy", format="letters", n_blocks=6, blocks=np.arange(6), logits=z,
                       answers=np.zeros(8, dtype=int), mask=np.ones((8, 4), dtype=bool),
                       option_chars=np.ones((8, 4), dtype=int))
    return tr.transition(n_boot=100)


@bad_input
def test_study_run_under_a_missing_parent_is_refused_before_any_job(tmp_path, monkeypatch):
    _no_model(monkeypatch)
    spec = tmp_path / "s.toml"
    spec.write_text('models = ["smollm2-135m"]\ntasks = ["capitals"]\n[[runs]]\nkind = "trace"\n')
    res = runner.invoke(app, ["study", "run", str(spec), "--out", "/proc/x/study"])
    assert res.exit_code == 2 and "/proc/x/study" in " ".join(res.output.split()), res.output
    with pytest.raises(StudyError, match=r"out=.*/etc/hostname"):
        pl.run_study(spec, "/etc/hostname/study")


@bad_input
@pytest.mark.parametrize("saver,pattern", [
    (lambda tr: pl.save_result(tr, "/etc/hostname/x"), r"/etc/hostname"),
    (lambda tr: pl.save_result(tr, "/proc/x/y"), r"/proc/x/y.*not writable"),
    (lambda tr: pl.build_report({"t": tr}, "/proc/x/r.html"), r"/proc/x"),
    (lambda tr: pl.build_report({"t": tr}, "/tmp"), r"is a folder"),
    (lambda tr: __import__("phaselens.plots", fromlist=["save_html"]).save_html(tr.plot(), "/proc/x.html"), r"/proc"),
])
def test_python_savers_refuse_unwritable_locations_naming_them(saver, pattern):
    with pytest.raises(PhaselensError, match=pattern):
        saver(_tiny_transition())


@bad_input
def test_lens_and_recovery_saves_refuse_unwritable_locations(tiny_llama):
    lens = pl.fit_lens(tiny_llama, "linear", ["The quick brown fox jumps over the lazy dog. " * 30])
    with pytest.raises(pl.errors.LensError, match=r"/proc/x"):
        lens.save("/proc/x/l.safetensors")
    with pytest.raises(pl.errors.LensError, match=r"/etc/hostname"):
        lens.save("/etc/hostname/l.safetensors")


@bad_input
@pytest.mark.parametrize("kind,path,pattern", [
    ("folder", "/etc/hostname/x", r"/etc/hostname is a file"),
    ("folder", "/etc/hostname", r"/etc/hostname is a file"),
    ("folder", "/proc/x/y/z", r"not writable.*nearest existing folder /proc"),
    ("file", "/proc/x/a.html", r"the folder /proc/x does not exist"),
    ("file", "/etc/hostname/a.html", r"/etc/hostname is a file"),
    ("file", "/dev/null", r"not a regular file"),
    ("file", "/tmp", r"is a folder"),
    ("folder", "a\x00b", r"NUL"),
    ("folder", 5, r"must be a folder path"),
])
def test_check_writable(kind, path, pattern):
    with pytest.raises(ResultsError, match=pattern):
        check_writable(path, kind)


def test_check_writable_accepts_what_can_be_written_and_leaves_nothing(tmp_path):
    assert check_writable(tmp_path / "a" / "b", "folder") == tmp_path / "a" / "b"
    assert not (tmp_path / "a").exists()  # nothing is created
    assert check_writable(tmp_path / "f.html", "file") == tmp_path / "f.html"
    assert check_writable(tmp_path / "new" / "f.html", "file", parents=True)
    assert list(tmp_path.iterdir()) == []


@bad_input
def test_check_writable_refuses_a_read_only_folder_by_its_probe(tmp_path, monkeypatch):
    _read_only(monkeypatch, tmp_path)
    with pytest.raises(ResultsError, match=rf"out='{tmp_path}/sub' is not writable \(its folder {tmp_path} takes"):
        check_writable(tmp_path / "sub", "folder")
    with pytest.raises(ResultsError, match=r"is not writable \(its nearest existing folder"):
        check_writable(tmp_path / "sub" / "sub2", "folder")
    with pytest.raises(ResultsError, match=r"is not writable \(its folder"):
        check_writable(tmp_path / "f.html", "file")


# ----------------------------------------------------------------------------- property tests (hypothesis)
PROPS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

plain = st.recursive(
    st.none() | st.booleans() | st.integers(-(2 ** 70), 2 ** 70) | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4),
    max_leaves=30)
foreign = st.sampled_from([object(), b"bytes", {1, 2}, frozenset(), 1j, np.float32(1.0), Path("x"), range(3)])


def _must_be_spec_or_study_error(d):
    try:
        s = parse_spec(d)
    except StudyError as e:
        return str(e)
    assert isinstance(s, spec_mod.StudySpec)
    return None


@bad_input
@given(run_key=st.sampled_from(["n_boot", "eps", "blocks", "pairs", "seeds", "mode", "batch_size", "lens", "window"]),
       value=plain, kind=st.sampled_from(["trace", "noise", "ablate"]))
@PROPS
def test_random_values_in_a_run_end_in_a_spec_or_a_study_error(run_key, value, kind):
    _must_be_spec_or_study_error(_spec({"kind": kind, run_key: value}))


@bad_input
@given(where=st.sampled_from(["top", "seeds", "tasks", "resources", "run"]), value=plain | foreign)
@PROPS
def test_random_types_anywhere_end_in_a_spec_or_a_study_error(where, value):
    d = _spec()
    if where == "top":
        d["name"] = value
    elif where == "seeds":
        d["seeds"] = [0, value]
    elif where == "tasks":
        d["tasks"] = [{"name": "capitals", "limit": value}]
    elif where == "resources":
        d["resources"] = {"num_cpus": value}
    else:
        d["runs"] = [{"kind": "noise", "eps": value}]
    msg = _must_be_spec_or_study_error(d)
    if isinstance(value, (set, frozenset, bytes, complex, Path, range)) or type(value) is object:
        assert msg is not None and type(value).__name__ in msg


@bad_input
@given(depth=st.integers(MAX_DEPTH + 1, 3000), where=st.sampled_from(["name", "seeds", "runs"]))
@PROPS
def test_random_deep_nesting_is_refused_naming_the_limit(depth, where):
    d = _spec()
    if where == "runs":
        d["runs"] = [{"kind": "trace", "n_boot": _nested(depth)}]
    else:
        d[where] = _nested(depth)
    with pytest.raises(StudyError, match=rf"nested .* more than the {MAX_DEPTH} levels"):
        parse_spec(d)


@bad_input
@given(depth=st.integers(MAX_DEPTH + 1, 20_000), suffix=st.sampled_from(["toml", "json"]))
@settings(max_examples=25, deadline=None)
def test_random_deep_nesting_in_files_is_refused(tmp_path_factory, depth, suffix):
    f = tmp_path_factory.mktemp("deep") / f"spec.{suffix}"
    deep = "[" * depth + "1" + "]" * depth
    f.write_text(f'models = ["m"]\ntasks = ["capitals"]\nseeds = {deep}\n' if suffix == "toml"
                 else f'{{"models": ["m"], "tasks": ["capitals"], "seeds": {deep}}}')
    with pytest.raises(StudyError, match=r"nested"):
        parse_spec(f)


@bad_input
@given(lens=st.lists(st.integers(1, 60), min_size=1, max_size=5), models=st.integers(1, 4), seeds=st.integers(1, 20))
@PROPS
def test_random_grids_are_counted_without_being_made(lens, models, seeds):
    """Any grid: its size is the product of the axes' lengths; above the limit it is refused, naming both, and it is
    never expanded; within it, expanding gives exactly that many jobs."""
    keys = ["eps", "blocks", "seeds", "max_tokens", "batch_size"][: len(lens)]
    vals = {"eps": lambda n: [[0.1 * (i + 1)] for i in range(n)], "blocks": lambda n: [[i] for i in range(n)],
            "seeds": lambda n: [[i + 1] for i in range(n)], "max_tokens": lambda n: list(range(1, n + 1)),
            "batch_size": lambda n: list(range(1, n + 1))}
    run = {"kind": "noise", **{k: vals[k](n) for k, n in zip(keys, lens)}}
    d = {"models": [f"m{i}" for i in range(models)], "tasks": ["capitals"], "seeds": list(range(seeds)), "runs": [run]}
    want = models * seeds * math.prod(lens)
    if want > MAX_JOBS:
        with pytest.raises(StudyError, match=rf"{want:,} jobs.*limit of {MAX_JOBS:,}"):
            parse_spec(d)
    else:
        assert len(parse_spec(d).jobs()) == want


@bad_input
@given(x=st.sampled_from([math.nan, math.inf, -math.inf]),
       where=st.sampled_from(["eps", "lam", "num_cpus", "num_gpus", "limit", "n_boot", "deep"]))
@PROPS
def test_non_finite_numbers_anywhere_are_refused_naming_where(x, where):
    d = _spec()
    if where in ("num_cpus", "num_gpus"):
        d["resources"] = {where: x}
    elif where == "limit":
        d["tasks"] = [{"name": "capitals", "limit": x}]
    elif where == "deep":
        d["runs"] = [{"kind": "noise", "eps": [[0.5, [x]]]}]
    else:
        d["runs"] = [{"kind": "phase-cuts" if where == "lam" else "noise", "n": 1, where: x}
                     if where == "lam" else {"kind": "noise", where: x}]
    with pytest.raises(StudyError, match=r"is not a finite number"):
        parse_spec(d)


@bad_input
@given(n_boot=st.integers(-(2 ** 70), 2 ** 70) | st.floats(allow_nan=True) | st.booleans() | st.text(max_size=4),
       level=st.floats(0.5, 0.999))
@PROPS
def test_random_bootstrap_counts_are_accepted_exactly_in_range(n_boot, level):
    ok = (isinstance(n_boot, int) and not isinstance(n_boot, bool)
          and max(checks.MIN_BOOT, math.ceil(2 / (1 - level) - 1e-9)) <= n_boot <= checks.MAX_BOOT)
    if ok:
        assert checks.check_n_boot(n_boot, level=level) == n_boot
    else:
        with pytest.raises(PhaselensError, match="n_boot"):
            checks.check_n_boot(n_boot, level=level)


segment = st.text(st.characters(whitelist_categories=("Ll", "Lu", "Nd"), whitelist_characters="._-"), min_size=1,
                  max_size=8).filter(lambda s: s not in (".", ".."))


@bad_input
@given(parts=st.lists(segment, min_size=1, max_size=4), kind=st.sampled_from(["folder", "file"]),
       root=st.sampled_from(["/etc/hostname", "/proc/no-such-dir"]))
@PROPS
def test_random_paths_under_a_file_or_in_proc_are_refused_naming_the_path(parts, kind, root):
    path = "/".join([root, *parts])
    with pytest.raises(ResultsError) as e:
        check_writable(path, kind)
    assert root in str(e.value)
