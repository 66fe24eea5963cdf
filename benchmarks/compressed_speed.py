"""How much faster is the compressed model? Prefill and decode throughput on this machine's CPU of the dense model,
the exported pruned model and the exported ghosted model (Ghosted Layers reports its efficiency as latency).

For each model and each share of blocks removed (12.5%, 25%, 37.5%: ``k = round(ratio * L)`` blocks), a contiguous
span of ``k`` blocks ending before the last block is cut (where the angular-distance criterion cuts on these models;
which blocks are cut does not change the cost), then

* **dense**: the model as loaded, a plain ``transformers`` model;
* **pruned**: ``pl.prune(m, span).export(folder)`` loaded back with ``AutoModelForCausalLM.from_pretrained`` (a
  standard checkpoint with ``L - k`` layers, no custom code);
* **ghosted**: ``pl.fit_recovery(pruned_view, calibration).export(folder)`` loaded with ``trust_remote_code=True``
  (the same ``L - k`` layers plus one ``d x d`` operator applied to the residual stream where the span was).

All three are timed as plain ``transformers`` models, the same way, in the same process, in float32:

* **prefill**: one forward of ``--batch`` prompts of ``--prompt-len`` tokens that builds the KV cache; tokens/s;
* **decode**: ``--decode-tokens`` greedy steps, one token per row per step, with the cache; tokens/s.

Each is the best of ``--repeats`` runs (after one warm-up). The script prints, per model and ratio, the throughput
ratio against the dense model and against the ideal ``L / (L - k)`` (what removing ``k`` of ``L`` equal blocks
would give if nothing else cost anything), and what the operator costs: the ghosted model's time over the pruned
model's, in percent and in equivalent blocks, beside its arithmetic (``d^2`` multiply-adds per token against one
block's weight multiply-adds).

    python benchmarks/compressed_speed.py                    # SmolLM2 and Gemma, 12.5 / 25 / 37.5%
    python benchmarks/compressed_speed.py --quick            # correctness only: tiny sizes, one ratio, SmolLM2
    python benchmarks/compressed_speed.py --quick --models gemma3-270m

Timings on a loaded machine mean little: run it on an idle one (``--threads`` pins torch's thread count).

Measured (2-core CPU, ``--threads 2``, 2026-12-03 19:42-19:53 UTC, load average 1.3-2.9 with other sessions' niced
tests beside it; throughput in tokens/s, ratio against dense; "ideal" is ``L / (L - k)``):

    model    removed        prefill: pruned / ghosted (ideal)     decode: pruned / ghosted (ideal)
    SmolLM2  4/30 (12.5%)   1.109 / 1.143 (1.154)                 1.169 / 1.135 (1.154)
    SmolLM2  8/30 (25%)     1.268 / 1.283 (1.364)                 0.206* / 1.317 (1.364)
    SmolLM2  11/30 (37.5%)  1.430 / 1.454 (1.579)                 1.471 / 1.503 (1.579)
    Gemma-3  2/18 (12.5%)   1.050 / 1.031 (1.125)                 1.054 / 1.031 (1.125)
    Gemma-3  4/18 (25%)     1.077 / 1.107 (1.286)                 1.165 / 1.155 (1.286)
    Gemma-3  7/18 (37.5%)   1.195 / 1.207 (1.636)                 1.264 / 1.262 (1.636)

    * disturbed (best of 3 still 4.8 tokens/s); rerun alone at load average ~1 (21:00 UTC, ``--models smollm2-135m
      --ratios 0.25``): prefill 1.565 / 1.567, decode 1.297 / 1.286 (dense 649 / 23.9 tokens/s that run, against
      745 / 23.2 in the first: dense prefill varies by ~15% between runs, so read ratios to +-0.15).

The ghosted operator (one ``d x d`` matmul per token, 9.4% of a block's weight multiply-adds on SmolLM2, 7.4% on
Gemma-3) costs between -3% and +3% of the pruned model's time, i.e. within noise of zero, up to ~0.8 blocks' time.
Gemma-3 gains less than ``L / (L - k)``: its 262k-token embedding and head are a large fixed share of the work.
"""

from __future__ import annotations

import argparse
import gc
import inspect
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

import phaselens as pl
from phaselens.study.runs import cut_size

RATIOS = (0.125, 0.25, 0.375)


def cut_span(L: int, k: int) -> list[int]:
    """``k`` contiguous blocks ending before the last block (``[L-1-k, L-1)``)."""
    if not 1 <= k <= L - 2:
        raise SystemExit(f"cannot cut {k} of {L} blocks and keep the first and last block")
    return list(range(L - 1 - k, L - 1))


