"""Shared prompt prefixes: a continuation trace of 5-shot ``mmlu:anatomy`` against a plain Hugging Face forward.

Timed in the same run, on the same (item, option) requests:

* baseline: a plain ``hf`` forward (the causal LM with its logits) over the K unshared ``prompt + option``
  sequences of every item, padded in the same token budget phaselens uses;
* ``option_logits(share_prefix=True)``: one packed row per item (prompt once, K continuations after it,
  4D block mask), the lens at every block;
* ``option_logits(share_prefix=False)``: the unshared rows, the lens at every block (what the packing saves);
* the decoder alone on the packed rows (``hf.model``, no head, no lens): the forward the packing costs, so
  ``lens - decoder`` is the full-vocabulary readout on top.

The readout cannot be skipped: a continuation score is ``sum_t log softmax(z_t)[c_t]``, and the softmax's
normaliser ``logsumexp(z_t)`` needs every one of the V vocabulary logits at each scored position and block
(``L x positions x d x V`` multiply-adds); restricting the readout to the options' tokens, as the letters and
cloze formats do, would give unnormalised logits, not log-likelihoods.

    python benchmarks/continuation_prefix.py                  # SmolLM2 on the CPU, 20 items, 5 shots
    python benchmarks/continuation_prefix.py --limit 8 --repeats 1
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

import phaselens as pl
from phaselens.encoding import encode_task
from phaselens.readout import option_logits
from phaselens.runner import default_max_tokens, pack, pad, token_batches


def timeit(fn, repeats: int) -> float:
    fn()
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return statistics.median(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--task", default="mmlu:anatomy")
    ap.add_argument("--shots", type=int, default=5)
    ap.add_argument("--limit", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    model = pl.load_model(args.model, device=args.device)
    task = pl.load_task(args.task, shots=args.shots, limit=args.limit, format="continuation")
    enc = encode_task(task, model.tokenizer)
    budget = default_max_tokens(model.device)
    seqs = [p + c for p, c in zip(enc.prompts, enc.continuations)]
    groups = token_batches([len(s) for s in seqs], budget)
    pad_id = model.tokenizer.pad_token_id or 0
    unshared = [pad([seqs[i] for i in g], pad_id, model.input_device) for g in groups]
    # the packed rows, for the decoder-only timing
    from phaselens.runner import Runner

    by_item: dict[int, list[int]] = {}
    for s, (i, _k) in enumerate(enc.rows):
        by_item.setdefault(i, []).append(s)
    packed = [pack(enc.prompts[g[0]], [enc.continuations[s] for s in g]) for g in by_item.values()]
    runner = Runner(model)
    pbatches = runner.batches([p.ids for p in packed], max_tokens=budget, layouts=[p.layout for p in packed])

    def plain_hf() -> None:
        with torch.inference_mode():
            for ids, att in unshared:
                model.hf(input_ids=ids, attention_mask=att, use_cache=False)

    def decoder_packed() -> None:
        with torch.inference_mode():
            for b in pbatches:
                model.hf.model(**runner._inputs(b), use_cache=False)

    def lens_shared() -> None:
        option_logits(model, task, encoded=enc, max_tokens=budget)

    def lens_unshared() -> None:
        option_logits(model, task, encoded=enc, max_tokens=budget, share_prefix=False)

    t_hf = timeit(plain_hf, args.repeats)
    t_dec = timeit(decoder_packed, args.repeats)
    t_shared = timeit(lens_shared, args.repeats)
    t_unshared = timeit(lens_unshared, args.repeats)
    n_tok_unshared = sum(len(s) for s in seqs)
    n_tok_packed = sum(len(p.ids) for p in packed)
    n_scored = enc.n_items + sum(len(c) - 1 for c in enc.continuations)
    load = os.getloadavg()[0]
    print(f"model {model.name}: L={model.n_blocks} d={model.d_model} V={model.W_U.shape[0]} {model.dtype} on "
          f"{args.device} ({torch.get_num_threads()} threads), load average {load:.2f}")
    print(f"{task.name}: {enc.n_items} items, {len(seqs)} (item, option) requests, {args.shots}-shot; tokens: "
          f"{n_tok_unshared} unshared vs {n_tok_packed} packed ({n_tok_packed / n_tok_unshared:.3f}); "
          f"{n_scored} scored positions per block; median of {args.repeats}")
    print(f"  baseline: plain hf forward over the K unshared sequences: {t_hf:8.3f} s")
    print(f"  decoder only, packed rows (no head, no lens):             {t_dec:8.3f} s  ratio {t_dec / t_hf:5.3f}x")
    print(f"  continuation trace, shared prefix (lens at every block):  {t_shared:8.3f} s  ratio {t_shared / t_hf:5.3f}x")
    print(f"  continuation trace, unshared rows (lens at every block):  {t_unshared:8.3f} s  ratio {t_unshared / t_hf:5.3f}x")
    # multiply-add counts (x2 FLOPs), deterministic beside the noisy wall times: blocks' weights per token,
    # the head per logit row (the baseline's causal LM computes logits at every position)
    blk = sum(p.numel() for b in model.blocks for p in b.parameters()) * 2
    head = model.W_U.shape[0] * model.d_model * 2
    f_base = n_tok_unshared * (blk + head)
    f_shared = n_tok_packed * blk + n_scored * model.n_blocks * head
    print(f"  FLOPs (weights only): baseline {f_base / 1e9:.0f} G, shared-prefix trace {f_shared / 1e9:.0f} G "
          f"(ratio {f_shared / f_base:.3f}; of which the readout {n_scored * model.n_blocks * head / 1e9:.0f} G)")
    print(f"  full-vocabulary readout on top of the packed forward: {t_shared - t_dec:.3f} s "
          f"({(t_shared - t_dec) / t_hf:.3f}x of the baseline): log-softmax over V={model.W_U.shape[0]} at "
          f"{n_scored} positions x {model.n_blocks} blocks; its normaliser needs every vocabulary logit")


if __name__ == "__main__":
    main()
