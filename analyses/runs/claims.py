"""The at-size runs' claims (issue 23): every finished job of every run under analyses/runs/, judged by pl.claims.

    python analyses/runs/claims.py [--runs analyses/runs] [--specs analyses/runs/specs] [--out analyses/results/runs]
    python analyses/make_claims.py      # then: analyses/claims.csv and analyses/README.md with these rows

Reads each spec ``SPECS/runN_*.toml`` and its study folder ``RUNS/runN_*/`` (``pl.load_study``, ``pl.load_results``)
and writes into ``OUT`` what every analysis script writes (analyses/_common.py): ``claims.json`` (+ its
``.safetensors``: the ``pl.Claims`` table, every claim with its Effect), ``verdicts.json`` (provenance, claims,
claims not judged, notes) and ``summary.md``; and ``report.html``, one offline page with the claims table and every
finished job's summary, figures and table (``pl.report``). Each claim's Effect is the result's own (``effects()`` of the
experiment's result); no verdict is decided here. A run whose jobs are not all done is listed as not judged
("run N not finished: k of J jobs done"), and its finished jobs still give their claims.

* phase cuts (run 2): ``PhaseCuts.effects()``, as analyses/phase_cuts.py names them;
* noise (run 2): ``NoiseResult.effects()``: silent − decisive and the equal-distance control, per eps;
* single-block ablation (run 2): ``AblationResult.effects()``: at the transition against the rest of each phase;
* recovery (run 3): ``RecoveryComparison.effects()``: every method against Ghosted Layers (perplexity once per
  cut: the three task jobs of one cut measure the same held-out text);
* the recovery grid (run 6): ``pl.recovery_grid(...).effects()`` per model, every method against Ghosted Layers pooled over
  the model's cuts (ratios x criteria), cuts and passages or items resampled crossed. These rows form their own Holm
  family, "Ghosted Layers (arXiv 2605.15491), grid", declared before the grid's claims were judged: the issue
  calls them grid cells, not headline claims, and the headline family (run 3, the paper's main table) should not
  grow harder to pass with every cell the budget affords. The grid's table in the paper's layout is written to
  ``OUT/ghosted_grid.csv`` (``RecoveryGrid.to_pandas()``), its figure in the report;
* sweeps (runs 2, 5): Figure 8, ``transition_vs_collapse(...).effects()`` over the pairs whose dense accuracy lies
  above chance (a paired bootstrap of correct minus 1/K over items, interval above 0), per criterion;
* CKA (run 7): ``CKAContrast.effects()``, hidden-state minus decision-token CKA after the first cut, both on the same
  items, jackknifed over items (the ``cka-contrast`` jobs), and its control (the template token before the decision
  token against the decision token: is the divergence the decision's, or any template position's?); the two ``cka`` jobs (every block pair, each against its
  shuffled-pairing floor) are described in the notes;
* traces (runs 1, 4) are described in the notes, with the within-family comparison: Qwen2.5-Coder 1.5B against
  0.5B, per task both were traced on, the transition's depth, accuracy, margin and collapse ratio.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import re
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(HERE.parent))

import numpy as np  # noqa: E402

import phaselens as pl  # noqa: E402
from phaselens.experiments.recovery_comparison import REFERENCE  # noqa: E402
from phaselens.report import build_report, section_anchor  # noqa: E402
from phaselens.results import ResultEntry  # noqa: E402
from phaselens.study import parse_spec  # noqa: E402
from phaselens.view import fmt_blocks  # noqa: E402

from _claim_text import CKA_CONTROL, CKA_DIVERGE, DT, JOINT, phase_cut_claim  # noqa: E402

GL = "Ghosted Layers (arXiv 2605.15491), main comparison"
#: the grid's own Holm family (analyses/make_claims.py keeps a paper's ", grid" rows apart from its headline rows)
GL_GRID = "Ghosted Layers (arXiv 2605.15491), grid"
#: the runs whose recovery jobs are grid cells (issue 23: "a grid cell (Figure 8, the Ghosted table's many cuts)")
GRID_RUNS = {6}
FIG8 = "a later transition goes with collapse at a lower pruning ratio (Figure 8: negative correlation)"
SCRIPT = "analyses/runs/claims.py"


class Out:
    """The claims, evidence, claims not judged and notes gathered from the runs."""

    def __init__(self) -> None:
        self.claims: list[Any] = []
        self.evidence: list[str] = []
        self.untested: list[dict[str, str]] = []
        self.notes: list[str] = []
        self.tables: list[Any] = []  # the recovery grid in the paper's layout, one frame per model
        self.figures: list[str] = []  # per claim: where its figure is, relative to OUT
        self.figure = "report.html"  # the figure of the claims being added now

    def claim(self, paper: str, text: str, effect: Any, evidence: str) -> None:
        if effect.predicted is None:  # a description (a collapse ratio, a rank), not a claim
            return
        self.claims.append(pl.Claim(paper=paper, claim=text, effect=effect))
        self.evidence.append(evidence)
        self.figures.append(self.figure)

    def untested_claim(self, paper: str, text: str, model: str, task: str, reason: str) -> None:
        self.untested.append({"paper": paper, "claim": text, "model": model, "task": task, "reason": reason})


def run_number(spec: Path) -> int:
    m = re.match(r"run(\d+)_", spec.name)
    if m is None:
        raise SystemExit(f"{spec}: a run spec is named runN_<what>.toml")
    return int(m.group(1))


def finished_jobs(spec: Path, folder: Path) -> tuple[list[tuple[Any, Any]], int, int, list[str]]:
    """``([(index row, result)], done, planned, errors)`` of one run: its done jobs (those of the last spec run there,
    when the folder keeps its plan), how many of the spec's jobs are done, and the failed jobs' errors."""
    planned = len(parse_spec(spec).jobs())
    if not (folder / "index.parquet").is_file():
        return [], 0, planned, []
    df = pl.load_study(folder)
    plan = list(df.attrs.get("planned") or [])
    if plan:
        df = df[df.job.isin(plan)]
        planned = max(planned, len(plan))
    done = df[df.status == "done"]
    errors = [f"{r.kind} {r.model} {r.task}: {r.error}" for r in df[df.status == "failed"].itertuples()]
    if done.empty:  # a run just started (its index lists running jobs) or whose jobs all failed: no result files yet
        return [], 0, planned, errors
    results = pl.load_results(folder)
    return [(r, results[r.result]) for r in done.itertuples() if r.result in results], len(done), planned, errors


# Replicates of every effect's bootstrap, resampled here from the saved per-item arrays (no model runs): Holm over
# a paper's rows needs p-values below alpha / rows, and a bootstrap p cannot go below 2 / (n_boot + 1). The jobs'
# own n_boot (1000) floors p at 0.002, which no row of a 26-row family can pass (0.05 / 26 = 0.0019).
N_BOOT = 10_000


# ----------------------------------------------------------------------------- each kind's claims
def phase_cut_claims(o: Out, row: Any, pc: Any, run: int) -> None:
    try:
        effs = pc.effects([m for m in pc.methods if m != "identity"] or None, n_boot=N_BOOT)
    except pl.errors.EffectError as e:  # a phase too short for 2 placements
        o.untested_claim(DT, "pruning the silent phase drops the final margin more than pruning the decisive phase",
                         row.model, row.task, f"run {run}: {e}")
        return
    where = f"run {run}: cuts of {pc.n} block(s) around the transition {pc.transition.layer} of {pc.n_blocks}"
    for e in effs:
        paper, text = phase_cut_claim(e.name)
        o.claim(paper, text, e, f"{where}; {e.name}; {e.method}")


def noise_claims(o: Out, row: Any, r: Any, run: int) -> None:
    paper = f"{DT}, Figs. 6, 18"
    if r.transition is None:
        o.untested_claim(paper, "noise in the silent phase hurts the decision more than noise in the decisive phase",
                         row.model, row.task, f"run {run}: the dense model has no transition on this task")
        return
    for e in r.effects(n_boot=N_BOOT):
        eps = e.name.rsplit("eps=", 1)[-1].rstrip(")")
        if e.name.startswith("silent − decisive"):
            text = f"noise (eps={eps}) in the silent phase hurts the decision more than in the decisive phase"
        else:
            text = (f"noise (eps={eps}) just before the transition hurts the decision more than at the same distance "
                    "after it (blocks l*-k against l*+k-1: depth held equal)")
        o.claim(paper, text, e, f"run {run}: {len(r.blocks)} perturbed blocks, {len(r.seeds)} noise seed(s); {e.method}")


def ablation_claims(o: Out, row: Any, r: Any, run: int) -> None:
    paper = f"{DT}, Figs. 9, 19"
    if r.transition is None:
        o.untested_claim(paper, "ablating the blocks at the transition hurts the decision most", row.model, row.task,
                         f"run {run}: the dense model has no transition on this task")
        return
    for e in r.effects(n_boot=N_BOOT):
        if "−" not in e.name:
            continue
        rest = e.name.split("− ", 1)[1]
        o.claim(paper, f"ablating the blocks at the transition (l*-1, l*) hurts the decision more than the {rest}", e,
                f"run {run}: single-block {r.mode} ablation of {len(r.singles)} blocks, transition {r.transition}; "
                f"{e.method}")


def recovery_claims(o: Out, row: Any, rc: Any, run: int, seen: set) -> None:
    if REFERENCE not in rc.methods:
        return
    try:
        effs = rc.effects(n_boot=N_BOOT)
    except pl.errors.EffectError as e:
        o.untested_claim(GL, "Ghosted Layers recovers a cut better than its rivals", row.model, row.task, f"run {run}: {e}")
        return
    where = (f"run {run}: cut {rc.cut} ({len(rc.blocks)} of {rc.n_blocks} blocks, {rc.criterion}), "
             f"{rc.calibration_passages} calibration passages")
    key = (run, row.model, json.dumps(json.loads(row.params), sort_keys=True))
    for e in effs:
        if e.name.endswith("perplexity"):
            if key in seen:  # the same cut, fits and held-out text as another task's job: one claim per cut
                continue
            text = f"Ghosted Layers gives lower held-out perplexity than {e.name.split(' − ')[0]}"
            o.claim(GL, text, e, f"{where}; paired over {rc.n_passages} held-out passages")
        else:
            text = f"Ghosted Layers gives higher task accuracy than {e.name.split(' − ')[1].split(' ')[0]}"
            o.claim(GL, text, e, f"{where}; paired over items")
    seen.add(key)


def grid_claims(o: Out, grids: dict[str, list[Any]], entries: list[Any], unfinished: dict[str, str] | None = None) -> None:
    """Per model, every method against Ghosted Layers pooled over the grid's cuts (``pl.recovery_grid``); each
    model's grid joins the report and the table. A model whose grid run is ``unfinished`` (``{model: "k of J jobs"}``)
    is not judged: the grid's design pools all its cuts, and the cuts done first (one criterion's, in plan order) are
    not that design; the run is listed as not finished."""
    for model, rcs in grids.items():
        rcs = [rc for rc in rcs if REFERENCE in rc.methods]
        if not rcs:
            continue
        grid = pl.recovery_grid(rcs, n_boot=N_BOOT)
        o.tables.append(grid.to_pandas())
        entries.append(ResultEntry(f"run 6 grid {model}", "RecoveryGrid", grid, {"model": model}))
        o.figure = f"report.html#{section_anchor(f'run 6 grid {model}')}"
        if unfinished and model in unfinished:
            o.notes.append(f"- run 6 grid {model}: {len(grid.cuts)} cuts so far ({unfinished[model]}); judged when the "
                           "run is done, over all its cuts (cells in ghosted_grid.csv).")
            continue
        try:
            effs = grid.effects()
        except pl.errors.EffectError as e:
            o.untested_claim(GL_GRID, "Ghosted Layers recovers cuts better than its rivals", model, "", f"run 6: {e}")
            continue
        sizes = "/".join(map(str, sorted({len(rc.blocks) for rc in rcs})))
        cal = "/".join(map(str, sorted({rc.calibration_passages for rc in rcs})))
        crits = "/".join(sorted({rc.criterion for rc in rcs}))
        for e in effs:
            cuts = e.n.get("placements", 0)
            where = (f"run 6: {cuts} distinct cuts of {sizes} of {rcs[0].n_blocks} blocks chosen by {crits}, "
                     f"fit on {cal} calibration passages, {e.method}")
            if "NLL" in e.name:
                rival = e.name.split(" − ")[0]
                o.claim(GL_GRID, f"Ghosted Layers gives lower held-out perplexity than {rival} across cuts "
                        "(NLL per token)", e, f"{where}; {e.n.get('items')} held-out passages")
            else:
                rival = e.name.split(" − ")[1].split(" ")[0]
                o.claim(GL_GRID, f"Ghosted Layers gives higher task accuracy than {rival} across cuts", e,
                        f"{where}; {e.n.get('items')} items")


def above_chance(sw: Any, boot_seed: int = 0) -> Any:
    """The dense accuracy's excess over chance (correct minus ``1/K`` per item, paired bootstrap over items)."""
    tr = sw.steps[0].trace
    correct = np.asarray(tr.correct[:, -1], dtype=float)
    chance = 1.0 / np.asarray(tr.mask, dtype=bool).sum(1)
    return pl.paired_effect(correct, chance, name="dense accuracy − chance", arms=("dense", "chance"),
                            predicted="positive", boot_seed=boot_seed, model=sw.model, task=sw.task)


