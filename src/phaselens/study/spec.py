"""The study spec: models x tasks x seeds x runs, where a list means a grid.

A spec is a TOML file or the equal dict::

    models = ["smollm2-135m"]
    tasks = [{ name = "capitals", limit = 8 }]
    seeds = [0, 1]
    [[runs]]
    kind = "trace"
    [[runs]]
    kind = "noise"
    eps = [0.5]

Top-level keys: ``models`` (names, HF folders or ``.gguf`` paths; in a dict also loaded
:class:`~phaselens.Model` objects, for the ``"local"`` executor), ``tasks`` (a name, or a table with
``name``, ``format``, ``limit``, ``sample``, ``shots``, ``split``, ``seed``, ``duplicates``, ``models``; in a dict also
:class:`~phaselens.Task` objects), ``seeds`` (default ``[0]``), ``runs`` (each a table with ``kind`` and its parameters),
``resources`` (``num_cpus``, ``num_gpus``, ``models_per_worker``, ``workers``), ``plugins`` and ``name``.

A task's ``models`` (names from the spec's ``models``) runs that task on those models only, so one spec can hold a grid
that is not a full product (a task cut to fewer items for one model); it never enters a job's id.

A run's parameters are the keyword arguments of its function (:data:`RUNS`), validated against the
function's signature, plus a few the study translates (``calibration_passages``, ``max_ratio``, ...).
Every list is a grid over its elements, except for the parameters whose value is itself a list
(``methods``, ``blocks``, ``pairs``, ``eps`` and ``seeds`` of a run, ``calibration`` / ``heldout``
texts): for those a list of lists is a grid. ``plugins`` (module names or ``.py`` paths) are imported before the
runs are checked (they may register run kinds and criteria) and never enter a job's id.
An invalid spec raises :class:`~phaselens.errors.StudyError` naming the key and the allowed values, before
anything runs.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..deprecation import warn_renamed
from ..errors import PhaselensError, StudyError
from ..lenses import LENS_KINDS
from ..registry import load_plugins
from ..tasks import DUPLICATES, FORMATS, Task
from .runs import HELDOUT_KEYS, RUNS, RunKind, cka_criteria, int_at_least

TOP_KEYS = ("name", "models", "tasks", "seeds", "runs", "resources", "plugins")
TASK_KEYS = ("name", "format", "limit", "sample", "shots", "split", "seed", "duplicates", "models")
RESOURCE_KEYS = ("num_cpus", "num_gpus", "models_per_worker", "workers")

#: the limits of a spec (docs/security.md): its file's size, the nesting of its lists and tables, the entries of
#: one list or table, the values in all, the jobs of its grid (models x tasks x seeds x every run's combinations), a resource number
MAX_SPEC_BYTES = 4 << 20
MAX_DEPTH = 16
MAX_LIST = 100_000
MAX_VALUES = 1_000_000
MAX_JOBS = 10_000
MAX_RESOURCE = 100_000


@dataclass
class TaskSpec:
    """How a job's task is loaded: ``load_task(name, format=, limit=, sample=, shots=, split=, seed=)``
    (``sample=False``: the first ``limit`` items in file order instead of a seeded random subset)."""

    name: str
    format: str | None = None
    limit: int | None = None
    shots: int = 0
    split: str | None = None
    seed: int | None = None  # None: the job's seed
    obj: Any = None  # an in-memory Task (dict specs only)
    sample: bool | str = True
    models: tuple[str, ...] | None = None  # run on these of the spec's models only (None: all); not in the job's id
    duplicates: str = "error"  # load_task's: "drop" leaves out items whose options repeat a text

    def config(self, seed: int) -> dict[str, Any]:
        d = {"name": self.name, "format": self.format, "limit": self.limit, "shots": self.shots, "split": self.split,
             "seed": seed if self.seed is None else self.seed}
        if self.obj is not None:
            d["in_memory"] = True
        if self.sample is not True:  # only when set, so the identity of every other job stays what it was
            d["sample"] = self.sample
        if self.duplicates != "error":  # likewise
            d["duplicates"] = self.duplicates
        return d


@dataclass
class JobConfig:
    """One job before its identity is known: the run, the model, the task, the seed."""

    kind: str
    params: dict[str, Any]
    model: str
    task: dict[str, Any]
    seed: int
    model_index: int
    task_index: int

    def config(self) -> dict[str, Any]:
        return {"kind": self.kind, "params": self.params, "model": self.model, "task": self.task, "seed": self.seed}


@dataclass
class Resources:
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    models_per_worker: int = 2
    workers: int | None = None


@dataclass
class StudySpec:
    """A validated spec (see the module docstring); :meth:`jobs` expands its grid."""

    name: str
    models: list[Any]
    tasks: list[TaskSpec]
    seeds: list[int]
    runs: list[dict[str, Any]]
    resources: Resources
    source: dict[str, Any]

    @property
    def model_names(self) -> list[str]:
        names = [m if isinstance(m, str) else f"<in-memory {getattr(m, 'name', type(m).__name__)}>" for m in self.models]
        return [n if names.count(n) == 1 or isinstance(m, str) else f"{n[:-1]} #{i}>"
                for i, (n, m) in enumerate(zip(names, self.models))]

    @property
    def in_memory(self) -> bool:
        return any(not isinstance(m, str) for m in self.models) or any(t.obj is not None for t in self.tasks)

    def jobs(self) -> list[JobConfig]:
        out = []
        for mi, mname in enumerate(self.model_names):
            for ti, t in enumerate(self.tasks):
                if t.models is not None and mname not in t.models:
                    continue
                for s in self.seeds:
                    for run in self.runs:
                        for params in expand(run):
                            out.append(JobConfig(run["kind"], params, mname, t.config(s), s, mi, ti))
        return out


def expand(run: dict[str, Any]) -> list[dict[str, Any]]:
    """The grid of one run: one parameter dict per combination (keys sorted, ``kind`` left out)."""
    kind = RUNS.get(run["kind"])
    keys = sorted(k for k in run if k != "kind")
    axes = []
    for k in keys:
        v = run[k]
        if k in kind.listy:
            axes.append(v if isinstance(v, list) and v and all(isinstance(x, list) for x in v) else [v])
        else:
            axes.append(v if isinstance(v, list) else [v])
    return [dict(zip(keys, combo)) for combo in itertools.product(*axes)]


def read_spec(spec: Any) -> dict[str, Any]:
    """A spec dict from a dict, a TOML (or ``.json``) file path or TOML text: a regular file of at most
    :data:`MAX_SPEC_BYTES`, UTF-8 text, nested at most :data:`MAX_DEPTH` deep; anything else is a :class:`StudyError`
    naming the file."""
    if isinstance(spec, StudySpec):
        return spec.source
    if isinstance(spec, dict):
        return spec
    if isinstance(spec, (str, os.PathLike)):
        try:
            import tomllib
        except ModuleNotFoundError:  # Python 3.10
            import tomli as tomllib  # type: ignore[no-redef]

        if isinstance(spec, str) and ("\n" in spec or ("=" in spec and not _is_file(spec))):
            text, where = spec, "the spec text"
            if len(text.encode("utf-8", "surrogatepass")) > MAX_SPEC_BYTES:
                raise StudyError(f"the spec text is {len(text):,} characters, over the limit of {MAX_SPEC_BYTES:,} bytes")
        else:
            p = Path(spec)
            text, where = _read_text(p), str(p)
        try:
            if where.endswith(".json"):
                doc = json.loads(text)
            else:
                doc = tomllib.loads(text)
        except RecursionError:
            raise StudyError(f"{where} is nested too deeply to read (at most {MAX_DEPTH} levels of lists and "
                             "tables are allowed)") from None
        except tomllib.TOMLDecodeError as e:
            raise StudyError(f"{where} is not valid TOML: {e}") from e
        except ValueError as e:  # json.JSONDecodeError
            raise StudyError(f"{where} is not valid JSON: {e}") from e
        if not isinstance(doc, dict):
            raise StudyError(f"{where} must hold a table (models, tasks, runs, ...), got {type(doc).__name__}")
        return doc
    raise StudyError(f"a study spec is a dict or a TOML file path, got {type(spec).__name__}")


def _read_text(p: Path) -> str:
    """The text of spec file ``p``: a regular file (not a pipe or device: they could block or never end) of at most
    :data:`MAX_SPEC_BYTES`, decoded as UTF-8."""
    try:
        st = p.stat()
    except (OSError, ValueError):
        raise StudyError(f"study spec file not found: {p} (pass a TOML file or a dict)") from None
    if not stat.S_ISREG(st.st_mode):
        what = "a folder" if stat.S_ISDIR(st.st_mode) else "not a regular file (a pipe, a device or a socket)"
        raise StudyError(f"study spec {p} is {what}; pass a TOML file")
    if st.st_size > MAX_SPEC_BYTES:
        raise StudyError(f"study spec {p} is {st.st_size:,} bytes, over the limit of {MAX_SPEC_BYTES:,} bytes; a spec "
                         "lists models, tasks and runs (put long texts in files)")
    try:
        with open(p, "rb") as f:
            data = f.read(MAX_SPEC_BYTES + 1)
    except OSError as e:
        raise StudyError(f"study spec {p} cannot be read: {e.strerror or e}") from e
    if len(data) > MAX_SPEC_BYTES:
        raise StudyError(f"study spec {p} is over the limit of {MAX_SPEC_BYTES:,} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise StudyError(f"study spec {p} is not UTF-8 text (byte {e.start}: {data[e.start:e.start + 1]!r}); is it a "
                         "binary file? Pass a TOML file") from None
    if "\x00" in text:
        raise StudyError(f"study spec {p} holds NUL bytes: a binary file, not TOML")
    return text


def check_values(d: dict[str, Any], where: str = "the spec") -> None:
    """The one check of every value in a spec, before any key is interpreted: tables with string keys, lists,
    strings, bools, finite numbers, ints within 64 bits and ``None`` only (a dict spec's ``models`` and ``tasks`` may
    also hold loaded models and tasks); nested at most :data:`MAX_DEPTH` deep, at most :data:`MAX_LIST` entries in
    a list or table and :data:`MAX_SPEC_BYTES` characters in a string. Walked without recursion, so no nesting
    raises a ``RecursionError``."""
    stack: list[tuple[Any, str, int]] = [(d, "", 0)]
    seen = 0
    while stack:
        v, path, depth = stack.pop()
        seen += 1
        if seen > MAX_VALUES:  # a dict spec may share one list many times over: bound the walk too
            raise StudyError(f"{where} holds more than {MAX_VALUES:,} values; split it into several studies")
        name = path or where
        if depth > MAX_DEPTH:
            raise StudyError(f"{name} is nested {depth} deep, more than the {MAX_DEPTH} levels of lists and tables a "
                             "spec may use")
        if v is None or isinstance(v, bool):
            continue
        if isinstance(v, str):
            if len(v) > MAX_SPEC_BYTES:
                raise StudyError(f"{name} is a string of {len(v):,} characters, over the limit of {MAX_SPEC_BYTES:,}")
            continue
        if isinstance(v, int):
            if not -(2 ** 63) <= v < 2 ** 63:
                raise StudyError(f"{name} = {v} does not fit in 64 bits")
            continue
        if isinstance(v, float):
            if not math.isfinite(v):
                raise StudyError(f"{name} = {v!r} is not a finite number")
            continue
        if isinstance(v, dict):
            if len(v) > MAX_LIST:
                raise StudyError(f"{name} has {len(v):,} keys, more than the {MAX_LIST:,} a table may hold")
            for k, x in v.items():
                if not isinstance(k, str):
                    raise StudyError(f"{name}: keys must be strings, got {k!r}")
                if depth == 0 and k in ("models", "tasks") and isinstance(x, list):
                    x = [m for m in x if not (hasattr(m, "n_blocks") or isinstance(m, Task))]  # loaded objects
                stack.append((x, f"{path}.{k}" if path else k, depth + 1))
            continue
        if isinstance(v, (list, tuple)):
            if len(v) > MAX_LIST:
                raise StudyError(f"{name} has {len(v):,} entries, more than the {MAX_LIST:,} a list may hold")
            stack.extend((x, f"{name}[{i}]", depth + 1) for i, x in enumerate(v))
            continue
        raise StudyError(f"{name} is a {type(v).__name__} ({str(v)[:60]!r}); a spec holds strings, numbers, booleans, "
                         "lists and tables only")


def grid_size(run: dict[str, Any]) -> int:
    """Jobs of one run for one (model, task, seed): the product of its axes' lengths, as :func:`expand` would
    make them, computed without making them."""
    kind = RUNS.get(run["kind"])
    n = 1
    for k, v in run.items():
        if k == "kind":
            continue
        if k in kind.listy:
            n *= len(v) if isinstance(v, list) and v and all(isinstance(x, list) for x in v) else 1
        else:
            n *= len(v) if isinstance(v, list) else 1
    return n


def check_grid(n_models: int, n_tasks: int, n_seeds: int, runs: list[dict[str, Any]], pairs: int | None = None) -> int:
    """The number of jobs of a spec, refused above :data:`MAX_JOBS` (before any grid is made); returns it.
    ``pairs``: the (model, task) pairs when tasks name their models (default ``n_models * n_tasks``)."""
    sizes = [grid_size(r) for r in runs]
    pairs = n_models * n_tasks if pairs is None else pairs
    total = pairs * n_seeds * sum(sizes)
    if total > MAX_JOBS or 0 in sizes:
        if 0 in sizes:
            i = sizes.index(0)
            raise StudyError(f"runs[{i}] has an empty list, so its grid has no jobs; give every parameter a value")
        worst = max(range(len(runs)), key=lambda i: sizes[i])
        grid = f"{n_models} models x {n_tasks} tasks" if pairs == n_models * n_tasks else f"{pairs} (model, task) pairs"
        raise StudyError(f"the study's grid has {total:,} jobs ({grid} x {n_seeds} seeds x "
                         f"{sum(sizes):,} run combinations; runs[{worst}] alone has {sizes[worst]:,}), more than the "
                         f"limit of {MAX_JOBS:,} jobs; split it into several studies or shorten its lists")
    return total


def parse_spec(spec: Any) -> StudySpec:
    """Validate ``spec`` (dict, TOML path or :class:`StudySpec`); every error names the key and what is allowed."""
    if isinstance(spec, StudySpec):
        return spec
    d = read_spec(spec)
    check_values(d)
    bad = sorted(set(d) - set(TOP_KEYS))
    if bad:
        raise StudyError(f"unknown top-level key(s) {bad} in the study spec; allowed: {list(TOP_KEYS)}")
    load_plugins(plugin_list(d.get("plugins"), spec))  # before the runs are checked: they may name a plugin's kind
    name = d.get("name", "study")
    if not isinstance(name, str) or not name:
        raise StudyError(f"name must be a non-empty string, got {name!r}")
    models = _models(d.get("models"))
    tasks = [_task(t, i) for i, t in enumerate(_nonempty_list(d.get("tasks"), "tasks"))]
    seeds = d.get("seeds", [0])
    seeds = [seeds] if isinstance(seeds, int) and not isinstance(seeds, bool) else seeds
    if not isinstance(seeds, list) or not seeds or not all(int_at_least(0)(s) for s in seeds) or len(set(seeds)) != len(seeds):
        raise StudyError(f"seeds must be a non-empty list of distinct non-negative ints, got {d.get('seeds')!r}")
    raw = _nonempty_list(d.get("runs"), "runs")
    for i, r in enumerate(raw):
        _run_keys(r, i)
    _task_models(tasks, models)
    pairs = sum(len(models) if t.models is None else len(t.models) for t in tasks)
    check_grid(len(models), len(tasks), len(seeds), raw, pairs)  # before any grid is made
    runs = [_run(r, i) for i, r in enumerate(raw)]
    res = _resources(d.get("resources", {}))
    return StudySpec(name, models, tasks, list(seeds), runs, res, d)


def plugin_list(v: Any, spec: Any = None) -> list[str]:
    """The spec's ``plugins``: module names or ``.py`` paths (a relative path is read from the spec file's folder
    when it exists there). They are imported by the driver and every worker, and never enter a job's id."""
    if v is None:
        return []
    v = [v] if isinstance(v, str) else v
    if not isinstance(v, list) or not all(isinstance(p, str) and p for p in v):
        raise StudyError(f"plugins must be a list of module names or .py paths, got {v!r}")
    here = Path(spec).parent if _is_file(spec) else None
    return [str(here / p) if here is not None and p.endswith(".py") and (here / p).is_file() else p for p in v]


