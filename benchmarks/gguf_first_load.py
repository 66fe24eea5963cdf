"""The first load of a GGUF model: phaselens' streamed dequantizer against transformers' ``gguf_file=`` loader.

Fast path (``phaselens.dequant.dequantize_to_folder``): the GGUF tensors dequantized one at a time, a slab of
rows at a time, straight into a safetensors file. Baseline (``phaselens.dequant.dequantize_with_transformers``, the
loader phaselens used before): ``AutoModelForCausalLM.from_pretrained(dir, gguf_file=...)`` (every tensor
dequantized into memory), then ``save_pretrained``. Each path runs in its own subprocess, so its wall time and
peak resident memory (``getrusage``) are its own; then the two folders are compared tensor by tensor (max
absolute difference) and by the logits of a few prompts, each folder loaded plainly with transformers.

    python benchmarks/gguf_first_load.py --model smollm2-135m
    python benchmarks/gguf_first_load.py --model gemma3-270m
    python benchmarks/gguf_first_load.py --model qwen2.5-coder-1.5b   # the baseline needs ~15 GB of memory
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROMPTS = ["The capital of France is", "def fibonacci(n):\n    ", "Question: 2 + 2 = ?\nA. 3\nB. 4\nAnswer:"]


def _one(path: str, kind: str, out: str, arch: str) -> None:
    from phaselens import dequant

    t0 = time.perf_counter()
    if kind == "fast":
        dequant.dequantize_to_folder(path, out, architecture=arch)
    else:
        dequant.dequantize_with_transformers(Path(path), Path(out), architecture=arch)
    print(json.dumps({"seconds": time.perf_counter() - t0,
                      "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def _logits(folder: Path) -> "object":
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.inference_mode():
        out = [hf(**tok(p, return_tensors="pt")).logits[0] for p in PROMPTS]
    del hf
    gc.collect()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m", help="an embedded name or a .gguf path")
    ap.add_argument("--keep", type=Path, default=None, help="folder to keep both outputs in (default: a temp dir)")
    ap.add_argument("--_one", nargs=4, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a._one:
        _one(*a._one)
        return
    from phaselens import embedded

    if a.model in embedded.EMBEDDED:
        path, arch = embedded.embedded_gguf_path(a.model), embedded.EMBEDDED[a.model]["architecture"]
    else:
        path, arch = Path(a.model), ""
    work = a.keep or Path(tempfile.mkdtemp(prefix="gguf-first-load-"))
    res = {}
    for kind in ("fast", "transformers"):
        out = work / kind
        p = subprocess.run([sys.executable, __file__, "--_one", str(path), kind, str(out), arch],
                           capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
        if p.returncode != 0:
            sys.exit(f"{kind} path failed:\n{p.stderr[-3000:]}")
        res[kind] = json.loads(p.stdout.strip().splitlines()[-1])
        print(f"{kind:>12}: {res[kind]['seconds']:8.1f} s, peak RSS {res[kind]['peak_rss_mib']:8.0f} MiB", flush=True)
    f, b = res["fast"], res["transformers"]
    print(f"ratio fast/transformers: time {f['seconds'] / b['seconds']:.3f}x, peak memory "
          f"{f['peak_rss_mib'] / b['peak_rss_mib']:.3f}x  (load average {os.getloadavg()[0]:.1f}, {os.cpu_count()} cores)")

    from safetensors import safe_open

    worst, n = 0.0, 0
    with safe_open(work / "fast" / "model.safetensors", "pt") as A, safe_open(work / "transformers" / "model.safetensors", "pt") as B:
        ka, kb = set(A.keys()), set(B.keys())
        if ka != kb:
            print(f"tensor names differ: only fast {sorted(ka - kb)[:5]}, only transformers {sorted(kb - ka)[:5]}")
        for k in sorted(ka & kb):
            x, y = A.get_tensor(k), B.get_tensor(k)
            assert x.shape == y.shape, (k, x.shape, y.shape)
            worst = max(worst, (x - y).abs().max().item())
            n += 1
    print(f"weights: {n} tensors, max |fast - transformers| = {worst:.3g}")
    la, lb = _logits(work / "fast"), _logits(work / "transformers")
    err = max(((x - y).abs().max() / y.std()).item() for x, y in zip(la, lb))
    print(f"logits on {len(PROMPTS)} prompts: max |fast - transformers| / std = {err:.3g}")


if __name__ == "__main__":
    main()
