"""The fastest analysis script runs end to end, and its CSV holds what phaselens computes directly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import phaselens as pl

ROOT = Path(__file__).resolve().parents[1]
ANALYSES = ROOT / "analyses"


def test_analysis_scripts_share_the_common_cli():
    """Every analysis script is listed in analyses/README.md and takes --out."""
    readme = (ANALYSES / "README.md").read_text()
    scripts = sorted(p.name for p in ANALYSES.glob("*.py") if not p.name.startswith("_"))
    assert scripts, "no analysis scripts"
    for s in scripts:
        assert f"`{s}`" in readme, f"{s} is not described in analyses/README.md"
        assert "C.parser(" in (ANALYSES / s).read_text(), f"{s} does not use the common command line"


def test_cka_pruned_end_to_end_matches_direct_call(tmp_path, smol):
    out = tmp_path / "cka"
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    cmd = [sys.executable, str(ANALYSES / "cka_pruned.py"), "--out", str(out), "--models", "smollm2-135m",
           "--tasks", "capitals", "--limit", "8", "--calibration-passages", "2", "--heldout-passages", "1",
           "--tokens", "48", "--seed", "3"]
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]

    for f in ("cka_pairs.csv", "cka_matched.csv", "cka_matched.html", "cka_heatmaps_smollm2-135m.html", "summary.md"):
        assert (out / f).is_file(), f"{f} missing; got {sorted(p.name for p in out.iterdir())}"
    html = (out / "cka_matched.html").read_text()
    assert "plotly" in html.lower() and len(html) > 100_000  # self-contained: Plotly's JavaScript embedded
    summary = (out / "summary.md").read_text()
    assert "capitals (cloze, 8 items)" in summary and "smollm2-135m" in summary
    verdicts = json.loads((out / "verdicts.json").read_text())
    assert {c["verdict"] for c in verdicts["claims"]} <= {"agree", "disagree", "undetermined"}

    # the same numbers straight from phaselens
    df = pd.read_csv(out / "cka_pairs.csv")
    dec = df[df.representation == "decision token (capitals)"]
    removed = [int(b) for b in str(dec.removed.iloc[0]).split(",")]
    assert len(removed) == 15  # 50% of 30 blocks
    assert removed == pl.select_blocks(smol, 15, "bi", calibration=pl.load_calibration()[:2], seed=3)
    task = pl.load_task("capitals", format="cloze", limit=8, seed=3)
    direct = pl.cka(smol, pl.prune(smol, removed), task, seed=3)
    want = direct.to_pandas()
    got = dec[["block_a", "block_b", "cka"]].reset_index(drop=True)
    assert list(got.block_a) == list(want.block_a) and list(got.block_b) == list(want.block_b)
    np.testing.assert_allclose(got.cka.to_numpy(), want.cka.to_numpy(), rtol=1e-5, atol=1e-6)

    # the matched table is the diagonal of the pair table, and the summary quotes its mean
    matched = pd.read_csv(out / "cka_matched.csv")
    m = matched[matched.representation == "decision token (capitals)"].set_index("block").cka
    for b, v in m.items():
        assert v == pytest.approx(direct.value(b, b), rel=1e-5, abs=1e-6)
    after = m[m.index > min(removed)].mean()
    assert f"decision token (capitals) {after:.3f}" in summary