def _is_file(spec: Any) -> bool:
    if not isinstance(spec, (str, os.PathLike)) or "\n" in str(spec):
        return False
    try:
        return Path(spec).is_file()
    except OSError:  # TOML text too long to be a file name
        return False


def _nonempty_list(v: Any, key: str) -> list:
    if not isinstance(v, list) or not v:
        raise StudyError(f"{key} must be a non-empty list, got {v!r}")
    return v


def _models(v: Any) -> list[Any]:
    v = _nonempty_list(v, "models")
    for i, m in enumerate(v):
        if isinstance(m, str):
            if not m:
                raise StudyError(f"models[{i}] is empty; give a model name, HF folder or .gguf path")
        elif not hasattr(m, "n_blocks"):
            raise StudyError(f"models[{i}] must be a model name, HF folder or .gguf path (or, in a dict spec, a loaded "
                             f"phaselens Model), got {type(m).__name__}")
    names = [m if isinstance(m, str) else id(m) for m in v]
    if len(set(names)) != len(names):
        raise StudyError(f"models lists a model twice: {v!r}")
    return list(v)


def _task(t: Any, i: int) -> TaskSpec:
    if isinstance(t, Task):
        return TaskSpec(t.name, t.format, None, t.shots, None, None, obj=t)
    if isinstance(t, str):
        t = {"name": t}
    if not isinstance(t, dict):
        raise StudyError(f"tasks[{i}] must be a task name or a table with keys {list(TASK_KEYS)}, got {t!r}")
    bad = sorted(set(t) - set(TASK_KEYS))
    if bad:
        raise StudyError(f"tasks[{i}]: unknown key(s) {bad}; allowed: {list(TASK_KEYS)}")
    if not isinstance(t.get("name"), str) or not t["name"]:
        raise StudyError(f"tasks[{i}] needs a name (a built-in task, a benchmark or a file), got {t.get('name')!r}")
    fmt = t.get("format")
    if fmt is not None and (not isinstance(fmt, str) or fmt not in FORMATS):
        raise StudyError(f"tasks[{i}].format is {fmt!r}; allowed: {list(FORMATS)}")
    for key, lo in (("limit", 1), ("shots", 0), ("seed", 0)):
        if key in t and t[key] is not None and not int_at_least(lo)(t[key]):
            raise StudyError(f"tasks[{i}].{key} must be an int >= {lo}, got {t[key]!r}")
    if t.get("split") is not None and not isinstance(t["split"], str):
        raise StudyError(f"tasks[{i}].split must be a string, got {t['split']!r}")
    if not (isinstance(t.get("sample", True), bool) or t.get("sample") == "stratified"):
        raise StudyError(f"tasks[{i}].sample must be true (a seeded random subset of limit items), false (the first "
                         f"limit items in file order) or \"stratified\" (spread evenly over MMLU's subjects), got "
                         f"{t['sample']!r}")
    if t.get("duplicates", "error") not in DUPLICATES:
        raise StudyError(f"tasks[{i}].duplicates must be \"error\" (refuse items whose options repeat a text, in the "
                         f"cloze and continuation formats) or \"drop\" (leave them out), got {t['duplicates']!r}")
    chosen = t.get("models")
    if chosen is not None and (not isinstance(chosen, list) or not chosen
                               or not all(isinstance(m, str) and m for m in chosen) or len(set(chosen)) != len(chosen)):
        raise StudyError(f"tasks[{i}].models must be a non-empty list of distinct model names from the spec's models "
                         f"(the task runs on those only), got {chosen!r}")
    return TaskSpec(t["name"], fmt, t.get("limit"), t.get("shots", 0) or 0, t.get("split"), t.get("seed"),
                    sample=t.get("sample", True), models=None if chosen is None else tuple(chosen),
                    duplicates=t.get("duplicates", "error"))


