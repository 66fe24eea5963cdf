"""Decision-transition paper, Figs. 9 and 19: ablating single blocks and pairs of blocks around the
transition; which phase's blocks the decision depends on.

    python analyses/ablation_transition.py --out /tmp/analyses_out/ablation_transition
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

import _common as C  # noqa: E402
from _common import pl  # noqa: E402

PAPER = "decision-transition (arXiv 2605.07271), Figs. 9, 19"


def main(argv=None) -> None:
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--mode", default="skip", choices=["skip", "zero", "mean"], help="ablation")
    p.add_argument("--window", type=int, default=3, help="pairs of blocks within this many blocks of the transition")
    run = C.start("ablation_transition", "Block ablation around the transition", p, argv)
    a = run.args
    if not hasattr(pl, "ablate"):
        raise SystemExit("this phaselens has no ablate yet (phaselens/interventions.py)")
    rows = []
    st = run.study([{"kind": "ablate", "mode": a.mode, "window": a.window}])
    for name in a.models:
        for spec in a.tasks:
            t = run.task(spec)
            r = C.need(st, name, spec, "ablate")
            layer = r.transition
            df = r.to_pandas()
            df.insert(0, "task", t.name)
            df.insert(0, "model", name)
            rows.append(df)
            fig = r.plot()
            fig.update_layout(title=f"Final-margin drop when blocks are {a.mode}-ablated: {name} on {t.name} ({len(t)} items)")
            run.figure(fig, f"ablation_{name}_{t.name}")
            run.note("```\n" + r.summary() + "\n```")
            claim = "ablating silent-phase blocks hurts the decision more than ablating decisive-phase blocks"
            if layer is None:
                run.claim(PAPER, claim, None, "no dense transition on this task", model=name, task=t.name)
                continue
            singles = df[df.kind == "single"]
            sil, dec = singles[singles.phase == "silent"], singles[singles.phase == "decisive"]
            near_s = sil[sil.block_a >= layer - a.window]
            sb = np.asarray(r.singles)
            drop = r.clean_margins[None, :] - r.single_margins  # [S, N]
            if not (sb < layer).any() or not (sb >= layer).any():
                run.claim(PAPER, claim, None, "one of the phases has no ablated block", model=name, task=t.name)
            else:
                e = pl.paired_effect(drop[sb < layer].mean(0), drop[sb >= layer].mean(0), arms=("silent", "decisive"),
                                     name="silent − decisive final-margin drop (single-block ablation)",
                                     predicted="positive", boot_seed=a.seed, model=name, task=t.name, format=t.format)
                run.claim(PAPER, claim, e, f"mean final-margin drop: silent blocks {C.fmt(sil.margin_drop.mean())} "
                          f"({len(sil)} blocks), decisive blocks {C.fmt(dec.margin_drop.mean())} ({len(dec)} blocks); "
                          f"the {len(near_s)} silent blocks just before the transition (block {layer}): "
                          f"{C.fmt(near_s.margin_drop.mean())}")
            worst = singles.loc[singles.margin_drop.idxmax()]
            pairs = df[df.kind == "pair"]
            inter = pairs.interaction.dropna()
            run.note(f"- {name}, {t.name}: the most harmful single block is {int(worst.block_a)} ({worst.phase}, drop "
                     f"{C.fmt(worst.margin_drop)}, accuracy {C.fmt(worst.accuracy)}); {len(pairs)} pairs within {a.window} blocks "
                     f"of the transition, mean interaction (pair drop minus the two single drops) {C.fmt(inter.mean() if len(inter) else np.nan)}.")
    run.csv(pd.concat(rows, ignore_index=True), "ablation")
    run.finish(
        f"pl.ablate ({a.mode} mode): every block ablated alone, and every pair of blocks within {a.window} blocks of the "
        f"dense transition; the drop of the final-layer Decision Margin (clean minus ablated, mean over items, bootstrap "
        f"95% intervals). Phase comparison: mean drop over silent-phase blocks vs decisive-phase blocks.")


if __name__ == "__main__":
    main()
