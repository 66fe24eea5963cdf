"""The model's own answer on a continuation task: ``decision_trace(blocks="last")`` against lm-evaluation-harness'
computation, on the same sequences, in the same run.

Baseline (lm-eval's ``HFLM._loglikelihood_tokens``): the causal LM's forward over each context + continuation
sequence, ``log_softmax`` of the logits at every position, the continuation tokens' log-probabilities summed.
Fast path: ``phaselens.decision_trace(model, task, blocks="last")``: the decoder forward, then the
full-vocabulary readout only at the continuation positions. Also timed: the full per-block trace
(``blocks=None``: one full-vocabulary readout per surviving block). The scores must agree (checked here).

    python benchmarks/last_block.py                         # gemma3-270m, ARC-Easy test, 40 items
    python benchmarks/last_block.py --model smollm2-135m --items 100
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import phaselens as pl
from phaselens.encoding import encode_task
from phaselens.runner import default_max_tokens, pad, token_batches


def lm_eval_scores(model: pl.Model, task: pl.Task) -> torch.Tensor:
    """``[N, K]`` summed log-likelihood of each option's continuation, computed as lm-eval does."""
    enc = encode_task(task, model.tokenizer)
    seqs = [c + t for c, t in zip(enc.prompts, enc.continuations)]
    scores = torch.full((enc.n_items, enc.n_options), float("-inf"))
    with torch.inference_mode():
        for g in token_batches([len(s) for s in seqs], default_max_tokens(model.device)):
            ids, att = pad([seqs[i][:-1] for i in g], model.tokenizer.pad_token_id, model.device)  # lm-eval drops the last
            logp = torch.log_softmax(model.hf(input_ids=ids, attention_mask=att).logits.float(), -1)  # [B, T, V]
            for r, i in enumerate(g):
                start, cont = len(enc.prompts[i]), enc.continuations[i]
                pos = torch.arange(start - 1, start - 1 + len(cont))
                item, opt = enc.rows[i]
                scores[item, opt] = logp[r, pos, torch.tensor(cont)].sum()
    return scores


def timeit(fn, repeats: int) -> tuple[float, object]:
    out = fn()  # warm up (and the value)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="gemma3-270m")
    ap.add_argument("--task", default="arc-easy")
    ap.add_argument("--items", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-full", action="store_true", help="skip the per-block trace")
    a = ap.parse_args()
    model = pl.load_model(a.model, device="cpu", dtype=torch.float32)
    task = pl.load_task(a.task, limit=a.items, sample=False, format="continuation")
    t_base, ref = timeit(lambda: lm_eval_scores(model, task), a.repeats)
    t_last, last = timeit(lambda: pl.decision_trace(model, task, blocks="last", n_boot=100), a.repeats)
    mask = torch.from_numpy(last.mask)
    err = (torch.from_numpy(last.logits[0])[mask] - ref[mask]).abs().max().item()
    print(f"{model.name}, {task.name} continuation, {len(task)} items ({int(mask.sum())} options), "
          f"{torch.get_num_threads()} threads, median of {a.repeats}")
    print(f"  lm-eval's computation (causal LM logits everywhere):  {t_base:8.3f} s")
    print(f"  decision_trace(blocks='last'):                        {t_last:8.3f} s   ratio {t_last / t_base:5.3f}x")
    print(f"  max |score difference|: {err:.2e}; accuracy {last.accuracy[-1]:.3f}, acc_norm {last.acc_norm[-1]:.3f}")
    if not a.no_full:
        t_full, _ = timeit(lambda: pl.decision_trace(model, task, n_boot=100), 1)
        print(f"  decision_trace (every block, full-vocabulary readout each): {t_full:8.3f} s   ratio {t_full / t_base:5.2f}x")
    if err > 1e-3:
        raise SystemExit("the scores differ from lm-eval's computation")


if __name__ == "__main__":
    main()
