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
from phaselens.study.runs import cut_size  # noqa: E402

PAPER = "Ghosted Layers (arXiv 2605.15491), main comparison"


def main(argv=None) -> None:
    # 8 held-out passages (was 4): perplexity is compared paired over passages, and an effect needs at least 5
    p = C.parser(__doc__.splitlines()[0], calibration=32, heldout=8)
    p.add_argument("--ratios", type=lambda s: [float(x) for x in s.split(",")], default=[0.25],
                   help="cut sizes as shares of the blocks (one contiguous angular-distance cut each)")
    p.add_argument("--methods", type=lambda s: s.split(","), default=list(pl.recovery.METHODS), help="recovery methods")
    p.add_argument("--n-boot", type=int, default=10000,
                   help="bootstrap replicates of the effects: the Ghosted Layers family holds ~30 claims, and Holm "
                        "needs p below 0.05/30, which 1,000 replicates (smallest p 2/1001) cannot give")
    run = C.start("recovery_comparison", "Recovery method x cut: accuracy and perplexity", p, argv)
    a = run.args
    tables = []
    for name in a.models:
        m = run.model(name)
        L = m.n_blocks
        tasks = [run.task(s) for s in a.tasks]
        for ratio in a.ratios:
            n = cut_size(ratio, L)  # the study's rounding: nearest whole block, halves up
            rc = pl.compare_recovery(m, tasks, n=n, criterion="angular", methods=a.methods, calibration=run.calibration(),
                                     heldout=run.heldout(), n_boot=a.n_boot, boot_seed=a.seed)
            cut = f"{rc.blocks[0]}-{rc.blocks[-1]}"
            df = rc.to_pandas()
            df["n_cut"] = n
            tables.append(df)
            run.figure(rc.plot(), f"recovery_{name}_cut{cut}")
            run.note(f"- {rc.summary()}")
            for m_ in rc.methods:
                run.log(f"{name} cut {cut} {m_}: perplexity {rc.perplexity(m_):.2f}")
            if pl.experiments.recovery_comparison.REFERENCE not in rc.methods:
                continue
            try:
                effects = rc.effects()
            except pl.errors.EffectError as e:  # e.g. fewer than 5 held-out passages
                run.note(f"- {name}, cut {cut}: no effects ({e})")
                continue
            for e in effects:  # each method against ghosted; the verdicts come from pl.claims (Holm per paper)
                if e.name.endswith("perplexity"):
                    claim = f"Ghosted Layers gives lower held-out perplexity than {e.name.split(' − ')[0]}"
                else:
                    claim = f"Ghosted Layers gives higher task accuracy than {e.name.split(' − ')[1].split(' ')[0]}"
                run.claim(PAPER, claim, e, f"cut {cut} ({n} of {L} blocks, angular); paired over "
                          + ("held-out passages" if e.name.endswith("perplexity") else "items"))
    if tables:
        run.csv(pd.concat(tables, ignore_index=True), "recovery_comparison")
    run.finish(
        f"Per model, contiguous cuts of {', '.join(f'{r:.0%}' for r in a.ratios)} of the blocks chosen by angular distance on "
        f"{a.calibration_passages} calibration passages; each cut recovered by {', '.join(a.methods)} (identity = plain "
        f"pruning), all fitted on the same passages (pl.compare_recovery). Measured: final-layer accuracy and margin on each "
        f"task, and perplexity on {a.heldout_passages} held-out passages. Effects (RecoveryComparison.effects): each method "
        f"against Ghosted Layers, perplexity paired over held-out passages and accuracy paired over items (percentile "
        f"bootstrap, {a.n_boot} replicates); verdicts by pl.claims (Holm across this table's claims).")


if __name__ == "__main__":
    main()
