"""The Ray executor on a local Ray instance (2 CPUs, no dashboard, a small object store, loopback only):
the same study as "local", and a worker killed in the middle of a study."""

from __future__ import annotations

import os
import signal

import pytest

import phaselens as pl

ray = pytest.importorskip("ray")

from test_study import _same_study, _spec, _whole

pytestmark = pytest.mark.timeout(300)

RUNS = [{"kind": "trace", "n_boot": 100}, {"kind": "noise", "eps": 0.5, "seeds": 1, "blocks": [0, 2, 5], "n_boot": 100}]


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 * 2**20, log_to_driver=False,
             _node_ip_address="127.0.0.1")
    yield ray
    ray.shutdown()


def test_ray_gives_the_same_study_as_local(local_ray, tiny_llama_dir, tmp_path):
    spec = _spec(tiny_llama_dir, RUNS, seeds=[0, 1])
    loc = pl.run_study(spec, out=tmp_path / "local")
    far = pl.run_study(spec, out=tmp_path / "ray", executor="ray")
    assert len(loc) == len(far) == 4 and (far.status == "done").all(), far.error.tolist()
    assert set(far.executor) == {"ray"} and set(loc.executor) == {"local"}
    assert far.worker.nunique() <= 2  # at most the two actors; each loaded the model once
    assert (~far.model_cached.astype(bool)).sum() <= 2
    _same_study(tmp_path / "local", tmp_path / "ray")
    assert ray.is_initialized()  # an instance the caller started is left running


def test_a_killed_ray_worker_loses_nothing(local_ray, tiny_llama_dir, tmp_path):
    spec = _spec(tiny_llama_dir, RUNS, seeds=[0, 1, 2])
    out = tmp_path / "s"
    killed = []

    def kill_first_worker(row):  # SIGKILL the worker process that just finished a job: the study is mid-way
        if not killed:
            pid = int(row["worker"].rsplit(":", 1)[1])
            assert pid != os.getpid()
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    first = pl.run_study(spec, out=out, executor="ray", on_job=kill_first_worker)
    assert killed and len(first) == 6
    assert first.attrs["failed"] >= 1, "the killed worker's next job should have failed"
    assert first[first.status == "failed"].error.str.contains("Ray worker running this job died").all()
    _whole(out)
    done = first[first.status == "done"]
    stamps = {r.job: (r.finished, (out / f"{r.result}.json").stat().st_mtime_ns) for r in done.itertuples()}
    again = pl.run_study(spec, out=out, executor="ray")
    assert (again.status == "done").all() and len(again) == 6
    assert again.attrs["reused"] == len(done) and again.attrs["ran"] == 6 - len(done)
    for r in again.itertuples():  # finished jobs were not recomputed
        if r.job in stamps:
            assert stamps[r.job] == (r.finished, (out / f"{r.result}.json").stat().st_mtime_ns)
    _whole(out)
    pl.run_study(spec, out=tmp_path / "ref")
    _same_study(out, tmp_path / "ref")


def test_a_plugins_run_kind_runs_on_ray_actors(local_ray, tiny_llama_dir, tmp_path, monkeypatch):
    """The actors import the driver's plugins (a .py path here: the actors share this machine)."""
    from pathlib import Path

    from phaselens.registry import PLUGINS_ENV

    monkeypatch.setenv(PLUGINS_ENV, os.environ.get(PLUGINS_ENV, ""))
    plugin = Path(__file__).parent / "plugins" / "user_run.py"
    spec = _spec(tiny_llama_dir, [{"kind": "final-accuracy", "n_boot": 100}], seeds=[0])
    df = pl.run_study(spec, out=tmp_path / "ray", executor="ray", plugins=[str(plugin)])
    assert (df.status == "done").all(), df.error.tolist()
    ref = pl.decision_trace(pl.load_model(tiny_llama_dir), pl.load_task("capitals", limit=6, seed=0), n_boot=100)
    assert df.iloc[0].final_accuracy == float(ref.accuracy[-1]) and df.iloc[0].executor == "ray"