def prompt_ids(tokenizer, n: int, batch: int) -> torch.Tensor:
    """``[batch, n]`` token ids of the bundled calibration text (real tokens, not random ids)."""
    text = " ".join(pl.load_calibration())
    ids = tokenizer(text, add_special_tokens=True)["input_ids"]
    while len(ids) < n * batch:
        ids = ids + ids
    return torch.tensor(ids[: n * batch]).reshape(batch, n)


@torch.inference_mode()
def time_model(hf, ids: torch.Tensor, decode: int, repeats: int) -> dict:
    """Best-of-``repeats`` prefill and decode times of a plain transformers causal LM, and its greedy tokens."""
    hf.eval()
    arg = "cache" if "cache" in inspect.signature(hf.forward).parameters else "past_key_values"  # transformers >= 5.2x: cache

    def kv(out):
        return out.cache if getattr(out, "cache", None) is not None else out.past_key_values

    best_pre, best_dec, tokens = float("inf"), float("inf"), None
    for rep in range(repeats + 1):  # the first run warms up
        t0 = time.perf_counter()
        out = hf(input_ids=ids, use_cache=True)
        t1 = time.perf_counter()
        past, nxt = kv(out), out.logits[:, -1].argmax(-1, keepdim=True)
        got = [nxt]
        t2 = time.perf_counter()
        for _ in range(decode):
            out = hf(input_ids=nxt, use_cache=True, **{arg: past})
            past, nxt = kv(out), out.logits[:, -1].argmax(-1, keepdim=True)
            got.append(nxt)
        t3 = time.perf_counter()
        if not torch.isfinite(out.logits).all():
            raise SystemExit("non-finite logits while decoding")
        if rep:
            best_pre, best_dec = min(best_pre, t1 - t0), min(best_dec, t3 - t2)
        tokens = torch.cat(got, 1)
    B, T = ids.shape
    return {"prefill_s": best_pre, "decode_s": best_dec, "prefill_tok_s": B * T / best_pre,
            "decode_tok_s": B * decode / best_dec if decode else float("nan"), "tokens": tokens.tolist()}


def block_macs(m: pl.Model) -> int:
    """Weight multiply-adds per token of one block (its parameters in 2-D matrices)."""
    return sum(p.numel() for p in m.blocks[0].parameters() if p.dim() == 2)


def check_export(view, folder: Path, n_kept: int, code: bool):
    """The exported folder loaded as a plain transformers model; checks its depth and whether it needs code."""
    from transformers import AutoModelForCausalLM

    cfg = json.loads((folder / "config.json").read_text())
    if cfg["num_hidden_layers"] != n_kept:
        raise SystemExit(f"{folder}: {cfg['num_hidden_layers']} layers, expected {n_kept}")
    if (folder / "modeling_phaselens.py").exists() != code:
        raise SystemExit(f"{folder}: expected {'a' if code else 'no'} generated modeling file")
    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, trust_remote_code=code)
    return hf.eval()


@torch.inference_mode()
def same_logits(view, hf, ids: torch.Tensor) -> float:
    """Max |logit difference| at the last position between the phaselens view and its export (a correctness check)."""
    from phaselens.runner import Read, Runner

    base = view.base
    L = base.n_blocks
    (_, out), = list(Runner(view).passes([ids[0].tolist()], {"h": Read((L - 1,), "out", "last")}))
    ref = base.full_logits(out["h"][L - 1].to(base.device))[0]
    got = hf(input_ids=ids[:1]).logits[0, -1].float()
    return float((ref - got).abs().max())


