"""sample="stratified": a subset spread evenly over MMLU's subjects (issue 23's "stratified 400 of MMLU test").
References: counts per subject from pandas on the CSV files themselves, and the even split computed by hand."""

from __future__ import annotations

import collections
import os
from pathlib import Path

import pandas as pd
import pytest

import phaselens as pl

MMLU = Path(os.environ.get("PHASELENS_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")) / "mmlu" / "test"
pytestmark = pytest.mark.skipif(not MMLU.is_dir(), reason="../shared/data/mmlu not found")


def _sizes() -> dict[str, int]:
    """Items per subject, read by pandas (not phaselens' loader)."""
    return {f.name[: -len("_test.csv")]: len(pd.read_csv(f, header=None)) for f in sorted(MMLU.glob("*_test.csv"))}


def test_1140_is_20_per_subject_and_400_is_as_even_as_can_be():
    sizes = _sizes()
    assert len(sizes) == 57 and min(sizes.values()) >= 20
    t = pl.load_task("mmlu", limit=1140, sample="stratified", seed=3)
    per = collections.Counter(it.group for it in t.items)
    assert len(t.items) == 1140 and set(per) == set(sizes) and set(per.values()) == {20}
    t = pl.load_task("mmlu", limit=400, sample="stratified", seed=0)
    per = collections.Counter(it.group for it in t.items)
    assert len(t.items) == 400 and len(per) == 57
    assert sorted(collections.Counter(per.values()).items()) == [(7, 57 - 400 % 57), (8, 400 % 57)]  # 400 = 57*7 + 1
    assert "stratified 400" in t.selection
    # file order kept, a seeded choice: the same seed gives the same items, another seed others
    order = {it.id: n for n, it in enumerate(pl.load_task("mmlu").items)}
    assert [order[it.id] for it in t.items] == sorted(order[it.id] for it in t.items)
    assert [it.id for it in pl.load_task("mmlu", limit=400, sample="stratified", seed=0).items] == [it.id for it in t.items]
    assert [it.id for it in pl.load_task("mmlu", limit=400, sample="stratified", seed=1).items] != [it.id for it in t.items]


def test_a_small_group_gives_all_it_has_and_the_rest_go_to_the_others():
    items = [pl.tasks.Item(f"q{g}{n}", ("a", "b"), 0, f"{g}{n}", g) for g, k in (("x", 2), ("y", 10), ("z", 10))
             for n in range(k)]
    t = pl.load_task(items, limit=14, sample="stratified", seed=0)
    per = collections.Counter(it.group for it in t.items)
    assert per["x"] == 2 and per["y"] + per["z"] == 12 and abs(per["y"] - per["z"]) <= 1  # 14 = 2 + 6 + 6


@pytest.mark.bad_input
def test_bad_sample_values_are_refused():
    with pytest.raises(pl.errors.TaskError, match=r"sample must be .*got 'strata'"):
        pl.load_task("mmlu", limit=10, sample="strata")
    with pytest.raises(pl.errors.TaskError, match=r"sample must be .*got 1"):
        pl.load_task("mmlu", limit=10, sample=1)
    one = [pl.tasks.Item(f"q{n}", ("a", "b"), 0, str(n)) for n in range(6)]
    with pytest.raises(pl.errors.TaskError, match=r"at least 2 groups"):
        pl.load_task(one, limit=3, sample="stratified")
    from phaselens.study.spec import parse_spec

    ok = parse_spec({"models": ["m"], "tasks": [{"name": "mmlu", "limit": 10, "sample": "stratified"}],
                     "runs": [{"kind": "trace"}]})
    assert ok.tasks[0].sample == "stratified"
    with pytest.raises(pl.errors.StudyError, match=r"tasks\[0\]\.sample must be"):
        parse_spec({"models": ["m"], "tasks": [{"name": "mmlu", "limit": 10, "sample": "strata"}],
                    "runs": [{"kind": "trace"}]})
