"""The registries (phaselens.registry) and plugins defined outside the package: a selection criterion used by
select_blocks and iterative_prune, a study run kind run by worker processes, and how plugins are found (the
environment variable, an entry point)."""

from __future__ import annotations

import os
import sys
import uuid
import warnings
from pathlib import Path

import numpy as np
import pytest

import phaselens as pl
from phaselens import registry as reg

PLUGINS = Path(__file__).parent / "plugins"
CRITERION_PLUGIN = PLUGINS / "user_criterion.py"
RUN_PLUGIN = PLUGINS / "user_run.py"


@pytest.fixture
def clean_env(monkeypatch):
    """PHASELENS_PLUGINS as it was before the test (load_plugins writes it for child processes)."""
    monkeypatch.setenv(reg.PLUGINS_ENV, os.environ.get(reg.PLUGINS_ENV, ""))


@pytest.fixture
def fresh(monkeypatch, clean_env):
    """A registry of a new kind, gone after the test, with plugin loading reset."""
    monkeypatch.setattr(reg, "_REGISTRIES", dict(reg._REGISTRIES))
    monkeypatch.setattr(reg, "_loaded", set())
    monkeypatch.setattr(reg, "_entry_points_loaded", False)
    kind = f"thing{uuid.uuid4().hex[:8]}"
    return reg.Registry(kind, "test thing", pl.errors.StudyError)


# ----------------------------------------------------------------------------- Registry itself
def test_unknown_name_names_the_choices_and_duplicates_are_refused(fresh):
    a, b = object(), object()
    fresh.add("alpha", a, builtin=True)
    fresh.add("beta", b)
    assert fresh.get("alpha") is a and fresh["beta"] is b and "alpha" in fresh and "gamma" not in fresh
    assert fresh.names() == ("alpha", "beta") and list(fresh) == ["alpha", "beta"] and len(fresh) == 2
    assert fresh.items() == [("alpha", a), ("beta", b)]
    with pytest.raises(pl.errors.StudyError, match=r"unknown test thing 'gamma'; choose from \('alpha', 'beta'\)") as e:
        fresh.get("gamma")
    assert f"register_{fresh.kind}" in str(e.value)
    with pytest.raises(pl.errors.StudyError, match=r"unknown test thing\(s\) \['gamma'\]; choose from"):
        fresh.check(["alpha", "gamma"])
    assert fresh.check("beta") == ("beta",)
    with pytest.raises(pl.errors.StudyError, match="'alpha' is already registered"):
        fresh.add("alpha", object())
    fresh.add("alpha", a)  # the same object again is no error
    c = object()
    fresh.add("beta", c, replace=True)
    assert fresh.get("beta") is c
    for bad in ("", "a b", "a,b", None):
        with pytest.raises(pl.errors.StudyError, match="non-empty string"):
            fresh.add(bad, object())
    with pytest.raises(pl.errors.StudyError, match="built-in"):
        fresh.remove("alpha")
    fresh.remove("beta")
    assert fresh.names() == ("alpha",)
    with pytest.raises(pl.PhaselensError, match="already exists"):
        reg.Registry(fresh.kind, "again")


def test_register_decorator_instantiates_a_class_and_names_it(fresh):
    @fresh.register("made")
    class Made:
        name = ""

    got = fresh.get("made")
    assert isinstance(got, Made) and got.name == "made"
    assert fresh.names() == ("made",)
    assert not next(fresh.entries()).builtin  # defined in a test module, not in phaselens


