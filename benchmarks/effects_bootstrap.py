"""Cost of the vectorised effect bootstrap against the trace that produced its data, and against scipy.

Budget (issue 21): 2,000 hierarchical replicates over 1,000 items x 30 blocks x 4 options must cost at most 10%
of the SmolLM2 trace that produced them.

Baselines, timed in the same run:
  * a SmolLM2-135M ``decision_trace`` of the built-in capitals task, ``--limit`` items (default 50; the model is
    loaded and warmed first, the load is not timed), **scaled by items** to 1,000 items (a trace of 1,000 items
    is too slow on this machine; the trace's cost is linear in items at fixed batch shapes);
  * ``scipy.stats.bootstrap`` (vectorized, percentile) of the same per-item contrast.

Measured (synthetic option logits with a transition, same shapes as SmolLM2's trace):
  A. one trace, ``[1000 items, 30 blocks, 4 options]``: item margins from the option logits, then 2,000 item
     replicates re-estimating ``l*`` in each (the statistic hook) and the final-block margin contrast;
  B. the fully hierarchical design ``[1000 items, 5 placements, 5 seeds, 30 blocks]`` (every level resampled,
     25 traces' worth of margins): 2,000 replicates of the ``l*`` hook;
  C. the per-item contrast alone (items bootstrap, 2,000 replicates), beside scipy on the same contrast (and the
     same contrast given as two arms to ``paired_effect``, which averages each arm).

Measured here (2 CPU cores shared with other jobs, load average ~10, so every time is inflated): A 390.7 ms,
B 437.6 ms, C 168.0 ms as two arms (paired_effect) vs scipy percentile 83.4 ms (BCa 84.5 ms); a later
run at load average 18: C 182 ms as one contrast array vs scipy 153 ms; SmolLM2 trace of 50 capitals items 46.88 s,
scaled to 1,000 items 937.5 s: A / trace = 0.0004, B / one trace = 0.0005 (budget 0.10).
Quiet machine (load average ~2 falling to 1, 2026-12-03 21:00 UTC): B 51.0 ms; C 20.3 ms vs scipy percentile
16.7 ms (BCa 20.8 ms), 1.22x; SmolLM2 trace of 50 capitals items 0.40 s (cached prefixes), scaled to 1,000 items
7.9 s: A / trace = 0.0039, B / one trace = 0.0064 (budget 0.10).

    PYTHONPATH=src python3 benchmarks/effects_bootstrap.py            # SmolLM2 baseline on the CPU
    PYTHONPATH=src python3 benchmarks/effects_bootstrap.py --no-model # bootstrap and scipy only
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from scipy import stats as sps

import phaselens as pl
from phaselens.effects import hierarchical_effect, paired_effect, transition_layer
from phaselens.metrics import item_margins

N_ITEMS, N_BLOCKS, N_OPTIONS, N_BOOT = 1000, 30, 4, 2000


def timed(fn, repeats: int) -> float:
    """Median wall seconds of ``repeats`` calls."""
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def synthetic_logits(rng: np.random.Generator, *lead: int) -> torch.Tensor:
    """Option logits ``[L, *lead, K]`` whose answer (slot 0) overtakes the others from block 18."""
    z = rng.normal(size=(N_BLOCKS, *lead, N_OPTIONS))
    z[18:, ..., 0] += np.linspace(0.5, 3, N_BLOCKS - 18).reshape(-1, *([1] * len(lead)))
    return torch.from_numpy(z)


def bench_one_trace(z: torch.Tensor) -> None:
    """A: margins from one trace's option logits, l* and the final-block margin contrast per replicate."""
    m = item_margins(z, torch.zeros(N_ITEMS, dtype=torch.long))  # [N, L]

    def stat(means):
        mm = means["margins"]
        return np.where(np.isfinite(transition_layer(mm)), mm[:, -1] - mm[:, 0], np.nan)

    hierarchical_effect({"margins": m}, name="final − first margin (l* defined)", statistic=stat, dims=("items",),
                        n_boot=N_BOOT, per_cluster=False)


def bench_hierarchical(m: np.ndarray) -> None:
    """B: [N, P, S, L] margins, every level resampled, l* re-estimated per replicate."""
    hierarchical_effect({"margins": m}, name="l*", statistic=lambda means: transition_layer(means["margins"]),
                        n_boot=N_BOOT, per_cluster=False)


def trace_seconds(limit: int, repeats: int) -> float:
    model = pl.load_model("smollm2-135m")
    task = pl.load_task("capitals", limit=limit)
    pl.decision_trace(model, task)  # warm-up (first-call allocations, caches)
    return timed(lambda: pl.decision_trace(model, task), repeats)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=50, help="items of the timed SmolLM2 trace (scaled to 1,000)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-model", action="store_true", help="skip the SmolLM2 baseline")
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    rng = np.random.default_rng(0)
    z = synthetic_logits(rng, N_ITEMS)
    m4 = np.stack([item_margins(synthetic_logits(rng, N_ITEMS), torch.zeros(N_ITEMS, dtype=torch.long))
                   for _ in range(25)], axis=1).reshape(N_ITEMS, 5, 5, N_BLOCKS)
    d = rng.normal(0.3, 1, N_ITEMS)
    t_a = timed(lambda: bench_one_trace(z), args.repeats)
    t_b = timed(lambda: bench_hierarchical(m4), args.repeats)
    t_c = timed(lambda: hierarchical_effect(d, name="d", dims=("items",), n_boot=N_BOOT), args.repeats)
    t_c2 = timed(lambda: paired_effect(d, np.zeros(N_ITEMS), name="d", n_boot=N_BOOT), args.repeats)
    t_scipy = timed(lambda: sps.bootstrap((d,), np.mean, n_resamples=N_BOOT, method="percentile", vectorized=True,
                                          random_state=0), args.repeats)
    t_scipy_bca = timed(lambda: sps.bootstrap((d,), np.mean, n_resamples=N_BOOT, vectorized=True, random_state=0), 1)
    print(f"A  one trace [{N_ITEMS} items x {N_BLOCKS} blocks x {N_OPTIONS} options], {N_BOOT} replicates, "
          f"l* hook: {t_a * 1e3:.1f} ms")
    print(f"B  hierarchical [{N_ITEMS} items x 5 placements x 5 seeds x {N_BLOCKS} blocks], {N_BOOT} replicates, "
          f"l* hook: {t_b * 1e3:.1f} ms")
    print(f"C  per-item contrast, {N_BOOT} replicates: phaselens {t_c * 1e3:.1f} ms; scipy.stats.bootstrap "
          f"percentile {t_scipy * 1e3:.1f} ms (BCa {t_scipy_bca * 1e3:.1f} ms): phaselens / scipy = "
          f"{t_c / t_scipy:.2f}x; as two arms (paired_effect) {t_c2 * 1e3:.1f} ms")
    if args.no_model:
        return
    t_trace = trace_seconds(args.limit, args.repeats)
    scaled = t_trace * N_ITEMS / args.limit
    print(f"baseline: SmolLM2-135M decision_trace of {args.limit} capitals items {t_trace:.2f} s, scaled by items "
          f"to {N_ITEMS}: {scaled:.1f} s")
    print(f"A / trace = {t_a / scaled:.4f}  (budget 0.10)")
    print(f"B / 25 traces = {t_b / (25 * scaled):.5f}; B / one trace = {t_b / scaled:.4f}  (budget 0.10)")


if __name__ == "__main__":
    main()
