"""Ghosted Layers paper, Fig. 3: how symmetric is the fitted least-squares operator? The Frobenius norms
of the symmetric and antisymmetric parts of W and of W - I, for cut spans across depth.

    python analyses/operator_symmetry.py --out /tmp/analyses_out/operator_symmetry
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pandas as pd  # noqa: E402
import torch  # noqa: E402

import _common as C  # noqa: E402
from _common import pl  # noqa: E402

PAPER = "Ghosted Layers (arXiv 2605.15491), Fig. 3"
ANTI_SHARE = 0.25  # "substantial": the antisymmetric part of W - I is at least this fraction of its symmetric part


def parts(W: torch.Tensor) -> tuple[float, float]:
    """(||(W + W^T)/2||_F, ||(W - W^T)/2||_F) in float64."""
    W = W.double()
    return float(torch.linalg.matrix_norm((W + W.T) / 2)), float(torch.linalg.matrix_norm((W - W.T) / 2))


def main(argv=None) -> None:
    p = C.parser(__doc__.splitlines()[0], tasks="", calibration=32)
    p.add_argument("--span-sizes", type=lambda s: [int(x) for x in s.split(",")], default=[1, 4],
                   help="blocks per cut span")
    p.add_argument("--stride", type=int, default=3, help="start a span every STRIDE blocks")
    run = C.start("operator_symmetry", "Symmetric and antisymmetric parts of the Ghosted Layers operator", p, argv)
    a = run.args
    rows = []
    for name in a.models:
        m = run.model(name)
        L, d = m.n_blocks, m.d_model
        eye = torch.eye(d, dtype=torch.float64)
        for n in a.span_sizes:
            starts = list(range(1, L - n + 1, a.stride))
            # disjoint, non-adjacent spans share one dense pass; overlapping ones need separate fits
            groups: list[list[tuple[int, int]]] = []
            for s in starts:
                for g in groups:
                    if all(s >= e + 1 or s + n + 1 <= b for b, e in g):
                        g.append((s, s + n))
                        break
                else:
                    groups.append([(s, s + n)])
            for g in groups:
                view = pl.prune(m, [b for s, e in g for b in range(s, e)])
                rec = pl.fit_recovery(view, run.calibration(), "ghosted")
                for sp in g:
                    W = rec.operator(sp).double().cpu()
                    sw, aw = parts(W)
                    sd, ad = parts(W - eye)
                    rows.append({"model": name, "span_start": sp[0], "span_end": sp[1], "n_blocks": n, "depth": sp[0] / L,
                                 "sym_W": sw, "anti_W": aw, "anti_over_sym_W": aw / sw, "sym_W_minus_I": sd,
                                 "anti_W_minus_I": ad, "anti_over_sym_W_minus_I": ad / sd, "n_tokens": rec.n_tokens,
                                 "lam": rec.lam[sp]})
            run.log(f"{name}: {len(starts)} spans of {n} fitted")
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
                                     marker=dict(size=9, symbol="circle" if n == min(a.span_sizes) else "diamond"),
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

    for name, g in df.groupby("model"):
        r_w, r_d = g.anti_over_sym_W.median(), g.anti_over_sym_W_minus_I.median()
        run.note(f"- {name}: {len(g)} spans; median ||anti||/||sym|| of W {C.fmt(r_w)}, of W - I {C.fmt(r_d)} (range "
                 f"{C.fmt(g.anti_over_sym_W_minus_I.min())}-{C.fmt(g.anti_over_sym_W_minus_I.max())}); fitted on "
                 f"{int(g.n_tokens.iloc[0])} tokens.")
        run.claim(PAPER, "the fitted operator's deviation from identity W - I has a substantial antisymmetric part, which "
                  "symmetric operator families cannot represent", name, "calibration text", bool(r_d >= ANTI_SHARE),
                  f"median ||(D - D^T)/2||_F / ||(D + D^T)/2||_F for D = W - I: {C.fmt(r_d)} (substantial: >= {ANTI_SHARE}); "
                  f"for W itself: {C.fmt(r_w)}")
    run.finish(
        f"Ghosted Layers operators W (pl.fit_recovery, method 'ghosted': unconstrained least squares, h -> h W) fitted on "
        f"{a.calibration_passages} calibration passages for contiguous cut spans of {a.span_sizes} blocks starting every "
        f"{a.stride} blocks; for each, the Frobenius norms of the symmetric part (W + W^T)/2 and antisymmetric part "
        f"(W - W^T)/2, and the same for W - I (what the operator changes). No task is involved.")


if __name__ == "__main__":
    main()
