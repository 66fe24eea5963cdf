"""Loaders on the real benchmark files in ../shared/data, with the quirks their SOURCE.md lists."""

from __future__ import annotations

import collections
import json

import pytest

import phaselens as pl
from phaselens.tasks.loaders import data_dir, hellaswag_preprocess, load_items

pytestmark = pytest.mark.skipif(not (data_dir() / "arc").is_dir(), reason="shared benchmark data not found (set PHASELENS_DATA)")


@pytest.mark.parametrize(
    "name,split,n,counts,numeric",
    [
        ("arc-challenge", "test", 1172, {4: 1165, 3: 4, 5: 3}, 22),
        ("arc-easy", "test", 2376, {4: 2365, 3: 7, 5: 4}, 97),
        ("arc-challenge", "validation", 299, None, None),
        ("arc-easy", "train", 2251, None, None),
    ],
)
def test_arc_counts_and_option_counts(name, split, n, counts, numeric):
    task = pl.load_task(name, split=split)
    assert len(task) == n and task.format == "continuation"
    if counts:
        assert dict(collections.Counter(it.n_options for it in task.items)) == counts
    if numeric:  # numeric labels ("1".."4") are mapped to the right option index
        raw = [json.loads(line) for line in open(data_dir() / "arc" / f"{'ARC-Challenge' if 'chall' in name else 'ARC-Easy'}-{split}.jsonl")]
        num = [r for r in raw if r["choices"]["label"][0] == "1"]
        assert len(num) == numeric
        by_id = {it.id: it for it in task.items}
        for r in num:
            it = by_id[r["id"]]
            assert it.options[it.answer] == r["choices"]["text"][r["choices"]["label"].index(r["answerKey"])]
        five = [r for r in raw if len(r["choices"]["label"]) == 5 and r["answerKey"] == "E"]
        for r in five:
            assert by_id[r["id"]].answer == 4


def test_arc_prompt_and_fewshot_pool_from_train():
    task = pl.load_task("arc-easy", limit=5, shots=2)
    assert task.prompt(0).endswith("\nAnswer:") and task.prompt(0).count("Question:") == 3
    train_q = {it.question for it in pl.load_task("arc-easy", split="train").items}
    assert all(it.question in train_q for it in task.fewshot_pool)
    letters = pl.load_task("arc-easy", format="letters", limit=3)
    assert letters.reformulated and letters.prompt(0).endswith("Answer:")


def test_mmlu_prompt_is_lm_evals():
    """lm-evaluation-harness' MMLU: the subject's description once, then the first k rows of the subject's own dev
    file, each "{question}\nA. ..\nD. ..\nAnswer: {label}\n\n", then the query. Rebuilt from the CSV files."""
    import csv

    def rows(split: str, subject: str) -> list[list[str]]:
        with open(data_dir() / "mmlu" / split / f"{subject}_{split}.csv", newline="", encoding="utf-8") as f:
            return [r for r in csv.reader(f) if r]

    def text(r: list[str]) -> str:
        return f"{r[0].strip()}\nA. {r[1]}\nB. {r[2]}\nC. {r[3]}\nD. {r[4]}\nAnswer:"

    for subject in ("high_school_physics", "anatomy"):
        task = pl.load_task(f"mmlu:{subject}", shots=3)
        dev, test = rows("dev", subject), rows("test", subject)
        want = f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"
        want += "".join(f"{text(r)} {r[5]}\n\n" for r in dev[:3]) + text(test[0])
        assert task.prompt(0) == want
        assert task.decision_strings(0) == [" A", " B", " C", " D"]
    pooled = pl.load_task("mmlu", shots=2, limit=20, seed=3)  # every subject's items get their own subject's shots
    for i, it in enumerate(pooled.items):
        dev = rows("dev", it.group)
        assert pooled.prompt(i).count(dev[0][0].strip()) >= 1 and it.group.replace("_", " ") in pooled.prompt(i)
    zero = pl.load_task("mmlu:anatomy")
    assert zero.prompt(0).startswith("The following are multiple choice questions (with answers) about anatomy.\n\n")
    old = pl.load_task("mmlu:anatomy", template=pl.LettersTemplate())  # the generic layout, by choice
    assert old.prompt(0).startswith("Question: ")


def test_arc_fewshot_follows_lm_evals_seeded_sampler():
    """lm-eval's default sampler: one random.Random(1234) drawing k train docs for each evaluated doc in turn."""
    import random

    train = [json.loads(line) for line in open(data_dir() / "arc" / "ARC-Easy-train.jsonl") if line.strip()]
    test = [json.loads(line) for line in open(data_dir() / "arc" / "ARC-Easy-test.jsonl") if line.strip()]
    rnd = random.Random(1234)
    task = pl.load_task("arc-easy", shots=2, limit=len(test))
    for i in range(4):
        shots = rnd.sample(train, 2)
        want = "".join(f"Question: {r['question']}\nAnswer: {r['choices']['text'][r['choices']['label'].index(r['answerKey'])]}\n\n"
                       for r in shots) + f"Question: {test[i]['question']}\nAnswer:"
        assert task.prompt(i) == want


