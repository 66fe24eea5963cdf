"""Projected wall time of the decision-transition paper's Figure 8 grid (3 models x 5 tasks x 3 criteria x 5 seeds
= 225 sweep jobs) on N workers, from the per-job wall times MEASURED in a study folder (benchmarks/fig8_sample.toml:
one task, one seed, every criterion, the two embedded models, on a CPU).

This is a projection, not a measurement. How it scales:

* a measured job (model m, criterion c) stands for each of the 5 tasks x 5 seeds of (m, c): 25 jobs of that time
  (the measured task is `capitals`, 32 items, cloze; a task with more items or longer prompts costs more);
* the third model (Qwen2.5-1.5B, not measured here) is SmolLM2-135M's time per criterion scaled by the ratio of
  parameters (forward FLOPs per token, 2 x params) times the ratio of depths (sweep steps ~ depth x collapse ratio);
* on a worker k times faster than the measuring CPU (k is an ASSUMPTION, tabulated: nothing here measured a GPU),
  a job takes t / k, plus the per-job overhead of the Ray executor measured by benchmarks/study_executors.py;
* N workers run the 225 independent jobs by longest-job-first list scheduling (what the Ray executor approximates:
  a free worker takes the next job); the wall time is that schedule's makespan, plus one model load per worker.

    python benchmarks/fig8_projection.py /path/to/fig8-study [--overhead-ms 23.5] [--load-s 10]
"""

from __future__ import annotations

import argparse
import heapq

import phaselens as pl

PARAMS = {"smollm2-135m": 134.5e6, "gemma3-270m": 268.1e6, "qwen2.5-coder-1.5b": 1.544e9}
DEPTH = {"smollm2-135m": 30, "gemma3-270m": 18, "qwen2.5-coder-1.5b": 28}


def makespan(times: list[float], n: int) -> float:
    """Longest-processing-time-first list scheduling of ``times`` on ``n`` workers."""
    loads = [0.0] * n
    heapq.heapify(loads)
    for t in sorted(times, reverse=True):
        heapq.heappush(loads, heapq.heappop(loads) + t)
    return max(loads)


def hms(s: float) -> str:
    return f"{s / 3600:.1f} h" if s >= 3600 else (f"{s / 60:.1f} min" if s >= 60 else f"{s:.0f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("study", help="the study folder of benchmarks/fig8_sample.toml")
    ap.add_argument("--overhead-ms", type=float, default=23.5, help="per-job overhead of the ray executor (measured)")
    ap.add_argument("--load-s", type=float, default=10.0, help="one model load per worker (seconds)")
    ap.add_argument("--tasks", type=int, default=5)
    ap.add_argument("--seeds", type=int, default=5)
    a = ap.parse_args()
    df = pl.load_study(a.study)
    df = df[(df.kind == "sweep") & (df.status == "done")]
    t = {(r.model, r.criterion): float(r.wall_s) for r in df.itertuples()}
    print("measured per-job wall times (1 task x 1 seed):")
    for r in df.itertuples():
        print(f"  {r.model:14s} {r.criterion:8s} {r.wall_s:7.1f} s, {int(r.steps)} cuts, collapse ratio {r.collapse_ratio}, "
              f"peak RSS {r.peak_rss_mb:.0f} MB")
    crits = sorted({c for _, c in t})
    q, s = "qwen2.5-coder-1.5b", "smollm2-135m"
    scale = PARAMS[q] / PARAMS[s] * DEPTH[q] / DEPTH[s]
    for c in crits:
        t[(q, c)] = t[(s, c)] * scale
    print(f"  {q} (projected: SmolLM2 x {scale:.1f} = params ratio x depth ratio): "
          + ", ".join(f"{c} {t[(q, c)]:.0f} s" for c in crits))
    per = a.tasks * a.seeds
    times = [v for v in t.values() for _ in range(per)]
    total = sum(times)
    print(f"\n{len(times)} jobs; total on the measuring CPU: {hms(total)} (one worker, k = 1)\n")
    ns = [1, 2, 4, 8, 16, 32]
    print("| worker speed k (assumed) | " + " | ".join(f"N = {n}" for n in ns) + " |")
    print("|---|" + "---|" * len(ns))
    for k in (1, 10, 30, 100):
        cells = [hms(makespan([x / k + a.overhead_ms / 1e3 for x in times], n) + a.load_s) for n in ns]
        label = "1 (N CPU machines like the measuring one)" if k == 1 else f"{k}"
        print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
