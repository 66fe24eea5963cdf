"""Does more calibration text fix Ghosted Layers' loss at SmolLM2's deepest contiguous run-6 cut (blocks 9-19)?

    python analyses/runs/checks/calibration_size.py [--passages 32,64,120] [--blocks 9-19]

Run 6 (32 calibration passages of 256 tokens, ~14 per dimension of SmolLM2's 576) found Ghosted Layers worse than
plain pruning on held-out text at this cut although it fits the calibration boundary best. This refits the same cut
on more of the bundled calibration passages and prints held-out perplexity (all 24 passages) and each method's
relative boundary error on the calibration tokens. Measured 2026-12-04 (2 cores, beside run 4 at load ~3.5):

    passages  identity  ghosted  linearpatch   ghosted fit error
    32        259.9     287.5    268.9         0.087   (run 6's own numbers, reproduced)
    64        259.9     245.8    267.1         0.088
    120       259.9     217.6    264.5         0.081

The fit error hardly moves while held-out perplexity falls by a quarter: the 32-passage operator overfits.
"""

from __future__ import annotations

import argparse
import time

import phaselens as pl


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--blocks", default="9-19")
    p.add_argument("--passages", default="32,64,120", help="calibration passages to fit on (comma-separated)")
    a = p.parse_args(argv)
    model = pl.load_model(a.model)
    task = pl.load_task("arc-easy", format="continuation", limit=5, sample=False, seed=0)  # accuracy is not the point
    cal = pl.load_calibration()
    print(f"{a.model}, cut {a.blocks}; {len(cal)} bundled calibration passages")
    for n in (int(x) for x in a.passages.split(",")):
        if n > len(cal):
            raise SystemExit(f"--passages {n}: only {len(cal)} bundled calibration passages")
        t = time.time()
        rc = pl.compare_recovery(model, task, a.blocks, methods=["identity", "ghosted", "linearpatch"],
                                 calibration=cal[:n], heldout=pl.heldout_texts(), seq_len=256, n_boot=200)
        ppl = ", ".join(f"{m} {rc.perplexity(m):.1f}" for m in rc.methods)
        err = ", ".join(f"{m} {e:.3f}" for m, e in zip(rc.methods, rc.fit_relative_error))
        print(f"{n} passages: held-out perplexity {ppl}; fit error {err} ({time.time() - t:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
