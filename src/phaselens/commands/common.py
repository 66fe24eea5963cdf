"""What every ``phaselens`` command shares: the typer app, the options that mean the same thing in every command
(one name each), the block-list grammar, the early option checks and the output helpers.

Every command's phaselens error becomes one red line and exit code 2 (:func:`guard`, applied by the CLI to every
command), so commands do not catch :class:`~phaselens.PhaselensError` themselves.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, NoReturn, Optional

import typer
from rich.console import Console

from .. import checks, loading
from ..calibration import load_calibration
from ..deprecation import warn_renamed
from ..embedded import EMBEDDED
from ..errors import PhaselensError
from ..files import check_writable
from ..lenses.fit import check_lens_arg
from ..results import save_result, slug
from ..tasks import load_task

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Silent -> decisive transitions of (pruned) LLMs, through the logit lens.")
console = Console(stderr=True)

# -- options: one name, one meaning, in every command ----------------------------------------------------------
ModelOpt = typer.Option("smollm2-135m", "--model", "-m", help="embedded name, HF name/dir, .gguf path")
TaskOpt = typer.Option("capitals", "--task", "-t", help="built-in task, benchmark name (arc-easy, mmlu, ...) or file")
FormatOpt = typer.Option(None, "--format", "-f", help="letters | cloze | continuation")
LimitOpt = typer.Option(None, "--limit", help="random subset of this many items (seeded)")
SeedOpt = typer.Option(0, "--seed", help="seed of the item subset, shuffles and the bootstrap")
BatchOpt = typer.Option(None, "--batch-size", "-b", help="at most this many sequences per forward pass")
DeviceOpt = typer.Option(None, "--device", help="cpu, cuda, ...")
JsonOpt = typer.Option(False, "--json", help="print the result as JSON on stdout")
HtmlOpt = typer.Option(None, "--html", help="also write the figure to this HTML file")
OutOpt = typer.Option(None, "--out", help="results folder to save the result in (see `phaselens report`)")
LensOpt = typer.Option("logit", "--lens", help="how each block is read: logit | linear | tuned (fitted on the bundled "
                       "calibration text the first time, then loaded from the cache) | the path of a saved lens")
CalOpt = typer.Option(None, "--calibration", help="text file (passages separated by blank lines) that criteria and "
                      "recovery operators are computed on; default: the bundled fit passages")
HeldOpt = typer.Option(None, "--heldout", help="text file (passages separated by blank lines) perplexity is measured "
                       "on; default: the bundled held-out passages")
BlocksHelp = "blocks as original indices: ranges and commas, e.g. 3-5,9 (or 12-15+20)"


def fail(msg: str) -> NoReturn:
    """Print one red error line and exit with code 2."""
    console.print(f"[red]error:[/red] {msg}")
    raise typer.Exit(2)


def guard(fn):
    """Wrap a command: a phaselens error becomes one red line and exit code 2, never a traceback."""
    import functools

    @functools.wraps(fn)
    def run(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except PhaselensError as e:
            fail(str(e))

    return run


def renamed_option(new_value: Any, old_value: Any, old: str, new: str, default: Any = None) -> Any:
    """The value of option ``new``, or of its hidden deprecated name ``old`` (which warns) when only that was given."""
    if old_value is None or old_value == default:
        return new_value
    console.print(f"[yellow]warning:[/yellow] {old} is deprecated, use {new}; the old name goes in the next release")
    warn_renamed(old, new, "phaselens command line", stacklevel=2)
    if new_value is not None and new_value != default and new_value != old_value:
        fail(f"got both {new} and its deprecated name {old}; pass only {new}")
    return old_value


# -- parsing ----------------------------------------------------------------------------------------------------


def parse_blocks(text: Optional[str], what: str = "--blocks") -> Optional[list[int]]:
    """The block-list grammar of every command (:func:`phaselens.checks.block_list`): ``"3-5,9"`` -> ``[3, 4, 5, 9]``;
    ``+`` separates like ``,`` (``"12-15+20"``); ``None`` or ``"all"`` -> ``None``."""
    if text is None or text.strip().lower() == "all":
        return None
    return checks.block_list(text, what)


def parse_floats(text: str, what: str) -> list[float]:
    """``"0.1,0.5,1"`` -> ``[0.1, 0.5, 1.0]``."""
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise PhaselensError(f"{what}: expected numbers like 0.1,0.5,1, got {text!r}") from None


def parse_names(text: str) -> list[str]:
    """``"a, b,"`` -> ``["a", "b"]``."""
    return [x.strip() for x in text.split(",") if x.strip()]


# -- checks before any model loads ------------------------------------------------------------------------------
def html_file(path: Optional[Path], what: str = "--html") -> None:
    """An output file to write: not a folder, its folder existing and writable (probed), before any work."""
    if path is None:
        return
    if path.is_dir():
        fail(f"{what} {path} is a folder; pass the path of the file to write, e.g. {path / 'figure.html'}")
    out_file(path, what)


def out_file(path: Optional[Path], what: str) -> None:
    """An output file (``--html``, ``--lens-file``): :func:`phaselens.files.check_writable` with ``kind="file"``."""
    if path is not None:
        check_writable(path, "file", what=what, error=PhaselensError)


def out_dir(path: Optional[Path], what: str = "--out") -> None:
    """An output folder (``--out``, ``--resume``, ``--sweeps``): :func:`phaselens.files.check_writable` with
    ``kind="folder"`` (no part of it a file; it, or its nearest existing ancestor, takes a new file)."""
    if path is not None:
        check_writable(path, "folder", what=what, error=PhaselensError)


def early(*, batch_size: Optional[int] = None, out: Optional[Path] = None, html: Optional[Path] = None,
          lens: Any = None, **counts: tuple[Optional[int], int]) -> None:
    """The option checks that need no model, run before it loads, so a bad option costs nothing: ``--batch-size``,
    the ``--out`` results folder (an existing file is refused), the ``--html`` file, ``--lens`` (a kind or an
    existing lens file) and each ``name=(value, minimum)`` count (``None`` allowed)."""
    checks.integer("--batch-size", batch_size, minimum=1, optional=True, what="sequences per forward pass")
    out_dir(out, "--out")
    for name, (value, minimum) in counts.items():
        flag = f"-{name}" if len(name) == 1 else f"--{name.replace('_', '-')}"
        checks.integer(flag, value, minimum=minimum, optional=True)
    html_file(html, "--html")
    if lens is not None:
        try:
            check_lens_arg(lens)  # what resolve_lens refuses without a model
        except PhaselensError as e:
            fail(f"--lens: {e}")


def texts(path: Optional[Path], what: str) -> Optional[list[str]]:
    """The passages of a text file given to ``--calibration`` / ``--heldout`` (None: the bundled corpus)."""
    if path is None:
        return None
    if not path.is_file():
        fail(f"{what} file not found: {path}")
    try:
        return load_calibration(str(path))
    except PhaselensError as e:
        fail(f"{what}: {e}")


def load(model: str, task: str, fmt: Optional[str] = None, limit: Optional[int] = None, seed: int = 0, shots: int = 0,
         split: Optional[str] = None, device: Optional[str] = None, sample: bool = True):
    """The task (checked first: it is cheap) and the model."""
    t = load_task(task, format=fmt, limit=limit, seed=seed, shots=shots, split=split, sample=sample)  # type: ignore[arg-type]
    return open_model(model, device), t


def open_model(model: str, device: Optional[str] = None):
    """The model ``--model`` names, on ``--device``."""
    return loading.load_model(model, device=device)


# -- output -----------------------------------------------------------------------------------------------------
def progress(as_json: bool) -> bool:
    """Show progress bars: not with ``--json``, and only on a terminal."""
    return not as_json and sys.stderr.isatty()


def save(result: Any, out: Path, name: str, **prov: Any) -> None:
    """Save ``result`` in the results folder ``out`` as ``name`` with its provenance (an embedded model's
    quantization included)."""
    info = EMBEDDED.get(str(prov.get("model", "")).lower())
    if info is not None and "quantization" not in prov:
        prov["quantization"] = info["quantization"]
    path = save_result(result, out, name, **prov)
    console.print(f"saved {path}")


def write_html(fig: Any, html: Optional[Path]) -> None:
    """Write ``fig`` to the HTML file ``html`` (nothing when ``None``)."""
    if html:
        from ..plots import save_html  # plotly: imported only when a figure is written

        save_html(fig, str(html))
        console.print(f"wrote {html}")


def finish(result: Any, *, as_json: bool, out: Optional[Path], html: Optional[Path], name: str, table: Any,
           summary: str, **prov: Any) -> None:
    """Print (JSON, or the table and the summary), write the figure, save the result."""
    if as_json:
        sys.stdout.write(result.to_json() + "\n")
    else:
        if table is not None:
            Console().print(table)
        if summary:
            Console().print(summary)
    write_html(result.plot() if html else None, html)
    if out:
        save(result, out, name, **prov)


__all__ = ["BatchOpt", "BlocksHelp", "CalOpt", "DeviceOpt", "FormatOpt", "HeldOpt", "HtmlOpt", "JsonOpt", "LensOpt",
           "LimitOpt", "ModelOpt", "OutOpt", "SeedOpt", "TaskOpt", "app", "console", "early", "fail", "finish", "guard",
           "html_file", "load", "open_model", "out_dir", "out_file", "parse_blocks", "parse_floats", "parse_names", "progress", "renamed_option", "save",
           "slug", "texts", "write_html"]
