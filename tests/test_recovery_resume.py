"""``compare_recovery(..., out=DIR)``: the chosen cut, each model's held-out NLL and each (model, task)'s answers are
saved as they finish, so a killed comparison redoes only what was unfinished and gives the numbers of a plain call;
a folder of another comparison is refused before any forward pass; a study's recovery job resumes the same way."""

from __future__ import annotations

import numpy as np
import pytest

import phaselens as pl
import phaselens.experiments.recovery_comparison as rc
from phaselens.errors import RunFolderError
from phaselens.resume import RunFolder
from phaselens.trace import prompts_digest

pytestmark = pytest.mark.timeout(300)

METHODS = ["identity", "ghosted", "diagonal"]


def kw(**extra):
    return dict(calibration=pl.load_calibration()[:8], heldout=pl.heldout_texts()[:6], seq_len=64, n_boot=200,
                boot_seed=0, methods=METHODS, **extra)


@pytest.fixture(scope="module")
def tasks():
    return [pl.load_task("capitals", limit=6, seed=0), pl.load_task("languages", limit=5, seed=0)]


@pytest.fixture(scope="module")
def plain(tiny_llama, tasks):
    forget()
    return pl.compare_recovery(tiny_llama, tasks, n=2, criterion="angular", **kw())


def forget():
    """What a new process would hold: no kept cuts, fits or held-out numbers."""
    rc._FITS.clear()
    rc._CUTS.clear()


def same(a, b):
    assert (a.blocks, a.criterion, a.methods, a.skipped) == (b.blocks, b.criterion, b.methods, b.skipped)
    np.testing.assert_array_equal(a.nll, b.nll)
    np.testing.assert_array_equal(a.dense_nll, b.dense_nll)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    np.testing.assert_array_equal(a.fit_relative_error, b.fit_relative_error)
    for ta, tb in zip(a.tasks, b.tasks, strict=True):
        assert ta.item_ids == tb.item_ids
        for f in ("margins", "correct", "dense_margins", "dense_correct"):
            np.testing.assert_array_equal(getattr(ta, f), getattr(tb, f))


class Counts:
    """Counts the expensive calls of a comparison (selection, fits, held-out scoring, task traces); ``fail_at`` makes
    the n-th task trace raise, as a killed run would stop there."""

    def __init__(self, monkeypatch, fail_at=None):
        self.select, self.fit, self.nll, self.trace = [], [], [], []
        real = {k: getattr(rc, k) for k in ("select_blocks", "fit_recovery", "passage_nll", "decision_trace")}

        def trace(view, t, **k):
            self.trace.append((view.name, t.name))
            if fail_at is not None and len(self.trace) == fail_at:
                raise RuntimeError("killed mid-comparison")
            return real["decision_trace"](view, t, **k)

        monkeypatch.setattr(rc, "select_blocks", lambda *a, **k: self.select.append(1) or real["select_blocks"](*a, **k))
        monkeypatch.setattr(rc, "fit_recovery", lambda *a, **k: self.fit.append(1) or real["fit_recovery"](*a, **k))
        monkeypatch.setattr(rc, "passage_nll", lambda *a, **k: self.nll.append(1) or real["passage_nll"](*a, **k))
        monkeypatch.setattr(rc, "decision_trace", trace)


def test_a_folder_gives_the_plain_numbers_and_a_rerun_reads_them_back(tiny_llama, tasks, plain, tmp_path, monkeypatch):
    forget()
    first = pl.compare_recovery(tiny_llama, tasks, n=2, criterion="angular", out=tmp_path, **kw())
    same(first, plain)
    units = sorted(p.stem for p in (tmp_path / ".phaselens" / "recovery").glob("*.json") if p.stem not in ("args", "manifest"))
    views = ["dense", *METHODS]
    tids = [prompts_digest(t) for t in tasks]
    assert units == sorted(["cut", *(f"heldout_{v}" for v in views), *(f"task_{i}_{v}" for i in tids for v in views)])
    forget()
    c = Counts(monkeypatch)
    again = pl.compare_recovery(tiny_llama, tasks, n=2, criterion="angular", out=tmp_path, **kw())
    assert (c.select, c.fit, c.nll, c.trace) == ([], [], [], [])  # nothing is computed again
    same(again, plain)


