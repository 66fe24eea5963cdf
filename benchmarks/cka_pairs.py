"""All-pairs linear CKA: batched Gram matrices (CKAAccumulator) against one feature-space CKA per pair.

Baseline ("pair by pair, feature space"): for every layer pair (i, j), centre X_i and Y_j and evaluate
``||Y~^T X~||_F^2 / (||X~^T X~||_F ||Y~^T Y~||_F)`` from scratch, as a loop over ``linear_cka`` calls
would (float64 torch, the same precision as the accumulator). When the pair loop would take too long it
is timed on a random subset of pairs and scaled by the pair count (every pair costs the same); the
output says so.

Fast path: ``CKAAccumulator(form="gram")``: one centred ``n x n`` Gram matrix per layer, all pairs as
one ``[L_a, n^2] @ [n^2, L_b]`` product. ``form="auto"`` (the library default) is timed too.

    python benchmarks/cka_pairs.py            # synthetic 32 x 32 layers x 2048 x 256, and both embedded models
    python benchmarks/cka_pairs.py --quick    # smaller, for a smoke run
"""

from __future__ import annotations

import argparse
import os
import random
import time

import numpy as np
import torch

from phaselens.cka import CKAAccumulator


def pair_feature_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    x = x - x.mean(0)
    y = y - y.mean(0)
    return float((y.T @ x).square().sum() / ((x.T @ x).norm() * (y.T @ y).norm()))


def baseline(A: torch.Tensor, B: torch.Tensor, max_pairs: int, seed: int = 0) -> tuple[float, np.ndarray, list, bool]:
    """(seconds for all pairs, values of the timed pairs, the timed pairs, extrapolated?)."""
    pairs = [(i, j) for i in range(A.shape[0]) for j in range(B.shape[0])]
    sub = pairs if len(pairs) <= max_pairs else random.Random(seed).sample(pairs, max_pairs)
    t0 = time.perf_counter()
    vals = np.array([pair_feature_cka(A[i], B[j]) for i, j in sub])
    dt = time.perf_counter() - t0
    return dt * len(pairs) / len(sub), vals, sub, len(sub) < len(pairs)


def fast(A: torch.Tensor, B: torch.Tensor, form: str, repeat: int = 2) -> tuple[float, np.ndarray]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = CKAAccumulator(form=form).update(A, B).compute()
        best = min(best, time.perf_counter() - t0)
    return best, out  # type: ignore[return-value]


def compare(label: str, A: torch.Tensor, B: torch.Tensor, max_pairs: int) -> None:
    la, n, p = A.shape
    lb, _, q = B.shape
    t_base, vals, sub, extra = baseline(A, B, max_pairs)
    t_gram, m_gram = fast(A, B, "gram")
    t_auto, m_auto = fast(A, B, "auto")
    err = max(abs(m_gram[i, j] - v) for (i, j), v in zip(sub, vals))
    note = f" (timed on {len(sub)} of {la * lb} pairs, scaled)" if extra else ""
    print(f"{label}: {la} x {lb} layers, n={n}, d={p}/{q}")
    print(f"  pair by pair, feature space: {t_base:8.3f} s{note}")
    print(f"  batched Gram (CKAAccumulator form='gram'): {t_gram:8.3f} s   ratio {t_base / t_gram:6.1f}x")
    print(f"  library default (form='auto'):             {t_auto:8.3f} s   ratio {t_base / t_auto:6.1f}x")
    print(f"  max |difference| over the timed pairs: {err:.2e}; gram vs auto {np.abs(m_gram - m_auto).max():.2e}")


def hidden_all_tokens(name: str, n_tokens: int) -> torch.Tensor:
    """[L, n, d] float64: every block's output at the first n_tokens tokens of the bundled calibration texts."""
    import phaselens as pl

    m = pl.load_model(name, device="cpu", dtype=torch.float32)
    rows, got = [], 0
    with torch.inference_mode():
        for text in pl.load_calibration():
            ids = m.tokenizer(text, return_tensors="pt")["input_ids"][:, :256]
            hs = m.hf(input_ids=ids, output_hidden_states=True, use_cache=False).hidden_states
            rows.append(torch.stack([h[0] for h in hs[1:]]).double())  # [L, T, d]; the last one HF-normalised
            got += ids.shape[1]
            if got >= n_tokens:
                break
    return torch.cat(rows, 1)[:, :n_tokens]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--n", type=int, default=2048)
    ap.add_argument("--d", type=int, default=256)
    ap.add_argument("--max-pairs", type=int, default=64, help="time the baseline on at most this many pairs")
    ap.add_argument("--model-n", type=int, default=1024, help="tokens of the embedded models' hidden states")
    ap.add_argument("--no-models", action="store_true")
    a = ap.parse_args()
    if a.quick:
        a.layers, a.n, a.d, a.max_pairs = 8, 512, 128, 16
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs")
    g = torch.Generator().manual_seed(0)
    A = torch.randn(a.layers, a.n, a.d, generator=g, dtype=torch.float64).cumsum(0)
    B = A + torch.randn(a.layers, a.n, a.d, generator=g, dtype=torch.float64)
    compare("synthetic", A, B, a.max_pairs)
    if a.no_models:
        return
    n = 256 if a.quick else a.model_n
    for name in ("smollm2-135m", "gemma3-270m"):
        H = hidden_all_tokens(name, n)
        compare(f"{name}, all tokens of the calibration texts (layer x layer self-similarity)", H, H, a.max_pairs)


if __name__ == "__main__":
    main()
