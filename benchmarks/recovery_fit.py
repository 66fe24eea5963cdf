"""Fitting a Ghosted-Layers recovery against the plain forward passes over the same calibration set.

Baseline, timed in the same run on the same batches: ``hf.model`` forward (embeddings -> blocks ->
final norm, no LM head), the least one pass over the calibration tokens can cost. Measured:
``fit_recovery`` (one dense pass that accumulates ``X^T X`` and ``X^T Y`` in float64, then the
closed-form solve), for a middle cut (the pass stops after the span) and a late cut ending at the
last block (the pass runs every block), and ``fit_recoveries`` of all seven methods at once.

Memory: the fit keeps ``O(d^2)`` statistics, never ``[N tokens, d]``. Each calibration size is fitted
in a fresh subprocess that samples its resident set size every 2 ms; the peak above the
resident size before the call is printed for the plain forward and for the fit, at two sizes.

    python benchmarks/recovery_fit.py            # 32 passages timed; memory at 32 and 120 passages
    python benchmarks/recovery_fit.py --quick    # 8 passages timed; memory at 8 and 32
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
import warnings

import torch

import phaselens as pl
from phaselens.calibration import n_tokens, tokenize
from phaselens.runner import default_max_tokens, pad, token_batches

MIDDLE = list(range(13, 17))  # blocks 13-16 of 30: the pass can stop at block 17
LATE = list(range(26, 30))  # blocks 26-29: the pass runs to the end


def plain_forward(model: pl.Model, texts: list[str], seq_len: int, batch_size: int | None) -> None:
    """The baseline: the HF decoder over the very batches phaselens forms (same token budget)."""
    seqs = tokenize(model.tokenizer, texts, seq_len)
    with torch.inference_mode():
        for g in token_batches([len(s) for s in seqs], default_max_tokens(model.device), batch_size):
            ids, att = pad([seqs[i] for i in g], model.tokenizer.pad_token_id, model.device)
            model.decoder(input_ids=ids, attention_mask=att, use_cache=False)


def fit(model: pl.Model, blocks: list[int], texts: list[str], seq_len: int, batch_size: int, methods=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the few-tokens advice at small sizes
        view = pl.prune(model, blocks)
        if methods:
            return pl.fit_recovery(view, texts, list(methods), seq_len=seq_len, batch_size=batch_size)
        return pl.fit_recovery(view, texts, seq_len=seq_len, batch_size=batch_size)


class PeakRSS:
    """Samples this process's resident set size in a thread; ``peak - start`` in MiB."""

    def __enter__(self):
        import psutil

        self.proc = psutil.Process()
        self.start = self.peak = self.proc.memory_info().rss
        self.stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def _run(self):
        while not self.stop:
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.002)

    def __exit__(self, *exc):
        self.stop = True
        self.thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)

    @property
    def mib(self) -> float:
        return (self.peak - self.start) / 2**20


def memory_child(n_texts: int, seq_len: int, batch_size: int) -> None:
    """Run in a subprocess: peak RSS above the start for a plain forward and for a fit, as JSON."""
    model = pl.load_model("smollm2-135m", device="cpu", dtype=torch.float32)
    texts = pl.load_calibration()[:n_texts]
    plain_forward(model, texts[:batch_size], seq_len, batch_size)  # warm up allocator and kernels
    with PeakRSS() as f:
        plain_forward(model, texts, seq_len, batch_size)
    with PeakRSS() as g:
        fit(model, LATE, texts, seq_len, batch_size)
    print(json.dumps({"n_texts": n_texts, "tokens": n_tokens(model, texts, seq_len), "forward_mib": f.mib,
                      "fit_mib": g.mib}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small calibration sets (a smoke run)")
    ap.add_argument("--texts", type=int, default=None, help="calibration passages timed (default 32; quick 8)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--memory-sizes", default=None, help="two passage counts, e.g. 32,120 (quick: 8,32)")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--_child", type=int, default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a._child is not None:
        memory_child(a._child, a.seq_len, a.batch_size)
        return
    n_texts = a.texts or (8 if a.quick else 32)
    sizes = [int(x) for x in (a.memory_sizes or ("8,32" if a.quick else "32,120")).split(",")]

    torch.manual_seed(0)
    model = pl.load_model("smollm2-135m", device="cpu", dtype=torch.float32)
    texts = pl.load_calibration()[:n_texts]
    ntok = n_tokens(model, texts, a.seq_len)
    print(f"smollm2-135m (L={model.n_blocks}, d={model.d_model}), {n_texts} calibration passages = {ntok} tokens, "
          f"seq_len {a.seq_len}, batch {a.batch_size}, {torch.get_num_threads()} threads")
    plain_forward(model, texts[: a.batch_size], a.seq_len, a.batch_size)  # warm up

    runs = {
        "plain forward (hf.model)": lambda: plain_forward(model, texts, a.seq_len, a.batch_size),
        f"fit_recovery ghosted, middle cut {MIDDLE[0]}-{MIDDLE[-1]}": lambda: fit(model, MIDDLE, texts, a.seq_len, a.batch_size),
        f"fit_recovery ghosted, late cut {LATE[0]}-{LATE[-1]}": lambda: fit(model, LATE, texts, a.seq_len, a.batch_size),
        "fit_recovery, all 7 methods, late cut": lambda: fit(model, LATE, texts, a.seq_len, a.batch_size, pl.recovery.METHODS),
    }
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(a.repeats):  # interleaved, so load changes hit every path alike
        for k, fn in runs.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    base = min(times["plain forward (hf.model)"])
    print(f"\n{'path':<46} {'best s':>8} {'ratio to forward':>17}")
    for k, ts in times.items():
        print(f"{k:<46} {min(ts):8.2f} {min(ts) / base:17.2f}x")
    late = min(times[f"fit_recovery ghosted, late cut {LATE[0]}-{LATE[-1]}"]) / base
    print(f"\nfit / forward (late cut, the full pass): {late:.2f}x  (target <= 1.2x: {'met' if late <= 1.2 else 'MISSED'})")

    if a.no_memory:
        return
    print(f"\npeak resident memory above the start of the call (fresh subprocess per size, late cut):")
    print(f"{'passages':>9} {'tokens':>8} {'plain forward MiB':>18} {'fit MiB':>9}")
    for n in sizes:
        out = subprocess.run([sys.executable, __file__, "--_child", str(n), "--seq-len", str(a.seq_len),
                              "--batch-size", str(a.batch_size)], capture_output=True, text=True, env=os.environ.copy())
        if out.returncode != 0:
            print(out.stderr[-2000:])
            raise SystemExit(out.returncode)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{r['n_texts']:>9} {r['tokens']:>8} {r['forward_mib']:>18.1f} {r['fit_mib']:>9.1f}")
    d = model.d_model
    print(f"(the statistics themselves: 2 x d^2 float64 = {2 * d * d * 8 / 2**20:.1f} MiB per span, whatever the token count)")


if __name__ == "__main__":
    main()
