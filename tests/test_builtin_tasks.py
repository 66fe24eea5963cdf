"""The built-in tasks: both embedded models answer them, and show a silent -> decisive transition."""

from __future__ import annotations

import pytest

import phaselens as pl
from phaselens.encoding import encode_task

TASKS = pl.builtin_tasks()


def test_at_least_two_builtin_tasks_of_40_items():
    assert len(TASKS) >= 2
    for name in TASKS:
        task = pl.load_task(name)
        assert len(task) >= 40 and task.format == "cloze"
        slots = [0] * task.max_options
        for a in task.answers:
            slots[a] += 1
        assert min(slots) > 0, f"{name}: some answer slot is never used {slots}"


@pytest.mark.parametrize("name", TASKS)
@pytest.mark.parametrize("model", ["smol", "gemma"])
def test_embedded_models_show_a_transition(name, model, request):
    m = request.getfixturevalue(model)
    task = pl.load_task(name)
    encode_task(task, m.tokenizer)  # first tokens of every item's options differ for this tokenizer
    t = pl.transition_point(m, task, n_boot=200)
    assert t.trace.accuracy[-1] >= 0.9, t.summary()
    assert t.layer is not None and t.layer > 0, t.summary()  # a silent phase exists before it
    assert t.trace.margins[0] < t.trace.margins[-1]
