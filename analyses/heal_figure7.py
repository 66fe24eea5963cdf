"""Decision-transition paper, Figure 7: does fine-tuning ("healing") a pruned model sharpen its decision margins at
moderate pruning, and does it bring the transition back past the collapse ratio?

    python analyses/heal_figure7.py --out DIR                      # SmolLM2 on capitals (cloze), full fine-tuning
    python analyses/heal_figure7.py --out DIR --models qwen2.5-coder-1.5b --tasks arc-easy --format letters \\
        --method lora --limit 200                                  # the paper's setting (heavy: not run here)

Per model and task: an iterative Block Influence sweep (``pl.iterative_prune``, resumable in ``WORK/sweep_*``) gives
the collapse ratio; the cut of ``--moderate-offset`` blocks fewer than the collapse (before it) and the cut of
``--heavy-offset`` blocks more (past it) are each healed with ``pl.heal`` on **ARC-Easy's train split** (lettered
when the task is asked in letters, else in lm-eval's continuation layout ``Question: ...\\nAnswer: <option>``),
which is disjoint from the evaluated items (ARC-Easy test, or a built-in task; checked by question text), and
traced before and after. Effects (``pl.paired_effect``, ``pl.hierarchical_effect``: items bootstrap, percentile
intervals) and Holm-corrected verdicts (``pl.claims``) ask:

1. at the moderate cut, healing raises the final-layer margin (healed − pruned, per item; predicted positive);
2. at the heavy cut, healing does not bring the transition back: the healed model's final mean margin (the
   transition exists exactly when it is positive) stays <= 0 (predicted negative; its premise, that the heavy cut
   lost the transition, is reported beside it);
3. healing gains more at the moderate cut than at the heavy one (difference of the two per-item gains; positive).

**Sizing the training from measured throughput.** Unless ``--steps`` is given, the script times 2 steps of
``pl.heal`` on the moderate cut (after 1 warm-up step) and runs ``floor(--train-minutes x 60 / (seconds per step))``
steps per heal (capped by ``--max-steps``), printing the measurement with the load average (``os.getloadavg``).
Measured here (2026-12-03, `uptime` load average 18 on 2 CPU cores shared by ~9 sessions, so about a tenth of
one core for this run): SmolLM2-135M cut to 26 of 30 blocks, full fine-tuning, 8 ARC-Easy train items of <= 128
tokens per step: **119 s per step** (0.008 steps/s), so the 8-minute budget gave **4 steps per heal** (32 training
items, lr 1e-5): a run at a real but tiny size, committed in ``analyses/results/heal_figure7/``. On a quiet machine
the same step should take roughly a tenth of that (load / cores), i.e. 50-100 steps in the same budget; a run that
can decide the claims needs a few hundred steps (``--steps 300``). Qwen2.5-Coder-1.5B with LoRA (rank 8, lettered
ARC-Easy) runs the 1.5B forward and backward through frozen weights, roughly 10x SmolLM2's cost per step: not run
here.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

import _common as C  # noqa: E402
from _common import pl  # noqa: E402

PAPER = "decision-transition (arXiv 2605.07271), Figure 7"


def training_task(fmt: str, limit: int | None, seed: int):
    """ARC-Easy's train split in the evaluated format's family (letters, or lm-eval's continuation layout)."""
    return pl.load_task("arc-easy", split="train", format="letters" if fmt == "letters" else "continuation",
                        limit=limit, seed=seed)


def disjoint(train, task) -> int:
    """How many evaluated questions also appear (same text) among the training questions (must be 0)."""
    seen = {it.question.strip() for it in train.items}
    return sum(it.question.strip() in seen for it in task.items)


def final_item_margins(tr) -> np.ndarray:
    """``[N]`` per-item Decision Margin at the last block read."""
    return np.asarray(tr.item_margins)[:, -1]


def sized_steps(view, train, a, run) -> tuple[int, float]:
    """Steps per heal from measured throughput (seconds per step of 2 timed steps after 1 warm-up)."""
    kw = dict(method=a.method, lr=a.lr, batch_size=a.batch_size, seq_len=a.seq_len, seed=a.seed, progress=False)
    pl.heal(view, train, steps=1, **kw)  # warm-up (allocations, first-call overheads)
    h = pl.heal(view, train, steps=2, **kw)
    per = h.healing.seconds / 2
    load = os.getloadavg()
    steps = max(1, min(a.max_steps, int(a.train_minutes * 60 / per)))
    run.log(f"throughput: {per:.1f} s per step ({a.method}, {a.batch_size} x <= {a.seq_len} tokens, {view.n_kept} blocks); "
            f"load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}; {a.train_minutes} min per heal -> {steps} steps")
    run.note(f"- Throughput measured before training: {per:.1f} s per {a.method} step of {a.batch_size} sequences "
             f"(<= {a.seq_len} tokens) on the {view.n_kept}-block model, load average {load[0]:.1f} (1 min) / "
             f"{load[1]:.1f} (5 min) on {os.cpu_count()} cores; the budget of {a.train_minutes} min per heal gives "
             f"{steps} steps (cap {a.max_steps}).")
    return steps, per


def main(argv=None) -> None:
    p = C.parser(__doc__.splitlines()[0], tasks="capitals", models="smollm2-135m", calibration=16)
    C.add_sweep_args(p, max_ratio=0.35)
    p.add_argument("--method", default="auto", choices=["auto", "lora", "full"],
                   help="healing method (auto: full fine-tuning below 500M parameters, LoRA above)")
    p.add_argument("--steps", type=int, default=None, help="steps per heal (default: sized from measured throughput)")
    p.add_argument("--train-minutes", type=float, default=5.0, help="training budget per heal when --steps is not given")
    p.add_argument("--max-steps", type=int, default=400, help="cap of the sized steps")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: pl.heal's for the method)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--train-items", type=int, default=None, help="ARC-Easy train items used (default: all)")
    p.add_argument("--moderate-offset", type=int, default=2, help="the moderate cut: this many blocks before the collapse")
    p.add_argument("--heavy-offset", type=int, default=1, help="the heavy cut: this many blocks past the collapse")
    p.add_argument("--n-boot", type=int, default=1000)
    p.add_argument("--work", type=Path, default=None, help="sweeps and healing run folders (default: OUT/work)")
    run = C.start("heal_figure7", "Healing pruned models: margins and the transition (DT Figure 7)", p, argv)
    a = run.args
    work = a.work or run.out / "work"
    rows, curves, losses, table = [], [], [], []
    for name in a.models:
        m = run.model(name)
        L = m.n_blocks
        n_params = sum(q.numel() for q in m.hf.parameters())
        method = a.method if a.method != "auto" else ("full" if n_params < 5e8 else "lora")
        for spec in a.tasks:
            task = run.task(spec)
            train = training_task(task.format, a.train_items, a.seed)
            overlap = disjoint(train, task)
            if overlap:  # ARC-Easy's train split repeats a few test questions: those are left out of the training data
                asked = {it.question.strip() for it in task.items}
                train = dataclasses.replace(train, items=[it for it in train.items if it.question.strip() not in asked])
                run.note(f"- {overlap} evaluated item(s) of {task.name} also appear (same question) in ARC-Easy's train "
                         f"split: left out of the training data ({len(train.items)} training items remain).")
                assert disjoint(train, task) == 0
            sweep = pl.iterative_prune(m, task, criterion="bi", steps=C.sweep_steps(L, a.max_ratio),
                                       calibration=run.calibration(), heldout=run.heldout(), boot_seed=a.seed,
                                       n_boot=a.n_boot, out=work / f"sweep_{name}_{task.name}")
            cr = sweep.collapse_ratio
            if cr is None:
                run.note(f"- {name}, {task.name}: no collapse up to ratio {a.max_ratio} (accuracy "
                         f"{sweep.dense_accuracy:.3f} -> {sweep.steps[-1].accuracy:.3f}); nothing to heal. Raise --max-ratio.")
                continue
            n_col = int(round(cr * L))
            cuts = {"moderate": max(1, n_col - a.moderate_offset), "heavy": min(len(sweep.steps) - 1, n_col + a.heavy_offset)}
            run.log(f"{name} {task.name}: collapse ratio {cr:.3f} ({n_col}/{L} blocks); moderate {cuts['moderate']}, "
                    f"heavy {cuts['heavy']} blocks; healing by {method} on {len(train)} ARC-Easy train items")
            dense = sweep.steps[0].trace
            curves += [{"model": name, "task": task.name, "arm": "dense", "cut": "none", "n_cut": 0, "block": int(b),
                        "margin": float(mg), "lo": float(lo), "hi": float(hi)}
                       for b, mg, lo, hi in zip(dense.blocks, dense.margins, *dense.margin_ci)]
            a.method = method
            steps = a.steps
            if steps is None:
                steps, _ = sized_steps(pl.prune(m, sweep.steps[cuts["moderate"]].removed), train, a, run)
            margins: dict[str, tuple[np.ndarray, np.ndarray]] = {}
            ids = None
            for label, n in cuts.items():
                step = sweep.steps[n]
                view = pl.prune(m, step.removed)
                before = step.trace
                t0 = time.time()
                healed = pl.heal(view, train, method=method, steps=steps, lr=a.lr, batch_size=a.batch_size,
                                 seq_len=a.seq_len, seed=a.seed, out=work / f"heal_{name}_{task.name}_{n}")
                info = healed.healing
                after = pl.decision_trace(healed, task, n_boot=a.n_boot, boot_seed=a.seed)
                run.log(f"{label} cut ({n} blocks: {','.join(map(str, step.removed))}): healed in {time.time() - t0:.0f} s, "
                        f"loss {info.losses[0]:.3f} -> {info.losses[-1]:.3f}; accuracy {before.accuracy[-1]:.3f} -> "
                        f"{after.accuracy[-1]:.3f}, final margin {before.margins[-1]:.3f} -> {after.margins[-1]:.3f}")
                kept = [b for b in range(L) if b not in set(step.removed)]
                for arm, tr, blocks in (("pruned", before, before.blocks), ("healed", after, [kept[i] for i in after.blocks])):
                    curves += [{"model": name, "task": task.name, "arm": arm, "cut": label, "n_cut": n, "block": int(b),
                                "margin": float(mg), "lo": float(lo), "hi": float(hi)}
                               for b, mg, lo, hi in zip(blocks, tr.margins, *tr.margin_ci)]
                    rows.append({"model": name, "task": task.name, "cut": label, "n_cut": n, "ratio": n / L,
                                 "removed": ",".join(map(str, step.removed)), "arm": arm, "method": method,
                                 "steps": steps if arm == "healed" else 0, "accuracy": float(tr.accuracy[-1]),
                                 "accuracy_lo": float(tr.accuracy_ci[0][-1]), "accuracy_hi": float(tr.accuracy_ci[1][-1]),
                                 "final_margin": float(tr.margins[-1]), "margin_lo": float(tr.margin_ci[0][-1]),
                                 "margin_hi": float(tr.margin_ci[1][-1]),
                                 "transition_block": _transition(tr, kept if arm == "healed" else None),
                                 "n_items": len(task), "train_loss_first": info.losses[0] if arm == "healed" else None,
                                 "train_loss_last": info.losses[-1] if arm == "healed" else None,
                                 "seconds_per_step": info.seconds / max(1, steps - info.resumed_from) if arm == "healed" and info.seconds else None})
                losses += [{"model": name, "task": task.name, "cut": label, "n_cut": n, "step": i + 1, "loss": x}
                           for i, x in enumerate(info.losses)]
                margins[label] = (final_item_margins(after), final_item_margins(before))
                assert ids is None or ids == list(before.item_ids)
                ids = list(before.item_ids)
            kw = dict(n_boot=a.n_boot, boot_seed=a.seed, model=name, task=task.name, format=task.format)
            (hm, pm), (hh, ph) = margins["moderate"], margins["heavy"]
            e_mod = pl.paired_effect(hm, pm, name=f"healed − pruned final margin, moderate cut ({cuts['moderate']}/{L})",
                                     arms=("healed", "pruned"), predicted="positive", **kw)
            e_heavy = pl.hierarchical_effect(hh, name=f"final mean margin after healing, heavy cut ({cuts['heavy']}/{L})",
                                             dims=("items",), require=(), predicted="negative", **kw)
            e_did = pl.hierarchical_effect({"moderate": hm - pm, "heavy": hh - ph}, dims=("items",), require=(),
                                           name="healing gain at the moderate cut − at the heavy cut", predicted="positive", **kw)
            e_heavy_gain = pl.paired_effect(hh, ph, name=f"healed − pruned final margin, heavy cut ({cuts['heavy']}/{L})",
                                            arms=("healed", "pruned"), **kw)
            lost = float(ph.mean()) <= 0
            entries = [
                pl.Claim(PAPER, "fine-tuning sharpens the margins at moderate pruning (before the collapse ratio)", e_mod),
                pl.Claim(PAPER, "fine-tuning does not bring the transition back at heavy pruning (past the collapse "
                                "ratio): the healed final mean margin stays <= 0", e_heavy),
                pl.Claim(PAPER, "fine-tuning helps the moderate cut more than the heavy cut", e_did),
            ]
            table.append(pl.claims(entries, name=f"{name} {task.name}"))  # this run's own table (heal_claims.csv)
            for c in entries:  # the verdicts of record: analyses/make_claims.py (Holm over all rows of the paper)
                premise = "" if c.effect is not e_heavy else (
                    f" Premise: the heavy cut {'lost' if lost else 'did NOT lose'} the transition before healing "
                    f"(pruned final mean margin {ph.mean():+.3f}).")
                run.claim(PAPER, c.claim, c.effect, f"{c.effect.name}; {task.name} ({task.format}, {len(task)} items)."
                          f"{premise}")
            run.note(f"- {name}, {task.name} ({task.format}, {len(task)} items; collapse ratio {cr:.3f} = {n_col}/{L} "
                     f"blocks by BI): healing by {method}, {steps} steps of {a.batch_size} ARC-Easy train items "
                     f"(lr {a.lr or pl.healing.DEFAULT_LR[method]:g}). Moderate cut {cuts['moderate']}/{L}: accuracy "
                     f"{_acc(rows, name, task.name, 'moderate')}; final mean margin {pm.mean():+.3f} -> {hm.mean():+.3f}. "
                     f"Heavy cut {cuts['heavy']}/{L}: accuracy {_acc(rows, name, task.name, 'heavy')}; final mean margin "
                     f"{ph.mean():+.3f} -> {hh.mean():+.3f} (healed − pruned {e_heavy_gain.estimate:+.3f} "
                     f"[{e_heavy_gain.lo:+.3f}, {e_heavy_gain.hi:+.3f}]). Dense accuracy {dense.accuracy[-1]:.3f}, "
                     f"final margin {dense.margins[-1]:+.3f}.")
            _figure(run, curves, losses, name, task.name, L)
    if rows:
        run.csv(pd.DataFrame(rows), "heal_figure7")
        run.csv(pd.DataFrame(curves), "heal_margin_curves")
        run.csv(pd.DataFrame(losses), "heal_training_loss")
    if table:
        claims = pd.concat([t.to_pandas() for t in table], ignore_index=True)
        run.csv(claims[[c for c in claims.columns if c != "effect"] + ["effect"]], "heal_claims")
    run.finish(
        f"Per model and task: iterative Block Influence pruning to find the collapse ratio; the cut {a.moderate_offset} "
        f"block(s) before it (moderate) and {a.heavy_offset} past it (heavy) healed with pl.heal on ARC-Easy's train "
        f"split (disjoint from the evaluated items), then traced with the logit lens. Effects: per-item final-layer "
        f"margins, items bootstrap ({a.n_boot} resamples, percentile intervals), Holm-corrected verdicts per model and "
        "task (pl.claims).")


def _transition(tr, kept) -> float | None:
    """The transition block (original numbering; ``None`` when the final mean margin is not positive)."""
    margins = np.asarray(tr.margins)
    if margins[-1] <= 0:
        return None
    i = len(margins) - 1
    while i > 0 and margins[i - 1] > 0:
        i -= 1
    return int(kept[int(tr.blocks[i])]) if kept is not None else int(tr.blocks[i])


def _acc(rows, model, task, cut) -> str:
    r = {x["arm"]: x for x in rows if x["model"] == model and x["task"] == task and x["cut"] == cut}
    return f"{r['pruned']['accuracy']:.3f} -> {r['healed']['accuracy']:.3f}"


def _figure(run, curves, losses, name, task, L) -> None:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    df = pd.DataFrame(curves)
    df = df[(df.model == name) & (df.task == task)]
    fig = make_subplots(rows=1, cols=2, subplot_titles=("Decision Margin per block (original numbering)",
                                                        "training loss"))
    styles = {"dense": "black", "pruned": "gray", "healed": "crimson"}
    for (arm, cut, n), g in df.groupby(["arm", "cut", "n_cut"], sort=False):
        dash = "solid" if cut in ("none", "moderate") else "dot"
        fig.add_trace(go.Scatter(x=g.block, y=g.margin, mode="lines+markers", name=f"{arm} ({cut}, {n}/{L} cut)",
                                 line=dict(color=styles[arm], dash=dash),
                                 error_y=dict(type="data", symmetric=False, array=g.hi - g.margin, arrayminus=g.margin - g.lo)),
                      row=1, col=1)
    lo = pd.DataFrame(losses)
    lo = lo[(lo.model == name) & (lo.task == task)]
    for (cut, n), g in lo.groupby(["cut", "n_cut"]):
        fig.add_trace(go.Scatter(x=g.step, y=g.loss, mode="lines", name=f"loss ({cut}, {n}/{L})"), row=1, col=2)
    fig.add_hline(y=0, line=dict(dash="dot"), row=1, col=1)
    fig.update_layout(title=f"Healing pruned {name} on {task}: margins before and after (DT Figure 7)")
    run.figure(fig, f"heal_{name}_{task}")


if __name__ == "__main__":
    main()
