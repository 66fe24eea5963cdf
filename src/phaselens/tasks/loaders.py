"""Read multiple-choice items from files: built-ins, JSONL, the real benchmarks, CSVs, HF datasets.

Benchmarks are read from the shared data folder (``$PHASELENS_DATA``, else ``../shared/data``
next to the working directory or the repository) in the layouts described by each folder's
``SOURCE.md``:

========================  ===========================================  ==============  ===========
name                      file(s)                                      default format  few-shot
========================  ===========================================  ==============  ===========
``arc-easy``              ``arc/ARC-Easy-{test,validation,train}``     continuation    train
``arc-challenge``         ``arc/ARC-Challenge-...``                    continuation    train
``mmlu``, ``mmlu:<subj>`` ``mmlu/{test,val,dev}/<subj>_<split>.csv``   letters         dev (first)
``hellaswag``             ``hellaswag/hellaswag.jsonl`` (1000 items)   continuation    --
``hellaswag-full``        ``hellaswag/hellaswag_val_full.txt.bz2``     continuation    --
``truthfulqa``            ``truthfulqa/mc_task.json`` (MC1)            letters         --
========================  ===========================================  ==============  ===========

Quirks handled: ARC's numeric labels (``"1".."4"``) and 3/5-option items; MMLU's quoted
multi-line CSV fields and mixed line endings (``newline=""``); HellaSwag's WikiHow
``[title]``/``[step]`` markers (lm-evaluation-harness' preprocessing); TruthfulQA's correct
MC1 answer always listed first, so options are shuffled per item with ``Random(f"{seed}:{i}")``.
"""

from __future__ import annotations

import bz2
import csv
import dataclasses
import json
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from .base import Item, LettersTemplate, TaskError

BUILTIN_DIR = Path(__file__).parent / "data"

ARC_PROMPT = "Question: {question}\nAnswer:"  # lm-evaluation-harness arc_easy / arc_challenge
MMLU_PROMPT = "Question: {question}\nAnswer:"
TQA_PROMPT = "Q: {question}\nA:"  # lm-evaluation-harness truthfulqa_mc1 (without its 6-shot preamble)
BENCHMARKS = ("arc-easy", "arc-challenge", "mmlu", "hellaswag", "hellaswag-full", "truthfulqa")


@dataclass(frozen=True)
class Loaded:
    """Items read from one source, before subsetting and formatting."""

    name: str
    items: tuple[Item, ...]
    fewshot_pool: tuple[Item, ...] = ()
    source: str = ""
    default_format: str = "cloze"
    split: str = ""
    cloze_template: str = "{question}"
    fewshot: str = "sampler"  # lm-eval's default sampler; "first_n" for MMLU
    letters_template: Any = None  # the benchmark's own letters layout (MMLU: LettersTemplate.mmlu())
    benchmark: bool = False  # a benchmark whose lm-eval layout the prompt follows by default


def data_dir() -> Path:
    """The shared benchmark folder: ``$PHASELENS_DATA``, else the first ``shared/data`` found
    beside the working directory or the repository."""
    env = os.environ.get("PHASELENS_DATA")
    if env:
        return Path(env)
    here = Path(__file__).resolve()
    for base in (Path.cwd(), *Path.cwd().parents[:2], *here.parents[:4]):
        cand = base / "shared" / "data"
        if cand.is_dir():
            return cand
        cand = base.parent / "shared" / "data"
        if cand.is_dir():
            return cand
    return Path.cwd().parent / "shared" / "data"


def _need(path: Path, what: str) -> Path:
    if not path.exists():
        raise TaskError(
            f"{what}: {path} does not exist. Point PHASELENS_DATA at the folder holding "
            "arc/, mmlu/, hellaswag/ and truthfulqa/ (the shared benchmark data)"
        )
    return path


# -- real benchmarks ------------------------------------------------------------------------
def _arc_file(path: Path) -> list[Item]:
    items = []
    for n, row in _jsonl_rows(path):
        try:
            labels, texts = row["choices"]["label"], row["choices"]["text"]
            answer = labels.index(row["answerKey"])
        except (KeyError, ValueError, TypeError) as e:
            raise TaskError(f"{path}:{n}: not an ARC row ({e!r}); expected choices.label/text and answerKey") from e
        items.append(Item(row["question"], tuple(texts), answer, str(row.get("id", n))))
    return items


