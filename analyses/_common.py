"""Shared plumbing of the analysis scripts: command line, models/tasks/calibration, outputs.

Every script is ``python analyses/NAME.py --out DIR [--models ...] [--tasks ...] [--limit N]
[--calibration-passages N] [--seed S]`` and writes into ``DIR``:

* one self-contained HTML file per figure (Plotly's JavaScript embedded),
* one or more CSV files with every number the figures and the summary show,
* ``summary.md``: what was measured, the key numbers (from this run) and, per paper claim, its
  ``pl.Effect`` and the verdict ``pl.claims`` gives it (Holm per paper over this run's claims), with
  the provenance of the run (models, tasks, formats, item counts, calibration passages, seeds,
  phaselens version, date, wall time),
* ``claims.json`` (+ its ``.safetensors``): the ``pl.Claims`` table, every claim with its Effect
  (bootstrap replicates included), which ``analyses/make_claims.py`` reads back,
* ``verdicts.json``: the claims, verdicts and untested claims, machine-readable.

No script decides a verdict: each builds an Effect with the library (``pl.paired_effect``,
``pl.hierarchical_effect``, ``pl.correlation_effect``, ``phaselens.nulls``) and ``pl.claims`` judges it.

Nothing here computes a metric: the scripts call the public ``phaselens`` API.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
if "PHASELENS_DATA" not in os.environ:  # the shared benchmark folder next to the repository
    _shared = Path(__file__).resolve().parents[2] / "shared" / "data"
    if _shared.is_dir():
        os.environ["PHASELENS_DATA"] = str(_shared)

import phaselens as pl  # noqa: E402
import phaselens.plots as plots  # noqa: E402

MODELS = ("smollm2-135m", "gemma3-270m")  # the default; "qwen2.5-coder-1.5b" (28 blocks, answers in letters) on request
LETTERS_NATIVE = ("mmlu", "truthfulqa")  # benchmarks whose own format is letters; lettered ARC etc. is a reformulation
BENCHMARK_LIMIT = 40  # default item count for real benchmarks (continuation scoring is slow on a CPU)


def _csv(kind: Callable[[str], Any]) -> Callable[[str], list]:
    return lambda s: [kind(x.strip()) for x in s.split(",") if x.strip()]


def parser(description: str, *, tasks: str = "capitals", limit: int | None = None, calibration: int = 16,
           heldout: int = 4, models: str = ",".join(MODELS)) -> argparse.ArgumentParser:
    """The common command line; scripts add their own options to it."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", required=True, type=Path, help="folder for figures (HTML), CSV and summary.md")
    p.add_argument("--models", type=_csv(str), default=_csv(str)(models), help="comma-separated model names")
    p.add_argument("--tasks", type=_csv(str), default=_csv(str)(tasks),
                   help="comma-separated tasks: built-ins (capitals, languages, opposites, currencies; cloze) or benchmarks "
                        "(arc-easy, hellaswag, ...; continuation format)")
    p.add_argument("--limit", type=int, default=limit,
                   help=f"items per task (default: all items of a built-in task, {BENCHMARK_LIMIT} of a benchmark)")
    p.add_argument("--calibration-passages", type=int, default=calibration,
                   help="prefix of the bundled fit passages (pl.load_calibration()) used for criteria and fits")
    p.add_argument("--heldout-passages", type=int, default=heldout,
                   help="prefix of the bundled held-out passages (pl.heldout_texts()) used for perplexity")
    p.add_argument("--format", default="auto", choices=["auto", "letters", "cloze", "continuation"],
                   help="the prompt format of every task (auto: built-ins in cloze, benchmarks in continuation). letters "
                        "needs a model that answers in letters (qwen2.5-coder-1.5b); lettered ARC / HellaSwag is a "
                        "reformulation of the benchmark and is labelled so")
    p.add_argument("--seed", type=int, default=0, help="seed of item subsets, bootstrap and random controls")
    p.add_argument("--executor", default="local", choices=["local", "processes", "ray"],
                   help="where the study's jobs run (pl.run_study)")
    p.add_argument("--address", default=None, help="Ray cluster address for --executor ray (default: a local Ray)")
    p.add_argument("--study", type=Path, default=None,
                   help="the study folder the jobs are kept in (default: --sweeps if given, else OUT/study); a rerun "
                        "reuses its finished jobs, and scripts pointed at one folder share them")
    return p


def add_sweep_args(p: argparse.ArgumentParser, max_ratio: float = 0.5) -> None:
    """Options of the scripts built on an iterative pruning sweep (resumable, shareable between scripts)."""
    p.add_argument("--max-ratio", type=float, default=max_ratio, help="prune one block at a time up to this share of blocks")
    p.add_argument("--sweeps", type=Path, default=None,
                   help="the study folder holding the sweeps (the same as --study); point several scripts at one "
                        "folder to share them")


