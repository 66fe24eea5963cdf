"""``phaselens cka``, ``cka-contrast``, ``noise``, ``ablate`` and ``collapse``: representation similarity, the causal
probes of the phases, and the transition-versus-collapse study."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table

from ..ablation import ABLATION_MODES, ablate
from ..errors import InterventionError, StatsWarning
from ..study.collapse import transition_vs_collapse
from ..study.runs import cka_criteria, cut_size
from ..noise import eps_list, inject_noise
from ..pruning import prune, select_blocks
from ..pruning import sweep_criteria
from ..similarity import POSITIONS, cka
from ..cka_contrast import cka_contrast
from ..tasks import load_task
from .common import (BatchOpt, BlocksHelp, DeviceOpt, FormatOpt, JsonOpt, LensOpt, LimitOpt, ModelOpt, OutOpt,
                     SeedOpt, TaskOpt, app, console, early, fail, finish, load, parse_blocks, parse_floats, parse_names,
                     open_model, out_dir, progress, renamed_option, slug, texts)


# ----------------------------------------------------------------------------- cka
def _cka_table(r) -> Table:
    blocks, vals = r.matched()
    table = Table(title=f"CKA {r.model_a} vs {r.model_b} on {r.source} ({r.positions}, n={r.n_samples})", title_justify="left")
    for c in ("block", "CKA with itself across the models", "best match in B", "CKA"):
        table.add_column(c, justify="right")
    for i, b in enumerate(r.blocks_a):
        j = int(r.matrix[i].argmax()) if len(r.blocks_b) else 0
        same = f"{vals[list(blocks).index(b)]:.3f}" if b in set(blocks.tolist()) else "-"
        table.add_row(str(b), same, str(r.blocks_b[j]), f"{r.matrix[i, j]:.3f}")
    return table


@app.command("cka")
def cka_cmd(
    model_a: str = typer.Option("smollm2-135m", "--model-a", "-a", help="model A (rows)"),
    model_b: Optional[str] = typer.Option(None, "--model-b", help="model B (columns; default: model A, pruned by "
                                          "--prune-b / --criterion-b)"),
    prune_b: Optional[str] = typer.Option(None, "--prune-b", help=f"blocks cut from model B: {BlocksHelp}"),
    criterion_b: Optional[str] = typer.Option(None, "--criterion-b", help="select -n blocks to cut from model B: bi, "
                                              "angular, sleb, random, silent, decisive"),
    n: int = typer.Option(0, "-n", help="number of blocks --criterion-b cuts"),
    task: str = TaskOpt,
    format: Optional[str] = FormatOpt,
    on_texts: bool = typer.Option(False, "--on-texts", help="compare on calibration text (every token) instead of the task"),
    calibration: Optional[Path] = typer.Option(None, "--calibration", help="text file (passages separated by blank "
                                               "lines) for --on-texts; default: the bundled fit passages"),
    positions: Optional[str] = typer.Option(None, "--positions", help="decision | all"),
    first_token: bool = typer.Option(False, "--first-token", help="--positions all: sample each sequence's first "
                                     "token too (default: not; the attention sink's massive activations decide CKA)"),
    debiased: Optional[bool] = typer.Option(None, "--debiased/--plugin", help="the unbiased HSIC estimator, or the "
                                            "plug-in one (default: unbiased when samples < feature dimension)"),
    n_samples: int = typer.Option(2048, "--n-samples", help="at most this many samples (items or tokens)"),
    limit: Optional[int] = LimitOpt,
    seed: int = typer.Option(0, "--seed", help="seed of the item subset and of the sampled positions"),
    batch_size: Optional[int] = BatchOpt,
    device: Optional[str] = DeviceOpt,
    as_json: bool = JsonOpt,
    out: Optional[Path] = OutOpt,
    html: Optional[Path] = typer.Option(None, "--html", help="write the heatmap to this HTML file"),
) -> None:
    """Linear CKA between every block of model A and every block of model B (or a pruned A); hidden states, no lens."""
    if prune_b and criterion_b:
        fail("give either --prune-b or --criterion-b, not both")
    if criterion_b and n < 1:
        fail("--criterion-b needs -n N (how many blocks to cut)")
    if positions not in (None, *POSITIONS):
        fail(f"--positions must be one of {', '.join(POSITIONS)}, got {positions!r}")
    early(batch_size=batch_size, out=out, html=html, n_samples=(n_samples, 2))
    cut_b = parse_blocks(prune_b, "--prune-b") if prune_b else None
    cal = texts(calibration, "--calibration") if on_texts else None
    ma, t = load(model_a, task, format, limit, seed, device=device)
    vb: Any = ma if model_b is None else open_model(model_b, device)
    if prune_b:
        vb = prune(vb, cut_b or [])
    elif criterion_b:
        vb = prune(vb, select_blocks(vb, n, criterion_b, task=t, seed=seed))  # type: ignore[arg-type]
    r = cka(ma, vb, (cal if on_texts else t), positions=positions, debiased="auto" if debiased is None else debiased,
            n_samples=n_samples, seed=seed, first_token=first_token,
            batch_size=batch_size, progress=progress(as_json))
    finish(r, as_json=as_json, out=out, html=html, name=slug("cka", r.model_a, r.model_b, r.source), table=_cka_table(r),
           summary="", command="cka", model=r.model_a, model_b=r.model_b, task=r.source, positions=r.positions,
           seed=seed, debiased=r.debiased)


@app.command("cka-contrast")
def cka_contrast_cmd(
    model: str = ModelOpt,
    prune_b: Optional[str] = typer.Option(None, "--prune-b", help=f"blocks cut from the compared copy: {BlocksHelp}"),
    criterion_b: str = typer.Option("bi", "--criterion-b", help="select -n blocks to cut: bi, angular, sleb, random"),
    n: int = typer.Option(0, "-n", help="number of blocks --criterion-b cuts (default: half of them, halves up)"),
    task: str = TaskOpt,
    format: Optional[str] = FormatOpt,
    n_tokens: int = typer.Option(1024, "--n-tokens", help="prompt tokens sampled for the hidden states"),
    groups: int = typer.Option(20, "--groups", help="item groups of the jackknife (5 or more)"),
    first_token: bool = typer.Option(False, "--first-token", help="sample each prompt's first token too (default: "
                                     "not; the attention sink's massive activations decide CKA)"),
    limit: Optional[int] = LimitOpt,
    seed: int = typer.Option(0, "--seed", help="seed of the item subset, the sampled tokens and the item groups"),
    batch_size: Optional[int] = BatchOpt,
    device: Optional[str] = DeviceOpt,
    as_json: bool = JsonOpt,
    out: Optional[Path] = OutOpt,
    html: Optional[Path] = typer.Option(None, "--html", help="write the per-block figure to this HTML file"),
) -> None:
    """Decision-token against hidden-state CKA of a model and itself pruned, on the same items (jackknifed over
    items), with the template token before the decision token as a control."""
    if n < 0:
        fail(f"-n must be >= 0 (0: half the blocks), got {n}")
    if criterion_b not in cka_criteria():
        fail(f"--criterion-b must be one of {', '.join(cka_criteria())} (criteria that need no task), got "
             f"{criterion_b!r}")
    early(batch_size=batch_size, out=out, html=html, n_tokens=(n_tokens, 4), groups=(groups, 5))
    cut = parse_blocks(prune_b, "--prune-b") if prune_b else None
    m, t = load(model, task, format, limit, seed, device=device)
    blocks = cut if cut is not None else select_blocks(m, n or cut_size(0.5, m.n_blocks), criterion_b, seed=seed)
    r = cka_contrast(m, prune(m, blocks), t, n_tokens=n_tokens, groups=groups, first_token=first_token, seed=seed,
                     batch_size=batch_size)
    table = Table(title=f"CKA {r.model_a} vs {r.model_b} on {r.source}, blocks after the first cut", title_justify="left")
    for c in ("block", "decision tokens", "hidden states", "control tokens"):
        table.add_column(c, justify="right")
    for row in r.to_pandas().itertuples():
        table.add_row(str(row.block), f"{row.decision:.3f}", f"{row.hidden:.3f}", f"{row.control:.3f}")
    finish(r, as_json=as_json, out=out, html=html, name=slug("cka-contrast", r.model_a, r.source), table=table,
           summary=r.summary(), command="cka-contrast", model=r.model_a, task=r.source, seed=seed)


# ----------------------------------------------------------------------------- noise
def _noise_table(r) -> Table:
    table = Table(title=f"final margin after noise: {r.model} on {r.task} ({r.n_items} items)", title_justify="left")
    for c in ("block", "phase", "eps", "margin", "95% CI (seeds)", "accuracy"):
        table.add_column(c, justify="right")
    for row in r.to_pandas().itertuples():
        table.add_row(str(row.block), row.phase, f"{row.eps:g}", f"{row.margin:+.3f}",
                      f"[{row.margin_seed_lo:+.2f}, {row.margin_seed_hi:+.2f}]", f"{row.accuracy:.3f}")
    return table


@app.command("noise")
def noise_cmd(
    model: str = ModelOpt,
    task: str = TaskOpt,
    format: Optional[str] = FormatOpt,
    blocks: Optional[str] = typer.Option(None, "--blocks", help=f"blocks to perturb, {BlocksHelp} (default: all)"),
    eps: str = typer.Option("0.1,0.5,1", "--eps", help="noise scales, comma-separated (multiples of the per-token std)"),
    seeds: int = typer.Option(5, "--seeds", help="independent noise draws per (block, eps)"),
    limit: Optional[int] = LimitOpt,
    seed: int = SeedOpt,
    batch_size: Optional[int] = BatchOpt,
    device: Optional[str] = DeviceOpt,
    as_json: bool = JsonOpt,
    out: Optional[Path] = OutOpt,
    html: Optional[Path] = typer.Option(None, "--html", help="write the sensitivity figure to this HTML file"),
    lens: str = LensOpt,
) -> None:
    """Noise at the output of one block at a time: the final margin per block and eps, silent vs decisive."""
    early(batch_size=batch_size, out=out, html=html, seeds=(seeds, 1), lens=lens)
    blks = parse_blocks(blocks, "--blocks")
    floats = parse_floats(eps, "--eps")
    try:
        scales = eps_list(floats)  # the checks inject_noise makes, before the model loads
    except InterventionError as e:  # the library names ``eps``; the command line names the option
        fail(f"--eps: {e}")
    m, t = load(model, task, format, limit, seed, device=device)
    r = inject_noise(m, t, blks, scales, seeds=seeds, batch_size=batch_size, boot_seed=seed, progress=progress(as_json),
                     lens=lens)
    finish(r, as_json=as_json, out=out, html=html, name=slug("noise", r.model, r.task), table=_noise_table(r),
           summary=r.summary(), command="noise", model=r.model, task=r.task, eps=r.eps, seeds=r.seeds, limit=limit,
           seed=seed, **({"lens": lens} if lens != "logit" else {}))


# ----------------------------------------------------------------------------- ablate
def _ablate_table(r) -> Table:
    table = Table(title=f"{r.mode}-ablation: {r.model} on {r.task} ({r.n_items} items)", title_justify="left")
    for c in ("blocks", "phase", "margin drop", "95% CI", "accuracy"):
        table.add_column(c, justify="right")
    for row in r.to_pandas().itertuples():
        table.add_row(row.blocks, row.phase, f"{row.margin_drop:+.3f}", f"[{row.margin_drop_lo:+.2f}, {row.margin_drop_hi:+.2f}]",
                      f"{row.accuracy:.3f}")
    return table


@app.command("ablate")
def ablate_cmd(
    model: str = ModelOpt,
    task: str = TaskOpt,
    format: Optional[str] = FormatOpt,
    blocks: Optional[str] = typer.Option(None, "--blocks", help=f"blocks ablated one at a time, {BlocksHelp} "
                                         "(default: all)"),
    mode: str = typer.Option("skip", "--mode", help="skip | zero | mean"),
    pairs: bool = typer.Option(True, "--pairs/--no-pairs", help="also ablate pairs (window around the transition, or "
                               "pairs of --blocks)"),
    window: int = typer.Option(3, "--window", help="half-width of the pair window around the transition"),
    limit: Optional[int] = LimitOpt,
    seed: int = SeedOpt,
    batch_size: Optional[int] = BatchOpt,
    device: Optional[str] = DeviceOpt,
    as_json: bool = JsonOpt,
    out: Optional[Path] = OutOpt,
    html: Optional[Path] = typer.Option(None, "--html", help="write the drop figure to this HTML file"),
    lens: str = LensOpt,
) -> None:
    """Ablate single blocks and pairs; the drop of the final margin (with bootstrap CIs over items)."""
    if mode not in ABLATION_MODES:
        fail(f"--mode must be one of {', '.join(ABLATION_MODES)}, got {mode!r}")
    early(batch_size=batch_size, out=out, html=html, window=(window, 0), lens=lens)
    blks = parse_blocks(blocks, "--blocks")
    m, t = load(model, task, format, limit, seed, device=device)
    r = ablate(m, t, blks, mode=mode, pairs=None if pairs else False, window=window, batch_size=batch_size,
               boot_seed=seed, progress=progress(as_json), lens=lens)
    finish(r, as_json=as_json, out=out, html=html, name=slug("ablate", r.mode, r.model, r.task), table=_ablate_table(r),
           summary=r.summary(), command="ablate", model=r.model, task=r.task, mode=mode, limit=limit, seed=seed,
           **({"lens": lens} if lens != "logit" else {}))


# ----------------------------------------------------------------------------- collapse
def _collapse_table(study) -> Table:
    table = Table(title="transition vs collapse", title_justify="left")
    for c in ("model", "task", "transition", "fraction", "collapse ratio", "used"):
        table.add_column(c, justify="right")
    for q in study.points:
        table.add_row(q.model, q.task, str(q.transition), "-" if q.fraction is None else f"{q.fraction:.3f}",
                      "-" if q.collapse_ratio is None else f"{q.collapse_ratio:.3f}", "yes" if q.usable else q.reason)
    return table


@app.command("collapse")
def collapse_cmd(
    models: str = typer.Option("smollm2-135m,gemma3-270m", "--models", help="models, comma-separated"),
    tasks: str = typer.Option("capitals,languages", "--tasks", help="tasks, comma-separated"),
    criterion: str = typer.Option("bi", "--criterion", "-c", help="an iterative criterion: " + " | ".join(sweep_criteria()) + " or a plugin's"),
    results: Optional[list[Path]] = typer.Option(None, "--results", help="use finished sweep/results folders instead "
                                                 "of running"),
    sweeps: Optional[Path] = typer.Option(None, "--sweeps", help="folder for the sweeps (resumable); default: a "
                                          "temporary one"),
    limit: Optional[int] = typer.Option(None, "--limit", help="items per task (seeded subset)"),
    max_cut: Optional[int] = typer.Option(None, "--max-cut", help="at most this many blocks cut per sweep"),
    seed: int = SeedOpt,
    as_json: bool = JsonOpt,
    out: Optional[Path] = OutOpt,
    html: Optional[Path] = typer.Option(None, "--html", help="write the scatter to this HTML file"),
    old_max_steps: Optional[int] = typer.Option(None, "--max-steps", hidden=True, help="deprecated: use --max-cut"),
) -> None:
    """Transition depth against collapse ratio across (model, task) pairs, with Pearson r."""
    max_cut = renamed_option(max_cut, old_max_steps, "--max-steps", "--max-cut")
    if criterion not in sweep_criteria():
        fail(f"unknown sweep criterion {criterion!r}; choose one of {', '.join(sweep_criteria())}")
    early(out=out, html=html, max_cut=(max_cut, 1))
    out_dir(sweeps, "--sweeps")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", StatsWarning)
        if results:
            study = transition_vs_collapse([str(p) for p in results])
        else:
            ts = [load_task(x, limit=limit, seed=seed) for x in parse_names(tasks)]
            study = transition_vs_collapse(models=parse_names(models), tasks=ts, criterion=criterion, out=sweeps,
                                           max_cut=max_cut, seed=seed, progress=progress(as_json))
    for w in caught:
        if issubclass(w.category, StatsWarning):
            console.print(f"[yellow]warning:[/yellow] {w.message}")
    finish(study, as_json=as_json, out=out, html=html, name=slug("collapse", criterion), table=_collapse_table(study),
           summary=study.summary(), command="collapse", criterion=criterion, models=models, tasks=tasks, seed=seed)