def _task_models(tasks: list[TaskSpec], models: list[Any]) -> None:
    """Each task's ``models`` names models of the spec (its string entries), and every model has a task."""
    names = [m for m in models if isinstance(m, str)]
    for i, t in enumerate(tasks):
        unknown = [m for m in t.models or () if m not in names]
        if unknown:
            raise StudyError(f"tasks[{i}].models names {unknown}, which the spec's models do not list ({names}); "
                             "spell them as in models")
    idle = [m for m in names if all(t.models is not None and m not in t.models for t in tasks)]
    if idle:
        raise StudyError(f"models {idle} have no task: every task's models leaves them out; drop them from models or "
                         "add them to a task's models")


def _run_keys(r: Any, i: int) -> None:
    """One run table's kind and keys (what :func:`grid_size` needs)."""
    if not isinstance(r, dict) or "kind" not in r:
        raise StudyError(f"runs[{i}] must be a table with a kind; allowed kinds: {list(RUNS)}")
    kind = r["kind"]
    if not isinstance(kind, str) or kind not in RUNS:
        raise StudyError(f"runs[{i}].kind is {kind!r}; allowed: {list(RUNS)}")
    rk, where = RUNS.get(kind), f"runs[{i}] ({kind})"
    allowed = rk.allowed()
    bad = sorted(set(r) - set(allowed) - {"kind"})
    if bad:
        raise StudyError(f"{where}: unknown key(s) {bad}; allowed: {allowed}")
    missing = [k for k in rk.required if k not in r]
    if missing:
        raise StudyError(f"{where} needs {missing}")


