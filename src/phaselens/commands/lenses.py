"""``phaselens lens fit`` and ``phaselens lens kl``: fit, save and measure lenses beside the logit lens."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from ..cli import ModelOpt, _early, _fail, _html_file, _texts, app, console

lens_app = typer.Typer(no_args_is_help=True, help="Lenses beside the logit lens: fit (linear, tuned) and measure them.")
app.add_typer(lens_app, name="lens")


@lens_app.command("fit")
def fit_cmd(
    model: str = ModelOpt,
    kind: str = typer.Option("tuned", "--kind", "-k", help="linear | tuned | logit | a kind registered with phaselens.register_lens"),
    out: Path = typer.Option(..., "--out", "-o", help="the lens file to write (safetensors)"),
    calibration: Optional[Path] = typer.Option(None, help="text file of passages (default: the bundled fit passages)"),
    seed: int = typer.Option(0, help="seed of the tuned lens's training"),
    steps: int = typer.Option(150, help="tuned lens: Adam steps"),
    vocab: Optional[str] = typer.Option(None, help="tuned lens: training vocabulary, 'full' or a count (default: full on a "
                                                   "GPU, the 2048 most probable tokens on the CPU)"),
    resume: Optional[Path] = typer.Option(None, help="tuned lens: checkpoint folder; a rerun resumes from it"),
    device: Optional[str] = typer.Option(None, help="cpu, cuda, ..."),
) -> None:
    """Fit a lens on a model and save it (load it with --lens FILE, or phaselens.load_lens)."""
    from .. import PhaselensError, fit_lens, load_model

    from ..lenses import LENS_KINDS

    if kind not in LENS_KINDS:
        _fail(f"--kind must be one of {' | '.join(LENS_KINDS.names())}, got {kind!r}")
    _html_file(out, "--out")
    _early(steps=(steps, 1))
    if vocab is not None and vocab != "full" and not (vocab.isdigit() and int(vocab) > 0):
        _fail(f"--vocab must be 'full' or a positive count of tokens, got {vocab!r}")
    cal = _texts(calibration, "--calibration")
    kw: dict = {}
    if kind == "tuned":
        v = None if vocab is None else ("full" if vocab == "full" else int(vocab) if vocab.isdigit() else vocab)
        kw = dict(steps=steps, vocab=v, out=resume)
    try:
        m = load_model(model, device=device)
        lens = fit_lens(m, kind, cal, seed=seed, **kw)
        path = lens.save(out)
    except PhaselensError as e:
        _fail(str(e))
    console.print(f"{lens.summary()}\n[green]wrote {path}[/green]")


@lens_app.command("kl")
def kl_cmd(
    model: str = ModelOpt,
    lens: list[str] = typer.Option(["logit"], "--lens", help="lenses to measure (repeat): logit | linear | tuned | a registered kind | a file"),
    heldout: Optional[Path] = typer.Option(None, help="text file of passages (default: the bundled held-out passages)"),
    seq_len: int = typer.Option(256, help="tokens per passage"),
    device: Optional[str] = typer.Option(None, help="cpu, cuda, ..."),
) -> None:
    """Mean KL(final distribution || lens) per block on held-out text: how faithful each lens is."""
    from .. import PhaselensError, lens_kl, load_model

    for name in lens:
        _early(lens=name)
    _early(seq_len=(seq_len, 2))
    texts = _texts(heldout, "--heldout")
    try:
        m = load_model(model, device=device)
        kls = {name: lens_kl(m, texts, name, seq_len=seq_len) for name in lens}
    except PhaselensError as e:
        _fail(str(e))
    table = Table(title=f"{m.name}: mean KL(final || lens) per block (nats), held-out text", title_justify="left")
    table.add_column("block", justify="right")
    for name in kls:
        table.add_column(Path(name).name, justify="right")
    for b in range(m.n_layers):
        table.add_row(str(b), *[f"{kls[n][b]:.4f}" for n in kls])
    Console().print(table)