def pairs(sweeps: list[Any]) -> str:
    """"N usable (model, task) pairs (M sweeps)": a random-selection pair has one sweep per seed."""
    n = len({(s.model, s.task) for s in sweeps})
    return f"{n} usable pairs" + (f" ({len(sweeps)} sweeps)" if len(sweeps) > n else "")


def figure8_claims(o: Out, sweeps: dict[str, list[Any]], unfinished: list[str], entries: list[Any]) -> None:
    """Figure 8 per criterion over the pairs above chance; each criterion's study (its figure) joins the report."""
    for crit, found in sweeps.items():
        keep, left = [], []
        for sw in found:
            try:
                e = above_chance(sw)
            except pl.errors.EffectError as err:
                left.append(f"{sw.model}/{sw.task} ({err})")
                continue
            (keep if e.lo > 0 else left).append(sw if e.lo > 0 else
                                                f"{sw.model}/{sw.task} (dense accuracy − chance {e.estimate:+.3f} "
                                                f"[{e.lo:+.3f}, {e.hi:+.3f}])")
        text = f"{FIG8} ({crit} selection)"
        left = list(dict.fromkeys(left))  # a pair's seeds share its dense model and items: name it once
        if left:
            o.notes.append(f"- Figure 8 ({crit}): pairs left out, dense accuracy not above chance: {'; '.join(left)}.")
        if not keep:
            o.untested_claim(f"{DT}, Fig. 8", text, "", "", "no finished sweep with dense accuracy above chance"
                             + (f" ({'; '.join(unfinished)})" if unfinished else ""))
            continue
        study = pl.transition_vs_collapse(keep)
        entries.append(ResultEntry(f"Figure 8 {crit}", "CollapseStudy", study, {"criterion": crit}))
        o.figure = f"report.html#{section_anchor(f'Figure 8 {crit}')}"
        o.notes.append(f"- Figure 8 ({crit}): {study.summary().splitlines()[0]}")
        effs = {e.name: e for e in study.effects()}
        picks = [("all pairs", "transition fraction vs collapse ratio: pearson r, all pairs (fisher)"),
                 ("within models", "transition fraction vs collapse ratio: pearson r, within models (fisher)")]
        got = False
        for scope, name in picks:
            if name in effs:
                got = True
                o.claim(f"{DT}, Fig. 8", f"{text}, {scope}", effs[name],
                        f"{pairs(study.used)} of {len({(s.model, s.task) for s in keep})} pairs above chance; the "
                        "paper reports r = -0.96"
                        + (f"; not finished: {'; '.join(unfinished)}" if unfinished else ""))
        if not got:
            why = "; ".join(study.skipped_effects()) or f"{len(study.used)} usable pair(s)"
            o.untested_claim(f"{DT}, Fig. 8", text, ",".join(sorted({s.model for s in keep})),
                             ",".join(sorted({s.task for s in keep})), f"{why} (a correlation effect needs 5 pairs)")