def _run(r: dict[str, Any], i: int) -> dict[str, Any]:
    """One run table, checked against its kind (:data:`RUNS`): keys, choices, the study's own keys, every value of
    every job of its grid (the kind's :meth:`~phaselens.study.runs.RunKind.check`)."""
    _run_keys(r, i)
    kind = r["kind"]
    rk, where = RUNS.get(kind), f"runs[{i}] ({kind})"
    _heldout_keys(r, where)
    for params in expand(r):
        _check_params(rk, params, where)
    try:
        json.dumps(r)
    except (TypeError, ValueError):
        raise StudyError(f"{where}: parameters must be plain numbers, strings, booleans and lists") from None
    return dict(r)


def _heldout_keys(r: dict[str, Any], where: str) -> None:
    """``heldout`` is the one key for held-out text; ``heldout_passages`` / ``perplexity_texts`` warn (kept as given:
    the job ids of specs that use them do not change, see :func:`hash_params`)."""
    given = [k for k in HELDOUT_KEYS if k in r]
    if len(given) > 1:
        raise StudyError(f"{where}: give held-out text once, as heldout = N (the first N bundled held-out passages) "
                         f"or heldout = [texts]; got {given}")
    for k in given[:1]:
        if k != "heldout":
            warn_renamed(k, "heldout", f"{where} of a study spec", stacklevel=6)


