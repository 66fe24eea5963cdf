"""Decision-transition paper, Fig. 8: transition depth against collapse ratio across (model, task)
pairs (pl.transition_vs_collapse over iterative sweeps run until accuracy collapses).

    python analyses/transition_vs_collapse.py --out /tmp/analyses_out/transition_vs_collapse
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402
from _common import pl  # noqa: E402

PAPER = "decision-transition (arXiv 2605.07271), Fig. 8"


def main(argv=None) -> None:
    p = C.parser(__doc__.splitlines()[0], tasks="capitals,languages,opposites,currencies")
    C.add_sweep_args(p, max_ratio=0.7)
    p.add_argument("--criterion", default="bi", help="iterative criterion")
    p.add_argument("--chunk", type=int, default=3, help="extend each sweep this many cuts at a time until it collapses")
    p.add_argument("--add-sweeps", type=lambda s: [Path(x) for x in s.split(",") if x], default=[],
                   help="saved sweeps to add as (model, task) points (Sweep result files or iterative_prune out= folders, "
                        "pl.load_sweep), e.g. another model's sweep in another format (qwen2.5-coder-1.5b in letters); "
                        "--models '' with --add-sweeps uses only these")
    run = C.start("transition_vs_collapse", "Transition depth versus collapse ratio", p, argv)
    a = run.args
    if not hasattr(pl, "transition_vs_collapse"):
        raise SystemExit("this phaselens has no transition_vs_collapse yet (phaselens/stats.py)")
    sweeps = []
    for f in a.add_sweeps:
        sw = pl.load_sweep(f)
        run.note(f"- added {sw.model}, {sw.task} from {f} (a sweep of {len(sw.steps) - 1} cuts, up to ratio "
                 f"{C.fmt(sw.steps[-1].ratio, 3)}).")
        sweeps.append(sw)
    st = run.study([{"kind": "sweep", "criterion": a.criterion, "until": "collapse", "chunk": a.chunk,
                     "max_ratio": a.max_ratio}]) if a.models else None
    for name in a.models if st is not None else []:
        for spec in a.tasks:
            sw = C.need(st, name, spec, "sweep")
            if sw.dense_accuracy <= sw.chance:  # no decline to measure: the sweep was not extended
                run.note(f"- {name}, {sw.task}: dense accuracy {C.fmt(sw.dense_accuracy)} is not above chance "
                         f"{C.fmt(sw.chance)}; sweep stopped after {len(sw.steps) - 1} cuts (this pair has no collapse ratio).")
            sweeps.append(sw)
    study = pl.transition_vs_collapse(sweeps)
    run.csv(study.to_pandas(), "transition_vs_collapse")
    fig = study.plot()
    run.figure(fig, "transition_vs_collapse")
    run.note(study.summary())
    for q in study.points:
        run.note(f"- {q.model}, {q.task}: transition block {q.transition} of {q.n_blocks} (fraction {C.fmt(q.fraction)}), collapse "
                 f"ratio {C.fmt(q.collapse_ratio)}, dense accuracy {C.fmt(q.dense_accuracy)}" + ("" if q.usable else f" - left out: {q.reason}"))
    # the paper's sign: r = -0.96, a later transition goes with collapse at a LOWER pruning ratio (predicted r < 0).
    # study.effects(): Pearson and Spearman, each with a Fisher-z and a pair-bootstrap interval, over all pairs,
    # within models and across models; the claim is Pearson over all pairs (Fisher z), the rest reported beside it
    claim = "a later transition goes with collapse at a lower pruning ratio (Figure 8: negative correlation)"
    used = study.used
    models = ", ".join(sorted({q.model for q in used})) or ", ".join(a.models)
    tasks = ", ".join(sorted({q.task for q in used}))
    effects = study.effects()
    for e in effects:
        run.note(f"- {e.summary().splitlines()[0]}")
    for why in study.skipped_effects():
        run.note(f"- not computed: {why}")
    fig8 = next((e for e in effects if e.name.endswith("pearson r, all pairs (fisher)")), None)
    if fig8 is None:
        run.claim(PAPER, claim, None, f"{len(used)} usable pair(s): a correlation effect needs at least 5",
                  model=models, task=tasks)
    else:
        run.claim(PAPER, claim, fig8, f"all pairs: {len(used)} ({len({q.model for q in used})} model(s))")
    run.finish(
        f"For each (model, task): the dense transition (as a fraction of depth, l*/L) and the collapse ratio of an "
        f"iterative {a.criterion} sweep (the first pruning ratio whose accuracy falls below chance + 0.5 (dense - chance)), "
        f"sweeps extended {a.chunk} cuts at a time until collapse, at most {a.max_ratio:.0%} of the blocks (one study job per "
        f"pair, pl.run_study); Pearson and Spearman r across the pairs with Fisher-z and pair-bootstrap intervals, "
        f"within and across models where there are enough points (pl.transition_vs_collapse(...).effects(); pairs with "
        f"no transition or no collapse are left out and listed). The paper's sign is negative.")


if __name__ == "__main__":
    main()