def collapse_text(sw: Any) -> str:
    """The sweep's collapse ratio with its bootstrap interval over items (``Sweep.effects()``), as text."""
    if sw.collapse_ratio is None:
        return "no collapse"
    try:
        (e,) = sw.effects()
    except (pl.errors.PhaselensError, ValueError) as err:
        return f"collapse ratio {sw.collapse_ratio:.3f} (no interval: {err})"
    return (f"collapse ratio {e.estimate:.3f} [{e.lo:.3f}, {e.hi:.3f}] (items resampled; no collapse in "
            f"{e.undefined:.1%} of the replicates)")


def describe_trace(o: Out, run: int, tr: Any) -> None:
    line = tr.summary().splitlines()[0] if hasattr(tr, "summary") else repr(tr)
    t = getattr(tr, "trace", None)
    items = f" (items: {t.task_note or f'{t.n_items}'})" if t is not None else ""
    o.notes.append(f"- run {run}: {line}{items}")


SIZE = re.compile(r"^(?P<family>.+)-(?P<size>\d+(?:\.\d+)?)b$")


def family_notes(o: Out, traces: list[Any], sweeps: list[Any]) -> None:
    """Within a model family (names ``<family>-<size>b``, e.g. Qwen2.5-Coder 1.5B and 0.5B), per task traced for two
    sizes or more: where each size's transition sits (block and relative depth), its accuracy and final margin, and
    its collapse ratio where a sweep ran. A description (the issue's within-family comparison), not a claim: the
    note names what else differs between the sizes (prompt format, quantisation, the items read)."""
    fams: dict[tuple[str, str], dict[str, Any]] = {}
    for t in traces:
        m = SIZE.match(t.trace.model)
        if m:
            fams.setdefault((m["family"], t.trace.task), {})[t.trace.model] = t
    for (fam, task), got in sorted(fams.items()):
        if len(got) < 2:
            continue
        parts = []
        for model in sorted(got, key=lambda x: float(SIZE.match(x)["size"]), reverse=True):
            t = got[model]
            tr = t.trace
            where = ("no transition" if t.layer is None else
                     f"transition at block {t.layer} of {tr.n_blocks} ({t.layer / tr.n_blocks:.0%} of depth)")
            by_crit: dict[str, list[str]] = {}  # one entry per criterion: its seeds' collapse ratios together
            for sw in sweeps:
                if sw.model == model and sw.task == task:
                    by_crit.setdefault(sw.criterion, []).append(
                        f"{sw.collapse_ratio:.3f}" if sw.collapse_ratio is not None else "none")
            col = [f"{c} collapse ratio {v[0]}" if len(v) == 1 else f"{c} collapse ratios {', '.join(v)} ({len(v)} seeds)"
                   for c, v in by_crit.items()]
            parts.append(f"{model} ({tr.format}, {tr.n_items} items): {where}, accuracy {tr.accuracy[-1]:.2f}, "
                         f"final margin {tr.margins[-1]:+.2f}" + (f", {', '.join(col)}" if col else ""))
        o.notes.append(f"- within {fam}, {task} (a description{confounds(list(got.values()))}): "
                       + "; ".join(parts) + ".")


