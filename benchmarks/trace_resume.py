"""What a resumable trace costs: ``decision_trace(model, task, out=DIR)`` (items read in units, each saved as it
finishes) as a ratio against the same trace without ``out=`` (one pass over every item), in the same process, in
alternating order; then what a resume costs when every unit is already saved (reading them back).

    python benchmarks/trace_resume.py                                  # SmolLM2, ARC-Easy continuation, 300 items
    python benchmarks/trace_resume.py --model qwen2.5-coder-0.5b --items 256 --chunk 64

The unit size is ``phaselens.trace.TRACE_CHUNK`` (256); ``--chunk`` sets it smaller so that a short benchmark has
several units (the per-unit costs, a save and a batch boundary, are what it measures).

Measured 2026-12-05 09:39-09:48 UTC (2-core CPU, beside a study at nice 5, load average 2 to 4, so a noisy ratio;
SmolLM2-135M, 300 ARC-Easy items in continuation, units of 100, one repeat): plain trace 249.4 s, with ``out=``
255.7 s (**1.025x**), a resume with every unit saved 0.01 s; the largest difference of a summed continuation
log-likelihood between the two is 6.9e-5 (items batched within a unit instead of across all 300).
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np

import phaselens as pl
import phaselens.trace as trace_mod


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--task", default="arc-easy")
    p.add_argument("--format", default="continuation")
    p.add_argument("--items", type=int, default=300)
    p.add_argument("--chunk", type=int, default=100, help="items per saved unit")
    p.add_argument("--repeat", type=int, default=1)
    a = p.parse_args()
    trace_mod.TRACE_CHUNK = a.chunk
    model = pl.load_model(a.model)
    task = pl.load_task(a.task, format=a.format, limit=a.items, sample=False)
    pl.decision_trace(model, task.with_items(task.items[:8]))  # warm-up: kernels, tokenizer
    plain, units, resumed = [], [], []
    for _ in range(a.repeat):
        t0 = time.perf_counter()
        ref = pl.decision_trace(model, task)
        plain.append(time.perf_counter() - t0)
        with tempfile.TemporaryDirectory() as d:
            t0 = time.perf_counter()
            got = pl.decision_trace(model, task, out=d)
            units.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            pl.decision_trace(model, task, out=d)
            resumed.append(time.perf_counter() - t0)
        diff = float(np.max(np.abs(got.logits[:, ref.mask] - ref.logits[:, ref.mask])))  # real option slots only
    n_units = -(-len(task.items) // a.chunk)
    print(f"{a.model} on {len(task.items)} {a.task} items ({a.format}), {n_units} units of {a.chunk}:")
    print(f"  plain trace (baseline)       {np.median(plain):8.2f} s")
    print(f"  trace with out= (units)      {np.median(units):8.2f} s   {np.median(units) / np.median(plain):.3f}x the plain trace")
    print(f"  resume, every unit saved     {np.median(resumed):8.2f} s   {np.median(resumed) / np.median(plain):.4f}x the plain trace")
    print(f"  largest |logit difference|   {diff:.2e}")


if __name__ == "__main__":
    main()