def test_a_killed_comparison_redoes_only_its_unfinished_units(tiny_llama, tasks, plain, tmp_path, monkeypatch):
    """Killed at the second task's ghosted trace (the 7th of 8): the rerun selects nothing, fits once (a recovered
    model is still to be measured), scores no held-out text again and runs only the two traces left."""
    forget()
    c = Counts(monkeypatch, fail_at=7)
    with pytest.raises(RuntimeError, match="killed mid-comparison"):
        pl.compare_recovery(tiny_llama, tasks, n=2, criterion="angular", out=tmp_path, **kw())
    assert len(c.select) == 1 and len(c.fit) == 1 and len(c.nll) == 4
    forget()  # a new process keeps nothing in memory
    c = Counts(monkeypatch)
    again = pl.compare_recovery(tiny_llama, tasks, n=2, criterion="angular", out=tmp_path, **kw())
    assert (len(c.select), len(c.fit), len(c.nll)) == (0, 1, 0)
    name = tasks[1].name
    assert [t for _, t in c.trace] == [name, name] and len(c.trace) == 2
    same(again, plain)


def test_an_altered_unit_is_recomputed_with_a_warning(tiny_llama, tasks, plain, tmp_path, monkeypatch):
    forget()
    pl.compare_recovery(tiny_llama, tasks, n=2, criterion="angular", out=tmp_path, **kw())
    name = f"task_{prompts_digest(tasks[0])}_ghosted.json"
    f = tmp_path / ".phaselens" / "recovery" / name
    f.write_text(f.read_text().replace("0", "1", 1))
    c = Counts(monkeypatch)
    with pytest.warns(UserWarning, match=f"{name} does not match its recorded checksum"):
        again = pl.compare_recovery(tiny_llama, tasks, n=2, criterion="angular", out=tmp_path, **kw())
    assert len(c.trace) == 1 and c.trace[0][1] == tasks[0].name
    same(again, plain)


@pytest.mark.parametrize("change", [
    dict(n=3), dict(criterion="bi"), dict(methods=["identity", "ghosted"]), dict(heldout=pl.heldout_texts()[:5]),
    dict(calibration=pl.load_calibration()[:7]), dict(seq_len=48), dict(blocks="2-3"),
])
def test_another_comparison_in_the_folder_is_refused_before_any_forward(tiny_llama, tasks, tmp_path, monkeypatch, change):
    forget()
    pl.compare_recovery(tiny_llama, tasks, n=2, criterion="angular", out=tmp_path, **kw())
    args = {**kw(), "n": 2, "criterion": "angular"}
    ts = tasks
    if "blocks" in change:
        args.pop("n"), args.pop("criterion")
    args.update(change)
    c = Counts(monkeypatch)
    with pytest.raises(RunFolderError, match="made with other arguments"):
        pl.compare_recovery(tiny_llama, ts, out=tmp_path, **args)
    assert (c.select, c.fit, c.nll, c.trace) == ([], [], [], [])


def test_a_bad_out_is_refused(tiny_llama, tasks):
    with pytest.raises(pl.errors.RecoveryError, match="out must be a folder path"):
        pl.compare_recovery(tiny_llama, tasks, "2-3", out=3, **kw())


def test_a_study_recovery_job_cut_short_resumes_from_its_finished_units(tiny_llama_dir, tmp_path, monkeypatch):
    """A study's recovery job keeps its units in its scratch folder: a job that fails after some of them reruns only
    the rest, and its result equals a plain compare_recovery call on the same model and items."""
    run = {"kind": "recovery", "prune": 0.34, "methods": METHODS, "calibration_passages": 8, "heldout": 6,
           "seq_len": 64, "n_boot": 200}
    spec = {"models": [tiny_llama_dir], "tasks": [{"name": "capitals", "limit": 6}], "seeds": [0], "runs": [run]}
    forget()
    c = Counts(monkeypatch, fail_at=3)
    first = pl.run_study(spec, out=tmp_path)
    assert first.attrs["failed"] == 1 and first.error.str.contains("killed mid-comparison").all()
    forget()
    c = Counts(monkeypatch)
    again = pl.run_study(spec, out=tmp_path)
    assert again.attrs["ran"] == 1 and again.attrs["failed"] == 0
    assert len(c.select) == 0 and len(c.nll) == 0 and len(c.trace) == 2  # the dense and identity answers were kept
    got = pl.load_results(tmp_path)[again.result.iloc[0]]
    model = pl.load_model(tiny_llama_dir)
    forget()
    ref = pl.compare_recovery(model, [pl.load_task("capitals", limit=6, seed=0)], n=2, criterion="angular",
                              methods=METHODS, calibration=pl.load_calibration()[:8], heldout=pl.heldout_texts()[:6],
                              seq_len=64, n_boot=200, boot_seed=0)
    assert got.to_json() == ref.to_json()


