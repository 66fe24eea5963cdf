"""Decision-transition paper, Figs. 2, 10, 11: CKA between the dense model and a 50%-pruned one,
on hidden states (every token of held-out text) and on decision-token representations (each
item's last prompt token), block by block.

    python analyses/cka_pruned.py --out /tmp/analyses_out/cka_pruned
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pandas as pd  # noqa: E402

import _common as C  # noqa: E402
from _claim_text import CKA_CONTROL, CKA_DIVERGE, JOINT  # noqa: E402
from _common import pl, plots  # noqa: E402

PAPER = "decision-transition (arXiv 2605.07271), Figs. 2, 10, 11"


def main(argv=None) -> None:
    p = C.parser(__doc__.splitlines()[0], tasks="capitals,arc-easy")
    p.add_argument("--ratio", type=float, default=0.5, help="share of blocks pruned")
    p.add_argument("--criterion", default="bi", choices=["bi", "angular", "random"], help="block selection")
    p.add_argument("--tokens", type=int, default=1024, help="held-out tokens sampled for the hidden-state CKA (0: skip)")
    run = C.start("cka_pruned", "CKA of hidden and decision-token representations, dense vs pruned", p, argv)
    a = run.args
    long_rows, matched_rows = [], []
    cut = {"kind": "cka", "prune": a.ratio, "criterion": a.criterion}  # the same blocks in every job of a model
    hidden = run.study([{**cut, "on": "heldout", "n_samples": a.tokens}], tasks=a.tasks[:1]) if a.tokens else None
    decision = run.study([{**cut, "on": "task"}])
    # the paper's contrast on the same items (decision tokens against their prompts' tokens), judged per task
    groups = min(20, *(len(run.task(s).items) for s in a.tasks))
    contrast = run.study([{"kind": "cka-contrast", "prune": a.ratio, "criterion": a.criterion, "n_tokens": a.tokens or 1024,
                           "groups": groups}])
    for name in a.models:
        results = {}
        if hidden is not None:
            results["hidden (held-out tokens)"] = C.need(hidden, name, a.tasks[0], "cka")
        for spec in a.tasks:
            t = run.task(spec)
            results[f"decision token ({t.name})"] = C.need(decision, name, spec, "cka")
        first = next(iter(results.values()))
        L = len(first.blocks_a)
        blocks = sorted(set(first.blocks_a) - set(first.blocks_b))
        n_cut = len(blocks)
        run.log(f"{name}: pruned {n_cut}/{L} blocks by {a.criterion}: {blocks}")
        m = run.model(name)  # the accuracies, dense and pruned
        pruned = pl.prune(m, blocks)
        accs = {}
        for spec in a.tasks:
            t = run.task(spec)
            accs[t.name] = (pl.decision_trace(m, t, n_boot=100).accuracy[-1], pl.decision_trace(pruned, t, n_boot=100).accuracy[-1])
        fig = plots.cka_heatmaps(results, title=f"CKA, dense {name} (rows) vs {n_cut}/{L} blocks pruned by {a.criterion} (columns)")
        run.figure(fig, f"cka_heatmaps_{name}")
        first_cut = min(blocks)
        for rep, r in results.items():
            df = r.to_pandas()
            df.insert(0, "representation", rep)
            df.insert(0, "model", name)
            df["positions"] = r.positions
            df["n_samples"] = r.n_samples
            df["removed"] = ",".join(map(str, blocks))
            long_rows.append(df)
            bl, vals = r.matched()
            for b, v in zip(bl, vals):
                matched_rows.append({"model": name, "representation": rep, "block": int(b), "cka": float(v),
                                     "after_first_cut": bool(b > first_cut), "n_samples": r.n_samples})
        mdf = pd.DataFrame([x for x in matched_rows if x["model"] == name])
        after = mdf[mdf.after_first_cut]
        per_rep = after.groupby("representation").cka.mean().to_dict()
        final = mdf[mdf.block == max(pruned.kept)].set_index("representation").cka.to_dict()
        run.note(f"**{name}** ({L} blocks; cut {n_cut} by {a.criterion}: {blocks}). Mean CKA of each surviving block with "
                 f"itself, over the blocks after the first cut: " +
                 "; ".join(f"{k} {C.fmt(v)} (last block {C.fmt(final.get(k))})" for k, v in per_rep.items()) + ". "
                 + "Accuracy dense -> pruned: " + "; ".join(f"{k} {C.fmt(d)} -> {C.fmt(q)}" for k, (d, q) in accs.items()) + ".")
        for spec in a.tasks:
            tname = run.task(spec).name
            ck = C.need(contrast, name, spec, "cka-contrast")
            dacc, pacc = accs[tname]
            e, c = ck.effects()
            why = (f"{ck.n_items} items: decision tokens {C.fmt(float(ck.decision.mean()))}, their prompts' tokens "
                   f"{C.fmt(float(ck.hidden.mean()))} ({ck.n_tokens}, each prompt's first left out), the template token "
                   f"before the decision token {C.fmt(float(ck.control.mean()))}, over the {len(ck.blocks)} blocks after "
                   f"the first cut; accuracy {C.fmt(dacc)} -> {C.fmt(pacc)}; {e.method}")
            run.claim(PAPER, CKA_DIVERGE, e, why)
            run.claim(JOINT, CKA_CONTROL, c, why)
            run.figure(ck.plot(), f"cka_contrast_{name}_{tname}")
    run.csv(pd.concat(long_rows, ignore_index=True), "cka_pairs")
    mdf = pd.DataFrame(matched_rows)
    run.csv(mdf, "cka_matched")
    import plotly.graph_objects as go

    fig = go.Figure()
    for (model, rep), g in mdf.groupby(["model", "representation"], sort=False):
        fig.add_trace(go.Scatter(x=g.block, y=g.cka, mode="lines+markers", name=f"{model}: {rep}",
                                 hovertext=[f"{model}, {rep}<br>block {b}: CKA {v:.4f}<br>n={n}" for b, v, n in
                                            zip(g.block, g.cka, g.n_samples)], hoverinfo="text"))
    fig.update_layout(title=f"CKA of each surviving block with the same block of the dense model ({a.ratio:.0%} of blocks "
                            f"pruned by {a.criterion})", xaxis_title="block (original index)", yaxis_title="linear CKA",
                      yaxis_range=[min(0.0, float(mdf.cka.min()) - 0.02), 1.02])  # the unbiased CKA can be < 0
    run.figure(fig, "cka_matched")
    run.finish(
        f"Linear CKA (pl.cka) between every block of the dense model and every surviving block of the same model with "
        f"{a.ratio:.0%} of its blocks removed by the {a.criterion} criterion (selected on {a.calibration_passages} "
        f"calibration passages). Two representations: hidden states at {a.tokens} randomly sampled tokens of the held-out "
        f"passages (each passage's first token left out: the attention sink's massive activations would decide CKA on "
        f"their own), and the decision-token representation (each item's last prompt token) of every task item. The "
        f"paper reports that representation similarity alone does not explain collapse; the test (pl.cka_contrast) "
        f"reads both on the same items, the decision token and the tokens of the items' own prompts, over the "
        f"surviving blocks after the first cut, jackknifed over groups of items; beside it, the template token just "
        f"before the decision token as a control.")


if __name__ == "__main__":
    main()
