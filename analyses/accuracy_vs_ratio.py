"""Decision-transition paper, Fig. 2 (top): accuracy against pruning ratio under iterative pruning,
Block Influence against a seeded random-pruning control.

    python analyses/accuracy_vs_ratio.py --out /tmp/analyses_out/accuracy_vs_ratio
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

import _common as C  # noqa: E402

PAPER = "decision-transition (arXiv 2605.07271), Fig. 2"
CLIFF_SHARE = 0.4  # a "cliff": one cut accounts for at least this share of the whole accuracy decline


def main(argv=None) -> None:
    p = C.parser(__doc__.splitlines()[0])
    C.add_sweep_args(p)
    p.add_argument("--criteria", type=lambda s: [x for x in s.split(",") if x], default=["bi", "random"],
                   help="iterative criteria (bi, angular, sleb, random)")
    run = C.start("accuracy_vs_ratio", "Accuracy versus pruning ratio under iterative pruning", p, argv)
    a = run.args
    rows, sweeps = [], {}
    st = run.study([{"kind": "sweep", "criterion": list(a.criteria), "max_ratio": a.max_ratio}])  # a grid of criteria
    for name in a.models:
        for spec in a.tasks:
            t = run.task(spec)
            for crit in a.criteria:
                sw = C.need(st, name, spec, "sweep", criterion=crit)
                sweeps[(name, t.name, crit)] = sw
                df = sw.to_pandas()
                df.insert(0, "criterion", crit)
                df.insert(0, "task", t.name)
                df.insert(0, "model", name)
                df["chance"], df["threshold"], df["collapse_ratio"] = sw.chance, sw.threshold, sw.collapse_ratio
                df["n_items"] = len(t)
                rows.append(df)
    table = pd.concat(rows, ignore_index=True)
    run.csv(table, "accuracy_vs_ratio")

    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=("final accuracy", "held-out perplexity (log)"))
    dash = {"bi": "solid", "random": "dash", "angular": "dot", "sleb": "dashdot"}
    for (name, task, crit), sw in sweeps.items():
        df = sw.to_pandas()
        lab = f"{name} / {task} / {crit}"
        hover = [f"{lab}<br>ratio {r:.3f} ({s} cuts)<br>accuracy {acc:.3f}<br>margin {mg:.3f}<br>perplexity {pp:.2f}"
                 f"<br>removed: {rm or 'none'}<br>N={sw.steps[0].trace.n_items}"
                 for r, s, acc, mg, pp, rm in zip(df.ratio, df.step, df.accuracy, df.margin, df.perplexity, df.removed)]
        fig.add_trace(go.Scatter(x=df.ratio, y=df.accuracy, mode="lines+markers", name=lab, legendgroup=lab,
                                 line=dict(dash=dash.get(crit, "solid")), hovertext=hover, hoverinfo="text"), row=1, col=1)
        fig.add_trace(go.Scatter(x=df.ratio, y=df.perplexity, mode="lines+markers", name=lab, legendgroup=lab, showlegend=False,
                                 line=dict(dash=dash.get(crit, "solid")), hovertext=hover, hoverinfo="text"), row=1, col=2)
    chance = float(np.mean([sw.chance for sw in sweeps.values()]))
    fig.add_hline(y=chance, line=dict(color="gray", dash="dot"), annotation_text=f"chance {chance:.2f}", row=1, col=1)
    fig.update_xaxes(title_text="pruning ratio (blocks removed / L)")
    fig.update_yaxes(title_text="accuracy", range=[0, 1.02], row=1, col=1)
    fig.update_yaxes(title_text="perplexity", type="log", row=1, col=2)
    fig.update_layout(title="Accuracy and perplexity under iterative pruning (one block cut per step)")
    run.figure(fig, "accuracy_vs_ratio")

    for (name, task, crit), sw in sweeps.items():
        acc = np.array([s.accuracy for s in sw.steps])
        drops = -np.diff(acc)
        total = acc[0] - acc.min()
        k = int(np.argmax(drops)) if len(drops) else 0
        cr = sw.collapse_ratio
        run.note(f"- {name}, {task}, {crit}: dense accuracy {C.fmt(acc[0])}, accuracy at ratio {C.fmt(sw.steps[-1].ratio, 2)} "
                 f"{C.fmt(acc[-1])}; collapse ratio (accuracy < {C.fmt(sw.threshold)}) "
                 f"{C.fmt(cr, 3) if cr is not None else 'not reached'}; largest one-cut drop {C.fmt(drops[k] if len(drops) else 0)} "
                 f"at cut {k + 1} (ratio {C.fmt(sw.steps[k + 1].ratio if len(drops) else 0, 3)}); held-out perplexity "
                 f"{C.fmt(sw.steps[0].perplexity, 1)} -> {C.fmt(sw.steps[-1].perplexity, 1)}.")
        if crit == "random":
            continue
        if cr is None:
            run.claim(PAPER, f"accuracy holds, then collapses abruptly as the pruning ratio grows (the {crit} sweep)", name, task,
                      None, f"no collapse up to ratio {C.fmt(sw.steps[-1].ratio, 3)} (accuracy {C.fmt(acc[-1])} vs threshold "
                      f"{C.fmt(sw.threshold)}); run with a larger --max-ratio")
        else:
            share = drops[k] / total if total > 0 else 0.0
            run.claim(PAPER, f"accuracy holds, then collapses abruptly as the pruning ratio grows (the {crit} sweep)", name, task,
                      bool(share >= CLIFF_SHARE),
                      f"collapse at ratio {C.fmt(cr, 3)}; the largest single cut removes {share:.0%} of the total accuracy "
                      f"decline {C.fmt(total)} (a cliff needs >= {CLIFF_SHARE:.0%})")
        rnd = sweeps.get((name, task, "random"))
        if rnd is not None:
            n = min(len(rnd.steps), len(sw.steps))
            gap = float(np.mean([sw.steps[i].accuracy - rnd.steps[i].accuracy for i in range(1, n)])) if n > 1 else float("nan")
            run.note(f"  - {crit} minus random accuracy, mean over ratios: {C.fmt(gap)} (random collapse ratio "
                     f"{C.fmt(rnd.collapse_ratio, 3) if rnd.collapse_ratio is not None else 'not reached'}).")
    run.finish(
        f"Iterative pruning (pl.iterative_prune): one block cut per step, the criterion recomputed on the current pruned "
        f"model (criteria: {', '.join(a.criteria)}; random is the seeded control), up to {a.max_ratio:.0%} of the blocks. "
        f"After every cut: final-layer accuracy and margin on the task, and perplexity on {a.heldout_passages} held-out "
        f"passages. Criteria are scored on {a.calibration_passages} calibration passages. Collapse ratio = the first ratio "
        f"whose accuracy falls below chance + 0.5 (dense - chance). The paper's Fig. 2 shows a cliff: stable accuracy, "
        f"then an abrupt fall. We call it a cliff when the largest single cut accounts for at least {CLIFF_SHARE:.0%} of the "
        f"total decline within the sweep.")


if __name__ == "__main__":
    main()