def confounds(transitions: list[Any]) -> str:
    """``", confounded by ..."``: what differs between the traced sizes besides size (format, quantisation as the
    embedded registry records it, the items read), or ``""``."""
    trs = [t.trace for t in transitions]
    quant = {pl.embedded.EMBEDDED.get(tr.model, {}).get("quantization") for tr in trs}
    items = {tuple(tr.item_ids) or tr.n_items for tr in trs}
    what = [w for w, differs in (("format", len({tr.format for tr in trs}) > 1), ("quantisation", len(quant) > 1),
                                 ("the items read", len(items) > 1)) if differs]
    said = ", ".join(what[:-1]) + " and " + what[-1] if len(what) > 1 else "".join(what)
    return f", confounded by {said}" if what else ""


def describe_cka(o: Out, run: int, row: Any, r: Any) -> None:
    b, v = r.matched()
    floor = np.nanmean(np.diag(r.floor)) if r.floor is not None and r.floor.size else float("nan")
    o.notes.append(f"- run {run}: CKA {row.model} dense vs pruned ({len(r.blocks_a) - len(r.blocks_b)} blocks cut) on "
                   f"{row.task}, {r.where}, {r.n_samples} samples, "
                   f"{'debiased' if r.debiased else 'plug-in'}: mean matched CKA {np.mean(v):.3f} over {len(v)} blocks "
                   f"(shuffled-pairing floor {floor:.3f}).")


