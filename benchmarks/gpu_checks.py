"""The checks that need a GPU, in one script (≤ 10 min on one GPU); ``--tiny`` runs the same code on the CPU.

1. **Offload**: a random-weight Llama saved to a folder, loaded plainly on ``cuda:0`` and with a device_map that
   keeps some blocks (and the head) on the CPU, offloaded by accelerate's hooks onto ``cuda:0`` per forward
   (``--tiny``: the CPU with those blocks offloaded to disk). The option logits and per-item margins at every
   block, in float32, must agree within 1e-5; so must the continuation scores (packed rows).
2. **Shared prefixes**: packed continuation rows (4D block mask through SDPA) against the unshared rows on the
   same device, float32, within 1e-4.
3. **Layer schedule** (issue 24): the same random Llama with every block offloaded to the CPU (``--tiny``: disk),
   8 batches: the decision margins under ``schedule="layer"`` (residuals on the GPU, and in pinned CPU memory
   with a budget of 2 batches per wave) equal the batch schedule's and the plain load's within 1e-5; the times
   of both schedules are reported (the layer schedule moves each block once per wave instead of once per batch).
4. **Overhead**: ``benchmarks/trace_overhead.py``'s timing on a Llama-3-8B-shaped model (random bf16 weights,
   32 prompts x 256 tokens, 4 batches): ``option_logits`` / ``decision_trace`` against a plain SDPA forward of
   ``hf.model`` and of ``hf`` (target ≤ 1.05x; TransformerLens' logit_lens measured 1.46x). ``--tiny``: a
   ``llama-tiny`` shape, 4 x 32.
5. **Parity**: one float32 model on the CPU and on the GPU: per-block option logits within 1e-4.
6. **Offload timing** (issue 24 at a real size): a Llama-3.2-1B-shaped model (random bf16) with all 16 blocks in CPU
   memory, 8 batches of 8 x 256 tokens, timed under the batch and the layer schedule (``--tiny``: small blocks on disk).

Each check's figures are written as soon as it ends; a check that raises is recorded under ``errors`` and fails the
run without stopping the others.

Every figure goes to a JSON file (``--out``, default ``$OUT/gpu_checks.json`` or ``./gpu_checks.json``); the exit
status is 1 if a check fails. No model package and no network are needed (random weights, a two-token tokenizer).

    python benchmarks/gpu_checks.py                # on a GPU machine
    python benchmarks/gpu_checks.py --tiny         # on the CPU (the same code paths, small shapes)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

import phaselens as pl
from phaselens.encoding import Encoded
from phaselens.readout import option_logits

HERE = Path(__file__).resolve().parent


def _overhead_module():
    spec = importlib.util.spec_from_file_location("trace_overhead", HERE / "trace_overhead.py")
    mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def tokenizer():
    """A minimal fast tokenizer (the synthetic prompts are token ids already; load_model needs eos/pad)."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(WordLevel(vocab={"<unk>": 0, "<eos>": 1}, unk_token="<unk>"))
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>", pad_token="<eos>")


def continuation_items(n: int, prompt_len: int, vocab: int, k: int = 4, seed: int = 0) -> Encoded:
    g = torch.Generator().manual_seed(seed)
    prompts, conts, rows = [], [], []
    for i in range(n):
        p = torch.randint(10, vocab, (prompt_len,), generator=g).tolist()
        for j in range(k):
            prompts.append(p)
            conts.append(torch.randint(10, vocab, (int(torch.randint(1, 6, (1,), generator=g)),), generator=g).tolist())
            rows.append((i, j))
    opt = torch.tensor([[conts[i * k + j][0] for j in range(k)] for i in range(n)])
    return Encoded("continuation", prompts, opt, torch.ones(n, k, dtype=torch.bool),
                   torch.randint(0, k, (n,), generator=g), conts, rows)


def margins(z: torch.Tensor, answers: torch.Tensor) -> torch.Tensor:
    """``[L, N]`` correct option's score minus the best other's."""
    L, N, K = z.shape
    right = z[:, torch.arange(N), answers]
    other = z.masked_fill(torch.nn.functional.one_hot(answers, K).bool()[None], float("-inf")).max(-1).values
    return right - other


