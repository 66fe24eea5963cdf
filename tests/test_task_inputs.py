"""Bad task input (issue 20, "Tasks and text"): each ends in a TaskError/LensError naming what is wrong, before any
forward pass."""

from __future__ import annotations

import json

import pytest

import phaselens as pl
from phaselens.errors import LensError, TaskError
from phaselens.tasks import Item, LettersTemplate


@pytest.mark.bad_input
@pytest.mark.parametrize("options", ["AB", {"Paris": 1, "Lyon": 0}, b"AB", 42])
def test_options_that_are_not_a_list_are_refused(options):
    with pytest.raises(TaskError, match="options must be a list of strings"):
        Item("The capital of France is", options, 0, "x")


@pytest.mark.bad_input
def test_options_in_a_jsonl_given_as_a_string_are_refused(tmp_path):
    p = tmp_path / "t.jsonl"
    p.write_text(json.dumps({"question": "q", "options": "AB", "answer": 0}) + "\n")
    with pytest.raises(TaskError, match="options"):
        pl.load_task(str(p))


@pytest.mark.bad_input
def test_letters_template_without_question_placeholder_is_refused():
    with pytest.raises(TaskError, match=r"LettersTemplate.question.*no \['\{question\}'\]"):
        LettersTemplate(question="Question:\n")
    with pytest.raises(TaskError, match=r"LettersTemplate.option"):
        LettersTemplate(option="{label}.\n")
    with pytest.raises(TaskError, match=r"unknown placeholder"):
        LettersTemplate(answer="Answer {x}:")


@pytest.mark.bad_input
def test_cloze_template_with_an_unknown_placeholder_is_refused():
    items = [Item("q", ("a", "b"), 0, "i")]
    with pytest.raises(TaskError, match=r"cloze_template.*unknown placeholder.*\{oops\}"):
        pl.Task("t", items, cloze_template="{question} {oops}")
    with pytest.raises(TaskError, match=r"cloze_template.*no \['\{question\}'\]"):
        pl.Task("t", items, cloze_template="Answer:")


def _mmlu_folder(tmp_path, text: str):
    for split in ("test", "dev"):
        (tmp_path / split).mkdir(parents=True)
    (tmp_path / "test" / "anatomy_test.csv").write_bytes(text.encode("utf-8"))
    return tmp_path


def test_a_byte_order_mark_is_not_part_of_the_first_question(tmp_path):
    p = tmp_path / "x.csv"
    p.write_bytes("\ufeffWhat is 2+2?,3,4,5,6,B\nWhat is 1+1?,1,2,3,4,B\n".encode("utf-8"))
    task = pl.load_task(str(p))
    assert task.items[0].question == "What is 2+2?"


@pytest.mark.bad_input
@pytest.mark.parametrize("answer", ["BC", "AB", "", "E", "b c"])
def test_an_answer_column_that_is_not_one_letter_is_refused(tmp_path, answer):
    p = tmp_path / "x.csv"
    p.write_text(f"What is 2+2?,3,4,5,6,{answer}\n")
    with pytest.raises(TaskError, match="row 1"):
        pl.load_task(str(p))


@pytest.mark.bad_input
def test_malformed_hellaswag_and_truthfulqa_rows(tmp_path, monkeypatch):
    (tmp_path / "hellaswag").mkdir()
    (tmp_path / "truthfulqa").mkdir()
    row = {"activity_label": "a", "ctx_a": "b", "ctx_b": "c", "label": 0}  # no endings
    (tmp_path / "hellaswag" / "hellaswag.jsonl").write_text(json.dumps(row) + "\n")
    (tmp_path / "truthfulqa" / "mc_task.json").write_text(json.dumps([{"question": "q?", "mc1_targets": {"a": 0, "b": 0}}]))
    monkeypatch.setenv("PHASELENS_DATA", str(tmp_path))
    with pytest.raises(TaskError, match=r"hellaswag.jsonl:1: not a HellaSwag row.*endings"):
        pl.load_task("hellaswag")
    with pytest.raises(TaskError, match=r"item 0.*no option of mc1_targets is marked correct"):
        pl.load_task("truthfulqa")
    (tmp_path / "truthfulqa" / "mc_task.json").write_text(json.dumps([{"question": "q?"}]))
    with pytest.raises(TaskError, match=r"item 0: not a TruthfulQA MC1 item"):
        pl.load_task("truthfulqa")


@pytest.mark.bad_input
@pytest.mark.parametrize("fmt", ["letters", "cloze", "continuation"])
def test_a_prompt_longer_than_the_context_is_refused_before_any_forward_pass(tiny_llama, count_forwards, fmt):
    ctx = tiny_llama.hf.config.max_position_embeddings
    long_q = "The capital of France is " * (ctx // 4)
    task = pl.load_task([{"question": long_q, "options": ["Paris", "London"], "answer": 0, "id": "long"},
                         {"question": "The capital of Spain is", "options": ["Madrid", "Rome"], "answer": 0}],
                        format=fmt)
    with count_forwards(tiny_llama) as c, pytest.raises(LensError, match=r"item long.*longer than.*context"):
        pl.decision_trace(tiny_llama, task)
    assert c.n == 0


@pytest.mark.bad_input
def test_noise_and_ablation_check_the_context_before_any_forward_pass(tiny_llama, count_forwards):
    ctx = tiny_llama.hf.config.max_position_embeddings
    task = pl.load_task([{"question": "The capital of France is " * (ctx // 4), "options": ["Paris", "London"],
                          "answer": 0, "id": "long"}], format="cloze")
    with count_forwards(tiny_llama) as c:
        with pytest.raises(LensError, match="item long"):
            pl.inject_noise(tiny_llama, task, blocks=[1], eps=[0.1], seeds=1)
        with pytest.raises(LensError, match="item long"):
            pl.ablate(tiny_llama, task)
    assert c.n == 0
