"""The ``phaselens`` command: the app, the global ``--plugins`` option, ``transition``, ``demo`` and ``tasks``.

The other commands live in :mod:`phaselens.commands` (one module per subject); what they share (options,
the block-list grammar, early checks, output) is :mod:`phaselens.commands.common`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from .commands import register_all
from .commands.common import (BatchOpt, DeviceOpt, FormatOpt, JsonOpt, LensOpt, LimitOpt, ModelOpt, OutOpt,
                              SeedOpt, TaskOpt, app, console, early, fail, guard, html_file, load, parse_names,
                              renamed_option, save, slug, write_html)
from .lenses import resolve_lens
from .registry import load_plugins
from .tasks import builtin_tasks
from .trace import transition_point

BENCHMARKS = ["arc-easy", "arc-challenge", "mmlu", "mmlu:<subject>", "hellaswag", "hellaswag-full", "truthfulqa"]


@app.callback()
def main_options(
    plugins: Optional[str] = typer.Option(None, "--plugins", help="plugin modules to import before the command runs "
                                          "(module names or .py paths, comma-separated); they register recovery "
                                          "methods, criteria, lenses or run kinds. Also read from $PHASELENS_PLUGINS"),
) -> None:
    """Silent -> decisive transitions of (pruned) LLMs, through the logit lens."""
    if plugins:
        try:
            load_plugins(parse_names(plugins))
        except Exception as e:  # noqa: BLE001 - a plugin's own error, whatever it is, is one red line
            fail(f"--plugins: {e}")


def transition_table(tr) -> Table:
    """Per block: phase, margin with its interval, accuracy and option frequencies."""
    trace = tr.trace
    table = Table(title=tr.summary(), title_justify="left")
    for col in ("block", "phase", "margin", "95% CI", "accuracy", *[f"OF {s}" for s in trace.slot_labels]):
        table.add_column(col, justify="right")
    for j, b in enumerate(trace.blocks):
        phase = "decisive" if tr.layer is not None and b >= tr.layer else "silent"
        style = "green" if phase == "decisive" else None
        table.add_row(
            str(b), phase, f"{trace.margins[j]:+.3f}", f"[{trace.margin_ci[0][j]:+.2f}, {trace.margin_ci[1][j]:+.2f}]",
            f"{trace.accuracy[j]:.3f}", *[f"{v:.2f}" for v in trace.option_frequency[j]], style=style,
        )
    return table


@app.command()
def transition(
    model: str = ModelOpt,
    task: str = TaskOpt,
    format: Optional[str] = FormatOpt,
    limit: Optional[int] = LimitOpt,
    first: bool = typer.Option(False, "--first", help="with --limit: the first N items in file order (to compare with "
                               "another tool), not a seeded random subset"),
    split: Optional[str] = typer.Option(None, help="benchmark split"),
    shots: int = typer.Option(0, help="few-shot examples per prompt"),
    seed: int = SeedOpt,
    batch_size: Optional[int] = BatchOpt,
    device: Optional[str] = DeviceOpt,
    as_json: bool = JsonOpt,
    html: Optional[Path] = typer.Option(None, "--html", help="also write the margin figure to this HTML file"),
    out: Optional[Path] = OutOpt,
    lens: str = LensOpt,
) -> None:
    """Per-block margin, accuracy and option frequency, and where the decisive phase begins."""
    early(batch_size=batch_size, out=out, html=html, lens=lens)
    if first and limit is None:
        fail("--first takes the first --limit N items; give --limit too")
    m, t = load(model, task, format, limit, seed, shots, split, device, sample=not first)
    tr = transition_point(m, t, batch_size=batch_size, boot_seed=seed, progress=not as_json and sys.stderr.isatty(),
                          lens=resolve_lens(lens, m))
    if as_json:
        sys.stdout.write(tr.to_json() + "\n")
    else:
        Console().print(transition_table(tr))
        if tr.layer is None:
            console.print(f"[yellow]{tr.reason}[/yellow]")
    write_html(tr.plot() if html else None, html)
    if out:
        lens_tag = [tr.trace.lens] if tr.trace.lens != "logit" else []
        save(tr, out, slug("transition", Path(model).name, Path(task).stem, *lens_tag), command="transition",
             model=tr.trace.model, task=tr.trace.task, format=tr.trace.format, seed=seed, limit=limit, sample=not first,
             n_items=tr.trace.n_items, lens=tr.trace.lens)


@app.command()
def demo(
    model: str = ModelOpt,
    task: str = TaskOpt,
    html: Optional[Path] = typer.Option(None, "--html", help="the HTML figure to write [default: phaselens-demo.html]"),
    out: Optional[Path] = OutOpt,
    lens: str = LensOpt,
    old_out: Optional[Path] = typer.Option(None, "-o", hidden=True, help="deprecated: the HTML file (use --html)"),
) -> None:
    """Run the transition on the embedded model and write an HTML figure."""
    html = renamed_option(html, old_out, "-o", "--html")
    if out is not None and out.suffix.lower() in (".html", ".htm"):  # --out FILE.html: the figure (old meaning)
        html = renamed_option(html, out, "--out FILE.html", "--html")
        out = None
    html = html or Path("phaselens-demo.html")
    html_file(html, "--html")
    early(out=out, lens=lens)
    m, t = load(model, task)
    tr = transition_point(m, t, progress=sys.stderr.isatty(), lens=resolve_lens(lens, m))
    Console().print(transition_table(tr))
    write_html(tr.plot(), html)
    console.print(f"[green]wrote {html.resolve()}[/green] (open it in a browser)")
    if out:
        save(tr, out, slug("transition", Path(model).name, Path(task).stem), command="demo", model=tr.trace.model,
             task=tr.trace.task, format=tr.trace.format, n_items=tr.trace.n_items)


@app.command("tasks")
def list_tasks() -> None:
    """List the built-in tasks and the benchmark names."""
    print(json.dumps({"builtin": builtin_tasks(), "benchmarks": BENCHMARKS}, indent=1))


def main() -> None:  # console-script entry point
    app()


register_all()
for _cmd in app.registered_commands:
    _cmd.callback = guard(_cmd.callback)
for _group in app.registered_groups:
    for _cmd in _group.typer_instance.registered_commands:
        _cmd.callback = guard(_cmd.callback)


if __name__ == "__main__":
    main()
