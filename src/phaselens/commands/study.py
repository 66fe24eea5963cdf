"""``phaselens study run SPEC --out DIR`` and ``phaselens study status DIR``: many runs, one command."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..study import load_plan, load_study, run_study
from .common import app, console, out_dir

study_app = typer.Typer(add_completion=False, no_args_is_help=True,
                        help="Studies: a TOML spec of models x tasks x seeds x runs, run locally or on Ray.")
app.add_typer(study_app, name="study")

COLUMNS = (("job", 10), ("kind", 0), ("model", 0), ("task", 0), ("seed", 0), ("status", 0), ("wall_s", 0),
           ("transition", 0), ("final_accuracy", 0), ("collapse_ratio", 0))


def _cell(v: Any, width: int = 0) -> str:
    if v is None or isinstance(v, float) and math.isnan(v):
        return "–"
    try:
        import pandas as pd

        if v is pd.NA:
            return "–"
    except ImportError:  # pragma: no cover
        pass
    if isinstance(v, float):
        return f"{v:.3g}"
    s = Path(v).name if isinstance(v, str) and "/" in v else str(v)
    return s[:width] if width else s


def study_table(df, title: str) -> Table:
    """The summary table of a study's index (one row per job; contrasts when there are phase cuts)."""
    extra = [c for c in df.columns if c.startswith("contrast_") and not c.endswith(("_lo", "_hi"))]
    table = Table(title=title, title_justify="left")
    for c, _ in COLUMNS:
        table.add_column(c, justify="right" if c not in ("kind", "model", "task", "status") else "left")
    for c in extra:
        table.add_column(c, justify="right")
    for rec in df.to_dict("records"):
        style = None if rec["status"] == "done" else "red"
        table.add_row(*[_cell(rec.get(c), w) for c, w in COLUMNS], *[_cell(rec.get(c)) for c in extra], style=style)
    return table


def _failures(df) -> None:
    bad = df[df.status != "done"]
    for rec in bad.to_dict("records"):
        console.print(f"[red]failed[/red] {rec['job'][:10]} ({rec['kind']} {_cell(rec['model'])} {rec['task']} seed "
                      f"{rec['seed']}): {rec['error']}")
    if len(bad):
        console.print(f"{len(bad)} job(s) failed; their tracebacks are in the index (phaselens.load_study(DIR).traceback). "
                      "Rerun the same command to retry them.")


@study_app.command("run")
def run(
    spec: Path = typer.Argument(..., help="the study spec (TOML)"),
    out: Path = typer.Option(..., "--out", "-o", help="the study folder (results, index.parquet); a rerun resumes"),
    executor: str = typer.Option("local", "--executor", "-e", help="local | processes | ray"),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster address (auto, ray://HOST:10001); "
                                          "default: a local Ray instance"),
    workers: Optional[int] = typer.Option(None, "--workers", "-w", help="worker processes / Ray actors"),
    wait: Optional[float] = typer.Option(None, "--wait", help="wait up to this many seconds if another study holds --out"),
) -> None:
    """Run every job of SPEC that --out does not hold finished yet; show progress and a summary table (exit code 1
    when a job failed: its traceback is in the index, and rerunning the command retries it)."""
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=console, transient=False)
    bar: dict[str, Any] = {}

    def on_plan(todo: int, reused: int) -> None:
        bar["id"] = progress.add_task(f"jobs ({reused} already finished)", total=todo)

    def on_job(row: dict[str, Any]) -> None:
        progress.update(bar["id"], advance=1, description=f"{row['kind']} {_cell(row['model'])} {row['task']} seed "
                                                          f"{row['seed']}: {row['status']}")

    out_dir(out, "--out")  # before the spec's models load
    with progress:
        df = run_study(spec, out, executor, address, workers=workers, wait=wait, on_job=on_job, on_plan=on_plan)
    planned = set(df.attrs.get("planned", []))
    shown = df[df.job.isin(planned)] if planned else df
    Console().print(study_table(shown, f"{df.attrs.get('ran', 0)} ran, {df.attrs.get('reused', 0)} reused, "
                                       f"{df.attrs.get('failed', 0)} failed ({out})"))
    _failures(shown)
    if df.attrs.get("failed"):
        raise typer.Exit(1)


@study_app.command("status")
def status(folder: Path = typer.Argument(..., help="a study folder")) -> None:
    """What a study folder holds: each job's status, wall time and key numbers; the jobs still to run."""
    df = load_study(folder)
    plan = load_plan(folder)
    have = set(df.job[df.status == "done"])
    pending = [j for j in plan if j["job"] not in set(df.job)]
    done = int((df.status == "done").sum())
    Console().print(study_table(df, f"{done} done, {len(df) - done} failed, {len(pending)} not run yet (of {len(plan)} "
                                    f"planned, {len(have & {j['job'] for j in plan})} of them done) in {folder}"))
    for j in pending:
        console.print(f"not run yet: {j['job'][:10]} {j['kind']} {_cell(j['model'])} {j['task']['name']} seed {j['seed']}")
    _failures(df)