def sweep_steps(n_layers: int, max_ratio: float) -> int:
    return max(1, min(n_layers - 1, int(math.ceil(max_ratio * n_layers - 1e-9))))


@dataclass
class Untested:
    """A paper claim this run could not judge (no effect to test it with), and why."""

    paper: str
    claim: str
    model: str
    task: str
    reason: str

    def line(self) -> str:
        return f"- **not judged** ({self.model}, {self.task}): {self.claim}. {self.reason}"


@dataclass
class Run:
    """One run of an analysis script: parsed arguments, caches and the outputs written so far."""

    name: str
    args: argparse.Namespace
    title: str
    started: float = field(default_factory=time.time)
    figures: list[str] = field(default_factory=list)
    tables: list[str] = field(default_factory=list)
    claims: list[Any] = field(default_factory=list)  # pl.Claim, each with its Effect
    evidence: list[str] = field(default_factory=list)  # one line per claim: the numbers behind it
    untested: list[Untested] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    used_tasks: dict[str, dict[str, Any]] = field(default_factory=dict)
    _models: dict[str, Any] = field(default_factory=dict)
    study_folder: Path | None = None

    @property
    def out(self) -> Path:
        return self.args.out

    # -- inputs
    def model(self, name: str) -> Any:
        if name not in self._models:
            self._models.clear()  # one model in memory at a time
            t0 = time.time()
            self._models[name] = pl.load_model(name)
            self.log(f"loaded {name} ({self._models[name].n_blocks} blocks) in {time.time() - t0:.1f} s")
        return self._models[name]

    def format_of(self, spec: str) -> str:
        """The run's format for ``spec``: ``--format``, or (auto) cloze for built-ins and continuation for benchmarks."""
        f = getattr(self.args, "format", "auto") or "auto"
        if f != "auto":
            return f
        return "cloze" if spec in pl.builtin_tasks() else "continuation"

    def task(self, spec: str, **kw: Any) -> Any:
        """``spec`` with the run's limit, seed and format (:meth:`format_of`)."""
        builtin = spec in pl.builtin_tasks()
        limit = self.args.limit if self.args.limit is not None else (None if builtin else BENCHMARK_LIMIT)
        fmt = kw.pop("format", None) or self.format_of(spec)
        t = pl.load_task(spec, format=fmt, limit=limit, seed=self.args.seed, **kw)
        reform = fmt == "letters" and not builtin and spec.split(":")[0] not in LETTERS_NATIVE
        self.used_tasks[t.name] = {"format": t.format + (" (a reformulation of the benchmark)" if reform else ""),
                                   "items": len(t), "limit": limit}
        if reform and not any("reformulation" in n for n in self.notes):
            self.note(f"- {spec} is asked in the letters format (A/B/C/D after the question and its lettered options): a "
                      f"reformulation; the benchmark's own format is continuation scoring.")
        return t

    def calibration(self) -> list[str]:
        texts = pl.load_calibration()
        n = self.args.calibration_passages
        if not 1 <= n <= len(texts):
            raise SystemExit(f"--calibration-passages must be in 1..{len(texts)}, got {n}")
        return texts[:n]

    def heldout(self) -> list[str]:
        texts = pl.heldout_texts()
        n = self.args.heldout_passages
        if not 1 <= n <= len(texts):
            raise SystemExit(f"--heldout-passages must be in 1..{len(texts)}, got {n}")
        return texts[:n]

    def task_spec(self, spec: str) -> dict[str, Any]:
        """The study-spec form of :meth:`task` (built-ins in cloze, benchmarks in continuation format)."""
        builtin = spec in pl.builtin_tasks()
        limit = self.args.limit if self.args.limit is not None else (None if builtin else BENCHMARK_LIMIT)
        out: dict[str, Any] = {"name": spec, "format": self.format_of(spec)}
        if limit is not None:
            out["limit"] = limit
        return out

    def study(self, runs: list[dict[str, Any]], *, tasks: list[str] | None = None,
              models: list[str] | None = None) -> "StudyRun":
        """Run the script's models (or ``models``) x tasks x ``runs`` as one study (pl.run_study) in ``--study``."""
        a = self.args
        tasks = list(tasks or a.tasks)
        for t in tasks:
            self.task(t)  # provenance (item counts, formats)
        for r in runs:
            if r["kind"] in ("sweep", "phase-cuts"):
                r.setdefault("calibration_passages", a.calibration_passages)
                r.setdefault("heldout_passages", a.heldout_passages)
            if r["kind"] in ("cka", "cka-contrast"):
                r.setdefault("calibration_passages", a.calibration_passages)
                if r.get("on") == "heldout":
                    r.setdefault("heldout_passages", a.heldout_passages)
        spec = {"name": self.name, "models": list(models or a.models), "tasks": [self.task_spec(t) for t in tasks],
                "seeds": [a.seed], "runs": runs}
        folder = Path(a.study or getattr(a, "sweeps", None) or self.out / "study")
        t0 = time.time()
        df = pl.run_study(spec, out=folder, executor=a.executor, address=a.address)
        df = df[df.job.isin(df.attrs["planned"])]
        self.log(f"study {folder}: {len(df)} jobs ({df.attrs.get('ran', 0)} ran, {df.attrs.get('reused', 0)} reused, "
                 f"{df.attrs.get('failed', 0)} failed) in {time.time() - t0:.1f} s on {a.executor}")
        self.study_folder = folder
        return StudyRun(df, folder)

    # -- outputs
    def log(self, msg: str) -> None:
        print(f"[{self.name} {time.time() - self.started:6.1f}s] {msg}", flush=True)

    def note(self, text: str) -> None:
        self.notes.append(text)

    def figure(self, fig: Any, name: str) -> Path:
        path = self.out / f"{name}.html"
        fig.write_html(str(path), include_plotlyjs=True, full_html=True)
        self.figures.append(path.name)
        return path

    def csv(self, df: Any, name: str) -> Path:
        path = self.out / f"{name}.csv"
        df.to_csv(path, index=False)
        self.tables.append(path.name)
        return path

    def claim(self, paper: str, claim: str, effect: Any, evidence: str = "", *, predicted: str | None = None,
              model: str = "", task: str = "") -> Any:
        """Test ``claim`` of ``paper`` with ``effect`` (a ``pl.Effect``; its direction, or ``predicted``); with
        ``effect=None`` the claim is recorded as not judged, ``evidence`` saying why. The verdict comes from
        ``pl.claims`` (Holm per paper), never from the script."""
        if effect is None:
            u = Untested(paper, claim, model, task, evidence)
            self.untested.append(u)
            self.log(f"not judged: {model} {task}: {claim}: {evidence}")
            return u
        c = pl.Claim(paper=paper, claim=claim, effect=effect, predicted=predicted)
        self.claims.append(c)
        self.evidence.append(evidence)
        self.log(f"claim: {effect.model} {effect.task}: {effect.summary().splitlines()[0]}")
        return c

    def table(self) -> Any:
        """This run's claims judged together (Holm per paper over this run's claims; analyses/make_claims.py judges
        every run's claims together)."""
        return pl.claims(self.claims, name=self.name) if self.claims else None

    def finish(self, measured: str) -> None:
        """Write summary.md and verdicts.json."""
        wall = time.time() - self.started
        a = self.args
        prov = {
            "script": f"analyses/{self.name}.py",
            "argv": " ".join(sys.argv[1:]),
            "models": a.models,
            "tasks": self.used_tasks,
            "calibration_passages": a.calibration_passages,
            "heldout_passages": a.heldout_passages,
            "seed": a.seed,
            "executor": getattr(a, "executor", "local"),
            "study": str(getattr(self, "study_folder", "") or ""),
            "phaselens": pl.__version__,
            "python": platform.python_version(),
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "wall_time_s": round(wall, 1),
            "cpu_count": os.cpu_count(),
        }
        lines = [f"# {self.title}", "", measured.strip(), ""]
        if self.notes:
            lines += ["## Results", ""] + [n.rstrip() for n in self.notes] + [""]
        table = self.table()
        if table is not None:
            lines += ["## Paper claims tested", "",
                      "Verdicts from `pl.claims` (Holm-corrected per paper over this run's claims; `analyses/claims.csv` "
                      "recomputes them over every run's claims):", ""]
            for c, r, ev in zip(table.claims, table.rows, self.evidence):
                lines.append(f"- **{r['verdict']}** ({c.effect.model}, {c.effect.task}): {c.claim} (predicted "
                             f"{c.predicted}). {c.effect.summary().splitlines()[0]}; Holm-adjusted p = {r['p_adj']:.3g}"
                             + (f"; smallest detectable effect ±{r['mde']:.3g}" if r["verdict"] == "undetermined" else "")
                             + (f". {ev}" if ev else ""))
            v = table.verdicts
            lines += ["", f"{v.count('agree')} agree, {v.count('disagree')} disagree, {v.count('undetermined')} "
                          "undetermined.", ""]
            table.save(self.out, "claims", script=f"analyses/{self.name}.py")
        if self.untested:
            lines += ["## Claims not judged", ""] + [u.line() for u in self.untested] + [""]
        lines += ["## Outputs", ""] + [f"- figure: `{f}`" for f in self.figures] + [f"- table: `{t}`" for t in self.tables]
        tasks = "; ".join(f"{k} ({v['format']}, {v['items']} items)" for k, v in self.used_tasks.items())
        lines += ["", "## Provenance", "",
                  f"- command: `python {prov['script']} {prov['argv']}`",
                  f"- models: {', '.join(a.models)}",
                  f"- tasks: {tasks or 'none'}",
                  f"- calibration: first {a.calibration_passages} of the bundled fit passages; held-out text (perplexity, "
                  f"hidden-state samples): first {a.heldout_passages} held-out passages",
                  f"- seed: {a.seed}",
                  *([f"- study folder (pl.load_study): `{prov['study']}`, executor {prov['executor']}"] if prov["study"] else []),
                  f"- phaselens {pl.__version__}, Python {prov['python']}, {prov['cpu_count']} CPU cores",
                  f"- date: {prov['date']}; wall time {wall:.0f} s", ""]
        (self.out / "summary.md").write_text("\n".join(lines), encoding="utf-8")
        claims = [] if table is None else [
            {**{k: r[k] for k in ("paper", "claim", "model", "task", "format", "n_items", "n_placements", "n_seeds",
                                  "estimate", "lo", "hi", "p", "p_adj", "verdict", "predicted", "mde", "effect",
                                  "method")}, "evidence": ev} for r, ev in zip(table.rows, self.evidence)]
        doc = {"provenance": prov, "claims": claims, "untested": [u.__dict__ for u in self.untested],
               "notes": self.notes,
               "figures": self.figures, "tables": self.tables}
        (self.out / "verdicts.json").write_text(json.dumps(doc, indent=1, default=str), encoding="utf-8")
        self.log(f"done in {wall:.0f} s: {self.out / 'summary.md'}")