def test_plugins_from_the_environment_by_module_name_and_by_path(fresh, tmp_path, monkeypatch):
    mod = f"plug_env_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{mod}.py").write_text(
        f"from phaselens.registry import registry\nregistry({fresh.kind!r}).add('from-module', object())\n")
    (tmp_path / "by_path.py").write_text(
        f"from phaselens.registry import registry\nregistry({fresh.kind!r}).add('from-path', object())\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv(reg.PLUGINS_ENV, f"{mod},{tmp_path / 'by_path.py'}")
    assert "from-module" not in fresh._entries
    fresh.get("from-module")  # an unknown name imports the plugins, then finds it
    assert set(fresh.names()) == {"from-module", "from-path"}
    assert all(not e.builtin for e in fresh.entries())


def test_load_plugins_exports_them_for_child_processes_and_names_a_broken_one(fresh, tmp_path):
    (tmp_path / "ok_plugin.py").write_text(
        f"from phaselens.registry import registry\nregistry({fresh.kind!r}).add('ok', object())\n")
    reg.load_plugins([tmp_path / "ok_plugin.py"])
    assert "ok" in fresh.names()
    assert str((tmp_path / "ok_plugin.py").resolve()) in os.environ[reg.PLUGINS_ENV].split(",")
    before = os.environ[reg.PLUGINS_ENV]
    with pytest.raises(pl.PhaselensError, match="no_such_plugin_module_xyz.*could not be imported"):
        reg.load_plugins(["no_such_plugin_module_xyz"])
    assert os.environ[reg.PLUGINS_ENV] == before  # a broken plugin is not handed on to child processes
    with pytest.raises(pl.PhaselensError, match="plugins must be"):
        reg.load_plugins([3])


def test_plugins_from_an_entry_point(fresh, tmp_path, monkeypatch):
    mod = f"plug_ep_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{mod}.py").write_text(
        "from phaselens.registry import registry\n"
        f"registry({fresh.kind!r}).add('from-entry-point', object())\n"
        f"def register():\n    registry({fresh.kind!r}).add('from-callable', object())\n")
    dist = tmp_path / "fake_phaselens_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-phaselens-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[phaselens.plugins]\nmodule = {mod}\ncallable = {mod}:register\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    fresh.get("from-entry-point")
    assert set(fresh.names()) == {"from-entry-point", "from-callable"}


# ----------------------------------------------------------------------------- a user criterion
@pytest.fixture
def user_criterion(clean_env):
    pl.load_plugins([CRITERION_PLUGIN])
    return pl.CRITERIA.get("last-k")


def test_a_user_criterion_is_used_by_select_blocks(tiny_llama, user_criterion):
    L = tiny_llama.n_blocks
    assert pl.CRITERIA.names()[:6] == ("bi", "angular", "sleb", "random", "silent", "decisive")
    assert "last-k" in pl.CRITERIA.names() and "last-k" in pl.pruning.sweep_criteria()
    assert pl.select_blocks(tiny_llama, 2, "last-k") == [L - 3, L - 2]  # the two before the final block
    assert pl.select_blocks(tiny_llama, 1, "last-k") == [L - 2]
    assert pl.select_blocks(pl.prune(tiny_llama, [L - 2]), 2, "last-k") == [L - 4, L - 3]
    sel = pl.pruning.selection(tiny_llama, 2, "last-k")
    assert sel.criterion == "last-k" and sel.scores[L - 1] == L and sel.scores[L - 2] == 0.0


def test_a_user_criterion_runs_in_iterative_prune(tiny_llama, capitals_task, user_criterion):
    L = tiny_llama.n_blocks
    kw = dict(calibration=pl.load_calibration()[:1], heldout=pl.heldout_texts()[:1], n_boot=100)
    sw = pl.iterative_prune(tiny_llama, capitals_task, criterion="last-k", steps=2, **kw)
    assert sw.criterion == "last-k"
    assert [s.removed for s in sw.steps] == [[], [L - 2], [L - 3, L - 2]]  # each step: the block before the final
    assert [s.next_cut for s in sw.steps] == [L - 2, L - 3, L - 4]
    by_hand = pl.decision_trace(pl.prune(tiny_llama, [L - 3, L - 2]), capitals_task, n_boot=100)
    assert sw.steps[2].accuracy == float(by_hand.accuracy[-1])


