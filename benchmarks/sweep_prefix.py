"""The iterative pruning sweep with prefix reuse against recomputing every step from the embeddings.

Both runs cut the same blocks of SmolLM2 one at a time by Block Influence and record, after every
cut, the full decision trace, transition, accuracy and held-out perplexity. The baseline
(``reuse_prefix=False``) runs every pass of every step from the embeddings; the fast path
(default) replays the stored input of the first block whose input changed and recomputes only
from there. The two must give the same numbers, bit for bit: checked here on every step.

    python benchmarks/sweep_prefix.py             # 4 steps, 24 capitals items, 8 calibration passages
    python benchmarks/sweep_prefix.py --quick     # 2 steps, 12 items, 4 passages
"""

from __future__ import annotations

import argparse
import time

import torch

import phaselens as pl


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--task", default="capitals")
    ap.add_argument("--steps", type=int, default=None, help="cuts (default 4; quick 2)")
    ap.add_argument("--items", type=int, default=None, help="task items (default 24; quick 12)")
    ap.add_argument("--texts", type=int, default=None, help="calibration passages for the criterion (default 8; quick 4)")
    ap.add_argument("--heldout", type=int, default=4, help="held-out passages for perplexity")
    ap.add_argument("--criterion", default="bi", choices=["bi", "angular", "random", "sleb"])
    a = ap.parse_args()
    steps = a.steps or (2 if a.quick else 4)
    items = a.items or (12 if a.quick else 24)
    n_texts = a.texts or (4 if a.quick else 8)

    model = pl.load_model(a.model, device="cpu", dtype=torch.float32)
    task = pl.load_task(a.task, limit=items, seed=0)
    kw = dict(criterion=a.criterion, steps=steps, calibration=pl.load_calibration()[:n_texts],
              perplexity_texts=pl.heldout_texts()[: a.heldout], n_boot=200)
    print(f"{model.name} (L={model.n_blocks}), {a.task} x {len(task)} items, criterion {a.criterion}, {steps} cuts, "
          f"{n_texts} calibration + {a.heldout} held-out passages, {torch.get_num_threads()} threads")
    pl.iterative_prune(model, task, **{**kw, "steps": 1})  # warm up

    t = time.perf_counter()
    base = pl.iterative_prune(model, task, reuse_prefix=False, **kw)
    t_base = time.perf_counter() - t
    t = time.perf_counter()
    fast = pl.iterative_prune(model, task, **kw)
    t_fast = time.perf_counter() - t

    same = [a_.to_dict() == b_.to_dict() for a_, b_ in zip(base.steps, fast.steps)]
    print(f"\n{'step':>4} {'cut next':>8} {'accuracy':>9} {'margin':>8} {'perplexity':>11} {'transition':>10} {'identical':>9}")
    for s, ok in zip(fast.steps, same):
        print(f"{s.step:>4} {str(s.next_cut):>8} {s.accuracy:9.3f} {s.margin:8.3f} {s.perplexity:11.3f} "
              f"{str(s.transition.layer):>10} {str(ok):>9}")
    if not all(same):
        raise SystemExit("prefix reuse changed the numbers")
    print(f"\nrecompute every step from the embeddings (reuse_prefix=False): {t_base:7.1f} s")
    print(f"prefix reuse (default):                                        {t_fast:7.1f} s")
    print(f"speed-up: {t_base / t_fast:.2f}x  (time ratio fast/baseline {t_fast / t_base:.2f}); numbers identical on all "
          f"{len(same)} steps")


if __name__ == "__main__":
    main()
