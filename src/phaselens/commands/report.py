"""``phaselens report RESULTS --html report.html``: one self-contained HTML page from a results folder."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Optional

import typer

from ..errors import ReportWarning
from ..report import build_report
from .common import app, console, html_file, renamed_option


@app.command("report")
def report(
    results: Path = typer.Argument(..., help="a results folder written by a command's --out DIR (or phaselens.save_result)"),
    html: Optional[Path] = typer.Option(None, "--html", help="the HTML page to write [default: report.html]"),
    title: Optional[str] = typer.Option(None, "--title", help="page title (default: names the models and tasks)"),
    old_out: Optional[Path] = typer.Option(None, "--out", "-o", hidden=True, help="deprecated: use --html"),
) -> None:
    """Turn a results folder into ONE self-contained HTML page: figures, tables and provenance (works offline)."""
    html = renamed_option(html, old_out, "--out", "--html") or Path("report.html")
    html_file(html, "--html")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ReportWarning)
        path = build_report(results, html, title=title)
    for w in caught:
        if issubclass(w.category, ReportWarning):
            console.print(f"[yellow]warning:[/yellow] {w.message}")
    console.print(f"[green]wrote {path.resolve()}[/green] ({path.stat().st_size / 1e6:.1f} MB, open it in a browser)")
