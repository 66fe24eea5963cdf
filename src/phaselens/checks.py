"""Argument checks shared by the public functions: run first, before any model work.

Each raises the caller's error class (a :class:`~phaselens.errors.PhaselensError`) with a message that
names the argument, the value given and what to pass instead.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from .errors import PhaselensError


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def integer(name: str, value: Any, *, minimum: int | None = None, maximum: int | None = None,
            optional: bool = False, error: type[PhaselensError] = PhaselensError, what: str = "") -> int | None:
    """``value`` as an int within ``[minimum, maximum]`` (``None`` allowed when ``optional``)."""
    if value is None and optional:
        return None
    rng = ("" if minimum is None else f" >= {minimum}") + ("" if maximum is None else f" and <= {maximum}")
    hint = f" ({what})" if what else ""
    if not _is_int(value):
        got = f"{value!r} ({type(value).__name__})"
        raise error(f"{name} must be an int{rng}{hint}{' or None' if optional else ''}, got {got}")
    v = int(value)
    if (minimum is not None and v < minimum) or (maximum is not None and v > maximum):
        raise error(f"{name} must be an int{rng}{hint}, got {v}")
    return v


def number(name: str, value: Any, *, minimum: float | None = None, optional: bool = False,
           error: type[PhaselensError] = PhaselensError, what: str = "") -> float | None:
    """``value`` as a finite float ``>= minimum``."""
    if value is None and optional:
        return None
    hint = f" ({what})" if what else ""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise error(f"{name} must be a number{hint}, got {value!r} ({type(value).__name__})")
    v = float(value)
    if not math.isfinite(v) or (minimum is not None and v < minimum):
        lim = "" if minimum is None else f" and >= {minimum:g}"
        raise error(f"{name} must be finite{lim}{hint}, got {value!r}")
    return v


def flag(name: str, value: Any, *, error: type[PhaselensError] = PhaselensError) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise error(f"{name} must be True or False, got {value!r}")
    return bool(value)


def choice(name: str, value: Any, allowed: Iterable[Any], *, error: type[PhaselensError] = PhaselensError) -> Any:
    allowed = tuple(allowed)
    if value not in allowed:
        raise error(f"unknown {name} {value!r}; choose one of {', '.join(map(repr, allowed))}")
    return value


def batching(batch_size: Any, max_tokens: Any, error: type[PhaselensError] = PhaselensError) -> None:
    """``batch_size`` (sequences per pass) and ``max_tokens`` (padded tokens per pass): positive ints or None."""
    integer("batch_size", batch_size, minimum=1, optional=True, error=error, what="sequences per forward pass")
    integer("max_tokens", max_tokens, minimum=1, optional=True, error=error, what="padded tokens per forward pass")


def bootstrap(n_boot: Any, seed: Any, error: type[PhaselensError] = PhaselensError, seed_name: str = "seed") -> None:
    integer("n_boot", n_boot, minimum=1, error=error, what="bootstrap resamples")
    integer(seed_name, seed, error=error)


def out_folder(name: str, value: Any, *, error: type[PhaselensError] = PhaselensError) -> Path | None:
    """A folder to write into (created later): ``None``, or a path none of whose existing parts is a file."""
    if value is None:
        return None
    if not isinstance(value, (str, os.PathLike)):
        raise error(f"{name} must be a folder path, got {value!r} ({type(value).__name__})")
    p = Path(value)
    for q in (p, *p.parents):
        if q.exists():
            if not q.is_dir():
                raise error(f"{name}={str(value)!r}: {q} is a file, not a folder; pass a folder path")
            break
    return p