def load_arc(level: str, split: str | None = None) -> Loaded:
    split = split or "test"
    name = {"easy": "ARC-Easy", "challenge": "ARC-Challenge"}[level]
    if split not in ("test", "validation", "train"):
        raise TaskError(f"arc-{level} has splits test, validation, train; got {split!r}")
    folder = data_dir() / "arc"
    path = _need(folder / f"{name}-{split}.jsonl", f"arc-{level}")
    pool_path = folder / f"{name}-train.jsonl"
    pool = _arc_file(pool_path) if split != "train" and pool_path.exists() else []
    return Loaded(f"arc-{level}", tuple(_arc_file(path)), tuple(pool), str(path), "continuation", split, ARC_PROMPT,
                  benchmark=True)


def _mmlu_csv(path: Path, subject: str = "") -> list[Item]:
    import io

    items = []
    with io.StringIO(_read_text(path), newline="") as f:
        for n, row in enumerate(csv.reader(f), 1):
            if not row:
                continue
            if len(row) != 6 or row[5].strip() not in ("A", "B", "C", "D"):
                raise TaskError(f"{path}: row {n}: expected 6 columns 'question,A,B,C,D,answer(A-D)', got {row!r:.120}")
            items.append(Item(row[0], tuple(row[1:5]), "ABCD".index(row[5].strip()), f"{path.stem}-{n}", subject))
    return items


def _mmlu_subjects(folder: Path, split: str) -> list[str]:
    return sorted(p.name[: -len(f"_{split}.csv")] for p in (folder / split).glob(f"*_{split}.csv"))


def load_mmlu(subject: str | None = None, split: str | None = None, folder: Path | None = None) -> Loaded:
    split = {"validation": "val"}.get(split or "test", split or "test")
    folder = folder or data_dir() / "mmlu"
    if split not in ("test", "val", "dev"):
        raise TaskError(f"mmlu has splits test, val, dev; got {split!r}")
    _need(folder / split, "mmlu")
    subjects = _mmlu_subjects(folder, split)
    if subject is not None:
        if subject not in subjects:
            close = [s for s in subjects if subject.lower() in s] or subjects[:8]
            raise TaskError(f"unknown MMLU subject {subject!r}; e.g. {', '.join(close)} (57 in all)")
        subjects = [subject]
    items = [it for s in subjects for it in _mmlu_csv(folder / split / f"{s}_{split}.csv", s)]
    pool: list[Item] = []
    if split != "dev":
        for s in subjects:  # lm-eval takes the first shots of each subject's own dev file
            dev = folder / "dev" / f"{s}_dev.csv"
            if dev.exists():
                pool += _mmlu_csv(dev, s)
    name = "mmlu" if subject is None else f"mmlu:{subject}"
    return Loaded(name, tuple(items), tuple(pool), str(folder / split), "letters", split, MMLU_PROMPT, "first_n",
                  LettersTemplate.mmlu(), benchmark=True)


def hellaswag_preprocess(text: str) -> str:
    """lm-evaluation-harness' HellaSwag cleaning (WikiHow markers, double spaces)."""
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def load_hellaswag(split: str | None = None) -> Loaded:
    if split not in (None, "validation", "val"):
        raise TaskError(f"hellaswag holds only the validation split here; got {split!r}")
    path = _need(data_dir() / "hellaswag" / "hellaswag.jsonl", "hellaswag")
    items = []
    for n, row in _jsonl_rows(path):
        try:
            ctx = row["ctx_a"] + " " + row["ctx_b"].capitalize()
            q = hellaswag_preprocess(row["activity_label"] + ": " + ctx)
            endings = row["endings"]
            if not isinstance(endings, list):
                raise TypeError(f"endings is a {type(endings).__name__}, not a list")
            items.append(Item(q, tuple(hellaswag_preprocess(e) for e in endings), int(row["label"]),
                              str(row.get("ind", n))))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise TaskError(f"{path}:{n}: not a HellaSwag row ({type(e).__name__}: {e}); expected activity_label, "
                            "ctx_a, ctx_b, endings (a list) and label") from e
    return Loaded("hellaswag", tuple(items), (), str(path), "continuation", "validation", benchmark=True)