def test_a_phase_criterion_is_refused_by_the_sweep_and_unknown_names_list_the_registry(tiny_llama, capitals_task):
    with pytest.raises(pl.errors.PruningError, match=r"iterative criterion must be one of \('bi', 'angular', 'sleb', 'random'"):
        pl.iterative_prune(tiny_llama, capitals_task, criterion="silent", steps=1)
    with pytest.raises(pl.errors.PruningError, match="unknown criterion 'magic'; choose one of .*'decisive'"):
        pl.select_blocks(tiny_llama, 1, "magic")


def test_sweep_criteria_old_name_warns(user_criterion):
    from phaselens.pruning import iterative

    with pytest.warns(FutureWarning, match="SWEEP_CRITERIA"):
        old = iterative.SWEEP_CRITERIA
    assert old == pl.pruning.sweep_criteria() and old[:4] == ("bi", "angular", "sleb", "random")


# ----------------------------------------------------------------------------- a user run kind, in worker processes
def test_a_user_run_kind_runs_in_worker_processes(tiny_llama_dir, tmp_path, clean_env):
    spec = {"models": [tiny_llama_dir], "tasks": [{"name": "capitals", "limit": 6}], "seeds": [0],
            "runs": [{"kind": "final-accuracy", "n_boot": 100}]}
    df = pl.run_study(spec, out=tmp_path / "s", executor="processes", workers=1, plugins=[str(RUN_PLUGIN)])
    assert (df.status == "done").all(), df.error.tolist()
    row = df.iloc[0]
    assert row.kind == "final-accuracy" and row.executor == "processes" and row.worker != f"{row.host}:{os.getpid()}"
    ref = pl.decision_trace(pl.load_model(tiny_llama_dir), pl.load_task("capitals", limit=6, seed=0), n_boot=100)
    z = np.where(ref.mask, ref.logits[-1], -np.inf)  # [N, K] the last block's option logits
    correct = int((z.argmax(1) == ref.answers).sum())  # items whose answer leads at the last block, by hand
    assert row.final_accuracy == pytest.approx(correct / ref.n_items) and row.n_correct_final == correct
    res = pl.load_results(tmp_path / "s")[row.result]
    assert res.to_json() == ref.to_json()
    # the plugins are not part of a job's id: the spec key instead of the argument finds the job finished
    again = pl.run_study({**spec, "plugins": [str(RUN_PLUGIN)]}, out=tmp_path / "s")
    assert again.attrs["ran"] == 0 and again.attrs["reused"] == 1 and again.job.tolist() == df.job.tolist()


def test_registered_lists_builtin_and_user_entries(user_criterion, clean_env):
    pl.load_plugins([RUN_PLUGIN])
    df = pl.registered()
    assert list(df.columns) == ["kind", "name", "builtin", "module"]
    got = {(r.kind, r.name): r.builtin for r in df.itertuples()}
    for name in ("bi", "angular", "sleb", "random", "silent", "decisive"):
        assert got[("criterion", name)] is True
    for name in ("trace", "sweep", "phase-cuts", "noise", "ablate", "cka", "recovery"):
        assert got[("run", name)] is True
    assert got[("criterion", "last-k")] is False and got[("run", "final-accuracy")] is False
    assert set(pl.registered("run").kind) == {"run"}


def test_a_spec_names_a_plugins_run_kind_and_refuses_an_unknown_one(tmp_path, clean_env):
    spec = {"models": ["m"], "tasks": ["capitals"], "runs": [{"kind": "final-accuracy", "n_boot": 100, "max_token": 1}]}
    with pytest.raises(pl.errors.StudyError, match=r"unknown key\(s\) \['max_token'\]; allowed: .*'max_tokens'"):
        pl.study.parse_spec({**spec, "plugins": [str(RUN_PLUGIN)]})
    kind = f"k{uuid.uuid4().hex[:8]}"
    (tmp_path / "my_kind.py").write_text(f"import phaselens as pl\n@pl.register_run({kind!r})\n"
                                         "class K(pl.RunKind):\n    pass\n")
    (tmp_path / "spec.toml").write_text(f'plugins = ["my_kind.py"]\nmodels = ["m"]\ntasks = ["capitals"]\n'
                                        f'[[runs]]\nkind = "{kind}"\n')
    try:  # a relative .py path is read beside the spec file
        assert [j.kind for j in pl.study.parse_spec(tmp_path / "spec.toml").jobs()] == [kind]
    finally:
        pl.study.RUNS.remove(kind)
    with pytest.raises(pl.errors.StudyError, match="runs\\[0\\].kind is 'no-such-kind'; allowed: .*'cka'"):
        pl.study.parse_spec({**spec, "runs": [{"kind": "no-such-kind"}]})


