"""Pruning commands: ``phaselens prune``, ``phaselens sweep``, ``phaselens phase-cuts`` and ``phaselens recovery``."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from ..errors import EffectError
from ..experiments import DEFAULT_METHODS, compare_phase_cuts, compare_recovery
from ..experiments.recovery_comparison import REFERENCE, recovery_criteria
from ..pruning import CRITERIA, prune, select_blocks, sweep_criteria
from ..pruning.iterative import iterative_prune
from ..recovery import METHODS, fit_recovery
from ..results import plain
from ..tasks import load_task
from ..trace import transition_point
from .common import (BatchOpt, BlocksHelp, CalOpt, DeviceOpt, FormatOpt, HeldOpt, HtmlOpt, JsonOpt, LensOpt, LimitOpt,
                     ModelOpt, SeedOpt, TaskOpt, app, console, early, fail, load, open_model, parse_blocks, parse_names,
                     progress, renamed_option, save, slug, texts, write_html)


# -- prune ------------------------------------------------------------------------------------


def compare_table(dense, pruned) -> Table:
    """Per original block: the dense and the pruned model's margin and accuracy side by side."""
    dt, pt = dense.trace, pruned.trace
    row = {int(b): j for j, b in enumerate(pt.blocks)}
    gone = set(range(dt.n_blocks)) - set(row)
    title = (f"{pt.model} vs dense on {dt.task} ({dt.format}, {dt.n_items} items): transition "
             f"{dense.layer} -> {pruned.layer}; final margin {dt.margins[-1]:+.3f} -> {pt.margins[-1]:+.3f}, "
             f"accuracy {dt.accuracy[-1]:.3f} -> {pt.accuracy[-1]:.3f}")
    table = Table(title=title, title_justify="left")
    for col in ("block", "dense", "margin", "acc", "pruned", "margin [95% CI]", "acc"):
        table.add_column(col, justify="right", no_wrap=True)
    for b in range(dt.n_blocks):
        dp = "decisive" if dense.layer is not None and b >= dense.layer else "silent"
        if b in gone:
            table.add_row(str(b), dp, f"{dt.margins[b]:+.3f}", f"{dt.accuracy[b]:.3f}", "cut", "", "", style="dim")
            continue
        j = row[b]
        pp = "decisive" if pruned.layer is not None and b >= pruned.layer else "silent"
        table.add_row(str(b), dp, f"{dt.margins[b]:+.3f}", f"{dt.accuracy[b]:.3f}", pp,
                      f"{pt.margins[j]:+.3f} [{pt.margin_ci[0][j]:+.2f}, {pt.margin_ci[1][j]:+.2f}]", f"{pt.accuracy[j]:.3f}")
    return table


