"""Decision-transition paper, Figs. 6 and 18: sensitivity of the decision to Gaussian noise injected
at one block at a time, silent versus decisive phase.

    python analyses/noise_sensitivity.py --out /tmp/analyses_out/noise_sensitivity
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

import _common as C  # noqa: E402
from _common import pl  # noqa: E402

PAPER = "decision-transition (arXiv 2605.07271), Figs. 6, 18"


def main(argv=None) -> None:
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--eps", type=lambda s: [float(x) for x in s.split(",")], default=[0.5, 1.0],
                   help="noise scales (multiples of each token's std over channels)")
    p.add_argument("--noise-seeds", type=int, default=3, help="independent noise draws per (block, item)")
    p.add_argument("--stride", type=int, default=2, help="perturb every STRIDE-th block (plus the transition block)")
    run = C.start("noise_sensitivity", "Noise sensitivity per phase", p, argv)
    a = run.args
    if not hasattr(pl, "inject_noise"):
        raise SystemExit("this phaselens has no inject_noise yet (phaselens/interventions.py)")
    rows, sens_rows = [], []
    # one job per (model, task): every STRIDE-th block + the transition block + the last block, every eps
    st = run.study([{"kind": "noise", "eps": list(a.eps), "seeds": a.noise_seeds, "stride": a.stride}])
    for name in a.models:
        for spec in a.tasks:
            t = run.task(spec)
            r = C.need(st, name, spec, "noise")
            df = r.to_pandas()
            df.insert(0, "task", t.name)
            df.insert(0, "model", name)
            rows.append(df)
            sens = r.sensitivity()
            sens.insert(0, "task", t.name)
            sens.insert(0, "model", name)
            sens_rows.append(sens)
            fig = r.plot()
            fig.update_layout(title=f"Final Decision Margin after noise at one block: {name} on {t.name} ({len(t)} items, "
                                    f"{a.noise_seeds} seeds)")
            run.figure(fig, f"noise_{name}_{t.name}")
            run.note("```\n" + r.summary() + "\n```")
            if r.transition is None:
                run.claim(PAPER, "noise in the silent phase hurts the decision more than noise in the decisive phase",
                          None, "no dense transition on this task", model=name, task=t.name)
                continue
            blocks = np.asarray(r.blocks)
            sil, dec = blocks < r.transition, blocks >= r.transition
            for j, eps in enumerate(a.eps):
                claim = f"noise (eps={eps:g}) in the silent phase hurts the decision more than in the decisive phase"
                if not sil.any() or not dec.any():
                    run.claim(PAPER, claim, None, "one of the phases has no perturbed block", model=name, task=t.name)
                    continue
                drop = r.clean_margins[None, None, :] - r.item_margins[:, j]  # [B, S, N]
                arms = {"silent": drop[sil].mean(0).T[:, None, :], "decisive": drop[dec].mean(0).T[:, None, :]}
                e = pl.hierarchical_effect(arms, name=f"silent − decisive final-margin drop (eps {eps:g})",
                                           require=(), predicted="positive", boot_seed=a.seed, model=name,
                                           task=t.name, format=t.format)
                run.claim(PAPER, claim, e, f"mean final-margin drop over {int(sil.sum())} silent blocks "
                          f"{C.fmt(arms['silent'].mean())}, over {int(dec.sum())} decisive blocks "
                          f"{C.fmt(arms['decisive'].mean())} ({len(r.seeds)} noise seeds, held fixed)")
    run.csv(pd.concat(rows, ignore_index=True), "noise_by_block")
    run.csv(pd.concat(sens_rows, ignore_index=True), "noise_by_phase")
    run.finish(
        f"pl.inject_noise: at the output of one block at a time (blocks 0, {a.stride}, {2 * a.stride}, ..., plus the transition block and "
        f"the last block), h <- h + eps * sigma(h) * N(0, I) at every prompt token, eps in {a.eps}, {a.noise_seeds} "
        f"independent draws (one study job per model and task, pl.run_study); the final-layer Decision Margin and accuracy are read downstream. Phase comparison: the mean "
        f"final-margin drop over the perturbed silent blocks minus that over the decisive blocks, with a bootstrap 95% "
        f"interval over items.")


if __name__ == "__main__":
    main()
