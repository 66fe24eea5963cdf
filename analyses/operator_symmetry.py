"""Ghosted Layers paper, Fig. 3: how symmetric is the fitted least-squares operator? The Frobenius norms
of the symmetric and antisymmetric parts of W and of W - I, for cut spans across depth.

    python analyses/operator_symmetry.py --out /tmp/analyses_out/operator_symmetry
    python analyses/operator_symmetry.py --spans-from analyses/runs/run6_ghosted_grid --models smollm2-135m \
        --out analyses/results/operator_symmetry_grid      # the cuts a recovery study chose (issue 23, run 6)

``--no-first-token`` fits without each passage's first token (the attention sink). On run 6's SmolLM2 cuts
(2026-12-05, 370 s at load 3-4, n-null 5000) the median share of W - I is 0.822 against 0.868 on every token, the
effect +0.37 [+0.37, +0.38] against +0.42: the antisymmetry is not the sink's. That run is described in
analyses/findings.md, not a claim of its own (its output stays out of analyses/results/).

With ``--spans-from`` the spans are the distinct runs of consecutive blocks that a study's ``recovery`` jobs cut for
each model (its ``RecoveryComparison.blocks``; one operator per run), and the claim joins that paper's grid family
(``"<paper>, grid"``).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

import _common as C  # noqa: E402

from phaselens import nulls  # noqa: E402
from phaselens.view import spans_of  # noqa: E402

PAPER = "Ghosted Layers (arXiv 2605.15491), Fig. 3"
GRID = "Ghosted Layers (arXiv 2605.15491), grid, Fig. 3"


def study_spans(folder: Path, model: str) -> list[tuple[int, int]]:
    """The distinct spans ``[(start, end)]`` the ``recovery`` jobs for ``model`` in a study folder cut: each run of
    consecutive blocks of a cut is one span (Ghosted Layers fits one operator per run)."""
    import phaselens as pl

    if not (folder / "index.parquet").is_file():
        raise SystemExit(f"--spans-from {folder}: not a study folder (no index.parquet)")
    df = pl.load_study(folder)
    done = df[(df.status == "done") & (df.kind == "recovery") & (df.model == model)]
    res = pl.load_results(folder)
    spans = set()
    for r in done.itertuples():  # a criterion's cut may be several runs of blocks: one operator per run
        spans.update(spans_of([int(b) for b in res[r.result].blocks]))
    if not spans:
        raise SystemExit(f"--spans-from {folder}: no finished recovery job of {model!r}; models there: "
                         f"{sorted(set(df.model))}")
    return sorted(spans)


def parts(W: torch.Tensor) -> tuple[float, float]:
    """(||(W + W^T)/2||_F, ||(W - W^T)/2||_F) in float64."""
    W = W.double()
    return float(torch.linalg.matrix_norm((W + W.T) / 2)), float(torch.linalg.matrix_norm((W - W.T) / 2))


def main(argv=None) -> None:
    p = C.parser(__doc__.splitlines()[0], tasks="", calibration=32)
    p.add_argument("--span-sizes", type=lambda s: [int(x) for x in s.split(",")], default=[1, 4],
                   help="blocks per cut span")
    p.add_argument("--stride", type=int, default=3, help="start a span every STRIDE blocks")
    p.add_argument("--groups", type=int, default=16, help="groups of calibration passages (the split-half null)")
    p.add_argument("--n-null", type=int, default=1000, help="half-splits of the null")
    p.add_argument("--spans-per-pass", type=int, default=4, help="spans whose statistics are gathered per pass")
    p.add_argument("--spans-from", type=Path, default=None,
                   help="a study folder: fit the distinct cuts of its recovery jobs instead of --span-sizes/--stride")
    p.add_argument("--no-first-token", action="store_true",
                   help="fit without each passage's first token (the attention sink; the contract fits every token)")
    run = C.start("operator_symmetry", "Symmetric and antisymmetric parts of the Ghosted Layers operator", p, argv)
    a = run.args
    rows, effects, spans_used = [], {}, {}
    for name in a.models:
        m = run.model(name)
        L, d = m.n_blocks, m.d_model
        eye = torch.eye(d, dtype=torch.float64)
        spans = (study_spans(a.spans_from, name) if a.spans_from is not None
                 else [(s, s + n) for n in a.span_sizes for s in range(1, L - n + 1, a.stride)])
        spans_used[name] = [f"{s}-{e - 1}" for s, e in spans]
        # one dense pass per group of calibration passages reads the boundaries of a few spans at a time (their
        # statistics, spans x groups x 2 [d, d] float64, are the memory); the groups' sums are the statistics of one
        # fit on all passages, their spread the split-half null (every span shares each replicate's half-split)
        signs = nulls.half_splits(a.groups, a.n_null, a.seed)
        obs_all, null_all, tpd = [], [], None
        for i in range(0, len(spans), a.spans_per_pass):
            chunk = spans[i:i + a.spans_per_pass]
            groups = nulls.group_span_stats(m, chunk, run.calibration(), groups=a.groups,
                                            first_token=not a.no_first_token)
            for sp in chunk:
                obs, null, info = nulls.antisymmetry_null(groups[sp], signs=signs)
                obs_all.append(obs)
                null_all.append(null)
                tpd = info["tokens_per_dim"]
                W = torch.from_numpy(info["W"])
                sw, aw = parts(W)
                sd, ad = parts(W - eye)
                rows.append({"model": name, "span_start": sp[0], "span_end": sp[1], "n_blocks": sp[1] - sp[0],
                             "depth": sp[0] / L, "sym_W": sw, "anti_W": aw, "anti_over_sym_W": aw / sw,
                             "sym_W_minus_I": sd, "anti_W_minus_I": ad, "anti_over_sym_W_minus_I": ad / sd,
                             "n_tokens": info["n"], "tokens_per_dim": tpd, "null_mean": float(null.mean()),
                             "null_lo": float(np.quantile(null, 0.025)), "null_hi": float(np.quantile(null, 0.975))})
            del groups
            run.log(f"{name}: spans {chunk} fitted on {a.groups} passage groups")
        effects[name] = nulls.antisymmetry_effect_from(
            obs_all, null_all, groups=a.groups, tokens_per_dim=tpd, boot_seed=a.seed, model=name,
            task="calibration text", name="median antisymmetric share of W − I over spans − its split-half null")
        run.log(f"{name}: {len(spans)} spans fitted on {a.groups} passage groups")
    df = pd.DataFrame(rows)
    run.csv(df, "operator_symmetry")

    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=("W", "W - I"))
    for (model, n), g in df.groupby(["model", "n_blocks"]):
        lab = f"{model}, spans of {n}"
        for col, (sx, ax) in enumerate((("sym_W", "anti_W"), ("sym_W_minus_I", "anti_W_minus_I")), start=1):
            hover = [f"{lab}<br>span [{s}, {e})<br>||sym||_F {x:.3f}<br>||anti||_F {y:.3f}<br>ratio {y / x:.3f}<br>{t} tokens"
                     for s, e, x, y, t in zip(g.span_start, g.span_end, g[sx], g[ax], g.n_tokens)]
            fig.add_trace(go.Scatter(x=g[sx], y=g[ax], mode="markers", name=lab, legendgroup=lab, showlegend=col == 1,
                                     marker=dict(size=9, symbol="circle" if n == df.n_blocks.min() else "diamond"),
                                     hovertext=hover, hoverinfo="text"), row=1, col=col)
    for col, key in ((1, "sym_W"), (2, "sym_W_minus_I")):
        hi = float(df[key].max()) * 1.05
        fig.add_trace(go.Scatter(x=[0, hi], y=[0, hi], mode="lines", line=dict(color="gray", dash="dot"), name="anti = sym",
                                 showlegend=col == 1, hoverinfo="skip"), row=1, col=col)
    fig.update_xaxes(title_text="||(M + M^T)/2||_F (symmetric part)")
    fig.update_yaxes(title_text="||(M - M^T)/2||_F (antisymmetric part)")
    fig.update_layout(title=f"Ghosted Layers operators, fitted on {a.calibration_passages} calibration passages: symmetric vs "
                            "antisymmetric part, of W and of its deviation from the identity")
    run.figure(fig, "operator_symmetry")

    sink = " (each passage's first token left out)" if a.no_first_token else ""
    for name, g in df.groupby("model"):
        r_w, r_d = g.anti_over_sym_W.median(), g.anti_over_sym_W_minus_I.median()
        run.note(f"- {name}: {len(g)} spans; median ||anti||/||sym|| of W {C.fmt(r_w)}, of W - I {C.fmt(r_d)} (range "
                 f"{C.fmt(g.anti_over_sym_W_minus_I.min())}-{C.fmt(g.anti_over_sym_W_minus_I.max())}); fitted on "
                 f"{int(g.n_tokens.iloc[0])} tokens{sink}.")
        run.claim(GRID if a.spans_from is not None else PAPER, "the fitted operator's deviation from identity W - I has an antisymmetric part beyond what "
                  "estimation noise gives a symmetric operator (which symmetric operator families cannot represent)",
                  effects[name], f"median ||(D - D^T)/2||_F / ||(D + D^T)/2||_F for D = W - I: {C.fmt(r_d)}, its "
                  f"split-half null (a symmetric true operator at the same {g.tokens_per_dim.iloc[0]:.1f} tokens per "
                  f"dimension) {C.fmt(g.null_mean.median())}; for W itself: {C.fmt(r_w)}")
    run.finish(
        f"Ghosted Layers operators W (pl.fit_recovery, method 'ghosted': unconstrained least squares, h -> h W) fitted on "
        f"{a.calibration_passages} calibration passages for "
        + (f"the distinct cuts of the recovery jobs in {a.spans_from} (per model: {spans_used})" if a.spans_from
           is not None else f"contiguous cut spans of {a.span_sizes} blocks starting every {a.stride} blocks")
        + "; for each, the Frobenius norms of the symmetric part (W + W^T)/2 and antisymmetric part "
        f"(W - W^T)/2, and the same for W - I (what the operator changes). No task is involved. The claim's effect is the "
        f"median share minus its split-half null (phaselens.nulls.antisymmetry_effect: the passages in {a.groups} "
        f"groups; each random half-split gives the noise of a fit at the same tokens per dimension, and a symmetric true "
        f"operator would show only that noise's antisymmetric part).")


if __name__ == "__main__":
    main()
