"""Lenses: what fitting and reading through them costs, as ratios against named baselines timed in the same run.

1. **Linear-lens fit** (``pl.fit_lens(m, "linear", cal)``: one runner pass gathering float64 ``X^T X``, ``X^T Y`` for
   every block, then ``L-1`` solves) against **the forward passes over the calibration set** (the Hugging Face
   causal LM, ``hf(input_ids)``, on the same passages in the same padded batches). Target: <= 1.2x.
2. **A decision trace through a lens** (``decision_trace(m, task, lens=L)``) against the **logit-lens trace**
   (``lens="logit"``), same task, same batches. Target: <= 1.05x.
3. **Tuned-lens training**: wall time and peak memory (in a fresh child process per model: the whole process's
   ``ru_maxrss``, and the growth of the resident set during training, sampled every 10 ms) at the default settings, and its held-out KL against the logit lens's.

    python benchmarks/lens_speed.py --models smollm2-135m,gemma3-270m --passages 32
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch

import phaselens as pl
from phaselens.calibration import tokenize
from phaselens.runner import pad, token_batches


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def hf_forward(m: pl.Model, seqs: list[list[int]], max_tokens: int) -> None:
    pad_id = m.tokenizer.pad_token_id if m.tokenizer.pad_token_id is not None else 0
    with torch.inference_mode():
        for g in token_batches([len(s) for s in seqs], max_tokens):
            ids, att = pad([seqs[i] for i in g], pad_id, m.device)
            m.hf(input_ids=ids, attention_mask=att, use_cache=False)


class RssSampler:
    """Peak resident set size (bytes) of this process while the ``with`` body runs, sampled from /proc every 10 ms
    (``ru_maxrss`` alone cannot say it: the model load's own peak is higher than training's)."""

    def __init__(self) -> None:
        self.peak, self.start, self._stop = 0, 0, False

    @staticmethod
    def now() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _run(self) -> None:
        while not self._stop:
            self.peak = max(self.peak, self.now())
            time.sleep(0.01)

    def __enter__(self) -> "RssSampler":
        import threading

        self.start = self.peak = self.now()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop = True
        self._t.join()
        self.peak = max(self.peak, self.now())


def tuned_child(name: str, steps: int, train_tokens: int, heldout: int, kl_seq_len: int) -> None:
    """Run in a fresh process: train the tuned lens, print JSON with time, peak RSS and held-out KL."""
    import resource

    m = pl.load_model(name)
    t0 = time.perf_counter()
    with RssSampler() as rss:
        lens = pl.fit_lens(m, "tuned", seed=0, steps=steps, max_train_tokens=train_tokens, progress=False)
    secs = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    held = pl.heldout_texts()[:heldout]
    kl_t = pl.lens_kl(m, held, lens, seq_len=kl_seq_len)
    kl_l = pl.lens_kl(m, held, "logit", seq_len=kl_seq_len)
    print(json.dumps({"model": name, "seconds": secs, "per_step": secs / steps, "peak_rss_gb": peak / 2**20,
                      "rss_growth_gb": (rss.peak - rss.start) / 2**30, "rss_before_gb": rss.start / 2**30, "vocab": lens.info["vocab"],
                      "vocab_mass": lens.info["vocab_mass"], "n_tokens": lens.info["n_tokens"],
                      "kl_tuned": kl_t.tolist(), "kl_logit": kl_l.tolist(),
                      "beats_logit_everywhere": bool((kl_t[:-1] < kl_l[:-1]).all())}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="smollm2-135m,gemma3-270m")
    p.add_argument("--passages", type=int, default=32, help="calibration passages for the linear-lens fit")
    p.add_argument("--task", default="capitals")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--steps", type=int, default=150, help="tuned-lens steps (part 3)")
    p.add_argument("--train-tokens", type=int, default=4096)
    p.add_argument("--heldout", type=int, default=4)
    p.add_argument("--kl-seq-len", type=int, default=128)
    p.add_argument("--skip", default="", help="comma-separated parts to skip: fit,trace,tuned")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        tuned_child(a.child, a.steps, a.train_tokens, a.heldout, a.kl_seq_len)
        return
    skip = set(a.skip.split(","))
    print(f"torch threads {torch.get_num_threads()}, load {os.getloadavg()[0]:.2f}")
    for name in a.models.split(","):
        m = pl.load_model(name)
        cal = pl.load_calibration()[: a.passages]
        seqs = tokenize(m.tokenizer, cal, 256)
        n = sum(len(s) for s in seqs)
        if "fit" not in skip:
            from phaselens.lenses.base import CPU_MAX_TOKENS

            mt = CPU_MAX_TOKENS if m.device.type != "cuda" else 32768
            t_fwd = best_of(lambda: hf_forward(m, seqs, mt), a.repeats)
            t_fit = best_of(lambda: pl.fit_lens(m, "linear", cal), a.repeats)
            print(f"{name}: linear-lens fit {t_fit:.2f} s vs HF forward over the calibration set {t_fwd:.2f} s "
                  f"({n} tokens, {mt} padded tokens per pass): ratio {t_fit / t_fwd:.3f} (target <= 1.2; load "
                  f"{os.getloadavg()[0]:.2f})")
        if "trace" not in skip:
            task = pl.load_task(a.task)
            lenses = {"linear": pl.fit_lens(m, "linear", cal),
                      "tuned": pl.fit_lens(m, "tuned", cal, steps=2, progress=False)}  # the cost of reading, not training
            run = lambda lens: pl.decision_trace(m, task, lens=lens, n_boot=100)  # noqa: E731
            run("logit")
            t_logit = statistics.median(best_of(lambda: run("logit"), 1) for _ in range(a.repeats))
            for k, lens in lenses.items():
                run(lens)
                t = statistics.median(best_of(lambda: run(lens), 1) for _ in range(a.repeats))
                print(f"{name}: decision trace on {a.task} ({len(task)} items) through the {k} lens {t:.3f} s vs logit lens "
                      f"{t_logit:.3f} s: ratio {t / t_logit:.3f} (target <= 1.05; load {os.getloadavg()[0]:.2f})")
        del m
        if "tuned" not in skip:
            out = subprocess.run([sys.executable, __file__, "--child", name, "--steps", str(a.steps), "--train-tokens",
                                  str(a.train_tokens), "--heldout", str(a.heldout), "--kl-seq-len", str(a.kl_seq_len)],
                                 capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
            r = json.loads(out)
            print(f"{name}: tuned lens, {a.steps} steps on {r['n_tokens']} tokens, vocab {r['vocab']} (covering "
                  f"{r['vocab_mass']:.1%} of the final mass): {r['seconds']:.1f} s ({r['per_step']:.2f} s/step), peak RSS "
                  f"of the process {r['peak_rss_gb']:.2f} GB (model load included); during training "
                  f"{r['rss_before_gb']:.2f} GB -> +{r['rss_growth_gb']:.2f} GB at its peak; held-out KL mean over "
                  f"blocks 0..L-2 tuned {statistics.mean(r['kl_tuned'][:-1]):.3f} vs logit "
                  f"{statistics.mean(r['kl_logit'][:-1]):.3f} nats; lower at every block: {r['beats_logit_everywhere']} "
                  f"(load {os.getloadavg()[0]:.2f})")


if __name__ == "__main__":
    main()
