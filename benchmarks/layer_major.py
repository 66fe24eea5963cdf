"""Models bigger than memory: the layer schedule against accelerate's offload under the batch schedule (issue 24).

Three runs of the same decision trace (200 lettered MMLU items, float32 on the CPU), each in a fresh process so
its peak RSS and its bytes read are its own:

* ``memory``: the model loaded whole (the reference margins);
* ``batch``: every block offloaded to ``"disk"`` (accelerate's hooks), the batch schedule: each batch through every
  block, so every block's weights are read once per batch;
* ``layer``: the same placement, the layer schedule: every batch through block 0, then block 1, ..., so each
  block's weights are read once per wave (one wave here).

accelerate's offloaded-weight loader is also counted (tensors and bytes it hands out during the trace): a figure
independent of the page cache (pages another process maps cannot be dropped). Before each run the page cache of the model's files (and the offload folder) is dropped with
``os.posix_fadvise(POSIX_FADV_DONTNEED)``, so the bytes read are real reads. Reported per run: wall time of the
load and of the trace, peak RSS (``ru_maxrss``), bytes read (``/proc/self/io`` ``read_bytes``, whole process and
during the trace), the largest margin difference against the in-memory run; then the ratios. The weight budget
(a quarter of the model's float32 size) is what may stay resident: the embeddings / head, plus at most two blocks
(the computing one and the prefetched one) under the layer schedule; it is reported against the resident weights.

    python benchmarks/layer_major.py                                   # Qwen2.5-Coder-1.5B, 200 items, 4096 and 512 tokens
    python benchmarks/layer_major.py --model smollm2-135m --items 24   # a quick run
    python benchmarks/layer_major.py --max-tokens 512 --out figures.json

Measured on the 1.5B model (2026-12-03, 2-core CPU): the table in docs/big_models.md ("Measured here").

Run the Qwen variant on a quiet machine: it reads the model's ~6 GB about (batches + 2) times under the batch
schedule.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

import phaselens as pl
from phaselens.embedded import cache_dir
from phaselens.encoding import encode_task

KEYS = {"qwen2.5-coder-1.5b": "qwen2.5-coder-1.5b", "qwen": "qwen2.5-coder-1.5b", "smollm2-135m": "smollm2-135m",
        "gemma3-270m": "gemma3-270m"}


def read_bytes() -> int:
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("read_bytes"))


def status(*fields: str) -> dict[str, int]:
    """Memory fields of ``/proc/self/status``, read at once, bytes (``VmRSS``: resident now; ``VmHWM``: peak since
    start or the last :func:`hwm_reset`; ``RssAnon`` / ``RssFile`` / ``RssShmem``: its split)."""
    with open("/proc/self/status") as f:
        return {k: int(v.split()[0]) * 1024 for k, _, v in (line.partition(":") for line in f) if k in fields}


def status_bytes(field: str) -> int:
    """One field of :func:`status`, bytes."""
    return status(field)[field]


def hwm_reset() -> bool:
    """Reset this process's peak resident memory (``VmHWM``) to its current RSS (``/proc/self/clear_refs``)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def trim() -> bool:
    """Give the C allocator's free pages back to the system (glibc ``malloc_trim(0)``), so that RSS counts only live
    memory. False where the C library has no ``malloc_trim``."""
    try:
        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0))
    except (OSError, AttributeError):
        return False