def run_model(name: str, args, work: Path) -> list[dict]:
    m = pl.load_model(name, device="cpu", dtype=torch.float32)
    L, d = m.n_blocks, m.d_model
    ids = prompt_ids(m.tokenizer, args.prompt_len, args.batch)
    cal = pl.load_calibration()[: args.passages]
    print(f"\n== {name}: {L} blocks, d = {d}; batch {args.batch} x {args.prompt_len} prompt tokens, "
          f"{args.decode_tokens} decode steps, best of {args.repeats}", flush=True)
    dense = time_model(m.hf, ids, args.decode_tokens, args.repeats)
    rows = []
    for ratio in args.ratios:
        k = cut_size(ratio, L)  # the study's rounding: nearest whole block, halves up
        span = cut_span(L, k)
        view = pl.prune(m, span)
        rec = pl.fit_recovery(view, cal, "ghosted")
        res = {"model": name, "ratio": ratio, "k": k, "L": L, "d": d, "cut": f"{span[0]}-{span[-1]}",
               "ideal": L / (L - k), "dense": dense}
        for kind, v, code in (("pruned", view, False), ("ghosted", rec, True)):
            folder = work / f"{name}-{kind}-{k}"
            v.export(folder, overwrite=True)
            hf = check_export(v, folder, L - k, code)
            res[f"{kind}_max_logit_diff"] = diff = same_logits(v, hf, ids)
            if diff > 1e-3:  # float32: the export computes what the view computes (tests/test_export.py: 1e-5)
                raise SystemExit(f"{folder}: the export's logits differ from the view's by {diff:.3g}; not timing it")
            res[kind] = time_model(hf, ids, args.decode_tokens, args.repeats)
            del hf
            gc.collect()
        rows.append(res)
        report(res, block_macs(m))
    del m
    gc.collect()
    return rows


def report(r: dict, macs: int) -> None:
    d, k, L = r["dense"], r["k"], r["L"]
    print(f"-- {k} of {L} blocks removed ({r['ratio']:.1%}, blocks {r['cut']}); ideal speed-up L/(L-k) = {r['ideal']:.3f}")
    print(f"   {'':8} {'prefill tok/s':>14} {'x dense':>8} {'/ ideal':>8}   {'decode tok/s':>13} {'x dense':>8} {'/ ideal':>8}")
    for kind in ("dense", "pruned", "ghosted"):
        x = r[kind]
        sp, sd = x["prefill_tok_s"] / d["prefill_tok_s"], x["decode_tok_s"] / d["decode_tok_s"]
        ip, idc = ("", "") if kind == "dense" else (f"{sp / r['ideal']:.3f}", f"{sd / r['ideal']:.3f}")
        print(f"   {kind:8} {x['prefill_tok_s']:14.4g} {sp:8.3f} {ip:>8}   {x['decode_tok_s']:13.4g} {sd:8.3f} {idc:>8}")
    p, g = r["pruned"], r["ghosted"]
    for what in ("prefill", "decode"):
        extra = g[f"{what}_s"] / p[f"{what}_s"] - 1
        per_block = (d[f"{what}_s"] - p[f"{what}_s"]) / k  # measured time of one removed block
        eq = (f"{(g[f'{what}_s'] - p[f'{what}_s']) / per_block:.2f} blocks' time" if per_block > 0 else
              "n/a blocks' time (the pruned model was not faster than the dense one: timing noise)")
        print(f"   operator cost, {what}: ghosted {extra:+.1%} time over pruned = {eq}")
    print(f"   operator arithmetic: d^2 = {r['d'] ** 2:,} multiply-adds per token = {r['d'] ** 2 / macs:.1%} of one "
          f"block's {macs:,} (weights)", flush=True)
    print(f"   check: max |export's last logits - the phaselens view's| pruned {r['pruned_max_logit_diff']:.2e}, ghosted "
          f"{r['ghosted_max_logit_diff']:.2e}", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=None, help="embedded names or paths [default: smollm2-135m,gemma3-270m; "
                   "--quick: smollm2-135m]")
    p.add_argument("--ratios", default=",".join(map(str, RATIOS)), help="shares of blocks removed")
    p.add_argument("--prompt-len", type=int, default=512)
    p.add_argument("--decode-tokens", type=int, default=64)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--passages", type=int, default=32, help="calibration passages the ghosted operator is fitted on")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--work", default=None, help="folder for the exports (default: a temporary folder)")
    p.add_argument("--json", default=None, help="also write every measurement to this JSON file")
    p.add_argument("--quick", action="store_true", help="correctness only: 12.5%%, 16 prompt tokens, 2 decode "
                   "steps, 1 repeat, 4 passages (SmolLM2 unless --models)")
    args = p.parse_args(argv)
    if args.quick:
        args.models = args.models or "smollm2-135m"
        args.ratios, args.prompt_len, args.decode_tokens, args.repeats, args.passages = "0.125", 16, 2, 1, 4
    args.models = args.models or "smollm2-135m,gemma3-270m"
    args.ratios = [float(x) for x in str(args.ratios).split(",") if x.strip()]
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, phaselens {pl.__version__}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        for name in [x.strip() for x in args.models.split(",") if x.strip()]:
            rows += run_model(name, args, work)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