def cka_contrast_claims(o: Out, run: int, row: Any, r: Any) -> None:
    """Figs. 2, 10, 11 on the same items: hidden-state minus decision-token CKA after the first cut (predicted > 0)."""
    e, c = r.effects()
    setting = (f"run {run}: {len(r.removed)} blocks cut by {json.loads(row.params).get('criterion', 'bi')} "
               f"({fmt_blocks(r.removed)}); {len(r.blocks)} surviving blocks after the first cut; decision tokens "
               f"{np.mean(r.decision):.3f} ({r.n_items} items), hidden states {np.mean(r.hidden):.3f} ({r.n_tokens} "
               f"prompt tokens of the same items, each prompt's first left out), control tokens (the prompt token "
               f"before the decision token) {np.mean(r.control):.3f}; {e.method}")
    o.claim(f"{DT}, Figs. 2, 10, 11", CKA_DIVERGE, e, setting)
    o.claim(JOINT, CKA_CONTROL, c, setting)


# ----------------------------------------------------------------------------- main
def collect(runs: Path, specs: Path) -> tuple[Out, list[dict[str, Any]], list[Any]]:
    """The claims (``Out``), each run's state and every finished job's result (for the report)."""
    o = Out()
    state = []
    entries = []
    sweeps: dict[str, list[Any]] = {}
    sweep_runs: dict[int, str] = {}
    seen: set = set()
    grids: dict[str, list[Any]] = {}
    grid_open: dict[str, str] = {}
    traces: list[Any] = []
    for spec in sorted(specs.glob("run*_*.toml"), key=lambda p: (run_number(p), p.name)):
        n = run_number(spec)
        jobs, done, planned, errors = finished_jobs(spec, runs / spec.stem)
        state.append({"run": n, "spec": spec.name, "folder": spec.stem, "done": done, "planned": planned})
        for e in errors:
            o.notes.append(f"- run {n} ({spec.stem}): failed job {e}")
        if done < planned:
            failed = f", {len(errors)} failed (their errors are in the notes; rerun the spec to retry them)" if errors else ""
            o.untested_claim(f"issue 23, run {n}", f"the claims of {spec.stem}", "", "",
                             f"run {n} not finished: {done} of {planned} jobs done in {runs.name}/{spec.stem}/{failed}")
        for row, r in jobs:
            entries.append(ResultEntry(f"run {n} {row.result}", type(r).__name__, r, r.provenance()))
            o.figure = f"report.html#{section_anchor(f'run {n} {row.result}')}"
            if row.kind == "phase-cuts":
                phase_cut_claims(o, row, r, n)
            elif row.kind == "noise":
                noise_claims(o, row, r, n)
            elif row.kind == "ablate":
                ablation_claims(o, row, r, n)
            elif row.kind == "recovery" and n in GRID_RUNS:
                grids.setdefault(r.model, []).append(r)
                if done < planned:
                    grid_open[r.model] = f"{spec.stem}: {done} of {planned} jobs"
            elif row.kind == "recovery":
                recovery_claims(o, row, r, n, seen)
            elif row.kind == "sweep":
                sweeps.setdefault(r.criterion, []).append(r)
                if done < planned:
                    sweep_runs[n] = f"run {n} ({spec.stem}): {done} of {planned} jobs"
                o.notes.append(f"- run {n}: sweep {r.criterion} {r.model} on {r.task}: dense accuracy "
                               f"{r.dense_accuracy:.3f}, {collapse_text(r)} after {len(r.steps) - 1} cuts.")
            elif row.kind == "trace":
                describe_trace(o, n, r)
                traces.append(r)
            elif row.kind == "cka":
                describe_cka(o, n, row, r)
            elif row.kind == "cka-contrast":
                cka_contrast_claims(o, n, row, r)
    family_notes(o, traces, [sw for found in sweeps.values() for sw in found])
    o.figure = "report.html"
    if sweeps:
        figure8_claims(o, sweeps, list(sweep_runs.values()), entries)
    grid_claims(o, grids, entries, grid_open)
    return o, state, entries