def _check_params(rk: RunKind, params: dict[str, Any], where: str) -> None:
    """One job's parameters: the study's own keys, enumerated values, the lens, steps, texts, then the kind's own."""
    choices = rk.choices()
    for k, v in params.items():
        if k in rk.study and not rk.study[k][0](v):
            raise StudyError(f"{where}.{k} = {v!r} is not valid; {_study_help(k, rk)}")
        if k not in choices or (k == "placement" and not isinstance(v, str)):
            continue
        if k in rk.listy and not isinstance(v, list):
            raise StudyError(f"{where}.{k} must be a list, got {v!r}")
        wrong = [x for x in (v if k in rk.listy else [v]) if not _hashable(x) or x not in choices[k]]
        if wrong:
            raise StudyError(f"{where}.{k} = {v!r}: allowed values {list(choices[k])}")
    if "lens" in params:
        _check_lens(params["lens"], f"{where}.lens")
    if "steps" in params and params["steps"] is not None and not int_at_least(1)(params["steps"]):
        raise StudyError(f"{where}.steps must be an int >= 1, got {params['steps']!r}")
    if "calibration" in params and "calibration_passages" in params:
        raise StudyError(f"{where}: give calibration (the texts) or calibration_passages (bundled passages), not both")
    if "calibration" in params and not (isinstance(params["calibration"], list) and params["calibration"]
                                        and all(isinstance(x, str) for x in params["calibration"])):
        raise StudyError(f"{where}.calibration must be a non-empty list of strings (a list of lists is a grid); use "
                         "calibration_passages = N for the first N bundled passages")
    try:
        rk.check(params, where)
    except StudyError:
        raise
    except PhaselensError as e:  # an argument check of the function the job calls
        raise StudyError(f"{where}: {e}") from None


