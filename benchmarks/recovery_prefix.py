"""A recovery comparison's held-out NLL and task answers with the dense prefix replayed, against running every model
from the embeddings.

``compare_recovery`` measures the dense model and every recovered model of one cut on each task. They all compute the
blocks before the cut alike, so by default (``reuse_prefix=True``) the dense model's pass stores each block's input and
the recovered models start from the stored input of the cut's first block. The baseline (``reuse_prefix=False``) runs
every model from the embeddings. Both must give the same answers: checked here, every margin.

Only the held-out NLL and the task answers are timed: the cut and the fits are computed once, before (the comparison
keeps them in memory; its held-out numbers are forgotten before each timed call), and the two paths alternate
``--repeats`` times so that a change of load falls on both.

    python benchmarks/recovery_prefix.py                      # SmolLM2, ARC-Challenge (continuation), 40 items
    python benchmarks/recovery_prefix.py --model qwen2.5-coder-0.5b --items 100 --n 6
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

import phaselens as pl
from phaselens.experiments import recovery_comparison as rc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--task", default="arc-challenge")
    ap.add_argument("--format", default="continuation")
    ap.add_argument("--items", type=int, default=40)
    ap.add_argument("--n", type=int, default=8, help="blocks cut (angular distance chooses them)")
    ap.add_argument("--texts", type=int, default=16, help="calibration passages")
    ap.add_argument("--heldout", type=int, default=8, help="held-out passages")
    ap.add_argument("--repeats", type=int, default=2)
    a = ap.parse_args()

    model = pl.load_model(a.model)
    task = pl.load_task(a.task, limit=a.items, seed=0, format=a.format)
    kw = dict(n=a.n, criterion="angular", calibration=pl.load_calibration()[: a.texts], heldout=pl.heldout_texts()[: a.heldout],
              n_boot=200)
    t0 = time.perf_counter()
    first = pl.compare_recovery(model, [task], reuse_prefix=False, **kw)  # the cut, the fits, the held-out text
    print(f"{model.name} (L={model.n_blocks}), {a.task} ({a.format}) x {len(task)} items, cut {first.blocks} "
          f"(angular, {a.n} blocks), {len(first.methods)} methods + dense, {a.heldout} held-out "
          f"passages; {torch.get_num_threads()} threads; "
          f"load {os.getloadavg()[0]:.2f}; setup {time.perf_counter() - t0:.0f} s", flush=True)
    times: dict[bool, list[float]] = {False: [], True: []}
    got: dict[bool, pl.RecoveryComparison] = {}
    for _ in range(a.repeats):
        for reuse in (True, False):
            for entry in rc._FITS.values():  # keep the fitted operators, score the held-out text again
                entry["held"].clear()
            t = time.perf_counter()
            got[reuse] = pl.compare_recovery(model, [task], reuse_prefix=reuse, **kw)
            times[reuse].append(time.perf_counter() - t)
            print(f"  reuse_prefix={reuse}: {times[reuse][-1]:.1f} s (load {os.getloadavg()[0]:.2f})", flush=True)
    fast, base = got[True].tasks[0], got[False].tasks[0]
    diff = max(float(np.abs(fast.margins - base.margins).max()), float(np.abs(fast.dense_margins - base.dense_margins).max()))
    nll = float(np.abs(got[True].nll - got[False].nll).max() / np.abs(got[False].nll).max())
    same = diff <= 1e-5 and (fast.correct == base.correct).all() and nll <= 1e-6
    print(f"largest margin difference {diff:.2e}, largest relative held-out NLL difference {nll:.2e}; same: {same}")
    if not same:
        raise SystemExit("the prefix replay changed the answers")
    tb, tf = min(times[False]), min(times[True])
    print(f"every model from the embeddings (reuse_prefix=False): {tb:7.1f} s  (runs: {', '.join(f'{x:.1f}' for x in times[False])})")
    print(f"dense prefix replayed (default):                     {tf:7.1f} s  (runs: {', '.join(f'{x:.1f}' for x in times[True])})")
    print(f"speed-up: {tb / tf:.2f}x; the blocks before the cut are {first.blocks[0]} of {model.n_blocks}; "
          f"load at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
