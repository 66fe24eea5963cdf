"""``phaselens report RESULTS -o report.html``: one self-contained HTML page from a results folder."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Optional

import typer

from ..cli import app, console


@app.command("report")
def report(
    results: Path = typer.Argument(..., help="a results folder written by a command's --out DIR (or phaselens.save_result)"),
    out: Path = typer.Option(Path("report.html"), "--out", "-o", help="the HTML page to write"),
    title: Optional[str] = typer.Option(None, help="page title (default: names the models and tasks)"),
) -> None:
    """Turn a results folder into ONE self-contained HTML page: figures, tables and provenance (works offline)."""
    from ..errors import PhaselensError, ReportWarning
    from ..report import build_report

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ReportWarning)
        try:
            path = build_report(results, out, title=title)
        except PhaselensError as e:
            console.print(f"[red]error:[/red] {e}")
            raise typer.Exit(2)
    for w in caught:
        if issubclass(w.category, ReportWarning):
            console.print(f"[yellow]warning:[/yellow] {w.message}")
    console.print(f"[green]wrote {path.resolve()}[/green] ({path.stat().st_size / 1e6:.1f} MB, open it in a browser)")
