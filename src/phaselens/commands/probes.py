"""``phaselens cka``, ``noise``, ``ablate`` and ``collapse``: representation similarity, the causal
probes of the phases, and the transition-versus-collapse study."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from ..cli import _early, _fail, _load, _texts, app, console

_TaskOpt = typer.Option("capitals", "--task", "-t", help="built-in task, benchmark name or file")


def _ints(text: Optional[str], what: str) -> Optional[list[int]]:
    """``"3,5-7"`` -> ``[3, 5, 6, 7]``; ``None`` / ``"all"`` -> ``None``."""
    if text is None or text.strip().lower() == "all":
        return None
    out: list[int] = []
    try:
        for part in text.split(","):
            part = part.strip()
            if "-" in part[1:]:
                a, b = part.split("-", 1)
                out.extend(range(int(a), int(b) + 1))
            elif part:
                out.append(int(part))
    except ValueError:
        _fail(f"{what}: expected block indices like 3,5-7 (or all), got {text!r}")
    return out


def _floats(text: str, what: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        _fail(f"{what}: expected numbers like 0.1,0.5,1, got {text!r}")
    return []


def _finish(result: Any, *, as_json: bool, out: Optional[Path], html: Optional[Path], name: str, table: Table | None,
            summary: str, **prov: Any) -> None:
    if as_json:
        sys.stdout.write(result.to_json() + "\n")
    else:
        if table is not None:
            Console().print(table)
        Console().print(summary)
    if html:
        from ..plots import save_html

        save_html(result.plot(), str(html))
        console.print(f"wrote {html}")
    if out:
        from ..results import save_result

        path = save_result(result, out, name, **prov)
        console.print(f"saved {path}")


def _slug(*parts: Any) -> str:
    from ..results import slug

    return slug(*parts)


def _progress(as_json: bool) -> bool:
    return not as_json and sys.stderr.isatty()


# ----------------------------------------------------------------------------- cka
@app.command("cka")
def cka_cmd(
    model_a: str = typer.Option("smollm2-135m", "--model-a", "-a", help="model A (rows)"),
    model_b: Optional[str] = typer.Option(None, "--model-b", help="model B (columns; default: model A, pruned by --prune-b / --criterion-b)"),
    prune_b: Optional[str] = typer.Option(None, "--prune-b", help="blocks cut from model B, e.g. 10,11,12"),
    criterion_b: Optional[str] = typer.Option(None, "--criterion-b", help="select -n blocks to cut from model B: bi, angular, sleb, random, silent, decisive"),
    n: int = typer.Option(0, "-n", help="number of blocks --criterion-b cuts"),
    task: str = _TaskOpt,
    on_texts: bool = typer.Option(False, "--on-texts", help="compare on calibration text (every token) instead of the task"),
    calibration: Optional[Path] = typer.Option(None, "--calibration", help="text file (passages separated by blank lines) "
                                               "for --on-texts; default: the bundled fit passages"),
    positions: Optional[str] = typer.Option(None, help="decision | all"),
    debiased: bool = typer.Option(False, "--debiased", help="the unbiased HSIC estimator"),
    n_samples: int = typer.Option(2048, help="at most this many samples (items or tokens)"),
    limit: Optional[int] = typer.Option(None, help="random subset of this many items (seeded)"),
    seed: int = typer.Option(0),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", "-b"),
    device: Optional[str] = typer.Option(None),
    as_json: bool = typer.Option(False, "--json"),
    out: Optional[Path] = typer.Option(None, "--out", help="save the result in this results folder"),
    html: Optional[Path] = typer.Option(None, help="write the heatmap to this HTML file"),
) -> None:
    """Linear CKA between every block of model A and every block of model B (or a pruned A)."""
    from .. import load_model, prune, select_blocks
    from ..errors import PhaselensError
    from ..similarity import cka

    if prune_b and criterion_b:
        _fail("give either --prune-b or --criterion-b, not both")
    if criterion_b and n < 1:
        _fail("--criterion-b needs -n N (how many blocks to cut)")
    from ..similarity import POSITIONS

    if positions not in (None, *POSITIONS):
        _fail(f"--positions must be one of {', '.join(POSITIONS)}, got {positions!r}")
    _early(batch_size=batch_size, out=out, html=html, n_samples=(n_samples, 2))
    cut_b = _ints(prune_b, "--prune-b") if prune_b else None
    texts = _texts(calibration, "calibration") if on_texts else None
    ma, t = _load(model_a, task, None, limit, seed, 0, None, device)
    try:
        mb = ma if model_b is None else load_model(model_b, device=device)
    except PhaselensError as e:
        _fail(str(e))
    vb: Any = mb
    try:
        if prune_b:
            vb = prune(mb, cut_b or [])
        elif criterion_b:
            vb = prune(mb, select_blocks(mb, n, criterion_b, task=t, seed=seed))  # type: ignore[arg-type]
        r = cka(ma, vb, (texts if on_texts else t), positions=positions, debiased=debiased, n_samples=n_samples, seed=seed,
                batch_size=batch_size, progress=_progress(as_json))
    except PhaselensError as e:
        _fail(str(e))
    blocks, vals = r.matched()
    table = Table(title=f"CKA {r.model_a} vs {r.model_b} on {r.source} ({r.positions}, n={r.n_samples})", title_justify="left")
    for c in ("block", "CKA with itself across the models", "best match in B", "CKA"):
        table.add_column(c, justify="right")
    for i, b in enumerate(r.blocks_a):
        j = int(r.matrix[i].argmax()) if len(r.blocks_b) else 0
        same = f"{vals[list(blocks).index(b)]:.3f}" if b in set(blocks.tolist()) else "-"
        table.add_row(str(b), same, str(r.blocks_b[j]), f"{r.matrix[i, j]:.3f}")
    _finish(r, as_json=as_json, out=out, html=html, name=_slug("cka", r.model_a, r.model_b, r.source), table=table, summary="", command="cka",
            model=r.model_a, model_b=r.model_b, task=r.source, positions=r.positions, seed=seed, debiased=debiased)


# ----------------------------------------------------------------------------- noise
@app.command("noise")
def noise_cmd(
    model: str = typer.Option("smollm2-135m", "--model", "-m"),
    task: str = _TaskOpt,
    blocks: Optional[str] = typer.Option(None, help="blocks to perturb, e.g. 0-5,20 (default: all)"),
    eps: str = typer.Option("0.1,0.5,1", help="noise scales, comma-separated (multiples of the per-token std)"),
    seeds: int = typer.Option(5, help="independent noise draws per (block, eps)"),
    limit: Optional[int] = typer.Option(None, help="random subset of this many items (seeded)"),
    seed: int = typer.Option(0, help="seed of the item subset and the bootstrap"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", "-b"),
    device: Optional[str] = typer.Option(None),
    as_json: bool = typer.Option(False, "--json"),
    out: Optional[Path] = typer.Option(None, "--out", help="save the result in this results folder"),
    html: Optional[Path] = typer.Option(None, help="write the sensitivity figure to this HTML file"),
) -> None:
    """Noise at the output of one block at a time: the final margin per block and eps, silent vs decisive."""
    from ..errors import PhaselensError
    from ..noise import eps_list, inject_noise

    _early(batch_size=batch_size, out=out, html=html, seeds=(seeds, 1))
    blks = _ints(blocks, "--blocks")
    try:
        scales = eps_list(_floats(eps, "--eps"))  # the checks inject_noise makes, before the model loads
    except PhaselensError as e:
        _fail(f"--eps: {e}")
    m, t = _load(model, task, None, limit, seed, 0, None, device)
    try:
        r = inject_noise(m, t, blks, scales, seeds=seeds, batch_size=batch_size,
                         boot_seed=seed, progress=_progress(as_json))
    except PhaselensError as e:
        _fail(str(e))
    df = r.to_pandas()
    table = Table(title=f"final margin after noise: {r.model} on {r.task} ({r.n_items} items)", title_justify="left")
    for c in ("block", "phase", "eps", "margin", "95% CI (seeds)", "accuracy"):
        table.add_column(c, justify="right")
    for row in df.itertuples():
        table.add_row(str(row.block), row.phase, f"{row.eps:g}", f"{row.margin:+.3f}",
                      f"[{row.margin_seed_lo:+.2f}, {row.margin_seed_hi:+.2f}]", f"{row.accuracy:.3f}")
    _finish(r, as_json=as_json, out=out, html=html, name=_slug("noise", r.model, r.task), table=table, summary=r.summary(), command="noise",
            model=r.model, task=r.task, eps=r.eps, seeds=r.seeds, limit=limit, seed=seed)


# ----------------------------------------------------------------------------- ablate
@app.command("ablate")
def ablate_cmd(
    model: str = typer.Option("smollm2-135m", "--model", "-m"),
    task: str = _TaskOpt,
    blocks: Optional[str] = typer.Option(None, help="blocks ablated one at a time (default: all)"),
    mode: str = typer.Option("skip", help="skip | zero | mean"),
    pairs: bool = typer.Option(True, "--pairs/--no-pairs", help="also ablate pairs (window around the transition, or pairs of --blocks)"),
    window: int = typer.Option(3, help="half-width of the pair window around the transition"),
    limit: Optional[int] = typer.Option(None),
    seed: int = typer.Option(0),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", "-b"),
    device: Optional[str] = typer.Option(None),
    as_json: bool = typer.Option(False, "--json"),
    out: Optional[Path] = typer.Option(None, "--out", help="save the result in this results folder"),
    html: Optional[Path] = typer.Option(None, help="write the drop figure to this HTML file"),
) -> None:
    """Ablate single blocks and pairs; the drop of the final margin (with bootstrap CIs over items)."""
    from ..ablation import ABLATION_MODES, ablate
    from ..errors import PhaselensError

    if mode not in ABLATION_MODES:
        _fail(f"--mode must be one of {', '.join(ABLATION_MODES)}, got {mode!r}")
    _early(batch_size=batch_size, out=out, html=html, window=(window, 0))
    blks = _ints(blocks, "--blocks")
    m, t = _load(model, task, None, limit, seed, 0, None, device)
    try:
        r = ablate(m, t, blks, mode=mode, pairs=None if pairs else False, window=window,
                   batch_size=batch_size, boot_seed=seed, progress=_progress(as_json))
    except PhaselensError as e:
        _fail(str(e))
    df = r.to_pandas()
    table = Table(title=f"{r.mode}-ablation: {r.model} on {r.task} ({r.n_items} items)", title_justify="left")
    for c in ("blocks", "phase", "margin drop", "95% CI", "accuracy"):
        table.add_column(c, justify="right")
    for row in df.itertuples():
        table.add_row(row.blocks, row.phase, f"{row.margin_drop:+.3f}", f"[{row.margin_drop_lo:+.2f}, {row.margin_drop_hi:+.2f}]",
                      f"{row.accuracy:.3f}")
    _finish(r, as_json=as_json, out=out, html=html, name=_slug("ablate", r.mode, r.model, r.task), table=table, summary=r.summary(), command="ablate",
            model=r.model, task=r.task, mode=mode, limit=limit, seed=seed)


# ----------------------------------------------------------------------------- collapse
@app.command("collapse")
def collapse_cmd(
    models: str = typer.Option("smollm2-135m,gemma3-270m", help="models, comma-separated"),
    tasks: str = typer.Option("capitals,languages", help="tasks, comma-separated"),
    criterion: str = typer.Option("bi", help="iterative criterion: bi, angular, sleb, random"),
    results: Optional[list[Path]] = typer.Option(None, "--results", help="use finished sweep/results folders instead of running"),
    sweeps: Optional[Path] = typer.Option(None, "--sweeps", help="folder for the sweeps (resumable); default: a temporary one"),
    limit: Optional[int] = typer.Option(None, help="items per task (seeded subset)"),
    max_steps: Optional[int] = typer.Option(None, help="at most this many cuts per sweep"),
    seed: int = typer.Option(0),
    as_json: bool = typer.Option(False, "--json"),
    out: Optional[Path] = typer.Option(None, "--out", help="save the study in this results folder"),
    html: Optional[Path] = typer.Option(None, help="write the scatter to this HTML file"),
) -> None:
    """Transition depth against collapse ratio across (model, task) pairs, with Pearson r."""
    import warnings

    from ..errors import PhaselensError, StatsWarning
    from ..study.collapse import transition_vs_collapse
    from ..pruning.iterative import SWEEP_CRITERIA
    from ..tasks import load_task

    if criterion not in SWEEP_CRITERIA:
        _fail(f"unknown sweep criterion {criterion!r}; choose one of {', '.join(SWEEP_CRITERIA)}")
    _early(out=out, html=html, max_steps=(max_steps, 1))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", StatsWarning)
        try:
            if results:
                study = transition_vs_collapse([str(p) for p in results])
            else:
                ts = [load_task(x.strip(), limit=limit, seed=seed) for x in tasks.split(",") if x.strip()]
                study = transition_vs_collapse(models=[x.strip() for x in models.split(",") if x.strip()], tasks=ts,
                                                criterion=criterion, out=sweeps, max_steps=max_steps, seed=seed,
                                                progress=_progress(as_json))
        except PhaselensError as e:
            _fail(str(e))
    for w in caught:
        if issubclass(w.category, StatsWarning):
            console.print(f"[yellow]warning:[/yellow] {w.message}")
    table = Table(title="transition vs collapse", title_justify="left")
    for c in ("model", "task", "transition", "fraction", "collapse ratio", "used"):
        table.add_column(c, justify="right")
    for q in study.points:
        table.add_row(q.model, q.task, str(q.transition), "-" if q.fraction is None else f"{q.fraction:.3f}",
                      "-" if q.collapse_ratio is None else f"{q.collapse_ratio:.3f}", "yes" if q.usable else q.reason)
    _finish(study, as_json=as_json, out=out, html=html, name=_slug("collapse", criterion), table=table, summary=study.summary(),
            command="collapse", criterion=criterion, models=models, tasks=tasks, seed=seed)
