"""Shared plumbing of the analysis scripts: command line, models/tasks/calibration, outputs.

Every script is ``python analyses/NAME.py --out DIR [--models ...] [--tasks ...] [--limit N]
[--calibration-passages N] [--seed S]`` and writes into ``DIR``:

* one self-contained HTML file per figure (Plotly's JavaScript embedded),
* one or more CSV files with every number the figures and the summary show,
* ``summary.md``: what was measured, the key numbers (from this run) and, per paper claim,
  whether our numbers agree, with the provenance of the run (models, tasks, formats, item
  counts, calibration passages, seeds, phaselens version, date, wall time),
* ``verdicts.json``: the same claims and verdicts, machine-readable.

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

MODELS = ("smollm2-135m", "gemma3-270m")
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
    p.add_argument("--seed", type=int, default=0, help="seed of item subsets, bootstrap and random controls")
    return p


def add_sweep_args(p: argparse.ArgumentParser, max_ratio: float = 0.5) -> None:
    """Options of the scripts built on an iterative pruning sweep (resumable, shareable between scripts)."""
    p.add_argument("--max-ratio", type=float, default=max_ratio, help="prune one block at a time up to this share of blocks")
    p.add_argument("--sweeps", type=Path, default=None,
                   help="folder holding the resumable sweeps (default: --out); point several scripts at one folder "
                        "to share them")


def sweep_steps(n_layers: int, max_ratio: float) -> int:
    return max(1, min(n_layers - 1, int(math.ceil(max_ratio * n_layers - 1e-9))))


@dataclass
class Claim:
    """One paper claim, tested on one (model, task): agree / disagree / undetermined, with the numbers."""

    paper: str
    claim: str
    model: str
    task: str
    verdict: str  # "agree", "disagree" or "undetermined"
    evidence: str

    def line(self) -> str:
        return f"- **{self.verdict}** ({self.model}, {self.task}): {self.claim}. {self.evidence}"


def verdict(ok: bool | None) -> str:
    return "undetermined" if ok is None else ("agree" if ok else "disagree")


@dataclass
class Run:
    """One run of an analysis script: parsed arguments, caches and the outputs written so far."""

    name: str
    args: argparse.Namespace
    title: str
    started: float = field(default_factory=time.time)
    figures: list[str] = field(default_factory=list)
    tables: list[str] = field(default_factory=list)
    claims: list[Claim] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    used_tasks: dict[str, dict[str, Any]] = field(default_factory=dict)
    _models: dict[str, Any] = field(default_factory=dict)

    @property
    def out(self) -> Path:
        return self.args.out

    # -- inputs
    def model(self, name: str) -> Any:
        if name not in self._models:
            self._models.clear()  # one model in memory at a time
            t0 = time.time()
            self._models[name] = pl.load_model(name)
            self.log(f"loaded {name} ({self._models[name].n_layers} blocks) in {time.time() - t0:.1f} s")
        return self._models[name]

    def task(self, spec: str, **kw: Any) -> Any:
        """``spec`` with the run's limit and seed; built-ins in cloze, benchmarks in continuation format."""
        builtin = spec in pl.builtin_tasks()
        limit = self.args.limit if self.args.limit is not None else (None if builtin else BENCHMARK_LIMIT)
        fmt = kw.pop("format", None) or ("cloze" if builtin else "continuation")
        t = pl.load_task(spec, format=fmt, limit=limit, seed=self.args.seed, **kw)
        self.used_tasks[t.name] = {"format": t.format, "items": len(t), "limit": limit}
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

    def sweep(self, model: Any, task: Any, criterion: str, steps: int, folder_root: Path | None = None) -> Any:
        """``pl.iterative_prune`` with ``out=`` (resumable) under ``--sweeps`` (default ``--out``)."""
        root = Path(folder_root or getattr(self.args, "sweeps", None) or self.out)
        base = pl.as_view(model).base
        folder = root / (f"sweep-{base.name}-{task.name}-{task.format}-{criterion}-n{len(task)}-"
                         f"cal{self.args.calibration_passages}-ppl{self.args.heldout_passages}-seed{self.args.seed}")
        t0 = time.time()
        sw = pl.iterative_prune(base, task, criterion=criterion, steps=steps, out=folder, calibration=self.calibration(),
                                perplexity_texts=self.heldout(), seed=self.args.seed)
        self.log(f"sweep {base.name} {task.name} {criterion}: {len(sw.steps) - 1} cuts ready in {time.time() - t0:.1f} s ({folder})")
        return sw, folder

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

    def claim(self, paper: str, claim: str, model: str, task: str, ok: bool | None, evidence: str) -> Claim:
        c = Claim(paper, claim, model, task, verdict(ok), evidence)
        self.claims.append(c)
        self.log(f"{c.verdict}: {model} {task}: {evidence}")
        return c

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
            "phaselens": pl.__version__,
            "python": platform.python_version(),
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "wall_time_s": round(wall, 1),
            "cpu_count": os.cpu_count(),
        }
        lines = [f"# {self.title}", "", measured.strip(), ""]
        if self.notes:
            lines += ["## Results", ""] + [n.rstrip() for n in self.notes] + [""]
        if self.claims:
            lines += ["## Paper claims tested", ""] + [c.line() for c in self.claims] + [""]
            n_agree = sum(c.verdict == "agree" for c in self.claims)
            n_dis = sum(c.verdict == "disagree" for c in self.claims)
            lines += [f"{n_agree} agree, {n_dis} disagree, {len(self.claims) - n_agree - n_dis} undetermined.", ""]
        lines += ["## Outputs", ""] + [f"- figure: `{f}`" for f in self.figures] + [f"- table: `{t}`" for t in self.tables]
        tasks = "; ".join(f"{k} ({v['format']}, {v['items']} items)" for k, v in self.used_tasks.items())
        lines += ["", "## Provenance", "",
                  f"- command: `python {prov['script']} {prov['argv']}`",
                  f"- models: {', '.join(a.models)}",
                  f"- tasks: {tasks or 'none'}",
                  f"- calibration: first {a.calibration_passages} of the bundled fit passages; held-out text (perplexity, "
                  f"hidden-state samples): first {a.heldout_passages} held-out passages",
                  f"- seed: {a.seed}",
                  f"- phaselens {pl.__version__}, Python {prov['python']}, {prov['cpu_count']} CPU cores",
                  f"- date: {prov['date']}; wall time {wall:.0f} s", ""]
        (self.out / "summary.md").write_text("\n".join(lines), encoding="utf-8")
        doc = {"provenance": prov, "claims": [c.__dict__ for c in self.claims], "notes": self.notes,
               "figures": self.figures, "tables": self.tables}
        (self.out / "verdicts.json").write_text(json.dumps(doc, indent=1, default=str), encoding="utf-8")
        self.log(f"done in {wall:.0f} s: {self.out / 'summary.md'}")


def start(name: str, title: str, p: argparse.ArgumentParser, argv: Iterable[str] | None = None) -> Run:
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    bad = [m for m in args.models if m not in pl.EMBEDDED and not Path(m).exists()]
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
