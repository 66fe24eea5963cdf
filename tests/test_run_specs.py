"""The at-size runs' specs (analyses/runs/specs/*.toml, issue 23) are read by the study's own spec reader, so a broken
spec fails here and not hours into a run; their job counts are the ones their comments and analyses/runs/PLAN.md
state. No model is loaded: reading a spec never loads one (checked by making every load fail)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import phaselens as pl
from phaselens.study import parse_spec
from phaselens.study.runs import cut_size

RUNS = Path(__file__).resolve().parents[1] / "analyses" / "runs"
SPECS = sorted((RUNS / "specs").glob("*.toml"))
HEADLINE = ("run1_", "run2_", "run3_")  # the Qwen-1.5B runs: every claim rests on at least 200 items per arm


@pytest.fixture(autouse=True)
def no_model_loads(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("reading a spec loaded a model")

    import phaselens.loading
    import phaselens.study.jobs

    monkeypatch.setattr(phaselens.loading, "load_model", refuse)
    monkeypatch.setattr(phaselens.study.jobs, "load_model", refuse)
    monkeypatch.setattr(pl, "load_model", refuse)


def test_every_run_of_the_issue_has_a_spec():
    runs = {int(re.match(r"run(\d+)_", p.name).group(1)) for p in SPECS}
    assert runs == {1, 2, 3, 4, 5, 6, 7}


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_the_spec_reads_and_its_comments_say_how_to_run_it(path):
    spec = parse_spec(path)
    jobs = spec.jobs()
    text = path.read_text(encoding="utf-8")
    assert f"phaselens study run analyses/runs/specs/{path.name} --out analyses/runs/{path.stem}" in text
    assert f"Output: analyses/runs/{path.stem}/" in text
    said = re.search(r"^# (\d+) jobs", text, re.M)
    if said:
        assert int(said.group(1)) == len(jobs)
    assert all(m in pl.embedded.EMBEDDED for m in spec.models), spec.models
    for t in spec.tasks:  # SmolLM2 and Gemma never answer in letters; only the Qwen models do
        if t.format == "letters":
            assert all(m.startswith("qwen") for m in spec.models), (path.name, t.name)
        assert t.shots == 0
    if path.name.startswith(HEADLINE):
        assert all(t.limit is None or t.limit >= 200 for t in spec.tasks), path.name
    for j in jobs:
        if j.kind in ("sweep", "phase-cuts", "noise", "ablate", "trace", "recovery"):
            assert j.params.get("n_boot", 1000) >= 1000


def test_plan_lists_every_spec_with_its_job_count():
    plan = (RUNS / "PLAN.md").read_text(encoding="utf-8")
    rows = dict(re.findall(r"\| `specs/([\w.]+\.toml)` \| (\d+) \|", plan))
    assert sorted(rows) == sorted(p.name for p in SPECS)
    for p in SPECS:
        assert int(rows[p.name]) == len(parse_spec(p).jobs()), p.name


def test_multi_seed_specs_keep_the_items_of_every_job_seed():
    """A spec with several seeds fixes each task's seed, so the random sweeps of every seed see the items of the
    single-seed BI spec beside it (on all of its tasks, or on those of its pairs the issue names: run5_qwen05_random
    keeps the one pair above chance)."""
    for p in SPECS:
        spec = parse_spec(p)
        if len(spec.seeds) > 1:
            assert all(t.seed == 0 for t in spec.tasks), p.name
            twin = p.with_name(p.name.replace("_random", "_bi" if "run5" in p.name else "_arc"))
            assert twin.exists(), twin
            other = parse_spec(twin)
            theirs = [t.config(0) for t in other.tasks]
            assert all(t.config(0) in theirs for t in spec.tasks), p.name


def test_run3_cuts_a_quarter_of_qwen15_as_the_issue_counts():
    spec = parse_spec(RUNS / "specs" / "run3_qwen15_ghosted.toml")
    (job,) = {j.params["prune"] for j in spec.jobs()}
    assert cut_size(job, 28) == 7  # Qwen2.5-Coder-1.5B has 28 blocks
    grid = parse_spec(RUNS / "specs" / "run6_ghosted_grid.toml")
    shares = sorted({j.params["prune"] for j in grid.jobs()})
    assert [cut_size(s, 24) for s in shares] == [3, 6, 9] and [cut_size(s, 30) for s in shares] == [4, 8, 11]


def test_run7_cuts_half_of_each_fast_model_as_its_comment_counts():
    """The cka kind rounds its share as the recovery kind does (one cut_size): 15 of 30, 9 of 18, 12 of 24."""
    spec = parse_spec(RUNS / "specs" / "run7_cka.toml")
    (share,) = {j.params["prune"] for j in spec.jobs()}
    assert [cut_size(share, n) for n in (30, 18, 24)] == [15, 9, 12]  # SmolLM2, Gemma-3-270M, Qwen2.5-Coder-0.5B