def _hashable(x: Any) -> bool:
    return x is None or isinstance(x, (str, int, float, bool))


#: run parameters that change how a job runs, never its numbers (the runner's schedule, issue 24): no job id hashes
#: them, so a study resumed with ``schedule = "layer"`` reuses the jobs its batch-schedule run finished
NOT_HASHED = ("schedule", "act_budget", "act_store")


def hash_params(params: dict[str, Any]) -> dict[str, Any]:
    """The parameters as a job id hashes them: ``heldout`` under the key a spec used before it had that name
    (``heldout_passages`` for N passages, ``perplexity_texts`` for texts), so renaming the key changes no job id;
    without :data:`NOT_HASHED` (how the passes are scheduled changes no number)."""
    if any(k in params for k in NOT_HASHED):
        params = {k: v for k, v in params.items() if k not in NOT_HASHED}
    if "heldout" not in params:
        return params
    p = dict(params)
    v = p.pop("heldout")
    p["heldout_passages" if isinstance(v, int) else "perplexity_texts"] = v
    return p


def _check_lens(v: Any, where: str) -> None:
    """``lens`` in a run: a lens kind (fitted once per model and cached) or the path of a saved lens file."""
    if v is None or (isinstance(v, str) and v in LENS_KINDS):
        return
    if isinstance(v, str) and "\x00" not in v and Path(v).is_file():
        return
    raise StudyError(f"{where} = {v!r}: allowed values {list(LENS_KINDS)} (fitted once per model on the bundled "
                     "calibration text and cached) or the path of an existing lens file written by Lens.save")


