"""The recovery-method registry: the built-ins as registered objects, and a method registered OUTSIDE phaselens
(tests/plugins/half_ghosted.py) used by fit_recovery, compare_phase_cuts, the CLI (a separate process) and a study
run by worker processes, with no edit to phaselens."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import phaselens as pl
from phaselens.calibration import tokenize
from phaselens.experiments import DEFAULT_METHODS, WHOLE_STREAM
from phaselens.recovery import METHODS, RecoveryMethod, solve, span_stats
from phaselens.registry import PLUGINS_ENV, load_plugins

PLUGIN = Path(__file__).parent / "plugins" / "half_ghosted.py"
SRC = str(Path(pl.__file__).resolve().parents[1])
OLD_METHODS = ("ghosted", "identity", "scalar", "diagonal", "symmetric", "linearpatch", "replaceme")


@pytest.fixture(scope="module")
def plugin():
    """The plugin loaded the way a user does (load_plugins also exports it to child processes); the environment is
    restored afterwards (the method stays registered in this process)."""
    old = os.environ.get(PLUGINS_ENV)
    load_plugins([PLUGIN])
    yield "half-ghosted"
    if old is None:
        os.environ.pop(PLUGINS_ENV, None)
    else:
        os.environ[PLUGINS_ENV] = old


def _rel(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _acts(model: pl.Model, texts: list[str], s: int, e: int, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """``X`` (input of block s) and ``Y`` (input of block e) ``[N, d]`` from plain HF forward hooks, one text at a time."""
    got: dict[int, list] = {s: [], e: []}
    hooks = [model.hf.model.layers[b].register_forward_pre_hook(
        lambda m, a, k, _b=b: got[_b].append((a[0] if a else k["hidden_states"])[0].double().numpy()), with_kwargs=True)
        for b in (s, e)]
    try:
        with torch.no_grad():
            for ids in tokenize(model.tokenizer, texts, seq_len):
                model.hf.model(input_ids=torch.tensor([ids]))
    finally:
        for h in hooks:
            h.remove()
    return np.concatenate(got[s]), np.concatenate(got[e])


# -- the built-ins ----------------------------------------------------------------------------------------------
def test_builtins_keep_their_names_order_and_behaviour():
    assert METHODS.names()[:7] == OLD_METHODS == METHODS.builtin_names() and pl.METHODS is METHODS
    assert all(m in METHODS for m in OLD_METHODS) and tuple(m for m in METHODS if m in OLD_METHODS) == OLD_METHODS
    assert DEFAULT_METHODS == ("identity", "ghosted", "scalar", "diagonal", "symmetric", "linearpatch", "replaceme")
    assert WHOLE_STREAM == DEFAULT_METHODS[:-1]
    rm, lp = METHODS.get("replaceme"), METHODS.get("linearpatch")
    assert rm.acts_on == "branch" and rm.needs == {"stream", "branch"} and lp.needs == {"stream", "rotated"}
    assert rm.refuses((0, 2)) and rm.refuses((1, 3)) is None and lp.refuses((0, 2)) is None
    with pytest.raises(pl.errors.RecoveryError, match=r"replaceme needs a block before the cut span \(0, 2\)"):
        rm.check_span((0, 2))
    # the old solve(name, A, C) still answers, through the registry: ReplaceMe's ridge shrinks towards zero
    rng = np.random.default_rng(0)
    X, Y = rng.normal(size=(200, 8)), rng.normal(size=(200, 8))
    A, C = torch.tensor(X.T @ X), torch.tensor(X.T @ Y)
    assert _rel(solve("replaceme", A, C, lam=3.0)[0].numpy(), np.linalg.solve(X.T @ X + 3 * np.eye(8), X.T @ Y)) < 1e-10
    with pytest.raises(pl.errors.RecoveryError, match="unknown recovery method 'nope'"):
        solve("nope", A, C)


def test_register_method_refuses_what_it_cannot_run():
    with pytest.raises(pl.errors.RecoveryError, match="must be a phaselens.recovery.RecoveryMethod"):
        pl.register_method("not-a-method")(object)
    with pytest.raises(pl.errors.RecoveryError, match="needs must be a non-empty subset"):
        pl.register_method("bad-needs")(type("B", (RecoveryMethod,), {"needs": frozenset({"magic"})}))
    with pytest.raises(pl.errors.RecoveryError, match="acts_on must be one of"):
        pl.register_method("bad-acts")(type("B", (RecoveryMethod,), {"acts_on": "everywhere"}))
    with pytest.raises(pl.errors.RecoveryError, match="already registered"):
        pl.register_method("ghosted")(type("G", (RecoveryMethod,), {}))
    assert "not-a-method" not in METHODS and "bad-needs" not in METHODS


def test_span_stats_gathers_the_declared_needs(tiny_llama):
    cal = pl.load_calibration()[:3]
    got = span_stats(tiny_llama, [(2, 4)], cal, methods=["ghosted", "linearpatch"], seq_len=64)[(2, 4)]
    assert got.has("stream") and got.has("rotated") and not got.has("branch")
    got = span_stats(tiny_llama, [(2, 4)], cal, methods=["replaceme"], seq_len=64)[(2, 4)]
    assert got.has("branch") and not got.has("rotated")
    old = span_stats(tiny_llama, [(2, 4)], cal, branch=True, seq_len=64)[(2, 4)]  # the old flag: the same numbers
    assert torch.equal(old.A_branch, got.A_branch) and torch.equal(old.C, got.C)
    with pytest.raises(pl.errors.RecoveryError, match="block 0"):
        span_stats(tiny_llama, [(0, 2)], cal, methods=["replaceme"], seq_len=64)
    with pytest.raises(pl.errors.RecoveryError, match="needs the statistics"):  # precomputed statistics lacking a need
        pl.fit_recovery(pl.prune(tiny_llama, [2, 3]), None, "linearpatch",
                        stats=span_stats(tiny_llama, [(2, 4)], cal, seq_len=64))


# -- a method registered outside the package --------------------------------------------------------------------
def test_plugin_fits_the_halfway_least_squares_operator(plugin, smol):
    """fit_recovery with the plugin: ``W = (lstsq(X, Y) + I) / 2`` on activations from plain HF hooks."""
    assert plugin in METHODS and plugin in pl.registry.registered("method").name.tolist()
    assert METHODS.get(plugin).needs == {"stream"} and not [e for e in METHODS.entries() if e.name == plugin][0].builtin
    cal, s, e = pl.load_calibration()[:12], 20, 22
    X, Y = _acts(smol, cal, s, e, 128)
    assert X.shape[0] > 2 * X.shape[1]  # a well-posed least-squares problem
    rec = pl.fit_recovery(pl.prune(smol, [20, 21]), cal, plugin, seq_len=128)
    ref = (np.linalg.lstsq(X, Y, rcond=None)[0] + np.eye(X.shape[1])) / 2
    assert rec.method == plugin and _rel(rec.operator((s, e)).double().numpy(), ref) < 1e-4
    mse = ((X @ ref - Y) ** 2).mean()
    assert rec.fit_error.mse[0] == pytest.approx(mse, rel=1e-3)


def test_plugin_recovery_saves_and_loads_and_needs_its_plugin(plugin, tiny_llama, tmp_path, monkeypatch):
    rec = pl.fit_recovery(pl.prune(tiny_llama, [2, 3]), pl.load_calibration()[:8], plugin, seq_len=64)
    path = rec.save(tmp_path / "half.safetensors")
    back = pl.load_recovery(path, tiny_llama)
    assert back.method == plugin and torch.equal(back.operator((2, 4)), rec.operator((2, 4)).cpu())
    ghosted = pl.fit_recovery(pl.prune(tiny_llama, [2, 3]), pl.load_calibration()[:8], seq_len=64)
    assert pl.load_recovery(ghosted.save(tmp_path / "g.safetensors"), tiny_llama).method == "ghosted"  # as before
    entry = [e for e in METHODS.entries() if e.name == plugin][0]
    monkeypatch.delenv(PLUGINS_ENV, raising=False)
    METHODS.remove(plugin)  # a process that has not loaded the plugin
    try:
        with pytest.raises(pl.errors.RecoveryError, match=rf"recovery method '{plugin}'.*not registered.*{PLUGINS_ENV}"):
            pl.load_recovery(path, tiny_llama)
    finally:
        METHODS.add(plugin, entry.obj)


def test_plugin_in_compare_phase_cuts(plugin, smol):
    """The plugin is compared like a built-in; its fitted boundary error lies between Ghosted Layers' (the least-
    squares optimum) and the mean of Ghosted Layers' and plain pruning's (the loss is convex in W)."""
    res = pl.compare_phase_cuts(smol, pl.load_task("capitals", limit=16), 1, methods=["identity", "ghosted", plugin],
                                seeds=0, placement="adjacent", calibration=pl.load_calibration()[:12],
                                heldout=pl.heldout_texts()[:2],
                                seq_len=128, n_boot=100)
    assert res.methods == ["identity", "ghosted", plugin] and not res.skipped and len(res.units) == 2 * 3
    for kind in ("silent", "decisive"):
        g, i, h = (res.unit(kind, m).boundary_relative for m in ("ghosted", "identity", plugin))
        assert g <= h * (1 + 1e-6) and h <= (g + i) / 2 * (1 + 1e-6), (kind, g, h, i)
        assert np.isfinite(res.unit(kind, plugin).perplexity)


def _env(**extra) -> dict:
    return {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1",
            **extra}


def test_plugin_from_the_cli_in_another_process(smol, tmp_path):
    (tmp_path / "cal.txt").write_text("\n\n".join(pl.load_calibration()[:8]))
    (tmp_path / "held.txt").write_text("\n\n".join(pl.heldout_texts()[:2]))
    args = [sys.executable, "-c", "from phaselens.cli import main; main()", "phase-cuts", "-m", "smollm2-135m", "-t", "capitals", "--limit", "16",
            "-n", "1", "--methods", "identity,half-ghosted", "--seeds", "0", "--calibration", str(tmp_path / "cal.txt"),
            "--heldout", str(tmp_path / "held.txt"), "--json"]
    env = _env(**{PLUGINS_ENV: str(PLUGIN)})
    res = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    d = json.loads(res.stdout)
    assert d["methods"] == ["identity", "half-ghosted"] and {u["method"] for u in d["units"]} == {"identity", "half-ghosted"}
    env.pop(PLUGINS_ENV)  # without the plugin the method is unknown, and said so before any model loads
    res = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 2 and "half-ghosted" in res.stdout + res.stderr


def test_plugin_in_a_study_run_by_worker_processes(plugin, tiny_llama_dir, tmp_path):
    """The parent loaded the plugin with load_plugins; the workers find it through PHASELENS_PLUGINS."""
    m = pl.load_model(tiny_llama_dir)
    rows = [{"question": it.question, "options": list(it.options), "answer": it.answer, "id": it.id}
            for it in pl.load_task("capitals", limit=6).items]
    path = tmp_path / "own_choices.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    pred = pl.decision_trace(m, pl.load_task(path)).predictions[:, -1]  # answers = the tiny model's own choices
    path.write_text("".join(json.dumps({**r, "answer": int(p)}) + "\n" for r, p in zip(rows, pred)))
    run = {"kind": "phase-cuts", "n": 3, "fit_n": True, "methods": ["identity", plugin], "seeds": 1, "n_boot": 100,
           "calibration_passages": 2, "heldout_passages": 1}
    df = pl.run_study({"models": [str(tiny_llama_dir)], "tasks": [str(path)], "runs": [run]}, out=tmp_path / "study",
                      executor="processes", workers=1)
    assert (df.status == "done").all(), df.error.tolist()
    assert set(df.executor) == {"processes"}
    got = pl.load_result(tmp_path / "study" / f"{df.iloc[0].result}.json")
    assert got.methods == ["identity", plugin] and {u.method for u in got.units} == {"identity", plugin}
    for u in got.units:
        ident = got.unit(u.cut, "identity", u.seed)
        assert u.boundary_relative <= ident.boundary_relative * (1 + 1e-6)
