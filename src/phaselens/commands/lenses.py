"""``phaselens lens fit`` and ``phaselens lens kl``: fit, save and measure lenses beside the logit lens."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from ..lenses import LENS_KINDS, fit_lens, lens_heatmap, lens_kl, resolve_lens
from .common import (DeviceOpt, HeldOpt, HtmlOpt, JsonOpt, LensOpt, ModelOpt, OutOpt, app, console, early, fail, finish,
                     html_file, open_model, out_dir, renamed_option, slug, texts)

lens_app = typer.Typer(no_args_is_help=True, help="Lenses beside the logit lens: fit (linear, tuned) and measure them.")
app.add_typer(lens_app, name="lens")


def _vocab(vocab: Optional[str]) -> Optional[str | int]:
    """``--vocab``: ``None``, ``"full"`` or a positive count of tokens."""
    if vocab is None or vocab == "full":
        return vocab
    if not (vocab.isdigit() and int(vocab) > 0):
        fail(f"--vocab must be 'full' or a positive count of tokens, got {vocab!r}")
    return int(vocab)


@lens_app.command("fit")
def fit_cmd(
    model: str = ModelOpt,
    kind: str = typer.Option("tuned", "--kind", "-k", help="linear | tuned | logit | a kind registered with "
                                 "phaselens.register_lens"),
    lens_file: Optional[Path] = typer.Option(None, "--lens-file", help="the lens file to write (safetensors); "
                                             "required"),
    calibration: Optional[Path] = typer.Option(None, "--calibration", help="text file of passages (default: the "
                                               "bundled fit passages)"),
    seed: int = typer.Option(0, "--seed", help="seed of the tuned lens's training"),
    steps: int = typer.Option(150, "--steps", help="tuned lens: optimiser (Adam) steps"),
    vocab: Optional[str] = typer.Option(None, "--vocab", help="tuned lens: training vocabulary, 'full' or a count "
                                        "(default: full on a GPU, the 2048 most probable tokens on the CPU)"),
    resume: Optional[Path] = typer.Option(None, "--resume", help="tuned lens: checkpoint folder; a rerun resumes "
                                          "from it"),
    device: Optional[str] = DeviceOpt,
    old_out: Optional[Path] = typer.Option(None, "--out", "-o", hidden=True, help="deprecated: use --lens-file"),
) -> None:
    """Fit a lens on a model and save it (load it with --lens FILE, or phaselens.load_lens)."""
    lens_file = renamed_option(lens_file, old_out, "--out", "--lens-file")
    if kind not in LENS_KINDS:
        fail(f"--kind must be one of {' | '.join(LENS_KINDS.names())}, got {kind!r}")
    if lens_file is None:
        fail("--lens-file FILE is required: the safetensors file to write the lens to")
    html_file(lens_file, "--lens-file")
    out_dir(resume, "--resume")
    early(steps=(steps, 1))
    v = _vocab(vocab)
    cal = texts(calibration, "--calibration")
    kw: dict = dict(steps=steps, vocab=v, out=resume) if kind == "tuned" else {}
    lens = fit_lens(open_model(model, device), kind, cal, seed=seed, **kw)
    path = lens.save(lens_file)
    console.print(f"{lens.summary()}\n[green]wrote {path}[/green]")


@lens_app.command("kl")
def kl_cmd(
    model: str = ModelOpt,
    lens: list[str] = typer.Option(["logit"], "--lens", help="lenses to measure (repeat): logit | linear | tuned | a registered kind | a file"),
    heldout: Optional[Path] = HeldOpt,
    seq_len: int = typer.Option(256, "--seq-len", help="tokens per passage"),
    device: Optional[str] = DeviceOpt,
) -> None:
    """Mean KL(final distribution || lens) per block on held-out text: how faithful each lens is."""
    for name in lens:
        early(lens=name)
    early(seq_len=(seq_len, 2))
    held = texts(heldout, "--heldout")
    m = open_model(model, device)
    kls = {name: lens_kl(m, held, name, seq_len=seq_len) for name in lens}
    table = Table(title=f"{m.name}: mean KL(final || lens) per block (nats), held-out text", title_justify="left")
    table.add_column("block", justify="right")
    for name in kls:
        table.add_column(Path(name).name, justify="right")
    for b in range(m.n_blocks):
        table.add_row(str(b), *[f"{kls[n][b]:.4f}" for n in kls])
    Console().print(table)


def heatmap_table(hm, width: int | None = None) -> Table:
    """Per block, the last position's top tokens and their probabilities (the picture's rightmost column)."""
    from ..plots.lenses import _shown

    table = Table(title=f"next token after {_shown(hm.tokens[-1])!r}, per block ({hm.lens} lens)", title_justify="left",
                  width=min(width or Console().width, 80))
    table.add_column("block", justify="right", no_wrap=True)
    table.add_column("top token", no_wrap=True, max_width=16, overflow="ellipsis")
    table.add_column("p", justify="right", no_wrap=True)
    table.add_column("then", no_wrap=True, overflow="ellipsis")
    tops, probs = hm.top_tokens, hm.top_probs
    for r, b in enumerate(hm.blocks):
        rest = "  ".join(f"{_shown(tops[r, -1, j])} {probs[r, -1, j]:.2f}" for j in range(1, probs.shape[2]))
        table.add_row(str(b), _shown(tops[r, -1, 0]), f"{probs[r, -1, 0]:.3f}", rest)
    return table


@app.command("heatmap")
def heatmap_cmd(
    model: str = ModelOpt,
    prompt: str = typer.Option("The capital of France is", "--prompt", "-p", help="the text to read"),
    lens: str = LensOpt,
    top_k: int = typer.Option(5, "--top-k", help="tokens kept per cell (the hover lists them), 1..50"),
    device: Optional[str] = DeviceOpt,
    as_json: bool = JsonOpt,
    html: Optional[Path] = HtmlOpt,
    out: Optional[Path] = OutOpt,
) -> None:
    """The logit-lens picture of one prompt: the top next token at every position after every block, through a
    lens, coloured by its probability (--html: the interactive heatmap; the table: the last position)."""
    if not prompt.strip():
        fail("--prompt must be some text, got an empty one")
    if not 1 <= top_k <= 50:
        fail(f"--top-k must be from 1 to 50 (tokens kept per cell), got {top_k}")
    early(out=out, html=html, lens=lens)
    m = open_model(model, device)
    hm = lens_heatmap(m, prompt, resolve_lens(lens, m), top_k=top_k)
    finish(hm, as_json=as_json, out=out, html=html, name=slug("heatmap", Path(model).name, hm.lens),
           table=heatmap_table(hm), summary=hm.summary() + ("" if html else "\n(--html FILE draws the heatmap)"),
           command="heatmap", model=hm.model, lens=hm.lens)