def load_hellaswag_full(split: str | None = None) -> Loaded:
    if split not in (None, "validation", "val"):
        raise TaskError(f"hellaswag-full holds only the validation split; got {split!r}")
    path = _need(data_dir() / "hellaswag" / "hellaswag_val_full.txt.bz2", "hellaswag-full")
    with bz2.open(path, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if len(lines) % 6:
        raise TaskError(f"{path}: {len(lines)} lines is not a multiple of 6 (context, label, 4 endings per item)")
    items = []
    for i in range(0, len(lines), 6):
        ctx, label, *ends = lines[i : i + 6]
        if not label.strip().isdigit():
            raise TaskError(f"{path}:{i + 2}: expected a label 0-3, got {label!r}")
        items.append(Item(ctx, tuple(ends), int(label), f"hs{i // 6}"))
    return Loaded("hellaswag-full", tuple(items), (), str(path), "continuation", "validation", benchmark=True)


def load_truthfulqa(split: str | None = None, seed: int = 0) -> Loaded:
    if split not in (None, "validation", "val"):
        raise TaskError(f"truthfulqa holds only the validation split; got {split!r}")
    path = _need(data_dir() / "truthfulqa" / "mc_task.json", "truthfulqa")
    try:
        rows = json.loads(_read_text(path))
    except json.JSONDecodeError as e:
        raise TaskError(f"{path}: line {e.lineno}: invalid JSON ({e.msg})") from e
    items = []
    if not isinstance(rows, list):
        raise TaskError(f"{path}: expected a JSON list of TruthfulQA items, got a {type(rows).__name__}")
    for i, row in enumerate(rows):
        try:
            targets = row["mc1_targets"]
            opts = tuple(targets)
            answer = [targets[o] for o in opts].index(1)
            if not isinstance(row["question"], str):
                raise TypeError("question is not a string")
        except (KeyError, TypeError, AttributeError) as e:
            raise TaskError(f"{path}: item {i}: not a TruthfulQA MC1 item ({type(e).__name__}: {e}); expected "
                            "question and mc1_targets {option: 0/1}") from e
        except ValueError:
            raise TaskError(f"{path}: item {i} ({row.get('question', '')[:50]!r}): no option of mc1_targets is marked "
                            "correct (1); MC1 needs exactly one") from None
        if sum(1 for o in opts if targets[o] == 1) != 1:
            raise TaskError(f"{path}: item {i}: {sum(1 for o in opts if targets[o] == 1)} options of mc1_targets are "
                            "marked correct; MC1 needs exactly one")
        # The correct MC1 answer is always listed first in the file: shuffle, seeded per item.
        items.append(Item(row["question"], opts, answer, f"tqa{i}").shuffled(random.Random(f"{seed}:{i}")))
    return Loaded("truthfulqa", tuple(items), (), str(path), "letters", "validation", TQA_PROMPT)


# -- generic files --------------------------------------------------------------------------
def _jsonl_rows(path: Path) -> Iterable[tuple[int, Any]]:
    lines = _read_text(path).split("\n")
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            yield n, json.loads(line)
        except json.JSONDecodeError as e:
            raise TaskError(f"{path}: line {n} is not valid JSON ({e.msg} at column {e.colno})") from e


def _read_text(path: Path) -> str:
    """A task file's text as UTF-8; a :class:`TaskError` naming the file and the byte offset otherwise."""
    try:
        return path.read_bytes().decode("utf-8-sig")  # -sig: a byte-order mark is not part of the first question
    except UnicodeDecodeError as e:
        raise TaskError(f"{path} is not UTF-8 text (byte {e.start}: {e.object[e.start:e.start + 4]!r}); save it as "
                        "UTF-8 (e.g. iconv -f latin1 -t utf-8)") from e
    except OSError as e:
        raise TaskError(f"{path}: cannot read it ({e.strerror})") from e


def load_jsonl(path: Path) -> Loaded:
    """Rows ``{"question": str, "options": [str, ...], "answer": int}`` (optional ``"id"``)."""
    items = []
    for n, row in _jsonl_rows(path):
        if not isinstance(row, dict) or not {"question", "options", "answer"} <= set(row):
            raise TaskError(f"{path}: line {n}: needs keys 'question', 'options', 'answer'; got {str(row)[:80]}")
        if not isinstance(row["options"], list):
            raise TaskError(f"{path}: line {n}: 'options' must be a list of strings")
        try:
            items.append(Item(row["question"], tuple(row["options"]), row["answer"], str(row.get("id", f"line {n}"))))
        except TaskError as e:
            raise TaskError(f"{path}: line {n}: {e}") from e
    if not items:
        raise TaskError(f"{path}: no items")
    return Loaded(path.stem, tuple(items), (), str(path), "cloze")


def load_csv(path: Path) -> Loaded:
    """An MMLU-style headerless CSV (``question,A,B,C,D,answer``), or a folder of them."""
    if path.is_dir():
        files = sorted(path.glob("*.csv"))
        if not files:
            raise TaskError(f"{path}: no .csv files in this folder")
        items = [it for f in files for it in _mmlu_csv(f)]
    else:
        items = _mmlu_csv(path)
    return Loaded(path.stem, tuple(items), (), str(path), "letters")


# -- Hugging Face datasets (offline, from the local cache only) -------------------------------
def load_hf(name: str, split: str | None = None, seed: int = 0) -> Loaded:
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    try:
        import datasets
    except ImportError:
        raise TaskError(f"{name!r} is not a phaselens task or file, and `datasets` is not installed") from None
    repo, _, config = name.partition(":")
    try:
        ds = datasets.load_dataset(repo, config or None, split=split or "test")
    except Exception as e:  # noqa: BLE001 - datasets raises many kinds
        if split is None:
            try:
                ds = datasets.load_dataset(repo, config or None, split="validation")
                split = "validation"
            except Exception:
                ds = None
        else:
            ds = None
        if ds is None:
            raise TaskError(
                f"{name!r} is not a built-in task ({', '.join(builtin_tasks())}), a benchmark "
                f"({', '.join(BENCHMARKS)}), an existing file, or a Hugging Face dataset in the local cache "
                f"({type(e).__name__}: {str(e)[:160]})"
            ) from None
    rows = list(ds)
    cols = set(rows[0]) if rows else set()
    items, template, fmt = [], "{question}", "cloze"
    for i, r in enumerate(rows):
        if {"choices", "answerKey"} <= cols:  # ai2_arc
            labels = r["choices"]["label"]
            items.append(Item(r["question"], tuple(r["choices"]["text"]), labels.index(r["answerKey"]), str(r.get("id", i))))
            template, fmt = ARC_PROMPT, "continuation"
        elif {"question", "choices", "answer"} <= cols:  # cais/mmlu
            items.append(Item(r["question"], tuple(r["choices"]), int(r["answer"]), str(i)))
            template, fmt = MMLU_PROMPT, "letters"
        elif {"ctx_a", "endings", "label"} <= cols:  # hellaswag
            q = hellaswag_preprocess(r["activity_label"] + ": " + r["ctx_a"] + " " + r["ctx_b"].capitalize())
            items.append(Item(q, tuple(hellaswag_preprocess(e) for e in r["endings"]), int(r["label"]), str(i)))
            fmt = "continuation"
        elif "mc1_targets" in cols:  # truthful_qa multiple_choice
            t = r["mc1_targets"]
            it = Item(r["question"], tuple(t["choices"]), list(t["labels"]).index(1), f"tqa{i}")
            items.append(it.shuffled(random.Random(f"{seed}:{i}")))
            template, fmt = TQA_PROMPT, "letters"
        elif {"question", "options", "answer"} <= cols:
            items.append(Item(r["question"], tuple(r["options"]), int(r["answer"]), str(r.get("id", i))))
        else:
            raise TaskError(f"dataset {name!r}: unknown columns {sorted(cols)}; convert it to JSONL "
                            "rows {question, options, answer}")
    return Loaded(repo.split("/")[-1], tuple(items), (), f"huggingface:{name}", fmt, split or "", template)


def builtin_tasks() -> list[str]:
    """Names of the tasks shipped with phaselens (cloze; both embedded models answer them)."""
    return sorted(p.stem for p in BUILTIN_DIR.glob("*.jsonl"))


# -- dispatch ---------------------------------------------------------------------------------
def load_items(spec: str | os.PathLike, split: str | None = None, seed: int = 0) -> Loaded:
    """Items of ``spec``: a benchmark name, ``mmlu:<subject>``, a JSONL/CSV path, or an HF dataset."""
    s = str(spec)
    key = s.lower()
    if key in ("arc-easy", "arc_easy"):
        return load_arc("easy", split)
    if key in ("arc-challenge", "arc_challenge"):
        return load_arc("challenge", split)
    if key == "mmlu" or key.startswith("mmlu:"):
        return load_mmlu(s.partition(":")[2] or None, split)
    if key == "hellaswag":
        return load_hellaswag(split)
    if key == "hellaswag-full":
        return load_hellaswag_full(split)
    if key in ("truthfulqa", "truthfulqa-mc1", "truthful_qa"):
        return load_truthfulqa(split, seed)
    path = Path(s).expanduser()
    if path.exists():
        if path.is_dir() or path.suffix.lower() == ".csv":
            return dataclasses.replace(load_csv(path), split=split or "")
        if path.suffix.lower() in (".jsonl", ".json"):
            return load_jsonl(path)
        raise TaskError(f"{path}: unknown file type; use .jsonl (question/options/answer rows) or an MMLU-style .csv")
    if s.endswith((".jsonl", ".csv", ".json")):
        raise TaskError(f"task file {s} does not exist")
    return load_hf(s, split, seed)