def test_mmlu_splits_subjects_and_multiline_rows():
    assert len(pl.load_task("mmlu")) == 14042
    assert len(pl.load_task("mmlu", split="val")) == 1531
    assert len(pl.load_task("mmlu", split="dev")) == 285
    astro = pl.load_task("mmlu:astronomy")
    assert astro.format == "letters" and len(astro.fewshot_pool) == 5
    first = astro.items[0]
    assert first.n_options == 4 and 0 <= first.answer < 4
    qs = [it.question for it in pl.load_task("mmlu").items]
    assert any("\n" in q for q in qs)  # quoted multi-line questions survive the CSV parser
    assert 'What is true for a type-Ia ("type one-a") supernova?' in {it.question for it in astro.items}
    with pytest.raises(pl.errors.TaskError, match="unknown MMLU subject"):
        pl.load_task("mmlu:astronomyy")


def test_hellaswag_both_files_agree():
    hs = pl.load_task("hellaswag")
    assert len(hs) == 1000 and hs.format == "continuation"
    assert collections.Counter(hs.answers) == {0: 267, 1: 228, 2: 266, 3: 239}
    assert not any("[" in it.question and "]" in it.question for it in hs.items if "[title]" in it.question)
    full = pl.load_task("hellaswag-full")
    assert len(full) == 10042
    assert collections.Counter(full.answers) == {0: 2515, 1: 2485, 2: 2584, 3: 2458}
    assert full.items[0].question == "Roof shingle removal: A man is sitting on a roof. he" and full.items[0].answer == 3
    # the two files preprocess (almost) identically: the same contexts, labels and endings
    ctx = {it.question: it for it in full.items}
    plain = [it for it in hs.items if it.question in ctx][:50]
    assert len(plain) >= 40
    for it in plain:
        # lm-eval keeps the space left where a leading [substeps] marker was removed; the text file strips it
        assert ctx[it.question].answer == it.answer
        assert [o.strip() for o in ctx[it.question].options] == [o.strip() for o in it.options]
    assert hellaswag_preprocess("Sport: [header] How to x [title] Do y.") == "Sport: How to x. Do y."  # lm-eval exactly


def test_truthfulqa_is_shuffled_with_the_seed():
    raw = json.loads((data_dir() / "truthfulqa" / "mc_task.json").read_text())
    t0 = pl.load_task("truthfulqa", seed=0)
    assert len(t0) == 817 and t0.format == "letters"
    slots = collections.Counter(t0.answers)
    assert slots[0] < 0.5 * len(t0) and len(slots) >= 4  # the gold answer is no longer always "A"
    for it, r in zip(t0.items, raw):
        gold = next(k for k, v in r["mc1_targets"].items() if v == 1)
        assert it.options[it.answer] == gold and set(it.options) == set(r["mc1_targets"])
    assert t0.answers == pl.load_task("truthfulqa", seed=0).answers
    assert t0.answers != pl.load_task("truthfulqa", seed=1).answers
    assert t0.prompt(0) if t0.format == "letters" else True
    assert pl.load_task("truthfulqa", format="cloze", limit=2).prompt(0).startswith("Q: ")


def test_jsonl_errors_name_the_line(tmp_path):
    p = tmp_path / "t.jsonl"
    p.write_text('{"question": "q", "options": ["a", "b"], "answer": 0}\n{"question": oops}\n')
    with pytest.raises(pl.errors.TaskError, match="line 2"):
        pl.load_task(p)
    p.write_text('{"question": "q", "options": ["a", "b"], "answer": 0}\n\n{"question": "r", "options": ["a", ""], "answer": 0}\n')
    with pytest.raises(pl.errors.TaskError, match=r"line 3.*option 1 is empty"):
        pl.load_task(p)
    p.write_text('{"question": "q", "options": ["a", "b"], "answer": 2}\n')
    with pytest.raises(pl.errors.TaskError, match="out of range"):
        pl.load_task(p)
    p.write_text('{"question": "q", "options": ["a"], "answer": 0}\n')
    with pytest.raises(pl.errors.TaskError, match="at least two options"):
        pl.load_task(p)
    p.write_text('{"question": "q", "choices": ["a", "b"], "answer": 0}\n')
    with pytest.raises(pl.errors.TaskError, match="needs keys"):
        pl.load_task(p)


def test_mmlu_style_csv_file_and_errors(tmp_path):
    p = tmp_path / "mine.csv"
    p.write_text('"Two\nlines?",a,b,c,d,C\nq2,a,b,c,d,A\r\n', newline="")
    t = pl.load_task(p)
    assert t.format == "letters" and t.answers == [2, 0] and t.items[0].question == "Two\nlines?"
    p.write_text("q,a,b,c,d,Z\n")
    with pytest.raises(pl.errors.TaskError, match="row 1"):
        pl.load_task(p)


def test_unknown_spec_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(pl.errors.TaskError, match="not a built-in task"):
        pl.load_task("no-such-task-anywhere")
    with pytest.raises(pl.errors.TaskError, match="does not exist"):
        pl.load_task("missing.jsonl")


def test_missing_data_folder_says_how_to_fix(monkeypatch, tmp_path):
    monkeypatch.setenv("PHASELENS_DATA", str(tmp_path))
    with pytest.raises(pl.errors.TaskError, match="PHASELENS_DATA"):
        load_items("arc-easy")