class RssSampler:
    """Samples ``/proc/self/status`` every ``every`` seconds in a thread; keeps the sample with the most resident
    memory, split into anonymous pages (``RssAnon``: tensors, the allocator's arenas) and file pages (``RssFile``:
    mapped files, e.g. safetensors a loader maps), bytes. A sample can miss a peak shorter than ``every``:
    ``VmHWM`` stays the peak; this is its split."""

    def __init__(self, every: float = 0.05):
        import threading

        self.every, self.peak = every, {"RssAnon": 0, "RssFile": 0, "RssShmem": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            now = status(*self.peak)
            if sum(now.values()) > sum(self.peak.values()):
                self.peak = now
            self._stop.wait(self.every)

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def largest_batch(prompts: list, max_tokens: int) -> list[list[int]]:
    """The token ids of the trace's largest padded batch (most ``rows x longest`` tokens) of the encoded ``prompts``."""
    from phaselens.runner.batch import token_batches

    lengths = [len(c) for c in prompts]
    big = max(token_batches(lengths, max_tokens), key=lambda b: len(b) * lengths[b[0]])
    return [list(prompts[i]) for i in big]


def wave_bytes(model, prompts: list, max_tokens: int) -> int:
    """The residual streams of one wave holding every batch of the encoded ``prompts``
    (``phaselens.runner.layered.residual_bytes`` summed over the trace's batches: ``B x T x d`` values plus a
    ``B x T x T`` mask estimate)."""
    from phaselens.runner.batch import token_batches
    from phaselens.runner.layered import residual_bytes, width

    d, item = width(model)
    lengths = [len(c) for c in prompts]
    return sum(residual_bytes(len(b), lengths[b[0]], d, item) for b in token_batches(lengths, max_tokens))


def batch_work_bytes(model, batch: list[list[int]]) -> int | None:
    """Working memory of one batch, measured on the in-memory model: the rise of the process's peak RSS over its
    RSS while the decoder (embeddings, blocks, final norm; no head) runs ``batch`` (token ids per row) once. Any
    schedule needs it on top of what it keeps (the layer schedule: resident weights + the wave's residuals).
    None where the peak cannot be reset."""
    from phaselens.runner.batch import pad

    ids, att = pad(batch, model.tokenizer.pad_token_id or 0, "cpu")
    trim()  # else the pass reuses pages a previous pass freed into the allocator's arenas and the peak does not rise
    if not hwm_reset():
        return None
    before = status_bytes("VmRSS")
    with torch.inference_mode():
        model.decoder(input_ids=ids, attention_mask=att, use_cache=False)
    return status_bytes("VmHWM") - before


def drop_cache(paths: list[Path]) -> int:
    """``POSIX_FADV_DONTNEED`` on every file under ``paths``: their pages leave the page cache. Returns bytes covered."""
    total = 0
    for root in paths:
        files = [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file()]
        for p in files:
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd) if os.access(p, os.W_OK) else None
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                total += p.stat().st_size
            finally:
                os.close(fd)
    return total


def count_loader() -> dict:
    """Counts what accelerate's offloaded-weight loader hands out (tensors, bytes): independent of the page cache."""
    from accelerate.utils import offload

    box = {"reads": 0, "bytes": 0}
    real = offload.OffloadedWeightsLoader.__getitem__

    def counting(self, key):
        t = real(self, key)
        box["reads"] += 1
        box["bytes"] += t.numel() * t.element_size()
        return t

    offload.OffloadedWeightsLoader.__getitem__ = counting
    return box


def model_folder(key: str) -> Path:
    """The cached safetensors folder of an embedded model (made once, in a child process, if missing)."""
    folder = cache_dir() / "models" / key
    if not (folder / "model.safetensors").exists():
        subprocess.run([sys.executable, "-c", f"import phaselens as pl; pl.load_model({key!r}, device='cpu')"], check=True)
    return folder


def child(args: argparse.Namespace) -> None:
    """One run, in this process: load, trace, write the figures and the margins."""
    key, kind, out = KEYS[args.model], args.run, Path(args.result)
    runtime = status_bytes("VmRSS")  # python, torch, transformers and phaselens imported; no model yet
    split = {"runtime": status("RssAnon", "RssFile")}
    io0, t0 = read_bytes(), time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if kind == "memory":
            model = pl.load_model(key, device="cpu", dtype=torch.float32)
        else:
            import transformers

            n = transformers.AutoConfig.from_pretrained(model_folder(key)).num_hidden_layers
            dm = {"": "cpu", **{f"model.layers.{b}": "disk" for b in range(n)}}
            if not args.keep_embeddings:  # the embedding and the head too: only the norms stay resident
                dm.update({"model.embed_tokens": "disk", "lm_head": "disk"})
            model = pl.load_model(key, device_map=dm, offload_folder=args.offload, dtype=torch.float32)
    t_load, io_load = time.perf_counter() - t0, read_bytes() - io0
    peak_load = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    # the load may have written the offload folder or left the model's pages cached: the trace reads from disk
    drop_cache([model_folder(key)] + ([Path(args.offload)] if Path(args.offload).exists() else []))
    task = pl.load_task("mmlu", format="letters", limit=args.items, seed=0)
    trim()
    split["after_load"] = status("RssAnon", "RssFile")  # what the load left, freed pages returned
    resident = sum(p.numel() * p.element_size() for p in model.hf.parameters() if p.device.type != "meta")
    blocks = [sum(p.numel() * p.element_size() for p in b.state_dict().values()) for b in model.blocks]
    loaded = count_loader()
    reset = hwm_reset()
    io1, t1 = read_bytes(), time.perf_counter()
    with RssSampler() as sampled:
        trace = pl.decision_trace(model, task, max_tokens=args.max_tokens, n_boot=100,
                                  schedule="layer" if kind == "layer" else "batch")
    t_trace, io_trace = time.perf_counter() - t1, read_bytes() - io1
    peak_trace = status_bytes("VmHWM") if reset else None
    np.save(out.with_suffix(".npy"), trace.margins)
    prompts = encode_task(task, model.tokenizer).prompts  # encoded once for the two figures below
    big = largest_batch(prompts, args.max_tokens)
    work = batch_work_bytes(model, big) if kind == "memory" else None
    out.write_text(json.dumps({
        "run": kind, "load_s": t_load, "trace_s": t_trace, "peak_rss_load_bytes": peak_load, "peak_rss_trace_bytes": peak_trace,
        "peak_rss_trace_sampled_bytes": sampled.peak, "rss_split_bytes": split, "rss_after_load_bytes": status_bytes("VmRSS"),
        # ru_maxrss follows VmHWM down when clear_refs resets it, so the whole run's peak is the larger of the two
        "peak_rss_bytes": max(peak_load, peak_trace or 0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024),
        "offload_loader_bytes_trace": loaded["bytes"], "offload_loader_reads_trace": loaded["reads"],
        "read_bytes_load": io_load, "read_bytes_trace": io_trace, "read_bytes_total": read_bytes() - io0,
        "resident_weight_bytes": resident, "max_block_bytes": max(blocks), "n_blocks": len(blocks),
        "runtime_rss_bytes": runtime, "wave_activation_bytes": wave_bytes(model, prompts, args.max_tokens),
        "batch_work_bytes": work, "largest_batch": [len(big[0]), len(big)],  # longest tokens, rows
        "items": task.n_items if hasattr(task, "n_items") else len(task.items), "max_tokens": args.max_tokens,
    }))


