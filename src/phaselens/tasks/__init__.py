"""Tasks: multiple-choice items in the letters, cloze or continuation format.

``load_task`` resolves, in order: a :class:`Task`; a built-in task name (see
:func:`builtin_tasks`); a real benchmark name (``arc-easy``, ``arc-challenge``, ``mmlu``,
``mmlu:<subject>``, ``hellaswag``, ``hellaswag-full``, ``truthfulqa``) read from the shared data
folder; a JSONL or MMLU-style CSV path; a Hugging Face dataset already in the local cache.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Iterable

from .base import FORMATS, Format, Item, LettersTemplate, Task, TaskError, stratified, subset
from .loaders import BUILTIN_DIR, builtin_tasks, load_items

#: load_task's ``duplicates``: refuse items whose options repeat a text (cloze, continuation), or leave them out
DUPLICATES = ("error", "drop")

__all__ = ["DUPLICATES", "FORMATS", "Format", "Item", "LettersTemplate", "Task", "TaskError", "builtin_tasks", "load_task"]


def load_task(
    spec: Any,
    *,
    format: Format | None = None,
    split: str | None = None,
    limit: int | None = None,
    seed: int = 0,
    shots: int = 0,
    template: LettersTemplate | None = None,
    sample: bool | str = True,
    name: str | None = None,
    cloze_template: str | None = None,
    duplicates: str = "error",
) -> Task:
    """Load a multiple-choice task.

    Args:
        spec: a Task, a built-in name, a benchmark name, a file path, an HF dataset name,
            or an iterable of :class:`Item` / ``{"question", "options", "answer"}`` dicts.
        format: ``"letters"``, ``"cloze"`` or ``"continuation"`` (default: the source's own:
            cloze for built-ins and JSONL, continuation for ARC/HellaSwag, letters for MMLU/TruthfulQA).
        split: benchmark split (default: test, or validation where there is no test).
        limit: keep this many items: a seeded random subset (file order kept), or with ``sample=False`` the
            first ``limit`` items in file order (what ``lm_eval --limit`` evaluates).
        seed: seeds the subset and option shuffles (TruthfulQA); few-shot examples follow lm-eval's own rules.
        shots: solved examples prepended to each prompt (drawn from the source's train/dev split).
        template: layout of letters prompts (default: the benchmark's own, lm-evaluation-harness' for MMLU
            (:meth:`LettersTemplate.mmlu`), else :class:`LettersTemplate`; pass ``LettersTemplate()`` for the
            generic ``"Question: ..."`` layout).
        sample: with ``limit``, ``True`` draws a seeded random subset, ``False`` takes the first items,
            ``"stratified"`` a seeded subset spread evenly over the items' groups (MMLU's subjects: ``limit=1140``
            is 20 per subject; see :func:`~phaselens.tasks.base.stratified`).
        name: the task's name in outputs (default: the source's; ``"custom"`` for a list of items).
        cloze_template: how a cloze/continuation prompt wraps the question (default: the source's, e.g. ARC's
            ``"Question: {question}\nAnswer:"``; the bare question for a list of items).
        duplicates: items whose options repeat a text (a few MMLU items do) cannot be scored in the cloze or
            continuation format: ``"error"`` (default) refuses them, naming the first; ``"drop"`` leaves them out
            (said in ``Task.selection``). The letters format keeps them (the labels differ).

    The result records how its items were chosen (``Task.selection``) and, for a benchmark, whether its
    prompt layout is lm-evaluation-harness' (``Task.layout_note``).
    """
    if format is not None and format not in FORMATS:
        raise TaskError(f"unknown format {format!r}; choose one of {FORMATS}")
    _check_limit(limit)
    if not (isinstance(sample, bool) or sample == "stratified"):
        raise TaskError(f"sample must be True (a seeded random subset of limit items), False (the first limit items) "
                        f"or 'stratified' (spread evenly over the items' groups, e.g. MMLU's subjects), got {sample!r}")
    if duplicates not in DUPLICATES:
        raise TaskError(f"duplicates must be 'error' or 'drop', got {duplicates!r}")
    drop = duplicates == "drop"
    if isinstance(shots, bool) or not isinstance(shots, int) or shots < 0:
        raise TaskError(f"shots must be an int >= 0, got {shots!r}")
    if cloze_template is not None and "{question}" not in str(cloze_template):
        raise TaskError(f"cloze_template must contain '{{question}}', got {cloze_template!r}")
    if isinstance(spec, Task):
        task = spec
        if format and format != task.format or template is not None:
            task = task.with_format(format or task.format, template)
        items, how = _pick(task.items, limit, seed, sample, drop and task.format != "letters")
        return dataclasses.replace(task, items=tuple(items), shots=shots or task.shots, name=name or task.name,
                                   cloze_template=cloze_template or task.cloze_template, selection=how, _shot_cache={})
    if not isinstance(spec, (str, os.PathLike)):
        items = [it if isinstance(it, Item) else Item(**_item_kwargs(it, n)) for n, it in enumerate(_iter(spec))]
        picked, how = _pick(items, limit, seed, sample, drop and (format or "cloze") != "letters")
        return Task(name or "custom", tuple(picked), format or "cloze", template, shots, seed=seed, source="in-memory",
                    cloze_template=cloze_template or "{question}", selection=how)
    s = str(spec)
    if s in builtin_tasks():
        loaded = load_items(BUILTIN_DIR / f"{s}.jsonl", seed=seed)
        loaded = dataclasses.replace(loaded, name=s, source=f"phaselens built-in task {s!r}")
    else:
        loaded = load_items(s, split=split, seed=seed)
    fmt = format or loaded.default_format
    items, how = _pick(loaded.items, limit, seed, sample, drop and fmt != "letters")
    pool = list(loaded.fewshot_pool)
    if shots and not pool:  # draw shots from the items not evaluated
        chosen = set(map(id, items))
        pool = [it for it in loaded.items if id(it) not in chosen]
    reform = fmt == "letters" and loaded.default_format == "continuation"
    if fmt == "letters" and template is None:
        template = loaded.letters_template  # the benchmark's own layout (MMLU: lm-eval's), else the default
    native = None
    if loaded.benchmark:  # lm-eval's layout of this benchmark: its format and template
        native = (loaded.default_format, loaded.letters_template if loaded.default_format == "letters" else None,
                  loaded.cloze_template)
    return Task(name or loaded.name, tuple(items), fmt, template, shots, tuple(pool), seed, loaded.source, reform,
                cloze_template or loaded.cloze_template, loaded.fewshot, selection=how, native_layout=native)


def _check_limit(limit: Any) -> None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise TaskError(f"limit must be a positive int (items to keep) or None, got {limit!r}")


def _pick(items: Any, limit: int | None, seed: int, sample: bool | str, drop: bool = False) -> tuple[list[Item], str]:
    """The items kept and how they were chosen, in words (``drop``: without items whose options repeat)."""
    items = list(items)
    if drop:
        kept = [it for it in items if it.repeated_options is None]
        if len(kept) < len(items):
            picked, how = _pick(kept, limit, seed, sample)
            return picked, f"{how}, leaving out {len(items) - len(kept)} item(s) whose options repeat"
    items = list(items)
    if limit is None or limit >= len(items):
        return items, f"all {len(items)} items"
    if not sample:
        return items[:limit], f"the first {limit} of {len(items)} items"
    if sample == "stratified":
        picked = stratified(items, limit, seed)
        n_groups = len({it.group for it in picked})
        return picked, f"a stratified {limit} of {len(items)} items ({n_groups} groups, seed {seed})"
    return subset(items, limit, seed), f"a random {limit} of {len(items)} items (seed {seed})"


def _iter(spec: Any) -> Iterable:
    try:
        return iter(spec)
    except TypeError:
        raise TaskError(f"cannot make a task from {type(spec).__name__}; pass a name, a path or a list of items") from None


def _item_kwargs(d: Any, n: int) -> dict:
    if not isinstance(d, dict) or not {"question", "options", "answer"} <= set(d):
        raise TaskError(f"item {n}: needs keys 'question', 'options', 'answer', got {d!r:.80}")
    return {"question": d["question"], "options": tuple(d["options"]), "answer": d["answer"], "id": str(d.get("id", n))}