@app.command("prune")
def prune_cmd(
    model: str = ModelOpt,
    task: str = TaskOpt,
    blocks: Optional[str] = typer.Option(None, "--blocks", help=f"blocks to cut, {BlocksHelp}"),
    criterion: Optional[str] = typer.Option(None, "--criterion", "-c", help="a registered criterion: " + " | ".join(CRITERIA.names()) + " or a plugin's"),
    n: Optional[int] = typer.Option(None, "-n", help="how many blocks the criterion cuts"),
    recovery: Optional[str] = typer.Option(None, "--recovery", "-r", help="fit a recovery after the cut: a registered method (" + ", ".join(METHODS.names()) + ", or a plugin's)"),
    first_token: bool = typer.Option(True, "--first-token/--no-first-token", help="--recovery: fit on each calibration "
                                     "passage's first token (the attention sink) too (default), or leave it out"),
    format: Optional[str] = FormatOpt,
    limit: Optional[int] = LimitOpt,
    seed: int = SeedOpt,
    calibration: Optional[Path] = CalOpt,
    batch_size: Optional[int] = BatchOpt,
    device: Optional[str] = DeviceOpt,
    as_json: bool = JsonOpt,
    out: Optional[Path] = typer.Option(None, "--out", help="results folder to save both transitions in"),
    html: Optional[Path] = HtmlOpt,
    lens: str = LensOpt,
) -> None:
    """Cut blocks (listed, or chosen by a criterion) and compare the pruned model's transition with the dense one."""
    if (blocks is None) == (criterion is None):
        fail("give either --blocks 3-5,9 or --criterion NAME with -n N")
    if criterion is not None and criterion not in CRITERIA:
        fail(f"unknown criterion {criterion!r}; choose one of {', '.join(CRITERIA)}")
    if criterion is not None and n is None:
        fail(f"--criterion {criterion} needs -n (how many blocks to cut)")
    if recovery is not None and recovery not in METHODS:
        fail(f"unknown recovery method {recovery!r}; choose one of {', '.join(METHODS)}")
    if not first_token and recovery in (None, "identity"):
        fail("--no-first-token changes what a recovery is fitted on; give --recovery METHOD (not identity) with it")
    early(batch_size=batch_size, out=out, html=html, n=(n, 1), lens=lens)
    cut = parse_blocks(blocks, "--blocks") if blocks is not None else None
    cal = texts(calibration, "--calibration")
    m, t = load(model, task, format, limit, seed, device=device)
    read = dict(boot_seed=seed, batch_size=batch_size, lens=lens)
    dense = transition_point(m, t, **read)
    if cut is None:
        cut = select_blocks(m, n, criterion, calibration=cal, task=t, seed=seed, transition=dense)  # type: ignore[arg-type]
    view = prune(m, cut)
    if recovery is not None and recovery != "identity":
        view = fit_recovery(view, cal, recovery, first_token=first_token)
    pruned = transition_point(view, t, **read)
    if as_json:
        sys.stdout.write(json.dumps({"removed": sorted(cut), "recovery": recovery, "dense": plain(dense),
                                     "pruned": plain(pruned)}) + "\n")
    else:
        Console().print(compare_table(dense, pruned))
        console.print(f"cut blocks {sorted(cut)}" + (f" ({criterion})" if criterion else "") +
                      (f", recovered with {recovery}" if recovery else "") + f": {pruned.summary()}")
    if out:
        prov = dict(command="prune", model=m.name, task=t.name, format=t.format, seed=seed, limit=limit, removed=sorted(cut),
                    criterion=criterion, recovery=recovery, **({"lens": lens} if lens != "logit" else {}),
                    **({} if first_token else {"first_token": False}))
        save(dense, out, slug("transition", m.name, t.name, "dense"), **prov)
        save(pruned, out, slug("transition", m.name, t.name, "pruned", ",".join(map(str, sorted(cut))), recovery,
                               None if first_token else "no-first-token"), **prov)
    if html:
        from ..plots import margin_curves  # plotly: imported only when a figure is written

        write_html(margin_curves({"dense": dense, pruned.trace.model: pruned}, transition=dense), html)


# -- sweep ------------------------------------------------------------------------------------


def sweep_table(sweep) -> Table:
    cr = sweep.collapse_ratio
    title = (f"Iterative pruning of {sweep.model} on {sweep.task} by {sweep.criterion}"
             f"{f', recovered with {sweep.recovery}' if sweep.recovery else ''}: collapse ratio "
             f"{'not reached' if cr is None else f'{cr:.0%}'} (accuracy threshold {sweep.threshold:.3f})")
    table = Table(title=title, title_justify="left")
    table.add_column("step", justify="right", no_wrap=True)
    table.add_column("pruned", justify="right", no_wrap=True)
    table.add_column("removed", justify="right")
    for col in ("accuracy", "margin", "transition", "perplexity", "cut next"):
        table.add_column(col, justify="right", no_wrap=True)
    for s in sweep.steps:
        style = "red" if s.accuracy < sweep.threshold else None
        table.add_row(str(s.step), f"{s.ratio:.0%}", ",".join(map(str, s.removed)) or "-", f"{s.accuracy:.3f}",
                      f"{s.margin:+.3f}", "-" if s.transition.layer is None else str(s.transition.layer),
                      f"{s.perplexity:.2f}", "-" if s.next_cut is None else str(s.next_cut), style=style)
    return table


