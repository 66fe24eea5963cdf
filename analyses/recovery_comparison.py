"""Ghosted Layers paper, main comparison table: recovery method x cut, task accuracy and held-out
perplexity, on both embedded models.

    python analyses/recovery_comparison.py --out /tmp/analyses_out/recovery_comparison
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pandas as pd  # noqa: E402

import _common as C  # noqa: E402
from _common import pl  # noqa: E402

PAPER = "Ghosted Layers (arXiv 2605.15491), main comparison"


def main(argv=None) -> None:
    p = C.parser(__doc__.splitlines()[0], calibration=32)
    p.add_argument("--ratios", type=lambda s: [float(x) for x in s.split(",")], default=[0.25],
                   help="cut sizes as shares of the blocks (one contiguous angular-distance cut each)")
    p.add_argument("--methods", type=lambda s: s.split(","), default=list(pl.recovery.METHODS), help="recovery methods")
    run = C.start("recovery_comparison", "Recovery method x cut: accuracy and perplexity", p, argv)
    a = run.args
    rows, correct = [], {}
    for name in a.models:
        m = run.model(name)
        L = m.n_blocks
        tasks = [run.task(s) for s in a.tasks]
        ppl_dense = pl.perplexity(m, run.heldout())
        for t in tasks:
            tr = pl.decision_trace(m, t, n_boot=200, boot_seed=a.seed)
            rows.append({"model": name, "cut": "dense", "n_cut": 0, "method": "none", "task": t.name, "accuracy": tr.accuracy[-1],
                         "accuracy_lo": tr.accuracy_ci[0][-1], "accuracy_hi": tr.accuracy_ci[1][-1], "margin": tr.margins[-1],
                         "perplexity": ppl_dense, "fit_relative_error": 0.0, "n_items": len(t)})
        for ratio in a.ratios:
            n = max(1, int(round(ratio * L)))
            blocks = pl.select_blocks(m, n, "angular", calibration=run.calibration())
            cut = f"{blocks[0]}-{blocks[-1]}"
            recs = pl.fit_recovery(pl.prune(m, blocks), run.calibration(), a.methods)
            for meth, rec in recs.items():
                ppl = pl.perplexity(rec, run.heldout())
                for t in tasks:
                    tr = pl.decision_trace(rec, t, n_boot=200, boot_seed=a.seed)
                    correct[(name, cut, meth, t.name)] = (tr.correct[:, -1], t.format)
                    rows.append({"model": name, "cut": cut, "n_cut": n, "method": meth, "task": t.name, "accuracy": tr.accuracy[-1],
                                 "accuracy_lo": tr.accuracy_ci[0][-1], "accuracy_hi": tr.accuracy_ci[1][-1],
                                 "margin": tr.margins[-1], "perplexity": ppl,
                                 "fit_relative_error": float(rec.fit_error.relative[0]), "n_items": len(t)})
                run.log(f"{name} cut {cut} {meth}: perplexity {ppl:.2f}")
    df = pd.DataFrame(rows)
    run.csv(df, "recovery_comparison")

    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    cuts = df[df.cut != "dense"]
    for (name, task), g in cuts.groupby(["model", "task"]):
        fig = make_subplots(rows=1, cols=2, subplot_titles=(f"accuracy on {task}", "held-out perplexity (log)"))
        dense = df[(df.model == name) & (df.task == task) & (df.cut == "dense")].iloc[0]
        for cut, gc in g.groupby("cut"):
            hover = [f"{name}, cut {cut}, {r.method}<br>accuracy {r.accuracy:.3f} [{r.accuracy_lo:.3f}, {r.accuracy_hi:.3f}]"
                     f"<br>margin {r.margin:.3f}<br>perplexity {r.perplexity:.2f}<br>fit rel. error {r.fit_relative_error:.4f}"
                     f"<br>N={r.n_items}" for r in gc.itertuples()]
            fig.add_trace(go.Bar(x=gc.method, y=gc.accuracy, name=f"cut {cut}", hovertext=hover, hoverinfo="text",
                                 error_y=dict(type="data", symmetric=False, array=gc.accuracy_hi - gc.accuracy,
                                              arrayminus=gc.accuracy - gc.accuracy_lo)), row=1, col=1)
            fig.add_trace(go.Bar(x=gc.method, y=gc.perplexity, name=f"cut {cut}", showlegend=False, hovertext=hover,
                                 hoverinfo="text"), row=1, col=2)
        fig.add_hline(y=dense.accuracy, line=dict(dash="dot"), annotation_text=f"dense {dense.accuracy:.2f}", row=1, col=1)
        fig.add_hline(y=dense.perplexity, line=dict(dash="dot"), annotation_text=f"dense {dense.perplexity:.1f}", row=1, col=2)
        fig.update_yaxes(type="log", row=1, col=2)
        fig.update_layout(title=f"Recovery methods after a contiguous cut: {name} on {task} ({int(dense.n_items)} items)",
                          barmode="group")
        run.figure(fig, f"recovery_{name}_{task}")
        for cut, gc in g.groupby("cut"):
            gi = gc.set_index("method")
            rivals = [k for k in gi.index if k not in ("ghosted", "identity")]
            run.note(f"- {name}, cut {cut}, {task}: " + ", ".join(f"{k} acc {C.fmt(r.accuracy, 2)} / ppl {C.fmt(r.perplexity, 1)}"
                                                                   for k, r in gi.iterrows())
                     + f" (dense acc {C.fmt(dense.accuracy, 2)} / ppl {C.fmt(dense.perplexity, 1)}).")
            if "ghosted" not in gi.index or not rivals:
                continue
            g_ppl, best_ppl = gi.perplexity["ghosted"], gi.perplexity[rivals].min()
            run.claim(PAPER, "Ghosted Layers gives the lowest perplexity of all recovery methods", None,
                      f"not judged: perplexity is one number per method on {a.heldout_passages} held-out passages here "
                      f"(an effect needs per-passage values over at least 5 passages). ghosted {C.fmt(g_ppl, 2)} vs best "
                      f"rival {gi.perplexity[rivals].idxmin()} {C.fmt(best_ppl, 2)} (identity "
                      f"{C.fmt(gi.perplexity.get('identity'), 2)})", model=name, task=f"held-out text (cut {cut})")
            g_correct, fmt_ = correct[(name, cut, "ghosted", task)]
            for rival in rivals:
                e = pl.paired_effect(g_correct, correct[(name, cut, rival, task)][0], arms=("ghosted", rival),
                                     name=f"accuracy, ghosted − {rival} (cut {cut})", predicted="positive",
                                     boot_seed=a.seed, model=name, task=task, format=fmt_)
                run.claim(PAPER, f"Ghosted Layers gives higher task accuracy than {rival}", e,
                          f"ghosted {C.fmt(gi.accuracy['ghosted'])} vs {rival} {C.fmt(gi.accuracy[rival])} (paired "
                          f"over items)")
    run.finish(
        f"Per model, contiguous cuts of {', '.join(f'{r:.0%}' for r in a.ratios)} of the blocks chosen by angular distance on "
        f"{a.calibration_passages} calibration passages; each cut recovered by {', '.join(a.methods)} (identity = plain "
        f"pruning), all fitted on the same passages. Measured: final-layer accuracy (bootstrap 95% interval) and margin on "
        f"each task, and perplexity on {a.heldout_passages} held-out passages.")


if __name__ == "__main__":
    main()