def _study_help(k: str, rk: RunKind) -> str:
    return {"calibration_passages": "an int >= 1: the first N bundled calibration passages",
            "heldout": "an int >= 1 (the first N bundled held-out passages) or a non-empty list of strings (the texts; "
                       "a list of lists is a grid)",
            "heldout_passages": "an int >= 1: the first N bundled held-out passages",
            "perplexity_texts": "a non-empty list of strings (a list of lists is a grid); use heldout = N for the first "
                                "N bundled passages",
            "max_ratio": "a share of blocks in (0, 1): the sweep cuts ceil(max_ratio * L) blocks at most",
            "until": "allowed: 'steps' (cut steps blocks) or 'collapse' (extend chunk cuts at a time until accuracy "
                     "collapses, at most steps / max_ratio)",
            "chunk": "an int >= 1: cuts added at a time with until = 'collapse'",
            "fit_n": "true or false: lower n to fit the smaller phase",
            "stride": "an int >= 1: perturb every stride-th block plus the transition block and the last block",
            "prune": "a share of blocks in (0, 1) or a number of blocks >= 1 to prune",
            "criterion": f"allowed: {', '.join(cka_criteria())}", "on": "allowed: 'task' or 'heldout'"}.get(k, "")


def _resources(v: Any) -> Resources:
    if not isinstance(v, dict):
        raise StudyError(f"resources must be a table with keys {list(RESOURCE_KEYS)}, got {v!r}")
    bad = sorted(set(v) - set(RESOURCE_KEYS))
    if bad:
        raise StudyError(f"resources: unknown key(s) {bad}; allowed: {list(RESOURCE_KEYS)}")
    r = Resources()
    for k in ("num_cpus", "num_gpus"):
        if k in v:
            x = v[k]
            ok = not isinstance(x, bool) and isinstance(x, (int, float)) and math.isfinite(x) and x >= 0 \
                and (k != "num_cpus" or x > 0) and x <= MAX_RESOURCE
            if not ok:
                raise StudyError(f"resources.{k} must be a finite number {'> 0' if k == 'num_cpus' else '>= 0'} and "
                                 f"<= {MAX_RESOURCE}, got {x!r}")
            setattr(r, k, float(x))
    if "models_per_worker" in v:
        if not int_at_least(1)(v["models_per_worker"]) or v["models_per_worker"] > MAX_RESOURCE:
            raise StudyError(f"resources.models_per_worker must be an int in 1..{MAX_RESOURCE}, got {v['models_per_worker']!r}")
        r.models_per_worker = v["models_per_worker"]
    if v.get("workers") is not None:
        if not int_at_least(1)(v["workers"]) or v["workers"] > MAX_RESOURCE:
            raise StudyError(f"resources.workers must be an int in 1..{MAX_RESOURCE}, got {v['workers']!r}")
        r.workers = v["workers"]
    return r