@app.command("sweep")
def sweep_cmd(
    model: str = ModelOpt,
    task: str = TaskOpt,
    criterion: str = typer.Option("bi", "--criterion", "-c", help="an iterative criterion: " + " | ".join(sweep_criteria()) + " or a plugin's"),
    max_cut: Optional[int] = typer.Option(None, "--max-cut", help="blocks to cut, one at a time (default: all but one)"),
    recovery: Optional[str] = typer.Option(None, "--recovery", "-r", help="refit this recovery method after every cut (a registered method)"),
    format: Optional[str] = FormatOpt,
    limit: Optional[int] = LimitOpt,
    seed: int = SeedOpt,
    calibration: Optional[Path] = CalOpt,
    heldout: Optional[Path] = HeldOpt,
    device: Optional[str] = DeviceOpt,
    as_json: bool = JsonOpt,
    out: Optional[Path] = typer.Option(None, "--out", help="results folder: every finished step is written there and a rerun resumes"),
    html: Optional[Path] = HtmlOpt,
    lens: str = LensOpt,
    old_steps: Optional[int] = typer.Option(None, "--steps", hidden=True, help="deprecated: use --max-cut"),
) -> None:
    """Cut one block at a time by a criterion recomputed after every cut; per-step accuracy, margin, transition, perplexity."""
    max_cut = renamed_option(max_cut, old_steps, "--steps", "--max-cut")
    if criterion not in sweep_criteria():
        fail(f"unknown sweep criterion {criterion!r}; choose one of {', '.join(sweep_criteria())}")
    if recovery is not None and recovery not in METHODS:
        fail(f"unknown recovery method {recovery!r}; choose one of {', '.join(METHODS)}")
    early(out=out, html=html, max_cut=(max_cut, 1), lens=lens)
    cal, held = texts(calibration, "--calibration"), texts(heldout, "--heldout")
    m, t = load(model, task, format, limit, seed, device=device)
    sweep = iterative_prune(m, t, criterion=criterion, steps=max_cut, recovery=recovery, out=out, calibration=cal,
                            heldout=held, boot_seed=seed, progress=progress(as_json), lens=lens)
    if as_json:
        sys.stdout.write(sweep.to_json() + "\n")
    else:
        Console().print(sweep_table(sweep))
    if out:
        save(sweep, out, slug("sweep", m.name, t.name, criterion, recovery), command="sweep", model=m.name, task=t.name,
             format=t.format, seed=seed, limit=limit, criterion=criterion, recovery=recovery, steps=max_cut,
             **({"lens": lens} if lens != "logit" else {}))
    write_html(sweep.plot() if html else None, html)


# -- phase-cuts -------------------------------------------------------------------------------


def phase_cuts_table(result) -> Table:
    """One row per cut x method (random cuts: the mean over seeds with its two-level bootstrap interval)."""
    df = result.to_pandas(aggregate=True)
    table = Table(title=f"Phase cuts, n={result.n}: {result.model} on {result.task} ({result.format}, {result.n_items} items)",
                  title_justify="left")
    for col in ("cut", "blocks", "method"):
        table.add_column(col, no_wrap=True)
    for col in ("final margin [95% CI]", "accuracy [95% CI]", "boundary error (rel.)", "perplexity"):
        table.add_column(col, justify="right")
    style = {"dense": "bold", "silent": "red", "decisive": "green", "random": None}
    for r in df.itertuples():
        blocks = str(r.blocks) if r.cut != "random" else f"{r.n_seeds:.0f} seeds"
        table.add_row(f"{r.cut} ({r.placement})" if isinstance(r.placement, str) else r.cut, blocks, r.method, f"{r.final_margin:+.3f} [{r.margin_lo:+.2f}, {r.margin_hi:+.2f}]",
                      f"{r.accuracy:.3f} [{r.accuracy_lo:.2f}, {r.accuracy_hi:.2f}]",
                      "-" if r.cut == "dense" else f"{r.boundary_relative:.3g}", f"{r.perplexity:.2f}", style=style[r.cut])
    return table


