"""decision_trace against a plain forward pass of the same Hugging Face model, same batches.

Baselines, timed in the same run:
  * ``hf.model`` forward: embeddings -> blocks -> final norm, no LM head (the strict baseline:
    the least a forward pass can do);
  * ``hf`` forward: the causal LM as users call it (logits at every position).
The measured path is ``phaselens.decision_trace`` (lens at every block + all metrics and the
bootstrap), and ``option_logits`` alone. Ratios are printed against both baselines.

    python benchmarks/trace_overhead.py                       # SmolLM2 on the CPU, 4 x 16 x 128 synthetic prompts
    python benchmarks/trace_overhead.py --task capitals --limit 50   # real short cloze prompts, phaselens' own batches
    python benchmarks/trace_overhead.py --synthetic llama3-8b --device cuda   # GPU, random weights
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import phaselens as pl
from phaselens.encoding import Encoded
from phaselens.readout import option_logits
from phaselens.runner import pad, token_batches


def synthetic_model(kind: str, device: str, tokenizer) -> pl.Model:
    from transformers import LlamaConfig, LlamaForCausalLM

    shapes = {
        "llama3-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                          num_key_value_heads=8, vocab_size=128256, rope_theta=500000.0),
        "llama-tiny": dict(hidden_size=256, intermediate_size=512, num_hidden_layers=8, num_attention_heads=8,
                           num_key_value_heads=4, vocab_size=49152),
    }[kind]
    cfg = LlamaConfig(**shapes, max_position_embeddings=8192, tie_word_embeddings=False)
    cfg._attn_implementation = "sdpa"
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    torch.set_default_dtype(dtype)
    with torch.device(device):
        hf = LlamaForCausalLM(cfg).eval()
    torch.set_default_dtype(torch.float32)
    for p in hf.parameters():  # keep activations in range: random weights at the init scale
        p.requires_grad_(False)
    return pl.load_model(hf, tokenizer=tokenizer)


def synthetic_items(n: int, length: int, vocab: int, k: int = 4, seed: int = 0) -> Encoded:
    g = torch.Generator().manual_seed(seed)
    prompts = torch.randint(10, vocab, (n, length), generator=g).tolist()
    opt = torch.randint(10, vocab, (n, k), generator=g)
    return Encoded("letters", prompts, opt, torch.ones(n, k, dtype=torch.bool), torch.randint(0, k, (n,), generator=g))


def timeit(fn, device: str, repeats: int, warm: bool = True) -> float:
    if warm:
        fn()  # warm up
    times = []
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def measure(model, task, enc, budget: int, device: str, repeats: int) -> dict:
    """Median seconds of the two plain forwards (``hf.model``, ``hf``), ``option_logits`` and ``decision_trace``
    over the same token batches of ``enc`` (``budget`` padded tokens per pass); ``batches``: how many passes."""
    groups = token_batches([len(p) for p in enc.prompts], budget)
    padded = [pad([enc.prompts[i] for i in g], 0, model.device) for g in groups]

    def plain_decoder():
        with torch.inference_mode():
            for ids, att in padded:
                model.hf.model(input_ids=ids, attention_mask=att, use_cache=False)

    def plain_causal_lm():
        with torch.inference_mode():
            for ids, att in padded:
                model.hf(input_ids=ids, attention_mask=att, use_cache=False)

    def lens_only():
        option_logits(model, task, max_tokens=budget, encoded=enc)

    import phaselens.trace as tr_mod

    orig = tr_mod.option_logits
    tr_mod.option_logits = lambda m, t, **kw: orig(m, t, encoded=enc, **kw)
    fns = {"hf_model": plain_decoder, "hf_causal_lm": plain_causal_lm, "option_logits": lens_only,
           "decision_trace": lambda: pl.decision_trace(model, task, max_tokens=budget)}
    try:
        for fn in fns.values():
            fn()  # warm up
        # interleaved: each repeat times every path once (rotating the order), so a slow spell of the machine hits
        # all of them; the ratios are the medians of the per-repeat ratios
        times: dict[str, list[float]] = {k: [] for k in fns}
        names = list(fns)
        for r in range(repeats):
            for k in names[r % len(names):] + names[: r % len(names)]:
                times[k].append(timeit(fns[k], device, 1, warm=False))
        out: dict = {k: statistics.median(v) for k, v in times.items()}
        for k in ("option_logits", "decision_trace"):
            out[f"{k}_ratio"] = statistics.median(a / b for a, b in zip(times[k], times["hf_model"]))
            out[f"{k}_ratio_lm"] = statistics.median(a / b for a, b in zip(times[k], times["hf_causal_lm"]))
        out["batches"] = len(groups)
        return out
    finally:
        tr_mod.option_logits = orig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--synthetic", choices=["llama3-8b", "llama-tiny"], help="random-weight model of this shape")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--tokenizer", default=None, help="tokenizer directory for --synthetic (default: SmolLM2's)")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--tokens", type=int, default=None, help="prompt length (default 128 CPU, 256 GPU)")
    ap.add_argument("--batches", type=int, default=None, help="number of batches (default 4)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--task", default=None, help="time a real task's prompts instead of synthetic ones")
    ap.add_argument("--limit", type=int, default=50)
    args = ap.parse_args()
    gpu = args.device.startswith("cuda")
    bs = args.batch_size or (32 if gpu else 16)
    length = args.tokens or (256 if gpu else 128)
    nb = args.batches or 4

    if args.synthetic:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(args.tokenizer) if args.tokenizer else pl.load_model("smollm2-135m").tokenizer
        model = synthetic_model(args.synthetic, args.device, tok)
    else:
        model = pl.load_model(args.model, device=args.device)
    if args.task:
        from phaselens.encoding import encode_task
        from phaselens.runner import default_max_tokens

        task = pl.load_task(args.task, limit=args.limit)
        enc = encode_task(task, model.tokenizer)
        budget = default_max_tokens(model.device)
        length = max(len(p) for p in enc.prompts)
    else:
        enc = synthetic_items(bs * nb, length, min(model.W_U.shape[0], 49152))
        budget = bs * length  # the same batches for phaselens and the baselines
        task = pl.load_task([{"question": "q", "options": ["a", "b", "c", "d"], "answer": 0}] * enc.n_items, format="letters")
    t = measure(model, task, enc, budget, args.device, args.repeats)
    t_dec, t_lm, t_lens, t_trace, groups = t["hf_model"], t["hf_causal_lm"], t["option_logits"], t["decision_trace"], t["batches"]

    dev_name = torch.cuda.get_device_name() if gpu else f"CPU ({torch.get_num_threads()} threads)"
    print(f"model {model.name}: L={model.n_blocks} d={model.d_model} {model.dtype} on {dev_name}")
    what = f"{args.task}, {enc.n_items} prompts of at most {length} tokens" if args.task else f"{bs} prompts x {length} tokens"
    print(f"{groups} batches, {what}, {args.repeats} interleaved repeats (medians; ratios: medians of per-repeat ratios)")
    print(f"  baseline hf.model forward (no LM head): {t_dec:8.4f} s")
    print(f"  baseline hf forward (causal LM logits): {t_lm:8.4f} s")
    print(f"  option_logits (lens at every block):    {t_lens:8.4f} s  ratio {t['option_logits_ratio']:5.3f}x decoder, "
          f"{t['option_logits_ratio_lm']:5.3f}x causal LM")
    print(f"  decision_trace (lens + all metrics):    {t_trace:8.4f} s  ratio {t['decision_trace_ratio']:5.3f}x decoder, "
          f"{t['decision_trace_ratio_lm']:5.3f}x causal LM")


if __name__ == "__main__":
    main()