def write(o: Out, state: list[dict[str, Any]], out: Path, argv: list[str], entries: list[Any] = ()) -> None:
    out.mkdir(parents=True, exist_ok=True)
    table = pl.claims(o.claims, name="runs") if o.claims else None
    prov = {"script": SCRIPT, "argv": " ".join(argv), "models": [], "tasks": {}, "runs": state,
            "phaselens": pl.__version__, "python": platform.python_version(),
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    claims = []
    if table is not None:
        table.save(out, "claims", script=SCRIPT)
        prov["models"] = sorted({c.effect.model for c in table.claims if c.effect.model})
        claims = [{**{k: r[k] for k in ("paper", "claim", "model", "task", "format", "n_items", "n_placements",
                                         "n_seeds", "estimate", "lo", "hi", "p", "p_adj", "verdict", "predicted", "mde",
                                         "effect", "method")}, "evidence": ev, "figure": fig}
                  for r, ev, fig in zip(table.rows, o.evidence, o.figures)]
    else:
        for stale in ("claims.json", "claims.safetensors"):
            (out / stale).unlink(missing_ok=True)
    grid = out / "ghosted_grid.csv"
    if o.tables:
        import pandas as pd

        pd.concat(o.tables, ignore_index=True).to_csv(grid, index=False, float_format="%.6g")
    else:
        grid.unlink(missing_ok=True)
    doc = {"provenance": prov, "claims": claims, "untested": o.untested, "notes": o.notes, "figures": [], "tables": []}
    (out / "verdicts.json").write_text(json.dumps(doc, indent=1, default=str), encoding="utf-8")
    lines = ["# The at-size runs (issue 23): claims from the finished jobs", "",
             "| run | spec | jobs done |", "|---|---|---|"]
    lines += [f"| {s['run']} | `{s['spec']}` | {s['done']} of {s['planned']} |" for s in state]
    lines += ["", "## Claims", ""]
    if table is not None:
        for c, r, ev in zip(table.claims, table.rows, o.evidence):
            lines.append(f"- **{r['verdict']}** ({c.effect.model}, {c.effect.task}): {c.claim}. "
                         f"{c.effect.summary().splitlines()[0]}; Holm-adjusted p = {r['p_adj']:.3g}. {ev}")
    else:
        lines.append("None yet.")
    lines += ["", "## Not judged", ""] + [f"- {u['paper']}: {u['claim']}: {u['reason']}" for u in o.untested]
    lines += ["", "## Notes", ""] + o.notes + [""]
    (out / "summary.md").write_text("\n".join(lines), encoding="utf-8")
    if entries:  # one offline page: the claims table, then every finished job's summary, figures and table
        build_report(list(entries), out / "report.html", title="phaselens: the at-size runs (issue 23)", claims=table)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=Path, default=HERE, help="the folder holding each run's study folder")
    p.add_argument("--specs", type=Path, default=HERE / "specs", help="the runs' specs (runN_<what>.toml)")
    p.add_argument("--out", type=Path, default=ROOT / "analyses" / "results" / "runs")
    a = p.parse_args(argv)
    o, state, entries = collect(a.runs, a.specs)
    write(o, state, a.out, list(sys.argv[1:] if argv is None else argv), entries)
    print(f"{a.out}: {len(o.claims)} claims, {len(o.untested)} not judged "
          f"({sum(s['done'] for s in state)} of {sum(s['planned'] for s in state)} jobs done)")


if __name__ == "__main__":
    main()
