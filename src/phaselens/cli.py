"""The ``phaselens`` command."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Silent -> decisive transitions of (pruned) LLMs, through the logit lens.")
console = Console(stderr=True)

LensOpt = typer.Option("logit", "--lens", help="how each block is read: logit | linear | tuned (fitted on the bundled "
                       "calibration text the first time, then loaded from the cache) | the path of a saved lens")
ModelOpt = typer.Option("smollm2-135m", "--model", "-m", help="embedded name, HF name/dir, .gguf path")
TaskOpt = typer.Option("capitals", "--task", "-t", help="built-in task, benchmark name (arc-easy, mmlu, ...) or file")


def _fail(msg: str) -> None:
    console.print(f"[red]error:[/red] {msg}")
    raise typer.Exit(2)


def _load(model: str, task: str, fmt: Optional[str], limit: Optional[int], seed: int, shots: int, split: Optional[str],
          device: Optional[str], sample: bool = True):
    from . import PhaselensError, load_model, load_task

    try:
        t = load_task(task, format=fmt, limit=limit, seed=seed, shots=shots, split=split, sample=sample)  # type: ignore[arg-type]
        m = load_model(model, device=device)
    except PhaselensError as e:
        _fail(str(e))
    return m, t


def _early(*, batch_size: Optional[int] = None, out: Optional[Path] = None, html: Optional[Path] = None,
           lens: Any = None, **counts: tuple[Optional[int], int]) -> None:
    """The option checks that need no model, run before it loads, so a bad option costs nothing: ``--batch-size``,
    the ``--out`` results folder, the ``--html`` file, ``--lens`` (a kind or an existing lens file) and each
    ``name=(value, minimum)`` count (``None`` allowed)."""
    from . import checks
    from .errors import PhaselensError

    try:
        checks.integer("--batch-size", batch_size, minimum=1, optional=True, what="sequences per forward pass")
        checks.out_folder("--out", out)
        for name, (value, minimum) in counts.items():
            flag = f"-{name}" if len(name) == 1 else f"--{name.replace('_', '-')}"
            checks.integer(flag, value, minimum=minimum, optional=True)
    except PhaselensError as e:
        _fail(str(e))
    _html_file(html, "--html")
    if lens is not None:
        from .lenses.fit import check_lens_arg

        try:
            check_lens_arg(lens)  # what resolve_lens refuses without a model
        except PhaselensError as e:
            _fail(f"--lens: {e}")


def _html_file(path: Optional[Path], what: str) -> None:
    """An HTML (or other output) file to write: its folder must exist, and it must not be a folder itself."""
    if path is None:
        return
    if path.is_dir():
        _fail(f"{what} {path} is a folder; pass the path of the file to write, e.g. {path / 'figure.html'}")
    if not path.resolve().parent.is_dir():
        _fail(f"{what} {path}: the folder {path.resolve().parent} does not exist; create it first")


def _texts(path: Optional[Path], what: str) -> Optional[list[str]]:
    """The passages of a text file given to ``--calibration`` / ``--heldout`` (None: the bundled corpus)."""
    if path is None:
        return None
    from .calibration import load_calibration
    from .errors import PhaselensError

    if not path.is_file():
        _fail(f"{what} file not found: {path}")
    try:
        return load_calibration(str(path))
    except PhaselensError as e:
        _fail(f"{what}: {e}")
    return None


def transition_table(tr) -> Table:
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
    format: Optional[str] = typer.Option(None, "--format", "-f", help="letters | cloze | continuation"),
    limit: Optional[int] = typer.Option(None, help="random subset of this many items (seeded)"),
    first: bool = typer.Option(False, "--first", help="with --limit: the first N items in file order (to compare with "
                               "another tool), not a seeded random subset"),
    split: Optional[str] = typer.Option(None, help="benchmark split"),
    shots: int = typer.Option(0, help="few-shot examples per prompt"),
    seed: int = typer.Option(0, help="seed for subsets, shuffles and the bootstrap"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", "-b"),
    device: Optional[str] = typer.Option(None, help="cpu, cuda, ..."),
    as_json: bool = typer.Option(False, "--json", help="print the result as JSON on stdout"),
    html: Optional[Path] = typer.Option(None, help="also write the margin figure to this HTML file"),
    out: Optional[Path] = typer.Option(None, "--out", help="save the result in this results folder (see `phaselens report`)"),
    lens: str = LensOpt,
) -> None:
    """Per-block margin, accuracy and option frequency, and where the decisive phase begins."""
    from . import PhaselensError, transition_point
    from .lenses import resolve_lens

    _early(batch_size=batch_size, out=out, html=html, lens=lens)
    if first and limit is None:
        _fail("--first takes the first --limit N items; give --limit too")
    m, t = _load(model, task, format, limit, seed, shots, split, device, sample=not first)
    try:
        lens_ = resolve_lens(lens, m)
    except PhaselensError as e:
        _fail(str(e))
    tr = transition_point(m, t, batch_size=batch_size, seed=seed, progress=not as_json and sys.stderr.isatty(), lens=lens_)
    if as_json:
        sys.stdout.write(tr.to_json() + "\n")
    else:
        Console().print(transition_table(tr))
        if tr.layer is None:
            console.print(f"[yellow]{tr.reason}[/yellow]")
    if html:
        from .plots import save_html

        save_html(tr.plot(), str(html))
        console.print(f"wrote {html}")
    if out:
        from .results import save_result, slug

        path = save_result(tr, out, slug("transition", Path(model).name, Path(task).stem, *([tr.trace.lens] if tr.trace.lens != "logit" else [])), command="transition", model=tr.trace.model, task=tr.trace.task,
                           format=tr.trace.format, seed=seed, limit=limit, sample=not first, n_items=tr.trace.n_items, lens=tr.trace.lens)
        console.print(f"saved {path}")


@app.command()
def demo(
    model: str = ModelOpt,
    task: str = TaskOpt,
    out: Path = typer.Option(Path("phaselens-demo.html"), "--out", "-o", help="HTML figure to write"),
) -> None:
    """Run the transition on the embedded model and write an HTML figure."""
    from .plots import save_html
    from . import transition_point

    _html_file(out, "--out")
    m, t = _load(model, task, None, None, 0, 0, None, None)
    tr = transition_point(m, t, progress=sys.stderr.isatty())
    Console().print(transition_table(tr))
    save_html(tr.plot(), str(out))
    console.print(f"[green]wrote {out.resolve()}[/green] (open it in a browser)")


@app.command("tasks")
def list_tasks() -> None:
    """List the built-in tasks and the benchmark names."""
    from .tasks import builtin_tasks

    print(json.dumps({"builtin": builtin_tasks(), "benchmarks": ["arc-easy", "arc-challenge", "mmlu", "mmlu:<subject>", "hellaswag", "hellaswag-full", "truthfulqa"]}, indent=1))


def main() -> None:  # console-script entry point
    app()


from .commands import register_all as _register_all  # noqa: E402

_register_all()


def _guard(fn):
    """Every command: a phaselens error becomes one red line and exit code 2, never a traceback."""
    import functools

    @functools.wraps(fn)
    def run(*args, **kwargs):
        from .errors import PhaselensError

        try:
            return fn(*args, **kwargs)
        except PhaselensError as e:
            _fail(str(e))

    return run


for _cmd in app.registered_commands:
    _cmd.callback = _guard(_cmd.callback)


if __name__ == "__main__":
    main()
