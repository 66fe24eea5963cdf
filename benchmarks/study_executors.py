"""Studies: the per-job overhead of the "ray" executor against "local", and the speedup of 2 Ray workers.

Both measurements time ``phaselens.run_study`` end to end (spec expansion, the fingerprint phase, every
job, the result files and the index), in fresh study folders, in the same run:

1. overhead: ``--jobs`` tiny jobs (a random 6-block, d=64 Llama saved as a Hugging Face folder; ``trace`` on
   4 items, one job per seed). The study's wall time is split into its setup (until the first job can start:
   tasks, workers, each worker's model load for the fingerprint) and its jobs phase. Per-job overhead =
   (jobs phase - the jobs' own wall time summed from the index / workers) / jobs: what dispatching, moving the
   result back, and writing the result, its row and the index costs per job. Printed for "local" and "ray"
   (2 actors), and their ratio. Ray's start-up (``ray.init``) is timed apart.
2. speedup: a CPU-bound study (``--cpu-jobs`` ``trace`` jobs of SmolLM2-135M on ``--items`` built-in items each):
   "local" (one process, ``torch`` on all of this machine's cores) against "ray" with 2 actors of 1 CPU each
   (1 torch thread each). Speedup = local wall / ray wall.

    OMP_NUM_THREADS=2 python benchmarks/study_executors.py [--jobs 50] [--cpu-jobs 6] [--items 24]

Note the load average printed with the numbers: on a shared machine both executors compete for the cores.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

import phaselens as pl


def tiny_folder(root: Path) -> str:
    from transformers import AutoModelForCausalLM, LlamaConfig

    smol = pl.load_model("smollm2-135m", device="cpu", dtype=torch.float32)
    cfg = LlamaConfig(vocab_size=smol.tokenizer.vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=6,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
    torch.manual_seed(0)
    hf = AutoModelForCausalLM.from_config(cfg).eval()
    path = root / "tiny-llama"
    hf.save_pretrained(path)
    smol.tokenizer.save_pretrained(path)
    return str(path)


def timed(spec: dict, out: Path, executor: str, **kw) -> dict:
    """Wall times of one study: ``total``; ``setup`` (spec, tasks, workers, fingerprints: until the first job can
    start); ``jobs_phase`` (from then to the end); ``own`` (the jobs' own wall times, summed from the index)."""
    marks = {}
    t0 = time.perf_counter()
    df = pl.run_study(spec, out=out, executor=executor, on_plan=lambda *_: marks.setdefault("plan", time.perf_counter()), **kw)
    end = time.perf_counter()
    bad = df[df.status != "done"]
    if len(bad):
        raise SystemExit(f"{len(bad)} job(s) failed: {bad.error.iloc[0]}")
    return {"total": end - t0, "setup": marks["plan"] - t0, "jobs_phase": end - marks["plan"], "own": float(df.wall_s.sum()),
            "n": len(df), "workers": df.worker.nunique()}


def load() -> str:
    return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=50)
    ap.add_argument("--cpu-jobs", type=int, default=6)
    ap.add_argument("--items", type=int, default=24)
    ap.add_argument("--skip-speedup", action="store_true")
    a = ap.parse_args()
    import ray

    root = Path(tempfile.mkdtemp(prefix="phaselens-bench-study-"))
    tiny = tiny_folder(root)
    t0 = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 * 2**20, log_to_driver=False)
    print(f"ray.init (local instance, 2 CPUs): {time.perf_counter() - t0:.2f} s  [{load()}]")

    spec = {"models": [tiny], "tasks": [{"name": "capitals", "limit": 4}], "seeds": list(range(a.jobs)),
            "runs": [{"kind": "trace", "n_boot": 100}]}
    res = {}
    for ex in ("local", "ray"):
        r = res[ex] = timed(spec, root / f"tiny-{ex}", ex, **({"workers": 2} if ex == "ray" else {}))
        over = (r["jobs_phase"] - r["own"] / r["workers"]) / r["n"]
        r["over"] = over
        print(f"{a.jobs} tiny jobs, {ex:5s} ({r['workers']} worker(s)): study {r['total']:6.2f} s = setup {r['setup']:5.2f} s "
              f"(workers, model loads, fingerprints) + jobs {r['jobs_phase']:5.2f} s; mean job {r['own'] / r['n'] * 1e3:6.1f} ms; "
              f"overhead per job {over * 1e3:6.1f} ms  [{load()}]")
    lo, ro = res["local"]["over"], res["ray"]["over"]
    print(f"ratio ray / local: overhead per job {ro / lo:.2f}x ({(ro - lo) * 1e3:+.1f} ms per job); study wall "
          f"{res['ray']['total'] / res['local']['total']:.2f}x; setup {res['ray']['setup'] / res['local']['setup']:.2f}x")

    if not a.skip_speedup:
        spec = {"models": ["smollm2-135m"], "tasks": [{"name": "capitals", "limit": a.items}],
                "seeds": list(range(a.cpu_jobs)), "runs": [{"kind": "trace", "n_boot": 100}],
                "resources": {"num_cpus": 1}}
        loc = timed(spec, root / "cpu-local", "local")
        print(f"{a.cpu_jobs} SmolLM2 trace jobs ({a.items} items), local ({torch.get_num_threads()} torch threads): "
              f"{loc['total']:.2f} s (setup {loc['setup']:.2f} s, jobs {loc['jobs_phase']:.2f} s)  [{load()}]")
        far = timed(spec, root / "cpu-ray", "ray", workers=2)
        print(f"{a.cpu_jobs} SmolLM2 trace jobs ({a.items} items), ray, {far['workers']} actors x 1 CPU: {far['total']:.2f} s "
              f"(setup {far['setup']:.2f} s, jobs {far['jobs_phase']:.2f} s)  [{load()}]")
        print(f"speedup ray (2 workers) / local: {loc['total'] / far['total']:.2f}x whole study, "
              f"{loc['jobs_phase'] / far['jobs_phase']:.2f}x jobs phase")
    ray.shutdown()


if __name__ == "__main__":
    main()
