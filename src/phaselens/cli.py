"""The ``phaselens`` command: the app, the global ``--plugins`` option, ``transition``, ``demo`` and ``tasks``.

The other commands live in :mod:`phaselens.commands` (one module per subject); what they share (options,
the block-list grammar, early checks, output) is :mod:`phaselens.commands.common`.
"""

from __future__ import annotations

import io
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
                              out_dir, renamed_option, save, slug, write_html)
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


def _render_width(table: Table) -> int:
    """The widest line of ``table`` drawn without a width limit."""
    buf = Console(file=io.StringIO(), width=10_000, color_system=None, legacy_windows=False)
    buf.print(table)
    return max((len(line.rstrip()) for line in buf.file.getvalue().splitlines()), default=0)  # type: ignore[attr-defined]


def transition_table(tr, width: int | None = None) -> Table:
    """Per block: phase, margin with its 95% interval, accuracy and option frequencies, in at most ``width``
    columns (``None``: the terminal's width, 80 when the output is not a terminal), one line per block.

    The widest layout that fits is used: the interval in a column of its own with every option frequency
    (``OF A``...), then the interval folded beside the margin (``+1.23 [+0.8,+1.7]``), then without the option
    frequencies (the caption says where to find them)."""
    width = Console().width if width is None else int(width)
    trace = tr.trace
    blocks = list(trace.blocks)
    phases = ["decisive" if tr.layer is not None and b >= tr.layer else "silent" for b in blocks]
    lo, hi = trace.margin_ci
    ofs = [f"OF {s}" for s in trace.slot_labels]

    def build(layout: str, title: str | None) -> Table:
        table = Table(title=title, title_justify="left")
        folded = layout != "wide"
        heads = ["block", "phase", *(["margin [95% CI]"] if folded else ["margin", "95% CI"]),
                 "acc" if folded else "accuracy", *(ofs if layout != "no-of" else [])]
        for col in heads:
            table.add_column(col, justify="right", no_wrap=True)
        for j, b in enumerate(blocks):
            m = f"{trace.margins[j]:+.3f}" if not folded else f"{trace.margins[j]:+.2f}"
            ci = f"[{lo[j]:+.2f}, {hi[j]:+.2f}]" if not folded else f"[{lo[j]:+.1f},{hi[j]:+.1f}]"
            cells = [str(b), phases[j], *([f"{m} {ci}"] if folded else [m, ci]), f"{trace.accuracy[j]:.3f}"]
            if layout != "no-of":
                cells += [f"{v:.2f}" for v in trace.option_frequency[j]]
            table.add_row(*cells, style="green" if phases[j] == "decisive" else None)
        if layout == "no-of":
            table.caption = "option frequencies: --json, --out or --html"
            table.caption_justify = "left"
        return table

    for layout in ("wide", "folded"):
        if _render_width(build(layout, None)) <= width:  # the title wraps to the table's width
            return build(layout, tr.summary())
    return build("no-of", tr.summary())


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
    resume: Optional[Path] = typer.Option(None, "--resume", help="checkpoint folder: the items are read in units "
                                          "saved there as they finish; a rerun after a kill resumes from them"),
) -> None:
    """Per-block margin, accuracy and option frequency, and where the decisive phase begins."""
    early(batch_size=batch_size, out=out, html=html, lens=lens)
    out_dir(resume, "--resume")
    if first and limit is None:
        fail("--first takes the first --limit N items; give --limit too")
    m, t = load(model, task, format, limit, seed, shots, split, device, sample=not first)
    tr = transition_point(m, t, batch_size=batch_size, boot_seed=seed, progress=not as_json and sys.stderr.isatty(),
                          lens=resolve_lens(lens, m), out=resume)
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
