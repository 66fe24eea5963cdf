"""Does each passage's first token (the attention sink) decide a Ghosted Layers fit, or its boundary error?

    python analyses/runs/checks/attention_sink.py [--model smollm2-135m] [--ratio 0.25] [--passages 64]

One contiguous cut (angular distance, the boundary-error analysis's choice). Ghosted Layers is fitted on the bundled
calibration passages twice, on every token (the contract) and without each passage's first token
(``first_token=False``); both, and plain pruning, are scored on the 24 held-out passages: perplexity (per-passage
NLL per token, paired), and the boundary error with and without the first token. Measured 2026-12-05 (2 cores, load
2-6; 64 passages, 25% cut):

    model       cut    first tokens' share    held-out perplexity                 relative boundary error, no first token
                       of tr(XᵀX)  tr(YᵀY)    plain   ghosted  ghosted w/o sink   plain   ghosted  ghosted w/o sink
    SmolLM2     11-18  0.004       0.981      419.3   111.4    111.9              0.284   1.397    0.126
    Gemma-3     12-16  0.209       0.021      2212.9  71.9     74.6               0.500   0.057    0.057
    Qwen-0.5B   8-13   0.956       0.933      71.4    58.5     59.1               0.310   0.129    0.129

Ghosted − ghosted without the sink, NLL per token over 24 passages: SmolLM2 −0.006 [−0.099, +0.085], Gemma −0.036
[−0.044, −0.029], Qwen-0.5B −0.010 [−0.016, −0.003]: leaving the sink out never helps perplexity, so the contract's
fit on every token stays. On SmolLM2 the sink forms inside the cut and the operator that recreates it leaks it into the
ordinary tokens' sink channels; see analyses/findings.md.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import phaselens as pl
from phaselens.recovery import span_stats
from phaselens.study.runs import cut_size


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--ratio", type=float, default=0.25, help="share of blocks in the cut span")
    p.add_argument("--passages", type=int, default=64, help="bundled calibration passages to fit on")
    p.add_argument("--n-boot", type=int, default=10000)
    a = p.parse_args(argv)
    t0 = time.time()
    model = pl.load_model(a.model)
    cal, held = pl.load_calibration()[: a.passages], pl.heldout_texts()
    blocks = pl.select_blocks(model, cut_size(a.ratio, model.n_blocks), "angular", calibration=cal)
    view = pl.prune(model, blocks)
    every = span_stats(model, view.spans, cal)
    later = span_stats(model, view.spans, cal, first_token=False)
    for sp in view.spans:
        e, o = every[sp], later[sp]
        print(f"{a.model}, cut {blocks[0]}-{blocks[-1]} ({len(blocks)} of {model.n_blocks}): {e.n - o.n} first tokens of "
              f"{e.n}; their share of tr(X^T X) {1 - float(o.A.trace() / e.A.trace()):.3f}, of tr(Y^T Y) "
              f"{1 - float(o.yy.sum() / e.yy.sum()):.3f}")
    recs = {"identity": pl.fit_recovery(view, stats=every, method="identity"),
            "ghosted": pl.fit_recovery(view, stats=every), "ghosted, no first token": pl.fit_recovery(view, stats=later)}
    dense_nll, tokens = pl.passage_nll(model, held)
    nll = {k: pl.passage_nll(r, held)[0] / tokens for k, r in recs.items()}
    print(f"held-out perplexity: dense {np.exp(dense_nll.sum() / tokens.sum()):.2f}, "
          + ", ".join(f"{k} {np.exp((v * tokens).sum() / tokens.sum()):.2f}" for k, v in nll.items()))
    eff = pl.paired_effect(nll["ghosted"], nll["ghosted, no first token"], name="ghosted − ghosted without the first "
                           "token, NLL per token per held-out passage", n_boot=a.n_boot, boot_seed=0, model=a.model,
                           task="held-out text", format="text")
    print(eff.summary().splitlines()[0])
    for first in (True, False):
        rel = {k: float(pl.boundary_error(r, held, first_token=first).relative[0]) for k, r in recs.items()}
        print(f"held-out relative boundary error, {'every token' if first else 'first token left out'}: "
              + ", ".join(f"{k} {v:.4f}" for k, v in rel.items()))
    print(f"({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