def parent(args: argparse.Namespace) -> dict:
    key = KEYS[args.model]
    folder = model_folder(key)
    size = (folder / "model.safetensors").stat().st_size
    report: dict = {"model": key, "model_bytes": size, "weight_budget_bytes": size // 4, "items": args.items,
                    "torch": torch.__version__, "threads": torch.get_num_threads(), "runs": {}}
    with tempfile.TemporaryDirectory(prefix="phaselens-layer-major-") as tmp:
        for mt in args.max_tokens:
            runs: dict = {}
            for kind in ("memory", "batch", "layer"):
                offload = Path(tmp) / f"offload-{kind}-{mt}"
                res = Path(tmp) / f"{kind}-{mt}.json"
                report["dropped_bytes"] = drop_cache([folder] + ([Path(tmp)] if any(Path(tmp).iterdir()) else []))
                cmd = [sys.executable, __file__, "--model", args.model, "--items", str(args.items), "--run", kind,
                       "--max-tokens", str(mt), "--result", str(res), "--offload", str(offload)]
                cmd += ["--keep-embeddings"] if args.keep_embeddings else []
                subprocess.run(cmd, check=True)
                runs[kind] = json.loads(res.read_text())
                runs[kind]["margins"] = np.load(res.with_suffix(".npy"))
                print(f"[{mt} tokens] {kind:6s} loader {runs[kind].get('offload_loader_bytes_trace', 0) / 2**30:.2f} GiB; load {runs[kind]['load_s']:.1f}s trace {runs[kind]['trace_s']:.1f}s "
                      f"peak RSS {runs[kind]['peak_rss_bytes'] / 2**30:.2f} GiB read {runs[kind]['read_bytes_total'] / 2**30:.2f} GiB "
                      f"(trace {runs[kind]['read_bytes_trace'] / 2**30:.2f} GiB)", flush=True)
            ref = runs["memory"].pop("margins")
            for kind in ("batch", "layer"):
                runs[kind]["max_abs_margin_diff"] = float(np.nanmax(np.abs(runs[kind].pop("margins") - ref)))
            m, b, lay = runs["memory"], runs["batch"], runs["layer"]
            runs["ratios"] = {
                "trace_time_batch_vs_layer": b["trace_s"] / lay["trace_s"],
                "trace_time_layer_vs_memory": lay["trace_s"] / m["trace_s"],
                "trace_read_batch_vs_layer": b["read_bytes_trace"] / max(lay["read_bytes_trace"], 1),
                "loader_bytes_batch_vs_layer": b["offload_loader_bytes_trace"] / max(lay["offload_loader_bytes_trace"], 1),
                "loader_bytes_layer_vs_blocks": lay["offload_loader_bytes_trace"] / (lay["max_block_bytes"] * lay["n_blocks"]),
                "loader_bytes_batch_vs_blocks": b["offload_loader_bytes_trace"] / (b["max_block_bytes"] * b["n_blocks"]),
                "trace_read_layer_vs_model": lay["read_bytes_trace"] / size,
                "trace_read_batch_vs_model": b["read_bytes_trace"] / size,
                "peak_rss_layer_vs_memory": lay["peak_rss_bytes"] / m["peak_rss_bytes"],
                "peak_rss_batch_vs_memory": b["peak_rss_bytes"] / m["peak_rss_bytes"],
            }
            # the target: what the process holds without any weights + the weight budget + the activations. Without
            # weights: the RSS after the load (freed pages returned) less the resident weights: python, torch, the
            # tokenizer, transformers' and accelerate's modules (SmolLM2: 0.21 GiB anonymous before any model, 0.34
            # after a load that keeps no weight; 73 MiB of it the tokenizer). Activations: the wave's residual
            # streams (phaselens.runner.layered.residual_bytes) and one batch's working memory (measured in the
            # in-memory run, as the peak RSS rise of one decoder pass over the largest batch: any schedule needs it once)
            work = m["batch_work_bytes"] or 0
            after = lay["rss_split_bytes"]["after_load"]
            fixed = max(lay["runtime_rss_bytes"], after["RssAnon"] + after["RssFile"] - lay["resident_weight_bytes"])
            allowed = fixed + size // 4 + lay["wave_activation_bytes"] + work
            peak = lay["peak_rss_trace_bytes"] or lay["peak_rss_bytes"]
            runs["memory_target"] = {"peak_rss_trace_layer_bytes": peak, "met_during_trace": peak <= allowed,
                                     "runtime_rss_bytes": lay["runtime_rss_bytes"], "without_weights_bytes": fixed,
                                     "weight_budget_bytes": size // 4,
                                     "wave_activation_bytes": lay["wave_activation_bytes"], "batch_work_bytes": work,
                                     "largest_batch_longest_rows": m["largest_batch"], "allowed_bytes": allowed,
                                     "peak_rss_layer_bytes": lay["peak_rss_bytes"], "met": lay["peak_rss_bytes"] <= allowed}
            print(f"[{mt} tokens] memory: layer peak RSS {lay['peak_rss_bytes'] / 2**30:.2f} GiB (load {lay['peak_rss_load_bytes'] / 2**30:.2f}, "
                  f"trace {peak / 2**30:.2f}: {'met' if peak <= allowed else 'NOT met'}) against "
                  f"{fixed / 2**30:.2f} without weights (runtime {lay['runtime_rss_bytes'] / 2**30:.2f} before any model) + weight budget {size / 4 / 2**30:.2f} + wave residuals "
                  f"{lay['wave_activation_bytes'] / 2**30:.2f} + one batch's working memory {work / 2**30:.2f} "
                  f"(largest batch: longest {m['largest_batch'][0]} tokens x {m['largest_batch'][1]} rows) = "
                  f"{allowed / 2**30:.2f} GiB: {'met' if runs['memory_target']['met'] else 'NOT met'} for the whole process",
                  flush=True)
            split = lay["peak_rss_trace_sampled_bytes"]
            print(f"[{mt} tokens] the layer trace's largest sampled RSS: anonymous {split['RssAnon'] / 2**30:.2f} GiB, "
                  f"file-backed {split['RssFile'] / 2**30:.2f} GiB, shared {split['RssShmem'] / 2**30:.2f} GiB; "
                  + "; ".join(f"{w.replace('_', ' ')} anonymous {v['RssAnon'] / 2**30:.2f} GiB file-backed {v['RssFile'] / 2**30:.2f} GiB"
                              for w, v in lay["rss_split_bytes"].items()), flush=True)
            print(f"[{mt} tokens] ratios " + ", ".join(f"{k} {v:.2f}" for k, v in runs["ratios"].items())
                  + f"; max |margin diff| batch {b['max_abs_margin_diff']:.2e} layer {lay['max_abs_margin_diff']:.2e}", flush=True)
            report["runs"][str(mt)] = runs
    report["load_average"] = os.getloadavg()[0]
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="qwen2.5-coder-1.5b", choices=sorted(KEYS))
    ap.add_argument("--items", type=int, default=200)
    ap.add_argument("--max-tokens", type=int, nargs="+", default=[4096, 512])
    ap.add_argument("--out", default=None, help="JSON file for the figures")
    ap.add_argument("--keep-embeddings", action="store_true",
                    help="keep the embedding and the head resident (offload the blocks only, as before 0.4.1)")
    ap.add_argument("--run", choices=["memory", "batch", "layer"], help=argparse.SUPPRESS)  # a child run
    ap.add_argument("--result", help=argparse.SUPPRESS)
    ap.add_argument("--offload", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.run:
        args.max_tokens = args.max_tokens[0]
        child(args)
        return
    report = parent(args)
    out = Path(args.out or f"layer_major-{KEYS[args.model]}.json")
    out.write_text(json.dumps(report, indent=2))
    print(f"figures written to {out}")


if __name__ == "__main__":
    main()