def placeholder_task(n: int, fmt: str = "letters"):
    """``n`` four-option items whose prompts come from an :class:`Encoded` of synthetic token ids."""
    return pl.load_task([{"question": "q", "options": ["a", "b", "c", "d"], "answer": 0}] * n, format=fmt)


def save_llama(folder: Path, cfg, seed: int, *, device: str = "cpu", dtype: torch.dtype = torch.float32) -> Path:
    """A random Llama of ``cfg`` (initialised on ``device`` in ``dtype``) and the tokenizer saved to ``folder/model``."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):  # random init on the GPU is seconds; on the CPU an 8B model takes minutes
            hf = LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(torch.float32)
    hf.save_pretrained(folder / "model")
    del hf
    if str(device).startswith("cuda"):
        torch.cuda.empty_cache()
    tokenizer().save_pretrained(folder / "model")
    return folder / "model"


def all_blocks_offloaded(folder: Path, cfg, tiny: bool, dtype: torch.dtype) -> tuple[pl.Model, str]:
    """The saved model with every block offloaded (to the CPU, or to disk with ``tiny``), the rest on the main device."""
    main, off_dev = ("cpu", "disk") if tiny else (0, "cpu")
    dm = {"model.embed_tokens": main, "model.rotary_emb": main, "model.norm": main, "lm_head": main,
          **{f"model.layers.{b}": off_dev for b in range(cfg.num_hidden_layers)}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pl.load_model(str(folder / "model"), device_map=dm, dtype=dtype, offload_folder=folder / "offload"), off_dev


def timed_logits(model, task, enc: Encoded, budget: int, device: str, kind: str, **kw) -> tuple[torch.Tensor, float]:
    """``(z, seconds)`` of one ``option_logits`` pass under ``schedule(kind, **kw)``, after a warm pass (which also runs
    the per-model check)."""
    with pl.runner.schedule(kind, **kw):
        option_logits(model, task, encoded=enc, max_tokens=budget)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t = time.perf_counter()
        z = option_logits(model, task, encoded=enc, max_tokens=budget).z
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return z, time.perf_counter() - t


def check_offload(device: str, tiny: bool, folder: Path, report: dict) -> bool:
    from transformers import LlamaConfig

    ov = _overhead_module()
    cfg = LlamaConfig(hidden_size=256, intermediate_size=512, num_hidden_layers=8, num_attention_heads=8,
                      num_key_value_heads=4, vocab_size=4096, tie_word_embeddings=False)
    plain = pl.load_model(str(save_llama(folder, cfg, 0)), device=device, dtype=torch.float32)
    off_dev = "disk" if tiny else "cpu"
    dm = {"model.embed_tokens": 0 if not tiny else "cpu", "model.rotary_emb": 0 if not tiny else "cpu",
          "model.norm": 0 if not tiny else "cpu", "lm_head": off_dev}
    for b in range(cfg.num_hidden_layers):
        dm[f"model.layers.{b}"] = off_dev if b in (2, 3, 4, 6) else (0 if not tiny else "cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        off = pl.load_model(str(folder / "model"), device_map=dm, dtype=torch.float32,
                            offload_folder=folder / "offload")
    hooked = sum("forward" in b.__dict__ for b in off.blocks)
    enc = ov.synthetic_items(16, 48, cfg.vocab_size)
    task = placeholder_task(enc.n_items)
    za = option_logits(plain, task, encoded=enc).z
    zb = option_logits(off, task, encoded=enc).z
    za_p = option_logits(pl.prune(plain, [3, 4]), task, encoded=enc).z
    zb_p = option_logits(pl.prune(off, [3, 4]), task, encoded=enc).z
    cenc = continuation_items(6, 40, cfg.vocab_size)
    ctask = placeholder_task(cenc.n_items, "continuation")
    ca = option_logits(plain, ctask, encoded=cenc).z
    cb = option_logits(off, ctask, encoded=cenc).z
    d_margin = max((margins(za, enc.answers) - margins(zb, enc.answers)).abs().max().item(),
                   (margins(za_p, enc.answers) - margins(zb_p, enc.answers)).abs().max().item())
    d_cont = (ca - cb).abs().max().item()
    ok = d_margin <= 1e-5 and d_cont <= 1e-4 and hooked == cfg.num_hidden_layers
    report["offload"] = {"device_map_offloaded_to": off_dev, "main_device": device, "blocks_with_accelerate_hooks": hooked,
                         "max_abs_margin_diff": d_margin, "max_abs_continuation_diff": d_cont, "ok": ok,
                         "placement": {k: str(v) for k, v in dm.items()}}
    cs = option_logits(plain, ctask, encoded=cenc).z
    cu = option_logits(plain, ctask, encoded=cenc, share_prefix=False).z
    d_share = (cs - cu).abs().max().item()
    report["shared_prefix"] = {"device": device, "max_abs_diff_shared_vs_unshared": d_share, "ok": d_share <= 1e-4}
    print(f"[offload] {hooked} hooked blocks, max |margin diff| {d_margin:.2e}, max |continuation diff| {d_cont:.2e}: "
          f"{'OK' if ok else 'FAIL'}")
    print(f"[shared prefix] max |shared - unshared| {d_share:.2e}: {'OK' if d_share <= 1e-4 else 'FAIL'}")
    return ok and d_share <= 1e-4


def check_layer_schedule(device: str, tiny: bool, folder: Path, report: dict) -> bool:
    from transformers import LlamaConfig

    ov = _overhead_module()
    cfg = LlamaConfig(hidden_size=512, intermediate_size=1536, num_hidden_layers=8, num_attention_heads=8,
                      num_key_value_heads=4, vocab_size=4096, tie_word_embeddings=False)
    plain = pl.load_model(str(save_llama(folder, cfg, 0)), device=device, dtype=torch.float32)
    off, off_dev = all_blocks_offloaded(folder, cfg, tiny, torch.float32)
    enc = ov.synthetic_items(64, 96, cfg.vocab_size)
    task = placeholder_task(enc.n_items)
    budget = 8 * 96 + 8  # 8 rows of 96 tokens per batch: 8 batches
    ref = margins(option_logits(plain, task, encoded=enc, max_tokens=budget).z, enc.answers)
    out, times = {}, {}
    per_batch = 8 * 96 * cfg.hidden_size * 4 + 8 * 96 * 96
    for name, kind, kw in (("batch", "batch", {}), ("layer", "layer", {}),
                           ("layer_pinned_2_per_wave", "layer", dict(act_store="cpu", act_budget=2 * per_batch))):
        z, times[name] = timed_logits(off, task, enc, budget, device, kind, **kw)
        out[name] = (margins(z, enc.answers) - ref).abs().max().item()
    ok = max(out.values()) <= 1e-5
    report["layer_schedule"] = {"offloaded_to": off_dev, "main_device": device, "batches": 8, "max_abs_margin_diff": out,
                                "seconds": times, "batch_vs_layer_time": times["batch"] / times["layer"], "ok": ok}
    print(f"[layer schedule] max |margin diff| {max(out.values()):.2e}; batch {times['batch']:.2f}s, layer "
          f"{times['layer']:.2f}s ({times['batch'] / times['layer']:.2f}x), pinned 2/wave "
          f"{times['layer_pinned_2_per_wave']:.2f}s: {'OK' if ok else 'FAIL'}")
    return ok


def check_overhead(device: str, tiny: bool, report: dict, repeats: int) -> None:
    ov = _overhead_module()
    kind, bs, length, nb = ("llama-tiny", 4, 32, 4) if tiny else ("llama3-8b", 32, 256, 4)
    t0 = time.perf_counter()
    model = ov.synthetic_model(kind, device, tokenizer())
    t_build = time.perf_counter() - t0
    enc = ov.synthetic_items(bs * nb, length, min(model.W_U.shape[0], 49152))
    budget = bs * length
    task = placeholder_task(enc.n_items)
    t = ov.measure(model, task, enc, budget, device, repeats)
    t_dec, t_lm, t_lens, t_trace = t["hf_model"], t["hf_causal_lm"], t["option_logits"], t["decision_trace"]
    groups = range(t["batches"])
    name = torch.cuda.get_device_name() if device.startswith("cuda") else f"CPU ({torch.get_num_threads()} threads)"
    report["overhead"] = {
        "shape": kind, "dtype": str(model.dtype), "device": name, "batches": len(groups), "batch": [bs, length],
        "repeats": repeats, "build_s": t_build, "hf_model_s": t_dec, "hf_causal_lm_s": t_lm, "option_logits_s": t_lens,
        "decision_trace_s": t_trace, "option_logits_vs_hf_model": t_lens / t_dec, "option_logits_vs_causal_lm": t_lens / t_lm,
        "decision_trace_vs_hf_model": t_trace / t_dec, "decision_trace_vs_causal_lm": t_trace / t_lm, "target": 1.05,
        "load_average": os.getloadavg()[0],
    }
    print(f"[overhead] {kind} {model.dtype} on {name}, {len(groups)} x {bs} x {length}: hf.model {t_dec:.4f}s, "
          f"hf {t_lm:.4f}s, option_logits {t_lens:.4f}s ({t_lens / t_dec:.3f}x / {t_lens / t_lm:.3f}x), "
          f"decision_trace {t_trace:.4f}s ({t_trace / t_dec:.3f}x / {t_trace / t_lm:.3f}x)")
    del model
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def check_parity(device: str, tiny: bool, folder: Path, report: dict) -> bool:
    """The same float32 model on the CPU and on ``device``: per-block option logits within 1e-4 (TF32 off)."""
    from transformers import LlamaConfig

    ov = _overhead_module()
    cfg = LlamaConfig(hidden_size=256, intermediate_size=512, num_hidden_layers=6, num_attention_heads=8,
                      num_key_value_heads=4, vocab_size=4096, tie_word_embeddings=False)
    save_llama(folder, cfg, 1)
    enc = ov.synthetic_items(16, 48, cfg.vocab_size)
    task = placeholder_task(enc.n_items)
    cpu = option_logits(pl.load_model(str(folder / "model"), device="cpu", dtype=torch.float32), task, encoded=enc).z
    dev = option_logits(pl.load_model(str(folder / "model"), device=device, dtype=torch.float32), task, encoded=enc).z
    d = (cpu - dev.cpu()).abs().max().item()
    dm = (margins(cpu, enc.answers) - margins(dev.cpu(), enc.answers)).abs().max().item()
    ok = d <= 1e-4
    report["parity"] = {"device": device, "max_abs_option_logit_diff": d, "max_abs_margin_diff": dm, "ok": ok}
    print(f"[parity] CPU vs {device}: max |option logit diff| {d:.2e}, max |margin diff| {dm:.2e}: {'OK' if ok else 'FAIL'}")
    return ok


TIMING_SHAPES = {
    "llama3.2-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                        num_key_value_heads=8, vocab_size=128256, rope_theta=500000.0),
    "llama3-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=8, vocab_size=128256, rope_theta=500000.0),
}


def check_offload_timing(device: str, tiny: bool, folder: Path, report: dict, shape_name: str = "llama3.2-1b") -> bool:
    """A Llama-3.2-1B-shaped model (random bf16; ``--tiny``: 8 small blocks in float32) with every block on the CPU
    (``--tiny``: disk): 8 batches under the batch and the layer schedule; the layer schedule moves each block once per
    wave instead of once per batch. Margins of the two schedules agree within 1e-2 (bf16) and the times are reported."""
    from transformers import LlamaConfig

    ov = _overhead_module()
    shape = (dict(hidden_size=256, intermediate_size=512, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=4,
                  vocab_size=4096) if tiny else TIMING_SHAPES[shape_name])
    cfg = LlamaConfig(**shape, tie_word_embeddings=False)
    dtype = torch.float32 if tiny else torch.bfloat16
    t0 = time.perf_counter()
    save_llama(folder, cfg, 0, device=device, dtype=dtype)
    t_save = time.perf_counter() - t0
    off, off_dev = all_blocks_offloaded(folder, cfg, tiny, dtype)
    length, rows = (32, 4) if tiny else (256, 8)
    enc = ov.synthetic_items(8 * rows, length, min(cfg.vocab_size, 49152))
    task = placeholder_task(enc.n_items)
    budget = rows * length  # 8 batches of `rows` prompts
    d, kv = cfg.hidden_size, cfg.num_key_value_heads * (cfg.hidden_size // cfg.num_attention_heads)
    block_bytes = (2 * d * d + 2 * d * kv + 3 * d * cfg.intermediate_size + 2 * d) * torch.finfo(dtype).bits // 8
    z, times = {}, {}
    for kind in ("batch", "layer"):
        z[kind], times[kind] = timed_logits(off, task, enc, budget, device, kind)
    diff = (margins(z["batch"].float(), enc.answers) - margins(z["layer"].float(), enc.answers)).abs().max().item()
    ok = diff <= 1e-2
    report["offload_timing"] = {
        "shape": "llama-tiny" if tiny else shape_name, "dtype": str(dtype), "offloaded_to": off_dev, "batches": 8,
        "batch": [rows, length], "blocks": cfg.num_hidden_layers, "approx_block_bytes": block_bytes, "build_s": t_save,
        "seconds": times, "batch_vs_layer_time": times["batch"] / times["layer"], "max_abs_margin_diff": diff, "ok": ok,
    }
    print(f"[offload timing] {report['offload_timing']['shape']} {dtype}, blocks on {off_dev}, 8 x {rows} x {length}: "
          f"batch schedule {times['batch']:.2f}s, layer {times['layer']:.2f}s ({times['batch'] / times['layer']:.2f}x); "
          f"max |margin diff| {diff:.2e}: {'OK' if ok else 'FAIL'}")
    return ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="the CPU, small shapes (checks the script itself)")
    ap.add_argument("--out", default=None, help="JSON file for the figures")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--skip-overhead", action="store_true")
    ap.add_argument("--only", choices=["offload", "layer_schedule", "parity", "overhead", "offload_timing"], action="append",
                    help="run only these checks (repeatable)")
    ap.add_argument("--timing-shape", choices=sorted(TIMING_SHAPES), default="llama3.2-1b",
                    help="the model shape of the offload timing (default llama3.2-1b; llama3-8b puts 15 GB of blocks in CPU memory)")
    args = ap.parse_args()
    device = "cpu" if args.tiny else "cuda:0"
    if not args.tiny and not torch.cuda.is_available():
        print("no CUDA GPU here; run with --tiny on the CPU", file=sys.stderr)
        return 2
    out = Path(args.out or (Path(os.environ["OUT"]) if os.environ.get("OUT") else Path(".")) / "gpu_checks.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    report: dict = {"torch": torch.__version__, "tiny": args.tiny, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "errors": {}}
    if device.startswith("cuda"):
        report["gpu"] = torch.cuda.get_device_name()
    t0 = time.perf_counter()
    results: dict[str, bool] = {}

    def run(name: str, fn) -> None:
        """One check; an exception is recorded (and fails the run) without losing the other checks' figures."""
        if args.only and name not in args.only:
            return
        t = time.perf_counter()
        try:
            results[name] = bool(fn())
        except Exception as exc:  # noqa: BLE001 - a one-shot GPU lease: keep going, report everything
            import traceback

            results[name] = False
            report["errors"][name] = traceback.format_exc()
            print(f"[{name}] ERROR {type(exc).__name__}: {exc}", file=sys.stderr)
        report.setdefault("check_seconds", {})[name] = time.perf_counter() - t
        report["wall_s"] = time.perf_counter() - t0
        report["ok"] = all(results.values())
        out.write_text(json.dumps(report, indent=2))  # after every check: a killed run keeps what finished

    with tempfile.TemporaryDirectory() as tmp:
        for sub in ("offload", "layer", "parity", "timing"):
            (Path(tmp) / sub).mkdir()
        run("offload", lambda: check_offload(device, args.tiny, Path(tmp) / "offload", report))
        run("layer_schedule", lambda: check_layer_schedule(device, args.tiny, Path(tmp) / "layer", report))
        run("parity", lambda: check_parity(device, args.tiny, Path(tmp) / "parity", report))
        if not args.skip_overhead:
            run("overhead", lambda: check_overhead(device, args.tiny, report, args.repeats) or True)
        run("offload_timing", lambda: check_offload_timing(device, args.tiny, Path(tmp) / "timing", report, args.timing_shape))
    print(f"figures written to {out} ({report['wall_s']:.0f}s); checks: "
          + ", ".join(f"{k} {'OK' if v else 'FAIL'}" for k, v in results.items()))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
