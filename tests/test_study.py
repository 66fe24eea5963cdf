"""Studies: the spec is validated before anything runs; each job's result is the public function's own;
finished jobs are never recomputed; a SIGKILLed study resumes to identical results; two studies never
share a folder at once. (The Ray executor: tests/test_study_ray.py.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import phaselens as pl
from phaselens.study import parse_spec
from phaselens.study.store import RUN_COLUMNS

pytestmark = pytest.mark.timeout(300)  # every study test is bounded (subprocesses have their own limits)

SMALLEST_TOML = """
models = ["smollm2-135m"]
tasks = [{ name = "capitals", limit = 8 }]
seeds = [0, 1]
[[runs]]
kind = "trace"
[[runs]]
kind = "noise"
eps = [0.5]
"""
SMALLEST_DICT = {"models": ["smollm2-135m"], "tasks": [{"name": "capitals", "limit": 8}], "seeds": [0, 1],
                 "runs": [{"kind": "trace"}, {"kind": "noise", "eps": [0.5]}]}


def _spec(model: str, runs: list, seeds=(0, 1), limit: int = 6) -> dict:
    return {"models": [model], "tasks": [{"name": "capitals", "limit": limit}], "seeds": list(seeds), "runs": runs}


def _env() -> dict:
    src = str(Path(pl.__file__).resolve().parents[1])
    import torch  # children compute with the parent's thread count, so their sums equal the parent's bit for bit

    return {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", ""),
            "OMP_NUM_THREADS": str(torch.get_num_threads())}


def _same_study(a: Path, b: Path) -> None:
    """Two study folders hold the same jobs, the same index (but for how/where each job ran) and the same results."""
    da, db = pl.load_study(a), pl.load_study(b)
    keep = [c for c in da.columns if c not in RUN_COLUMNS and c != "attempts"]
    assert sorted(da.columns) == sorted(db.columns)
    assert da[keep].sort_values("job").reset_index(drop=True).equals(db[keep].sort_values("job").reset_index(drop=True))
    ra, rb = pl.load_results(a), pl.load_results(b)
    assert sorted(ra) == sorted(rb)
    for k in ra:
        assert ra[k].to_json() == rb[k].to_json(), k


def _whole(folder: Path) -> None:
    """Nothing half-written: no temporary file left, every done row's result reads back, the index equals the rows."""
    assert not [p for p in folder.rglob("*") if ".tmp" in p.name], "a temporary file was left behind"
    df = pl.load_study(folder)
    for rec in df[df.status == "done"].to_dict("records"):
        pl.load_result(folder / f"{rec['result']}.json")
    rows = [p for p in (folder / ".phaselens" / "study").glob("row_*.json")]
    assert len(rows) == len(df)


# ----------------------------------------------------------------------------- the spec
def test_smallest_spec_toml_equals_dict(tmp_path):
    (tmp_path / "s.toml").write_text(SMALLEST_TOML)
    a, b = parse_spec(tmp_path / "s.toml"), parse_spec(SMALLEST_DICT)
    assert [j.config() for j in a.jobs()] == [j.config() for j in b.jobs()]
    assert [(j.kind, j.seed, j.params) for j in a.jobs()] == [("trace", 0, {}), ("noise", 0, {"eps": [0.5]}),
                                                               ("trace", 1, {}), ("noise", 1, {"eps": [0.5]})]


def test_lists_are_grids_except_list_valued_parameters():
    s = parse_spec({"models": ["m"], "tasks": ["capitals", {"name": "languages", "limit": 4}], "seeds": [0],
                    "runs": [{"kind": "sweep", "criterion": ["bi", "random"], "steps": [2, 3]},
                             {"kind": "phase-cuts", "n": 2, "methods": ["identity", "ghosted"]},
                             {"kind": "phase-cuts", "n": [1, 2], "methods": [["identity"], ["identity", "ghosted"]]}]})
    jobs = s.jobs()
    assert len(jobs) == 2 * (4 + 1 + 4)
    cuts = [j.params for j in jobs if j.kind == "phase-cuts" and j.task["name"] == "capitals"]
    assert cuts[0] == {"methods": ["identity", "ghosted"], "n": 2}
    assert {json.dumps(c, sort_keys=True) for c in cuts[1:]} == {
        json.dumps({"methods": m, "n": n}, sort_keys=True) for n in (1, 2) for m in (["identity"], ["identity", "ghosted"])}


