"""Argument checks shared by the public functions: run first, before any model work.

Each raises the caller's error class (a :class:`~phaselens.errors.PhaselensError`) with a message that
names the argument, the value given and what to pass instead.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from .errors import PhaselensError
from .files import check_writable


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


#: fewest bootstrap resamples accepted anywhere (and at least ``2 / (1 - level)``, so each tail holds one)
MIN_BOOT = 100
#: most bootstrap resamples accepted anywhere (far beyond what any interval needs)
MAX_BOOT = 100_000
#: most memory one bootstrap's resampled index table (``[n_boot, n_items]`` int64) may take
MAX_BOOT_BYTES = 4 << 30


def check_n_boot(value: Any, *, level: Any = 0.95, n_items: int | None = None, name: str = "n_boot",
           error: type[PhaselensError] = PhaselensError) -> int:
    """The one check of a bootstrap count: an int in ``[max(MIN_BOOT, ceil(2 / (1 - level))), MAX_BOOT]`` and, when
    ``n_items`` is known, an index table ``[n_boot, n_items]`` of int64 within :data:`MAX_BOOT_BYTES`."""
    if isinstance(level, (bool, np.bool_)) or not isinstance(level, (int, float, np.integer, np.floating)) \
            or not 0 < float(level) < 1:
        raise error(f"level must be between 0 and 1 (e.g. 0.95), got {level!r}")
    need = max(MIN_BOOT, math.ceil(2 / (1 - float(level)) - 1e-9))
    if not _is_int(value):
        raise error(f"{name} must be an int >= {need} (bootstrap resamples), got {value!r} ({type(value).__name__})")
    v = int(value)
    if v < need:
        raise error(f"{name}={v} is too few replicates for a {float(level):.3g} interval: pass {name} >= {need} "
                    f"(at least {MIN_BOOT}, and 2/(1-level) so each tail holds a replicate)")
    if v > MAX_BOOT:
        raise error(f"{name}={v} is more resamples than phaselens takes (at most {MAX_BOOT:,}); intervals settle "
                    f"long before that: pass {name} <= {MAX_BOOT}")
    if n_items is not None and v * int(n_items) * 8 > MAX_BOOT_BYTES:
        raise error(f"{name}={v} over {n_items} items needs {v * int(n_items) * 8 / 2**30:.1f} GiB of resampled "
                    f"indices, over the limit of {MAX_BOOT_BYTES / 2**30:g} GiB; pass {name} <= "
                    f"{MAX_BOOT_BYTES // (8 * max(int(n_items), 1))}")
    return v


def bootstrap(n_boot: Any, seed: Any, error: type[PhaselensError] = PhaselensError, seed_name: str = "seed",
              n_items: int | None = None) -> None:
    """``n_boot`` (see :func:`check_n_boot`) and its seed ``seed_name`` (an int)."""
    check_n_boot(n_boot, n_items=n_items, error=error)
    integer(seed_name, seed, error=error)


def out_folder(name: str, value: Any, *, error: type[PhaselensError] = PhaselensError) -> Path | None:
    """A folder to write into (created later): ``None``, or a path none of whose existing parts is a file and whose
    folder (or nearest existing ancestor) takes a new file (:func:`phaselens.files.check_writable`)."""
    if value is None:
        return None
    if not isinstance(value, (str, os.PathLike)):
        raise error(f"{name} must be a folder path, got {value!r} ({type(value).__name__})")
    return check_writable(value, "folder", what=name, error=error)


_BLOCK_PART = re.compile(r"^(\d+)(?:-(\d+))?$")


def block_list(spec: Any, what: str = "blocks", error: type[Exception] = PhaselensError) -> list[int]:
    """The one block-list grammar (the API, the CLI, lm-eval's ``--model_args``): ``"3-5,9"`` -> ``[3, 4, 5, 9]``;
    ``+`` separates like ``,`` (``"12-15+20"``, since lm-eval splits its arguments on commas); an int or a list of
    them (or of such strings) is taken as is. Anything else raises ``error`` naming ``what``."""
    if isinstance(spec, bool):
        raise error(f"{what}: expected block indices like 3-5,9, got {spec!r}")
    if isinstance(spec, (int, np.integer)):
        return [int(spec)]
    if isinstance(spec, (list, tuple)):
        return [b for part in spec for b in block_list(part, what, error)]
    if not isinstance(spec, str) or not spec.strip():
        raise error(f"{what}: expected block indices like 3-5,9 (ranges and commas; '+' also separates), got {spec!r}")
    out: list[int] = []
    for part in re.split(r"[,+]", spec):
        m = _BLOCK_PART.match(part.strip())
        if m is None:
            raise error(f"{what}: expected block indices like 3-5,9 (ranges and commas; '+' also separates, as lm-eval's "
                        f"model_args need), got {spec!r}: {part.strip()!r} is not a block or a range a-b")
        a, b = int(m.group(1)), int(m.group(2) if m.group(2) is not None else m.group(1))
        if b < a:
            raise error(f"{what}: the range {part.strip()} runs backwards; write it low-high, e.g. {b}-{a}")
        out.extend(range(a, b + 1))
    return out