@app.command("phase-cuts")
def phase_cuts_cmd(
    model: str = ModelOpt,
    task: str = TaskOpt,
    n: int = typer.Option(..., "-n", help="blocks per cut"),
    methods: Optional[str] = typer.Option(None, "--methods", help="comma-separated registered recovery methods (default: the built-ins: " + ", ".join(DEFAULT_METHODS) + ")"),
    seeds: int = typer.Option(5, "--seeds", help="random control cuts (seeds 0..SEEDS-1)"),
    placement: str = typer.Option("spread", "--placement", help="phase cuts: spread (adjacent, center and far in each phase) | adjacent | far | center, or SILENT,DECISIVE with block indices (3,adjacent)"),
    format: Optional[str] = FormatOpt,
    limit: Optional[int] = LimitOpt,
    seed: int = SeedOpt,
    calibration: Optional[Path] = CalOpt,
    heldout: Optional[Path] = HeldOpt,
    measure_boundary: bool = typer.Option(False, "--measure-boundary", help="also measure boundary error on the held-out text"),
    device: Optional[str] = DeviceOpt,
    as_json: bool = JsonOpt,
    out: Optional[Path] = typer.Option(None, "--out", help="results folder: finished units are written there and a rerun resumes"),
    html: Optional[Path] = HtmlOpt,
    lens: str = LensOpt,
) -> None:
    """Cut n blocks inside the silent phase, inside the decisive phase and at random; recover each cut with each method."""
    meths = _methods(methods)
    place = _placement(placement)
    early(out=out, html=html, n=(n, 1), seeds=(seeds, 0), lens=lens)
    cal, held = texts(calibration, "--calibration"), texts(heldout, "--heldout")
    m, t = load(model, task, format, limit, seed, device=device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = compare_phase_cuts(m, t, n, methods=meths, seeds=seeds, placement=place, calibration=cal,
                                 heldout=held, measure_boundary=measure_boundary, out=out, boot_seed=seed,
                                 progress=progress(as_json), lens=lens)
    for w in caught:
        if issubclass(w.category, UserWarning):
            console.print(f"[yellow]warning:[/yellow] {w.message}")
    if as_json:
        sys.stdout.write(res.to_json() + "\n")
    else:
        Console().print(phase_cuts_table(res))
        console.print(res.summary())
    if out:
        save(res, out, slug("phase_cuts", m.name, t.name, f"n{res.n}"), command="phase-cuts", model=m.name, task=t.name,
             format=t.format, seed=seed, limit=limit, n=res.n, methods=list(meths), seeds=seeds, placement=place,
             **({"lens": lens} if lens != "logit" else {}))
    if html:
        write_html(res.plot(), html)
        write_html(res.plot_curves(), html.with_name(html.stem + "-curves" + html.suffix))


def _methods(methods: Optional[str]) -> tuple[str, ...]:
    """``--methods``: comma-separated registered recovery methods (default: the built-ins), each checked."""
    meths = DEFAULT_METHODS if methods is None else tuple(parse_names(methods))
    unknown = [x for x in meths if x not in METHODS]
    if unknown:
        fail(f"--methods: unknown recovery method(s) {unknown}; choose from {', '.join(METHODS)}")
    return meths


def _placement(placement: str) -> Any:
    """``--placement``: one name for both phases, or ``SILENT,DECISIVE`` (names or block indices)."""
    parts = [int(x) if x.strip().lstrip("-").isdigit() else x.strip() for x in placement.split(",")]
    if len(parts) not in (1, 2):
        fail(f"--placement takes one name for both phases or 'SILENT,DECISIVE' (e.g. 3,adjacent), got {placement!r}")
    return parts[0] if len(parts) == 1 else tuple(parts)


# -- recovery ---------------------------------------------------------------------------------


def recovery_table(result) -> Table:
    """One row per (task, method): final-layer accuracy, mean final margin, held-out perplexity and the operator's
    relative fit error (dense first)."""
    df = result.to_pandas()
    table = Table(title=f"Recovery of {result.model} with blocks {result.cut} cut ({len(result.blocks)} of "
                        f"{result.n_blocks}, {result.criterion}); perplexity on {result.n_passages} held-out passages",
                  title_justify="left")
    for col in ("task", "method"):
        table.add_column(col, no_wrap=True)
    for col in ("accuracy", "margin", "perplexity", "fit error"):
        table.add_column(col, justify="right", no_wrap=True)
    for r in df.itertuples():
        table.add_row(r.task, r.method, f"{r.accuracy:.3f}", f"{r.margin:+.3f}", f"{r.perplexity:.2f}",
                      "-" if r.method == "dense" else f"{r.fit_relative_error:.3g}",
                      style="bold" if r.method == "dense" else None)
    return table


def effects_table(result) -> Table | None:
    """Ghosted Layers against each rival (when both were compared): paired effects with their intervals."""
    if REFERENCE not in result.methods or len(result.methods) < 2:
        return None
    try:
        effects = result.effects()
    except EffectError as e:  # too few items or passages for an interval
        console.print(f"[yellow]no intervals:[/yellow] {e}")
        return None
    table = Table(title="Paired effects (positive: ghosted is better; bootstrap over items / passages)",
                  title_justify="left")
    for col in ("effect", "task"):
        table.add_column(col, no_wrap=True)
    for col in ("estimate [95% CI]", "p"):
        table.add_column(col, justify="right", no_wrap=True)
    for e in effects:
        table.add_row(e.name, e.task, f"{e.estimate:+.3f} [{e.lo:+.3f}, {e.hi:+.3f}]", f"{e.p:.3g}")
    return table


@app.command("recovery")
def recovery_cmd(
    model: str = ModelOpt,
    task: str = typer.Option("capitals", "--task", "-t", help="task(s) to measure accuracy on, comma-separated "
                             "(built-in, benchmark name or file)"),
    blocks: Optional[str] = typer.Option(None, "--blocks", help=f"blocks to cut, {BlocksHelp}"),
    n: Optional[int] = typer.Option(None, "-n", help="how many blocks --criterion cuts (chosen on the calibration text)"),
    criterion: str = typer.Option("angular", "--criterion", "-c", help="with -n: a criterion that needs no task "
                                  "(angular, as LLM-Streamline; bi; ...)"),
    methods: Optional[str] = typer.Option(None, "--methods", help="comma-separated registered recovery methods "
                                          "(default: the built-ins: " + ", ".join(DEFAULT_METHODS) + ")"),
    format: Optional[str] = FormatOpt,
    limit: Optional[int] = LimitOpt,
    seed: int = SeedOpt,
    calibration: Optional[Path] = CalOpt,
    heldout: Optional[Path] = HeldOpt,
    batch_size: Optional[int] = BatchOpt,
    device: Optional[str] = DeviceOpt,
    as_json: bool = JsonOpt,
    out: Optional[Path] = typer.Option(None, "--out", help="results folder: finished units are written there and a "
                                       "rerun resumes"),
    html: Optional[Path] = HtmlOpt,
) -> None:
    """Cut blocks (listed, or n chosen by a criterion) and recover the cut with every method: accuracy on the tasks
    and held-out perplexity, Ghosted Layers against each rival with paired intervals (the Ghosted Layers table)."""
    if (blocks is None) == (n is None):
        fail("give either --blocks 20-26 or -n N (blocks chosen by --criterion)")
    if n is not None and criterion not in recovery_criteria():
        fail(f"--criterion {criterion!r}: choose one that needs neither a task nor a seed: "
             f"{', '.join(recovery_criteria())}")
    meths = _methods(methods)
    names = parse_names(task)
    if not names:
        fail("--task names no task; give one or more, comma-separated (e.g. arc-easy,arc-challenge)")
    early(batch_size=batch_size, out=out, html=html, n=(n, 1))
    cut = parse_blocks(blocks, "--blocks") if blocks is not None else None
    cal, held = texts(calibration, "--calibration"), texts(heldout, "--heldout")
    ts = [load_task(x, format=format, limit=limit, seed=seed) for x in names]  # type: ignore[arg-type]
    m = open_model(model, device)
    res = compare_recovery(m, ts, cut, n=n, criterion=criterion, methods=meths, calibration=cal, heldout=held,
                           batch_size=batch_size, boot_seed=seed, out=out)
    if as_json:
        sys.stdout.write(res.to_json() + "\n")
    else:
        Console().print(recovery_table(res))
        eff = effects_table(res)
        if eff is not None:
            Console().print(eff)
        console.print(res.summary())
    if out:
        save(res, out, slug("recovery", m.name, "+".join(t.name for t in ts), res.cut), command="recovery",
             model=m.name, tasks=[t.name for t in ts], format=format, seed=seed, limit=limit, blocks=list(res.blocks),
             criterion=res.criterion, methods=list(meths))
    if html:
        write_html(res.plot(), html)