def test_a_task_can_run_on_some_of_the_models_only():
    """A task's ``models`` drops the other models' jobs of that task and changes no kept job's config (its id)."""
    full = parse_spec({"models": ["a", "b"], "tasks": ["capitals", {"name": "languages", "limit": 4}],
                       "runs": [{"kind": "trace"}]})
    cut = parse_spec({"models": ["a", "b"], "tasks": ["capitals", {"name": "languages", "limit": 4, "models": ["b"]},
                                                      {"name": "languages", "limit": 2, "models": ["a"]}],
                      "runs": [{"kind": "trace"}]})
    pairs = [(j.model, j.task["name"], j.task["limit"]) for j in cut.jobs()]
    assert pairs == [("a", "capitals", None), ("a", "languages", 2), ("b", "capitals", None), ("b", "languages", 4)]
    same = [j.config() for j in full.jobs() if (j.model, j.task["name"], j.task["limit"]) in pairs]
    assert same == [j.config() for j in cut.jobs() if j.task["limit"] != 2]  # the kept jobs keep their ids
    assert "models" not in cut.jobs()[0].task
    from phaselens.study.spec import MAX_JOBS

    many = {"models": ["a", "b"], "tasks": [{"name": "capitals", "models": ["a"]}, {"name": "languages", "models": ["b"]}],
            "seeds": list(range(MAX_JOBS // 2)), "runs": [{"kind": "trace"}]}
    assert len(parse_spec(many).jobs()) == MAX_JOBS  # 2 pairs, not the 4 of the full product, are counted
    with pytest.raises(pl.errors.StudyError, match=r"10,002 jobs \(2 \(model, task\) pairs x 5001 seeds"):
        parse_spec({**many, "seeds": list(range(MAX_JOBS // 2 + 1))})


def test_a_spec_task_can_drop_items_whose_options_repeat(tiny_llama_dir, tmp_path):
    """``duplicates = "drop"`` reaches load_task (the job reads the other items); without it the study is refused,
    naming the item, before any job runs."""
    rows = [{"question": "q1", "options": ["a", "a", "b"], "answer": 2},
            {"question": "q2", "options": ["c", "d"], "answer": 0}, {"question": "q3", "options": ["e", "f"], "answer": 1}]
    f = tmp_path / "items.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = {"models": [tiny_llama_dir], "tasks": [{"name": str(f), "format": "cloze"}], "runs": [{"kind": "trace"}]}
    with pytest.raises(pl.errors.StudyError, match="repeat an option text"):
        pl.run_study(spec, out=tmp_path / "refused")
    spec["tasks"][0]["duplicates"] = "drop"
    df = pl.run_study(spec, out=tmp_path / "s")
    assert list(df.status) == ["done"]
    trace = pl.load_results(tmp_path / "s")[df.result[0]]
    assert len(trace.trace.item_ids) == 2  # q1 left out


@pytest.mark.parametrize("tasks, words", [
    ([{"name": "capitals", "models": ["c"]}], ["tasks[0].models names ['c']", "['a', 'b']"]),
    ([{"name": "capitals", "models": ["a"]}], ["models ['b'] have no task"]),
    ([{"name": "capitals", "models": []}], ["tasks[0].models must be a non-empty list"]),
    ([{"name": "capitals", "models": "a"}], ["tasks[0].models must be a non-empty list"]),
    ([{"name": "capitals", "duplicates": "keep"}], ["tasks[0].duplicates", '"drop"']),
])
def test_a_tasks_models_and_duplicates_are_checked(tasks, words):
    with pytest.raises(pl.errors.StudyError) as e:
        parse_spec({"models": ["a", "b"], "tasks": tasks, "runs": [{"kind": "trace"}]})
    for w in words:
        assert w in str(e.value), (w, str(e.value))


@pytest.mark.parametrize("spec, words", [
    ({"models": ["m"], "tasks": ["capitals"], "runs": [{"kind": "sweeps"}]}, ["runs[0].kind", "'sweep'", "'phase-cuts'"]),
    ({"models": ["m"], "tasks": ["capitals"], "runs": [{"kind": "sweep", "criterion": "bogus"}]},
     ["criterion", "'bi'", "'angular'"]),
    ({"models": ["m"], "tasks": ["capitals"], "runs": [{"kind": "trace", "lens_kind": "x"}]}, ["lens_kind", "n_boot"]),
    ({"models": ["m"], "tasks": ["capitals"], "runs": [{"kind": "phase-cuts", "n": 2, "methods": ["ghost"]}]},
     ["methods", "'ghosted'"]),
    ({"models": ["m"], "tasks": ["capitals"], "runs": [{"kind": "phase-cuts"}]}, ["needs ['n']"]),
    ({"models": ["m"], "tasks": [{"name": "capitals", "format": "mcq"}], "runs": [{"kind": "trace"}]},
     ["tasks[0].format", "'letters'", "'cloze'"]),
    ({"models": ["m"], "tasks": [{"name": "capitals", "limt": 3}], "runs": [{"kind": "trace"}]}, ["limt", "'limit'"]),
    ({"models": ["m"], "tasks": ["capitals"], "runs": [{"kind": "trace"}], "seed": 1}, ["seed", "'seeds'"]),
    ({"models": [], "tasks": ["capitals"], "runs": [{"kind": "trace"}]}, ["models"]),
    ({"models": ["m"], "tasks": ["capitals"], "runs": [{"kind": "ablate", "mode": "drop"}]}, ["mode", "'skip'", "'zero'"]),
    ({"models": ["m"], "tasks": ["capitals"], "runs": [{"kind": "trace"}], "resources": {"gpus": 1}},
     ["gpus", "'num_gpus'"]),
    ({"models": ["m"], "tasks": ["capitals"], "runs": [{"kind": "sweep", "max_ratio": 1.5}]}, ["max_ratio", "(0, 1)"]),
    ({"models": ["smollm2-136m"], "tasks": ["capitals"], "runs": [{"kind": "trace"}]},
     ["models[0] = 'smollm2-136m'", "embedded name", "nothing was run"]),
    ({"models": ["/no/such/model.gguf"], "tasks": ["capitals"], "runs": [{"kind": "trace"}]}, ["models[0]", ".gguf"]),
])
def test_invalid_spec_is_refused_naming_key_and_allowed_values(spec, words, tmp_path):
    with pytest.raises(pl.errors.StudyError) as e:
        pl.run_study(spec, out=tmp_path / "never")
    for w in words:
        assert w in str(e.value), (w, str(e.value))
    assert not (tmp_path / "never").exists()  # refused before anything ran


def test_bad_executor_and_bad_toml(tmp_path):
    with pytest.raises(pl.errors.StudyError, match="executor must be one of"):
        pl.run_study(SMALLEST_DICT, out=tmp_path, executor="dask")
    (tmp_path / "bad.toml").write_text("models = [")
    with pytest.raises(pl.errors.StudyError, match="not valid TOML"):
        pl.run_study(tmp_path / "bad.toml", out=tmp_path / "o")


def test_run_parameters_pass_through_to_the_function_signature():
    """A keyword the function accepts is a valid run parameter (so `lens` works once decision_trace takes it)."""
    import inspect

    from phaselens.study.spec import RUNS

    for kind, rk in RUNS.items():
        sig = set(inspect.signature(rk.fn()).parameters)
        allowed = set(rk.allowed())
        assert allowed - set(rk.study) <= sig, kind
        assert not allowed & set(rk.fixed), kind
    assert "n_boot" in RUNS["trace"].allowed()
    assert ("lens" in RUNS["trace"].allowed()) == ("lens" in inspect.signature(pl.decision_trace).parameters)


# ----------------------------------------------------------------------------- running (local)
def test_a_cka_job_rounds_its_share_halves_up(tiny_llama_dir, tmp_path):
    """prune = 0.75 of 6 blocks is 4.5: the cka kind cuts 5 (halves up, as the recovery kind), where Python's round()
    would give 4."""
    run = {"kind": "cka", "prune": 0.75, "calibration_passages": 1, "n_samples": 6}
    df = pl.run_study(_spec(tiny_llama_dir, [run], seeds=[3]), out=tmp_path / "s")
    assert (df.status == "done").all(), df.error.tolist()
    row = df.iloc[0]
    got = pl.load_result(tmp_path / "s" / f"{row.result}.json")
    assert row.cut_n == 5 and len(got.blocks_a) == 6 and len(got.blocks_b) == 1
    m = pl.load_model(tiny_llama_dir)
    pruned = pl.prune(m, pl.select_blocks(m, 5, "bi", calibration=pl.load_calibration()[:1], seed=3))
    assert got.to_json() == pl.cka(m, pruned, pl.load_task("capitals", limit=6, seed=3), seed=3, n_samples=6).to_json()


def test_each_job_is_the_public_functions_result(tiny_llama_dir, tmp_path):
    """The study passes its parameters through faithfully: each result equals the direct call's."""
    runs = [{"kind": "trace", "n_boot": 100},
            {"kind": "noise", "eps": 0.5, "seeds": 2, "blocks": [1, 3], "n_boot": 100},
            {"kind": "ablate", "pairs": False, "n_boot": 100},
            {"kind": "sweep", "steps": 2, "n_boot": 100, "calibration_passages": 1, "heldout_passages": 1},
            {"kind": "cka", "prune": 2, "calibration_passages": 1, "n_samples": 6},
            {"kind": "cka-contrast", "prune": 2, "criterion": "random", "calibration_passages": 1, "n_tokens": 10,
             "groups": 5}]
    df = pl.run_study(_spec(tiny_llama_dir, runs, seeds=[3]), out=tmp_path / "s")
    assert (df.status == "done").all(), df.error.tolist()
    res = pl.load_results(tmp_path / "s")
    got = {row.kind: res[row.result] for row in df.itertuples()}
    m = pl.load_model(tiny_llama_dir)
    t = pl.load_task("capitals", limit=6, seed=3)
    cal, ppl = pl.load_calibration()[:1], pl.heldout_texts()[:1]
    assert got["trace"].to_json() == pl.decision_trace(m, t, seed=3, n_boot=100).transition().to_json()
    assert got["noise"].to_json() == pl.inject_noise(m, t, [1, 3], 0.5, seeds=2, boot_seed=3, n_boot=100).to_json()
    assert got["ablate"].to_json() == pl.ablate(m, t, pairs=False, boot_seed=3, n_boot=100).to_json()
    sw = pl.iterative_prune(m, t, steps=2, seed=3, n_boot=100, calibration=cal, perplexity_texts=ppl)
    assert got["sweep"].to_json() == sw.to_json()
    pruned = pl.prune(m, pl.select_blocks(m, 2, "bi", calibration=cal, seed=3))
    assert got["cka"].to_json() == pl.cka(m, pruned, t, seed=3, n_samples=6).to_json()
    rand = pl.prune(m, pl.select_blocks(m, 2, "random", seed=3))  # blocks 1 and 4
    assert got["cka-contrast"].to_json() == pl.cka_contrast(m, rand, t, seed=3, n_tokens=10, groups=5).to_json()
    crow = df[df.kind == "cka-contrast"].iloc[0]
    assert crow.cka_contrast == pytest.approx(got["cka-contrast"].difference()) and crow.cut_n == 2
    # the index's key scalars are the results' own numbers
    tr = got["trace"]
    row = df[df.kind == "trace"].iloc[0]
    assert row.final_accuracy == pytest.approx(float(tr.trace.accuracy[-1]))
    assert row.n_blocks == 6 and row.seed == 3 and row.task == "capitals"
    srow = df[df.kind == "sweep"].iloc[0]
    assert srow.steps == 2 and srow.dense_accuracy == pytest.approx(sw.dense_accuracy)
    assert srow.collapse_ratio == pytest.approx(sw.collapse_ratio) if sw.collapse_ratio is not None else srow.collapse_ratio != srow.collapse_ratio


def test_finished_jobs_are_reused_failed_jobs_retried(tiny_llama_dir, tmp_path):
    spec = _spec(tiny_llama_dir, [{"kind": "trace", "n_boot": 100}, {"kind": "phase-cuts", "n": 1, "fit_n": True}])
    df = pl.run_study(spec, out=tmp_path)
    assert df.attrs["ran"] == 2 and df.attrs["failed"] == 2  # the random tiny model has no transition to cut at
    bad = df[df.status == "failed"]
    assert bad.error.str.contains("no phases to cut").all() and bad.traceback.str.contains("Traceback").all()
    stamp = {r.job: (r.finished, (tmp_path / f"{r.result}.json").stat().st_mtime_ns) for r in df[df.status == "done"].itertuples()}
    again = pl.run_study(spec, out=tmp_path)
    assert again.attrs["ran"] == 0 and again.attrs["reused"] == 2 and again.attrs["failed"] == 2
    assert (again[again.status == "failed"].attempts == 2).all()
    for r in again[again.status == "done"].itertuples():
        assert stamp[r.job] == (r.finished, (tmp_path / f"{r.result}.json").stat().st_mtime_ns)
    _whole(tmp_path)
    # a damaged result makes its job run again (and only that job)
    victim = again[again.status == "done"].iloc[0]
    p = tmp_path / f"{victim.result}.json"
    p.write_text(p.read_text()[:50])
    third = pl.run_study(spec, out=tmp_path)
    assert third.attrs["ran"] == 1 and third.attrs["reused"] == 1
    pl.load_result(p)


def test_report_of_a_study_whose_jobs_all_failed(tiny_llama_dir, tmp_path):
    spec = _spec(tiny_llama_dir, [{"kind": "phase-cuts", "n": 1, "fit_n": True}])
    df = pl.run_study(spec, out=tmp_path)
    assert (df.status == "failed").all()
    page = pl.build_report(tmp_path, tmp_path / "r.html").read_text()
    assert f"Study: {len(df)} jobs (0 done, {len(df)} failed)" in page and "no phases to cut" in page
    (tmp_path / "empty").mkdir()
    with pytest.raises(pl.PhaselensError, match="holds no phaselens results"):
        pl.build_report(tmp_path / "empty", tmp_path / "e.html")


def test_cli_run_status_and_report(tiny_llama_dir, tmp_path):
    from typer.testing import CliRunner

    from phaselens.cli import app

    spec = tmp_path / "study.toml"
    spec.write_text(textwrap.dedent(f"""
        models = ["{tiny_llama_dir}"]
        tasks = [{{ name = "capitals", limit = 6 }}]
        seeds = [0, 1]
        [[runs]]
        kind = "trace"
        n_boot = 100
        [[runs]]
        kind = "sweep"
        steps = 2
        n_boot = 100
        calibration_passages = 1
        heldout_passages = 1
    """))
    out = tmp_path / "out"
    runner = CliRunner(env={"COLUMNS": "200"})
    res = runner.invoke(app, ["study", "run", str(spec), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "4 ran, 0 reused, 0 failed" in " ".join(res.output.split()) and "sweep" in res.output
    res = runner.invoke(app, ["study", "status", str(out)])
    assert res.exit_code == 0, res.output
    assert "4 done, 0 failed, 0 not run yet" in " ".join(res.output.split())
    res = runner.invoke(app, ["report", str(out), "--html", str(tmp_path / "r.html")])
    assert res.exit_code == 0, res.output
    page = (tmp_path / "r.html").read_text()
    assert "Study: 4 jobs (4 done, 0 failed)" in page and "study index" in page
    assert "Dense margin curves, models x tasks." in page and "criterion bi:" in page
    res = runner.invoke(app, ["study", "status", str(tmp_path / "nothing")])
    assert res.exit_code == 2 and "not a study folder" in res.output


def _child(spec: dict, out: Path, **kw) -> subprocess.Popen:
    code = (f"import json, phaselens as pl\nif __name__ == '__main__':\n"
            f"    pl.run_study(json.loads({json.dumps(json.dumps(spec))}), out={str(out)!r}, **{kw!r})\n")
    return subprocess.Popen([sys.executable, "-c", code], env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _wait_for(cond, proc: subprocess.Popen, limit: float = 90.0) -> None:
    t0 = time.monotonic()
    while not cond():
        if proc.poll() is not None:
            raise AssertionError(f"the child study ended early ({proc.returncode}): {proc.stderr.read()[-2000:]}")
        if time.monotonic() - t0 > limit:
            proc.kill()
            raise AssertionError("timed out waiting for the child study")
        time.sleep(0.02)


def _finished_rows(out: Path) -> set[str]:
    """The row units the folder's manifest records as finished (a row file written but not yet in the
    manifest when the kill came is, rightly, recomputed)."""
    try:
        man = json.loads((out / ".phaselens" / "study" / "manifest.json").read_text())
    except (OSError, ValueError):
        return set()
    return {u for u in man if u.startswith("row_")}


def _rows(out: Path) -> int:
    return len(_finished_rows(out))


SWEEPS = [{"kind": "sweep", "steps": 3, "n_boot": 100, "calibration_passages": 1, "heldout_passages": 1},
          {"kind": "trace", "n_boot": 100}]


def test_sigkilled_local_study_resumes_to_identical_results(tiny_llama_dir, tmp_path):
    spec = _spec(tiny_llama_dir, SWEEPS, seeds=[0, 1])
    out = tmp_path / "killed"
    proc = _child(spec, out)
    _wait_for(lambda: _rows(out) >= 1, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    done_before = _finished_rows(out)
    assert 1 <= len(done_before) < 4, "the kill came too late to interrupt the study"
    with pytest.warns(UserWarning, match="taking over the lock"):
        df = pl.run_study(spec, out=out)
    assert (df.status == "done").all() and df.attrs["reused"] == len(done_before) and df.attrs["ran"] == 4 - len(done_before)
    ref = pl.run_study(spec, out=tmp_path / "clean")
    assert ref.attrs["ran"] == 4
    _same_study(out, tmp_path / "clean")
    _whole(out)


def test_two_studies_sharing_a_folder_never_corrupt_the_index(tiny_llama_dir, tmp_path):
    a = _spec(tiny_llama_dir, SWEEPS, seeds=[0, 1])
    b = _spec(tiny_llama_dir, [{"kind": "trace", "n_boot": 100}], seeds=[5, 6])
    out = tmp_path / "shared"
    proc = _child(a, out)
    _wait_for(lambda: (out / ".phaselens" / "study" / "lock").exists(), proc)
    with pytest.raises(pl.errors.StudyError, match=r"in use by another run \(a study\): PID \d+"):
        pl.run_study(b, out=out)
    df = pl.run_study(b, out=out, wait=120)  # waits for the first study, then runs
    assert proc.wait(timeout=120) == 0, proc.stderr.read()[-2000:]
    assert df.attrs["ran"] == 2 and len(df) == 6 and (df.status == "done").all()
    assert set(df.attrs["planned"]) <= set(df.job)
    assert sorted(df.kind.tolist()) == ["sweep", "sweep", "trace", "trace", "trace", "trace"]
    _whole(out)


def test_transition_vs_collapse_runs_as_a_study(tiny_llama, tmp_path):
    """models= x tasks= run as a study; the points equal those of sweeps run by hand (the same extension rule)."""
    tasks = [pl.load_task("capitals", limit=6), pl.load_task("languages", limit=6)]
    kw = dict(n_boot=100, calibration=pl.load_calibration()[:1], perplexity_texts=pl.heldout_texts()[:1])
    study = pl.transition_vs_collapse(models=[tiny_llama], tasks=tasks, chunk=2, max_cut=4, out=tmp_path / "s", **kw)
    by_hand = []
    for t in tasks:
        k = 0
        while True:
            k = min(4, k + 2)
            sw = pl.iterative_prune(tiny_llama, t, steps=k, **kw)
            if sw.collapse_ratio is not None or k >= 4 or sw.dense_accuracy <= sw.chance:
                break
        by_hand.append(sw)
    ref = pl.transition_vs_collapse(by_hand)
    assert study.to_pandas().drop(columns="reason").equals(ref.to_pandas().drop(columns="reason"))
    assert pl.load_study(tmp_path / "s").kind.tolist() == ["sweep", "sweep"]
    again = pl.transition_vs_collapse(models=[tiny_llama], tasks=tasks, chunk=2, max_cut=4, out=tmp_path / "s", **kw)
    assert again.to_pandas().equals(study.to_pandas())


def test_phase_cuts_job_contrasts_and_report(tiny_llama_dir, tmp_path):
    """A phase-cuts job equals compare_phase_cuts; its index contrasts are the result's own paired-bootstrap
    contrasts; the report draws them per model. (The task's answers are the tiny model's own final choices, so
    it has a transition to cut at.)"""
    m = pl.load_model(tiny_llama_dir)
    base = pl.load_task("capitals", limit=6)
    pred = pl.decision_trace(m, base).predictions[:, -1]
    task = pl.load_task([{"question": it.question, "options": list(it.options), "answer": int(p), "id": it.id}
                         for it, p in zip(base.items, pred)])
    run = {"kind": "phase-cuts", "n": 3, "fit_n": True, "methods": ["identity", "ghosted"], "seeds": 1, "n_boot": 100,
           "calibration_passages": 1, "heldout_passages": 1}
    df = pl.run_study({"models": [tiny_llama_dir], "tasks": [task], "runs": [run]}, out=tmp_path)
    assert (df.status == "done").all(), df.error.tolist()
    row = df.iloc[0]
    got = pl.load_result(tmp_path / f"{row.result}.json")
    tr = pl.transition_point(m, task)
    n = min(3, tr.layer, m.n_blocks - tr.layer)
    direct = pl.compare_phase_cuts(m, task, n, methods=["identity", "ghosted"], seeds=1, n_boot=100, seed=0,
                                   calibration=pl.load_calibration()[:1], perplexity_texts=pl.heldout_texts()[:1])
    assert got.to_json() == direct.to_json() and row.cut_n == n
    for meth in ("identity", "ghosted"):
        c = direct.contrast("silent", "decisive", method=meth, metric="margin")
        assert (row[f"contrast_{meth}"], row[f"contrast_{meth}_lo"], row[f"contrast_{meth}_hi"]) == \
            pytest.approx((c["difference"], c["lo"], c["hi"]))
    from phaselens.plots.study import phase_cut_contrasts
    from phaselens.study.report import contrast_rows

    fig = phase_cut_contrasts(contrast_rows(df))
    assert [t.name for t in fig.data] == ["plain pruning (identity)", "ghosted"]
    assert fig.data[1].y[0] == pytest.approx(row.contrast_ghosted)
    assert fig.data[1].error_y.array[0] == pytest.approx(row.contrast_ghosted_hi - row.contrast_ghosted)
    page = pl.build_report(tmp_path, tmp_path / "r.html").read_text()
    assert "Phase-cut contrasts per model" in page


def test_processes_executor_gives_the_same_study(tiny_llama_dir, tmp_path):
    spec = _spec(tiny_llama_dir, [{"kind": "trace", "n_boot": 100}, {"kind": "ablate", "pairs": False, "n_boot": 100}],
                 seeds=[0])
    loc = pl.run_study(spec, out=tmp_path / "local")
    far = pl.run_study(spec, out=tmp_path / "pool", executor="processes", workers=2)
    assert (far.status == "done").all(), far.error.tolist()
    assert set(far.executor) == {"processes"} and not set(far.worker) & set(loc.worker)
    _same_study(tmp_path / "local", tmp_path / "pool")


def test_trace_runs_under_each_lens(tiny_llama_dir, tmp_path, monkeypatch):
    """``lens`` in a trace run is a grid like any parameter; each job's result is the direct decision_trace under
    that lens (read through the same fitted lens, cached once per model)."""
    monkeypatch.setenv("PHASELENS_CACHE", str(tmp_path / "cache"))
    spec = _spec(tiny_llama_dir, [{"kind": "trace", "n_boot": 100, "lens": ["logit", "linear"]}], seeds=[0])
    df = pl.run_study(spec, out=tmp_path / "out")
    assert (df.status == "done").all() and len(df) == 2
    got = {r.params: pl.load_result(tmp_path / "out" / f"{r.result}.json") for r in df.itertuples()}
    by_lens = {json.loads(p)["lens"]: r for p, r in got.items()}
    assert by_lens["logit"].trace.lens == "logit" and by_lens["linear"].trace.lens == "linear"
    m, t = pl.load_model(tiny_llama_dir), pl.load_task("capitals", limit=6, seed=0)
    for kind, r in by_lens.items():
        direct = pl.decision_trace(m, t, lens=kind, seed=0, n_boot=100)
        np.testing.assert_allclose(r.trace.margins, direct.margins, atol=1e-5)
    assert not np.allclose(by_lens["logit"].trace.margins[:-1], by_lens["linear"].trace.margins[:-1])
    with pytest.raises(pl.errors.StudyError, match=r"runs\[0\] \(trace\)\.lens = 'tunde'.*allowed values"):
        pl.run_study(_spec(tiny_llama_dir, [{"kind": "trace", "lens": "tunde"}]), out=tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


def test_a_job_is_named_by_its_config_model_identity_and_items_not_version(monkeypatch):
    """The job id changes with each input of its identity, and with nothing else (key order, a copy)."""
    import phaselens
    from phaselens.study.run import job_id

    cfg = {"kind": "trace", "model": "m", "task": {"name": "capitals", "limit": 8}, "seed": 0, "params": {"n_boot": 100}}
    base = job_id(cfg, "fp:cpu:float32", "digest-a")
    assert job_id(json.loads(json.dumps(cfg, sort_keys=True)), "fp:cpu:float32", "digest-a") == base
    assert len({base,
                job_id({**cfg, "seed": 1}, "fp:cpu:float32", "digest-a"),
                job_id({**cfg, "params": {"n_boot": 21}}, "fp:cpu:float32", "digest-a"),
                job_id(cfg, "other:cpu:float32", "digest-a"),  # another model
                job_id(cfg, "fp:cuda:float32", "digest-a"),  # the same model computing on a GPU
                job_id(cfg, "fp:cpu:bfloat16", "digest-a"),  # ... or in another dtype
                job_id(cfg, "fp:cpu:float32", "digest-b")}) == 7  # other items
    monkeypatch.setattr(phaselens, "__version__", "9.9.9")
    monkeypatch.setattr("phaselens.version.__version__", "9.9.9")
    monkeypatch.setattr("phaselens.study.run.__version__", "9.9.9")
    assert job_id(cfg, "fp:cpu:float32", "digest-a") == base  # a job stays valid across phaselens versions


def test_the_schedule_changes_no_job_id(tiny_llama_dir, tmp_path):
    """schedule / act_budget / act_store change how the passes run, never their numbers (issue 24): a study resumed
    under the layer schedule reuses every job the batch schedule finished, and the ids ignore those keys."""
    from phaselens.study.run import job_id

    cfg = {"kind": "trace", "model": "m", "task": {"name": "capitals", "limit": 8}, "seed": 0, "params": {"n_boot": 200}}
    base = job_id(cfg, "fp:cpu:float32", "digest-a")
    for extra in ({"schedule": "layer"}, {"act_budget": 1 << 20, "act_store": "cpu"}, {"schedule": "batch"}):
        assert job_id({**cfg, "params": {**cfg["params"], **extra}}, "fp:cpu:float32", "digest-a") == base
    first = pl.run_study(_spec(tiny_llama_dir, [{"kind": "trace", "n_boot": 200, "schedule": "batch"}], seeds=(0,)),
                         out=tmp_path / "s")
    again = pl.run_study(_spec(tiny_llama_dir, [{"kind": "trace", "n_boot": 200, "schedule": "layer"}], seeds=(0,)),
                         out=tmp_path / "s")
    assert first.attrs["ran"] == 1 and again.attrs["ran"] == 0 and again.attrs["reused"] == 1
    assert list(first.job) == list(again.job)


def test_the_index_has_the_columns_the_issue_names(tiny_llama_dir, tmp_path):
    """job, status, host, wall time, peak memory and the key scalars, with values that say where the job ran."""
    import socket

    df = pl.run_study(_spec(tiny_llama_dir, [{"kind": "trace", "n_boot": 100},
                                             {"kind": "sweep", "steps": 1, "n_boot": 100, "calibration_passages": 1,
                                              "heldout_passages": 1}]), out=tmp_path)
    need = {"job", "status", "host", "wall_s", "peak_rss_mb", "transition", "transition_lo", "transition_hi",
            "final_accuracy", "collapse_ratio"}
    assert need <= set(df.columns), need - set(df.columns)
    done = df[df.status == "done"]
    assert len(done) and (done.host == socket.gethostname()).all()
    assert (done.wall_s > 0).all() and (done.peak_rss_mb > 0).all()
    assert ((done.final_accuracy >= 0) & (done.final_accuracy <= 1)).all()


def test_collapse_r_is_over_pairs_not_over_seeds():
    """Three (model, task) pairs swept with two seeds each: r is Pearson's over the three pair means (scipy on
    means taken by hand), and the summary counts pairs."""
    from scipy import stats

    from phaselens.experiments.collapse import CollapsePoint, CollapseStudy

    raw = {("a", "t"): [(10, 0.3), (12, 0.5)], ("b", "t"): [(20, 0.4), (20, 0.6)], ("c", "u"): [(25, 0.9), (27, 0.7)]}
    pts = [CollapsePoint(m, t, "bi", 30, tr, cr, 0.9) for (m, t), v in raw.items() for tr, cr in v]
    st = CollapseStudy(pts, float("nan"), float("nan"), "bi")
    x, y = st.pair_means()
    hand_x = [np.mean([tr / 30 for tr, _ in v]) for v in raw.values()]
    hand_y = [np.mean([cr for _, cr in v]) for v in raw.values()]
    np.testing.assert_allclose(sorted(x), sorted(hand_x))
    np.testing.assert_allclose(sorted(y), sorted(hand_y))
    from phaselens.stats import pearson

    st.r, st.p = pearson(list(x), list(y))
    want = stats.pearsonr(hand_x, hand_y)
    assert st.r == pytest.approx(want[0]) and st.n_pairs == 3 and st.n == 6
    assert "over 3 (model, task) pairs (6 sweeps, each pair's seeds averaged)" in st.summary()


def test_sweep_require_transition_stops_pairs_without_one(tiny_llama_dir, tmp_path):
    """``require_transition``: a pair whose dense model has no transition stops after one cut (Figure 8 cannot use
    it); a pair with one runs exactly the sweep it runs without the flag. Checked against transition_point directly."""
    m = pl.load_model(tiny_llama_dir)
    base = pl.load_task("capitals", limit=6)
    pred = pl.decision_trace(m, base).predictions[:, -1]
    own = pl.load_task([{"question": it.question, "options": list(it.options), "answer": int(p), "id": it.id}
                        for it, p in zip(base.items, pred)])
    assert pl.transition_point(m, base).layer is None and pl.transition_point(m, own).layer is not None
    sweep = {"kind": "sweep", "until": "collapse", "chunk": 2, "steps": 4, "n_boot": 100, "calibration_passages": 1,
             "heldout_passages": 1}

    def sweeps(run: dict, out: Path) -> tuple:
        """(the sweep on base, the sweep on own)."""
        df = pl.run_study({"models": [tiny_llama_dir], "tasks": [base, own], "seeds": [0], "runs": [run]}, out=out)
        assert (df.status == "done").all(), df.error.tolist()
        res = [pl.load_result(out / f"{r.result}.json") for r in df.itertuples()]
        by_tr = {sw.steps[0].transition.layer is None: sw for sw in res}
        return by_tr[True], by_tr[False]

    skipped, kept = sweeps({**sweep, "require_transition": True}, tmp_path / "flag")
    full_no_tr, full_tr = sweeps(sweep, tmp_path / "plain")
    assert len(skipped.steps) == 2  # the dense step and one cut
    assert len(full_no_tr.steps) >= 3  # without the flag the first chunk (2 cuts) runs
    assert kept.to_json() == full_tr.to_json()
    with pytest.raises(pl.errors.StudyError, match="require_transition"):
        pl.run_study({"models": [tiny_llama_dir], "tasks": [base], "runs": [{**sweep, "require_transition": "yes"}]},
                     out=tmp_path / "bad")


def test_a_trace_job_cut_short_resumes_from_its_finished_units(tiny_llama_dir, tmp_path, monkeypatch):
    """A study's trace job reads its items in units saved in its scratch folder: a job that fails (or is killed)
    after one unit reruns only the rest, and its result equals a plain trace of the same model and items."""
    import phaselens.trace as trace_mod

    monkeypatch.setattr(trace_mod, "TRACE_CHUNK", 4)  # the 6 capitals items in units of 4 and 2
    real, calls = trace_mod.option_logits, []

    def second_unit_fails(view, task, **kw):
        calls.append(len(task.items))
        if len(calls) == 2:
            raise RuntimeError("killed mid-trace")
        return real(view, task, **kw)

    monkeypatch.setattr(trace_mod, "option_logits", second_unit_fails)
    spec = _spec(tiny_llama_dir, [{"kind": "trace", "n_boot": 100}], seeds=(0,))
    first = pl.run_study(spec, out=tmp_path)
    assert first.attrs["failed"] == 1 and first.error.str.contains("killed mid-trace").all()
    monkeypatch.setattr(trace_mod, "option_logits", lambda view, task, **kw: calls.append(len(task.items)) or real(view, task, **kw))
    calls.clear()
    again = pl.run_study(spec, out=tmp_path)
    assert again.attrs["ran"] == 1 and again.attrs["failed"] == 0
    assert calls == [2]  # the first unit's 4 items were read back, not recomputed
    got = pl.load_results(tmp_path)[again.result.iloc[0]]
    got = getattr(got, "trace", got)  # a Transition, or the trace when it has none
    ref = pl.decision_trace(pl.load_model(tiny_llama_dir), pl.load_task("capitals", limit=6), n_boot=100)
    assert got.item_ids == ref.item_ids
    np.testing.assert_allclose(got.logits, ref.logits, rtol=1e-5, atol=1e-5)
