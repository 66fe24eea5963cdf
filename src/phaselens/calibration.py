"""Calibration text: what recovery operators are fitted on and perplexity is measured on.

``calibration`` arguments everywhere accept:

* ``None``: the bundled corpus, ``phaselens/data/calibration.jsonl``: general-domain English
  passages written for this project (encyclopedic, narrative, instructional, news-like and
  conversational prose on many topics). It is fair for every built-in task and benchmark
  because it was written independently of them: no question, option or answer of any task
  appears in it. Passages marked ``"split": "heldout"`` are never used for fitting; they
  measure whether a fitted operator memorised its calibration text.
* a path to a text file: passages separated by blank lines;
* any iterable of strings.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

from .errors import CalibrationError

CORPUS = Path(__file__).parent / "data" / "calibration.jsonl"


def _bundled(split: str) -> list[str]:
    if not CORPUS.exists():
        raise CalibrationError(f"the bundled calibration corpus {CORPUS} is missing; reinstall phaselens")
    rows = [json.loads(line) for line in CORPUS.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [r["text"] for r in rows if r.get("split", "fit") == split]


def load_calibration(calibration: Any = None, *, split: str = "fit") -> list[str]:
    """Calibration passages as a list of strings.

    Args:
        calibration: ``None`` (bundled corpus), a text-file path, or an iterable of strings.
        split: for the bundled corpus, ``"fit"`` or ``"heldout"``.
    """
    if calibration is None:
        return _bundled(split)
    if isinstance(calibration, (str, os.PathLike)) and Path(calibration).is_file():
        text = Path(calibration).read_text(encoding="utf-8")
        out = [p.strip() for p in text.split("\n\n") if p.strip()]
    elif isinstance(calibration, str):
        raise CalibrationError(
            f"calibration {calibration[:60]!r} is a string but not an existing file; pass a path, "
            "a list of strings, or None for the bundled corpus"
        )
    else:
        out = [str(t) for t in _iterable(calibration) if str(t).strip()]
    if not out:
        raise CalibrationError("calibration text is empty; pass a non-empty list of strings or None")
    return out


def heldout_texts() -> list[str]:
    """The bundled passages that are never used for fitting."""
    return _bundled("heldout")


def _iterable(obj: Any) -> Iterable:
    try:
        return iter(obj)
    except TypeError:
        raise CalibrationError(f"calibration must be None, a path or an iterable of strings, not {type(obj).__name__}") from None


def check_seq_len(seq_len: Any) -> int:
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 2:
        raise CalibrationError(f"seq_len must be an int >= 2 (tokens per passage), got {seq_len!r}")
    return seq_len


def tokenize(tokenizer, texts: list[str], seq_len: int = 256) -> list[list[int]]:
    """Token ids of each passage, truncated to ``seq_len`` tokens (passages of fewer than 2 tokens are dropped)."""
    check_seq_len(seq_len)
    ids = tokenizer(texts, add_special_tokens=True, truncation=True, max_length=seq_len)["input_ids"]
    return [list(s) for s in ids if len(s) >= 2]


def n_tokens(model, texts: list[str], seq_len: int = 256) -> int:
    """Non-padding tokens the passages give this model's tokenizer."""
    return sum(len(s) for s in tokenize(model.tokenizer, texts, seq_len))