# ----------------------------------------------------------------------------- the heldout spec key
def test_heldout_spec_key_gives_the_job_ids_of_its_old_names():
    from phaselens.study.run import job_id
    from phaselens.study.spec import parse_spec

    def ids(runs):
        s = parse_spec({"models": ["m"], "tasks": ["capitals"], "runs": runs})
        return [job_id(c.config(), "fp:cpu:float32", "items") for c in s.jobs()]

    with pytest.warns(FutureWarning, match="`heldout_passages` is deprecated, use `heldout`"):
        old_n = ids([{"kind": "sweep", "steps": 2, "heldout_passages": 2}])
    with pytest.warns(FutureWarning, match="`perplexity_texts` is deprecated, use `heldout`"):
        old_t = ids([{"kind": "cka", "perplexity_texts": ["a b c", "d e f"]}])
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        assert ids([{"kind": "sweep", "steps": 2, "heldout": 2}]) == old_n
        assert ids([{"kind": "cka", "heldout": ["a b c", "d e f"]}]) == old_t
    with pytest.raises(pl.errors.StudyError, match="give held-out text once"):
        ids([{"kind": "sweep", "heldout": 2, "heldout_passages": 2}])
    with pytest.raises(pl.errors.StudyError, match="heldout = 0 is not valid"):
        ids([{"kind": "sweep", "heldout": 0}])


def test_iterative_prune_old_keywords_warn_and_give_the_same_sweep(tiny_llama, capitals_task):
    kw = dict(criterion="random", steps=1, calibration=pl.load_calibration()[:1], n_boot=100)
    new = pl.iterative_prune(tiny_llama, capitals_task, boot_seed=3, heldout=pl.heldout_texts()[:1], **kw)
    with pytest.warns(FutureWarning, match="`seed` is deprecated, use `boot_seed`"):
        old = pl.iterative_prune(tiny_llama, capitals_task, seed=3, perplexity_texts=pl.heldout_texts()[:1], **kw)
    assert old.to_json() == new.to_json()
    assert new.steps[0].transition.trace.seed == 3 and new.steps[0].transition.trace.n_boot == 100


def test_cka_jobs_reading_every_token_are_not_the_jobs_that_read_the_first_token_too():
    """positions='all' skips each sequence's first token since CKAResult version 3: such a job hashes first_token,
    so a study never reuses one finished before (it read the first token); decision-position jobs keep their ids
    (the hash of their spec parameters, recomputed here by hand)."""
    import hashlib
    import json

    from phaselens.study.run import job_id
    from phaselens.study.spec import parse_spec

    def jobs(runs):
        return parse_spec({"models": ["m"], "tasks": ["capitals"], "runs": runs}).jobs()

    def by_hand(cfg):
        doc = {**cfg, "fingerprint": "fp:cpu:float32", "items": "items"}
        return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def ids(runs):
        return [job_id(c.config(), "fp:cpu:float32", "items") for c in jobs(runs)]

    for run in ({"kind": "cka", "positions": "all"}, {"kind": "cka", "on": "heldout"}):
        (c,) = jobs([run])
        assert ids([run]) == ids([{**run, "first_token": False}]) != [by_hand(c.config())]
        assert ids([run]) != ids([{**run, "first_token": True}])
    (c,) = jobs([{"kind": "cka"}])
    assert ids([{"kind": "cka"}]) == [by_hand(c.config())]  # decision positions: unchanged
