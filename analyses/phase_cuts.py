"""The joint experiment: Ghosted Layers (and rivals) on a cut inside the silent phase, a cut inside the
decisive phase, and random cuts of the same size (pl.compare_phase_cuts).

    python analyses/phase_cuts.py --out /tmp/analyses_out/phase_cuts
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pandas as pd  # noqa: E402

import _common as C  # noqa: E402
from _common import pl  # noqa: E402

from _claim_text import DT, JOINT, phase_cut_claim  # noqa: E402


def main(argv=None) -> None:
    p = C.parser(__doc__.splitlines()[0], calibration=32)
    p.add_argument("--n", type=int, default=2, help="blocks per cut (lowered to fit the smaller phase)")
    p.add_argument("--methods", type=lambda s: s.split(","), default=["identity", "ghosted", "diagonal", "symmetric"],
                   help="recovery methods (identity = plain pruning)")
    p.add_argument("--random-cuts", type=int, default=3, help="random control cuts (seeds 0..k-1)")
    run = C.start("phase_cuts", "Ghosted Layers on silent-phase versus decisive-phase cuts", p, argv)
    a = run.args
    if not hasattr(pl, "compare_phase_cuts"):
        raise SystemExit("this phaselens has no compare_phase_cuts yet (phaselens/phase_cuts.py)")
    tables = []
    # one job per (model, task); fit_n lowers n to fit the smaller phase
    st = run.study([{"kind": "phase-cuts", "n": a.n, "fit_n": True, "methods": list(a.methods), "seeds": a.random_cuts}])
    for name in a.models:
        for spec in a.tasks:
            t = run.task(spec)
            row = st.row(name, spec, "phase-cuts")
            if row.status != "done":  # no dense transition: nothing to cut (the job says why)
                run.note(f"- {name}, {t.name}: {row.error} No phase cuts.")
                continue
            pc = st.get(name, spec, "phase-cuts")
            tr, L, n = pc.transition, pc.n_blocks, pc.n
            if n < a.n:
                run.note(f"- {name}, {t.name}: the decisive phase has {L - tr.layer} block(s) and the silent phase "
                         f"{tr.layer}: cuts lowered from {a.n} to {n} block(s).")
            df = pc.to_pandas()
            tables.append(df)
            fig = pc.plot("margin")
            run.figure(fig, f"phase_cuts_margin_{name}_{t.name}")
            fig = pc.plot_curves()
            run.figure(fig, f"phase_cuts_curves_{name}_{t.name}")
            run.note(f"- {pc.summary()}")
            agg = pc.to_pandas(aggregate=True)
            run.note("  - final accuracy / margin / perplexity: " + "; ".join(
                f"{r.cut}{' ' + r.placement if isinstance(r.placement, str) else ''} {r.method}: {C.fmt(r.accuracy, 2)} / "
                f"{C.fmt(r.final_margin, 2)} / {C.fmt(r.perplexity, 1)}" for r in agg.itertuples() if r.cut != "dense") + ".")
            try:
                effs = pc.effects(["ghosted"] if "ghosted" in a.methods else None)
            except pl.errors.EffectError as e:  # a phase too short for 2 placements
                run.note(f"  - no effects: {e}")
                run.claim(DT, "pruning the silent phase drops the final margin more than pruning the decisive phase", None,
                          f"not judged: {e}", model=name, task=t.name)
                continue
            # PhaseCuts.effects: items resampled with the placements held fixed, l* re-estimated in every replicate;
            # the verdicts come from pl.claims (Holm per paper), the direction from each effect
            for e in effs:
                run.note(f"  - {e.summary().replace(chr(10), '; ')}")
                paper, claim = phase_cut_claim(e.name)
                run.claim(paper, claim, e, f"cuts of {n} block(s) around the transition {tr.layer}; {e.method}")
    if tables:
        run.csv(pd.concat(tables, ignore_index=True), "phase_cuts")
    run.finish(
        f"pl.compare_phase_cuts: the dense transition l* on each task, then contiguous cuts of n blocks at several "
        f"placements in each phase (adjacent to l*, the phase's centre, its far end; placement='spread') and at "
        f"{a.random_cuts} random positions (control), each recovered "
        f"with {', '.join(a.methods)} fitted on {a.calibration_passages} calibration passages. Measured: final margin and "
        f"accuracy with bootstrap 95% intervals over items (paired between cuts), and perplexity on {a.heldout_passages} "
        f"held-out passages. Effects (PhaseCuts.effects): silent − decisive margin drop, plain and recovered, and the "
        f"interaction (rec − plain)_decisive − (rec − plain)_silent, items resampled with the placements held fixed and "
        f"l* re-estimated in every replicate; verdicts by pl.claims (Holm within each paper).")


if __name__ == "__main__":
    main()
