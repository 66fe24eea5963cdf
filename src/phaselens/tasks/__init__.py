"""Tasks: multiple-choice items in the letters, cloze or continuation format.

``load_task`` resolves, in order: a :class:`Task`; a built-in task name (see
:func:`builtin_tasks`); a real benchmark name (``arc-easy``, ``arc-challenge``, ``mmlu``,
``mmlu:<subject>``, ``hellaswag``, ``hellaswag-full``, ``truthfulqa``) read from the shared data
folder; a JSONL or MMLU-style CSV path; a Hugging Face dataset already in the local cache.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Iterable

from .base import FORMATS, Format, Item, LettersTemplate, Task, TaskError, subset

BUILTIN_DIR = Path(__file__).parent / "data"

__all__ = ["FORMATS", "Format", "Item", "LettersTemplate", "Task", "TaskError", "builtin_tasks", "load_task"]


def builtin_tasks() -> list[str]:
    """Names of the tasks shipped with phaselens (cloze; both embedded models answer them)."""
    return sorted(p.stem for p in BUILTIN_DIR.glob("*.jsonl"))


def load_task(
    spec: Any,
    *,
    format: Format | None = None,
    split: str | None = None,
    limit: int | None = None,
    seed: int = 0,
    shots: int = 0,
    template: LettersTemplate | None = None,
) -> Task:
    """Load a multiple-choice task.

    Args:
        spec: a Task, a built-in name, a benchmark name, a file path, an HF dataset name,
            or an iterable of :class:`Item` / ``{"question", "options", "answer"}`` dicts.
        format: ``"letters"``, ``"cloze"`` or ``"continuation"`` (default: the source's own:
            cloze for built-ins and JSONL, continuation for ARC/HellaSwag, letters for MMLU/TruthfulQA).
        split: benchmark split (default: test, or validation where there is no test).
        limit: keep a seeded random subset of this many items (file order is kept).
        seed: seeds the subset, option shuffles (TruthfulQA) and few-shot sampling.
        shots: solved examples prepended to each prompt (drawn from the source's train/dev split).
        template: layout of letters prompts (default: the benchmark's own, lm-evaluation-harness' for MMLU
            (:meth:`LettersTemplate.mmlu`), else :class:`LettersTemplate`; pass ``LettersTemplate()`` for the
            generic ``"Question: ..."`` layout).
    """
    if format is not None and format not in FORMATS:
        raise TaskError(f"unknown format {format!r}; choose one of {FORMATS}")
    if isinstance(spec, Task):
        task = spec
        if format and format != task.format or template is not None:
            task = task.with_format(format or task.format, template)
        items = subset(task.items, limit, seed)
        return dataclasses.replace(task, items=tuple(items), shots=shots or task.shots, _shot_cache={})
    if not isinstance(spec, (str, os.PathLike)):
        items = [it if isinstance(it, Item) else Item(**_item_kwargs(it, n)) for n, it in enumerate(_iter(spec))]
        return Task("custom", tuple(subset(items, limit, seed)), format or "cloze", template, shots, seed=seed, source="in-memory")
    from .loaders import load_items

    s = str(spec)
    if s in builtin_tasks():
        loaded = load_items(BUILTIN_DIR / f"{s}.jsonl", seed=seed)
        loaded = dataclasses.replace(loaded, name=s, source=f"phaselens built-in task {s!r}")
    else:
        loaded = load_items(s, split=split, seed=seed)
    items = subset(loaded.items, limit, seed)
    fmt = format or loaded.default_format
    pool = list(loaded.fewshot_pool)
    if shots and not pool:  # draw shots from the items not evaluated
        chosen = set(map(id, items))
        pool = [it for it in loaded.items if id(it) not in chosen]
    reform = fmt == "letters" and loaded.default_format == "continuation"
    if fmt == "letters" and template is None:
        template = loaded.letters_template  # the benchmark's own layout (MMLU: lm-eval's), else the default
    return Task(loaded.name, tuple(items), fmt, template, shots, tuple(pool), seed, loaded.source, reform,
                loaded.cloze_template, loaded.fewshot)


def _iter(spec: Any) -> Iterable:
    try:
        return iter(spec)
    except TypeError:
        raise TaskError(f"cannot make a task from {type(spec).__name__}; pass a name, a path or a list of items") from None


def _item_kwargs(d: Any, n: int) -> dict:
    if not isinstance(d, dict) or not {"question", "options", "answer"} <= set(d):
        raise TaskError(f"item {n}: needs keys 'question', 'options', 'answer', got {d!r:.80}")
    return {"question": d["question"], "options": tuple(d["options"]), "answer": d["answer"], "id": str(d.get("id", n))}