@dataclass
class StudyRun:
    """The jobs of one :meth:`Run.study` call: its index rows and their results."""

    index: Any
    folder: Path

    def row(self, model: str, task: str, kind: str, **params: Any) -> Any:
        """The index row of the job of ``model`` on ``task`` whose parameters include ``params``."""
        sel = self.index[(self.index.model == model) & (self.index.task == task) & (self.index.kind == kind)]
        for r in sel.itertuples():
            p = json.loads(r.params)
            if all(p.get(k) == v for k, v in params.items()):
                return r
        raise KeyError(f"no {kind} job of {model} on {task} with {params} in {self.folder}")

    def get(self, model: str, task: str, kind: str, **params: Any) -> Any:
        """The job's result, or ``None`` when the job failed (its error is in ``row(...).error``)."""
        r = self.row(model, task, kind, **params)
        return None if r.status != "done" else pl.load_result(self.folder / f"{r.result}.json")

    def failures(self) -> list[str]:
        return [f"{r.kind} {r.model} {r.task}: {r.error}" for r in self.index[self.index.status != "done"].itertuples()]


def need(st: StudyRun, model: str, task: str, kind: str, **params: Any) -> Any:
    """The result of a study job, or stop the script naming the failed job and its error."""
    r = st.row(model, task, kind, **params)
    if r.status != "done":
        raise SystemExit(f"the {kind} job of {model} on {task} {params or ''} failed: {r.error} (traceback: "
                         f"pl.load_study({str(st.folder)!r}).traceback)")
    return st.get(model, task, kind, **params)


def start(name: str, title: str, p: argparse.ArgumentParser, argv: Iterable[str] | None = None) -> Run:
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    bad = [m for m in args.models if m not in pl.embedded.EMBEDDED and not Path(m).exists()]
    if bad:
        print(f"note: models {bad} are not embedded models; they are passed to pl.load_model as given", file=sys.stderr)
    warnings.filterwarnings("ignore", category=FutureWarning)
    run = Run(name, args, title)
    run.log(f"models={args.models} tasks={args.tasks} limit={args.limit} calibration_passages={args.calibration_passages} "
            f"heldout_passages={args.heldout_passages} seed={args.seed}")
    return run


def fmt(x: Any, nd: int = 3) -> str:
    """A number for the summary text (``n/a`` for None / NaN)."""
    if x is None:
        return "n/a"
    try:
        f = float(x)
    except (TypeError, ValueError):
        return str(x)
    return "n/a" if math.isnan(f) else f"{f:.{nd}f}"


def mean(xs: Iterable[float]) -> float:
    xs = [float(x) for x in xs]
    return float("nan") if not xs else sum(xs) / len(xs)