def test_the_same_cut_on_another_task_in_the_folder_reads_the_cut_and_heldout_back(tiny_llama, tasks, plain, tmp_path,
                                                                                    monkeypatch):
    """A folder is one cut's: a comparison on another task (a new process) reads the chosen cut and the held-out
    numbers back, fits once and traces only its task; its numbers are the plain call's."""
    forget()
    pl.compare_recovery(tiny_llama, tasks[:1], n=2, criterion="angular", out=tmp_path, **kw())
    forget()
    c = Counts(monkeypatch)
    second = pl.compare_recovery(tiny_llama, tasks[1:], n=2, criterion="angular", out=tmp_path, **kw())
    assert (len(c.select), len(c.fit), len(c.nll)) == (0, 1, 0)
    assert [t for _, t in c.trace] == [tasks[1].name] * 4
    np.testing.assert_array_equal(second.nll, plain.nll)
    np.testing.assert_array_equal(second.dense_nll, plain.dense_nll)
    np.testing.assert_array_equal(second.fit_relative_error, plain.fit_relative_error)
    np.testing.assert_array_equal(second.tasks[0].margins, plain.tasks[1].margins)
    np.testing.assert_array_equal(second.tasks[0].correct, plain.tasks[1].correct)


STUDY_RUN = {"kind": "recovery", "prune": 0.34, "methods": METHODS, "calibration_passages": 8, "heldout": 6,
             "seq_len": 64, "n_boot": 200}


def test_a_cuts_task_jobs_in_a_study_share_one_folder(tiny_llama_dir, tmp_path, monkeypatch):
    """A study whose process ended after one cut's first task job: the next process runs the cut's job on the other
    task without selecting the cut or scoring the held-out text again (one fit, its task's traces)."""
    one = {"models": [tiny_llama_dir], "tasks": [{"name": "capitals", "limit": 6}], "seeds": [0], "runs": [STUDY_RUN]}
    both = {**one, "tasks": [{"name": "capitals", "limit": 6}, {"name": "languages", "limit": 5}]}
    forget()
    assert (pl.run_study(one, out=tmp_path).status == "done").all()
    forget()
    c = Counts(monkeypatch)
    df = pl.run_study(both, out=tmp_path)
    assert df.attrs["ran"] == 1 and df.attrs["reused"] == 1 and (df.status == "done").all()
    assert (len(c.select), len(c.fit), len(c.nll)) == (0, 1, 0) and len(c.trace) == 4
    got = pl.load_results(tmp_path)[df.set_index("task").result["languages"]]
    forget()
    ref = pl.compare_recovery(pl.load_model(tiny_llama_dir), [pl.load_task("languages", limit=5, seed=0)], n=2,
                              criterion="angular", methods=METHODS, calibration=pl.load_calibration()[:8],
                              heldout=pl.heldout_texts()[:6], seq_len=64, n_boot=200, boot_seed=0)
    assert got.to_json() == ref.to_json()


def test_a_study_job_whose_cut_folder_is_held_runs_in_its_own(tiny_llama_dir, tmp_path, monkeypatch):
    """While another run holds the cut's folder (here: this process, as a job of the same cut on another task would),
    the job computes in its own scratch folder and gives the same result."""
    spec = {"models": [tiny_llama_dir], "tasks": [{"name": "capitals", "limit": 6}], "seeds": [0], "runs": [STUDY_RUN]}
    forget()
    ref = pl.run_study(spec, out=tmp_path / "free")
    shared = next((tmp_path / "free" / ".phaselens" / "study" / "scratch" / "recovery").iterdir())
    held = tmp_path / "held" / ".phaselens" / "study" / "scratch" / "recovery" / shared.name
    forget()
    with RunFolder(held, "recovery", {}, "another job"):
        df = pl.run_study(spec, out=tmp_path / "held")
    assert (df.status == "done").all(), df.error.tolist()
    own = tmp_path / "held" / ".phaselens" / "study" / "scratch" / df.job.iloc[0] / ".phaselens" / "recovery"
    assert (own / "cut.json").is_file()
    a = pl.load_results(tmp_path / "free")[ref.result.iloc[0]]
    b = pl.load_results(tmp_path / "held")[df.result.iloc[0]]
    assert a.to_json() == b.to_json()
