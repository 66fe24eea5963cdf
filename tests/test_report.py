"""Results folders and the HTML report: self-contained, complete, and rendering in a real browser."""

from __future__ import annotations

from dataclasses import dataclass

import html as _html
import json
import os
import re
import shutil
import subprocess

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
from typer.testing import CliRunner

import phaselens as pl
from phaselens.results import Result, read_results
from phaselens.cli import app
from phaselens.report import ReportWarning, build_report, report_html
from phaselens.results import ResultsError

from test_plots import synthetic_trace

runner = CliRunner()


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def browser_check(page, tmp_path) -> dict:
    """Open ``page`` in headless Chromium; return the report's own check (figures rendered, JS errors)."""
    exe = _chromium()
    if exe is None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("chromium is not installed in CI (.ci/run must install Debian's chromium package)")
        pytest.skip("chromium not installed (apt-get install -y chromium); in CI this test fails instead")
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
           f"--user-data-dir={tmp_path / 'chrome-profile'}", "--virtual-time-budget=30000", "--dump-dom", page.as_uri()]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    m = re.search(r'<div id="phaselens-check"[^>]*>(.*?)</div>', res.stdout, re.S)
    assert m, f"no check element in the dumped DOM (chromium rc={res.returncode}): {res.stderr[-2000:]}"
    status = re.search(r'data-status="(\w+)"', m.group(0)).group(1)
    assert m.group(1), f"the check script did not run (status {status})"
    return {"status": status, **json.loads(_html.unescape(m.group(1)))}


@pytest.fixture(scope="module")
def results_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("results")
    dense = synthetic_trace(L=10, model="toy").transition(n_boot=100)
    pruned = synthetic_trace(L=10, kept=[0, 1, 2, 3, 4, 8, 9], model="toy -5..7").transition(n_boot=100)
    pl.save_result(dense, d, "dense", command="transition", seed=3)
    pl.save_result(pruned, d, "pruned", command="transition", seed=3)
    rng = np.random.default_rng(0)
    pl.save_result(pl.CKAResult(rng.uniform(0, 1, (10, 10)), range(10), range(10), "toy", "toy", "decision", 24, source="toy-task"),
                   d, "cka_dense")
    pl.save_result(pl.CKAResult(rng.uniform(0, 1, (10, 7)), range(10), [0, 1, 2, 3, 4, 8, 9], "toy", "toy -5..7", "decision", 24,
                                source="toy-task"), d, "cka_pruned")
    (d / "notes.json").write_text('{"not": "a result"}')  # skipped: no kind/data
    return d


def test_results_folder_round_trip_with_provenance(results_dir):
    entries = read_results(results_dir)
    assert [e.name for e in entries] == ["cka_dense", "cka_pruned", "dense", "pruned"]
    dense = next(e for e in entries if e.name == "dense")
    assert dense.kind == "Transition" and dense.phaselens == pl.__version__ and dense.created[:4].isdigit()
    # model/task/format/n_items are filled from the result; explicit keys are kept
    assert dense.provenance == {"model": "toy", "task": "toy-task", "format": "cloze", "seed": 3, "n_items": 24, "lens": "logit",
                                "command": "transition"}
    loaded = pl.load_results(results_dir)
    orig = synthetic_trace(L=10, model="toy").transition(n_boot=100)
    np.testing.assert_allclose(loaded["dense"].trace.margins, orig.trace.margins)
    assert loaded["dense"].layer == orig.layer and loaded["pruned"].trace.blocks.tolist() == [0, 1, 2, 3, 4, 8, 9]
    cka = next(e for e in entries if e.name == "cka_pruned")
    assert cka.provenance["model"] == "toy vs toy -5..7" and cka.provenance["task"] == "toy-task"


def test_results_errors_are_clear(tmp_path):
    with pytest.raises(ResultsError, match="not found"):
        pl.load_results(tmp_path / "nowhere")
    with pytest.raises(ResultsError, match="holds no phaselens results"):
        pl.load_results(tmp_path)
    with pytest.raises(ResultsError, match="object is not a phaselens result"):
        pl.save_result(object(), tmp_path)
    with pytest.raises(ResultsError, match="plain file stem"):
        pl.save_result(synthetic_trace(), tmp_path, "../escape")
    (tmp_path / "x.json").write_text(json.dumps({"phaselens": pl.__version__, "format": 2, "kind": "NoSuchKind",
                                                 "data": {"__kind__": "NoSuchKind"}}))
    with pytest.raises(ResultsError, match="x.json: unknown result kind 'NoSuchKind'"):
        pl.load_results(tmp_path)


def test_report_is_one_self_contained_page(results_dir, tmp_path):
    path = build_report(results_dir, tmp_path / "report.html")
    page = path.read_text()
    assert page.count("plotly.js v") == 1  # Plotly's JavaScript embedded exactly once
    # nothing is fetched (works offline): no external script or stylesheet
    assert not re.search(r"<script[^>]+src=", page) and not re.search(r"<link[^>]+href=", page)
    # figures: 3 comparison + 1 CKA comparison + 5 per transition x 2 + 1 heatmap per CKA x 2
    assert len(re.findall(r'<div id="fig-\d+"', page)) == 16
    assert 'data-expected="16"' in page or "data-expected='16'" in page
    # provenance: model, task, format, seed, phaselens version, date
    prov = page[page.index("id='provenance'"):page.index("<nav>")]
    for s in ("toy", "toy-task", "cloze", "<td>3</td>", pl.__version__, "transition"):
        assert s in prov, s
    assert re.search(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", prov)
    # each transition's summary and table are there
    loaded = pl.load_results(results_dir)
    assert _html.escape(loaded["dense"].summary()) in page
    assert page.count("<summary>table:") == 4


def test_report_renders_in_headless_chromium(results_dir, tmp_path):
    page = build_report(results_dir, tmp_path / "report.html")
    check = browser_check(page, tmp_path)
    assert check["errors"] == [], check
    assert check["figures"] == check["expected"] == 16 and check["rendered"] == 16 and check["empty"] == [], check
    assert check["status"] == "ok" and check["overflow"] == []


def _noise_near_the_top() -> pl.NoiseResult:
    """A noise result whose clean margin is at the top of the axis, in the decisive phase's corner."""
    rng = np.random.default_rng(0)
    B, E, S, N = 30, 2, 2, 12
    im = rng.normal(0, 0.5, (B, E, S, N)) + np.linspace(-2, 3, B)[:, None, None, None]
    return pl.NoiseResult(model="m", task="t", n_blocks=B, blocks=list(range(B)), eps=[0.5, 2.0], seeds=[0, 1],
                          item_margins=im, item_correct=(im > 0).astype(float), clean_margins=np.full(N, 4.0),
                          clean_correct=np.ones(N), transition=20, n_boot=100)


def test_noise_figure_no_noise_label_is_not_on_the_phase_label():
    """The "no noise" label sat on the "decisive phase" label (both at the top right when the clean margin is high):
    the clean value is now a legend entry, and no other label shares the phase labels' corner."""
    r = _noise_near_the_top()
    fig = r.figures()[0][1]
    texts = [a.text for a in fig.layout.annotations]
    assert "decisive phase" in texts and "silent phase" in texts
    assert not any("no noise" in (t or "") for t in texts)  # no label on the line any more
    (clean,) = [t for t in fig.data if (t.name or "").startswith("no noise")]
    assert clean.showlegend is not False and list(clean.y) == [4.0, 4.0] and clean.line.dash == "dash"
    corner = [(a.x, a.y, a.xanchor, a.yanchor, a.xref, a.yref) for a in fig.layout.annotations]
    assert len(set(corner)) == len(corner)  # no two labels anchored at the same spot
    # interval bands are areas: no markers at their vertices (Plotly adds them to short traces by default)
    short = synthetic_trace(L=6).transition(n_boot=100).plot()
    for f in (fig, short):
        assert all(t.mode == "lines" for t in f.data if getattr(t, "fill", None) == "toself")


def test_study_grid_and_collapse_labels_have_room():
    """Found in the browser: a grid row's x title sat on the next row's panel titles, and the collapse scatter's point
    labels were cut at the plot's edges."""
    from phaselens.experiments.collapse import CollapsePoint
    from phaselens.plots.study import margin_grid

    curves = {(m, t): [{"label": "seed 0", "blocks": list(range(8)), "margins": list(np.linspace(-2, 2, 8)),
                        "transition": 5}] for m in ("a", "b", "c") for t in ("x", "y")}
    fig = margin_grid(curves)
    titled = [k for k in fig.layout if k.startswith("xaxis") and fig.layout[k].title.text]
    assert len(titled) == 2  # the bottom row's two panels only
    pts = [CollapsePoint("m1", "t", "bi", 30, 22, 0.2, 0.9), CollapsePoint("m2", "t", "bi", 18, 14, 0.17, 0.95),
           CollapsePoint("m3", "t", "bi", 28, 22, 0.25, 0.8)]
    fig = pl.CollapseStudy(pts, r=-0.5, p=0.6, criterion="bi").plot()
    lo, hi = fig.layout.xaxis.range
    xs = [q.fraction for q in pts]
    assert lo < min(xs) - 0.2 * (max(xs) - min(xs)) and hi > max(xs) + 0.2 * (max(xs) - min(xs))


def test_wide_provenance_stays_within_the_page(results_dir, tmp_path):
    """The provenance table ran past the page's width: it now wraps long values and scrolls inside its own box.
    Checked in the browser: no block of the page is wider than the page (the check fails on one that is)."""
    entries = read_results(results_dir)
    for e in entries:
        e.provenance.update({f"key_{i}": "x" * 30 for i in range(12)})
        e.provenance["lens"] = "/a/very/long/path/" + "sub-folder/" * 12 + "tuned-lens.safetensors"
    page = report_html(entries)
    assert '<div class="provwrap"><table class="prov">' in page and ".provwrap{max-width:100%;overflow-x:auto}" in page
    p = tmp_path / "wide.html"
    p.write_text(page)
    check = browser_check(p, tmp_path)
    assert check["overflow"] == [] and check["status"] == "ok", check
    p.write_text(page.replace("<h2 id='provenance'>", "<div style='width:4000px'>too wide</div><h2 id='provenance'>"))
    check = browser_check(p, tmp_path)
    assert check["status"] == "failed" and check["overflow"], check  # the check can fail


def test_browser_check_catches_errors_and_empty_figures(tmp_path):
    """The page's own check fails on a JavaScript error (so the test above can fail)."""
    page = report_html({"t": synthetic_trace(L=4)})
    bad = page.replace("</main>", "<script>undefinedFunctionCall()</script></main>")
    p = tmp_path / "bad.html"
    p.write_text(bad)
    check = browser_check(p, tmp_path)
    assert check["status"] == "failed" and any("undefinedFunctionCall" in e for e in check["errors"])


@dataclass
class _Custom(Result):
    """A result kind the report has never heard of: it must ask the result for its figures, table and summary."""

    def plot(self):
        return go.Figure(go.Bar(x=["a", "b"], y=[1, 2]))

    def figures(self):
        return [("bars", self.plot()), ("line", go.Figure(go.Scatter(x=[0, 1], y=[3, 4])))]

    def to_pandas(self):
        return pd.DataFrame({"what": ["a", "b"], "value": [1.5, 2.25]})

    def summary(self):
        return "custom summary line"


@dataclass
class _Broken(Result):
    def plot(self):
        raise RuntimeError("cannot draw this")

    def to_pandas(self):
        return pd.DataFrame({"x": [1]})

    def summary(self):
        return "broken"


def test_other_kinds_use_their_own_plot_and_failures_are_shown():
    with pytest.warns(ReportWarning, match="cannot draw this"):
        page = report_html({"custom": _Custom(), "broken": _Broken()})
    assert len(re.findall(r'<div id="fig-\d+"', page)) == 2
    assert "custom summary line" in page and "2.25" in page
    assert "class='error'" in page and "RuntimeError: cannot draw this" in page


def test_cli_transition_out_and_report(smol, tmp_path):
    out = tmp_path / "run"
    res = runner.invoke(app, ["transition", "-m", "smollm2-135m", "-t", "capitals", "--limit", "6", "--seed", "2",
                              "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    printed = json.loads(res.stdout)
    (entry,) = read_results(out)
    assert entry.name == "transition_smollm2-135m_capitals" and entry.kind == "Transition"
    assert entry.provenance["seed"] == 2 and entry.provenance["limit"] == 6 and entry.provenance["command"] == "transition"
    np.testing.assert_allclose(entry.result.trace.margins, printed["trace"]["margins"])
    html_path = tmp_path / "r.html"
    res = runner.invoke(app, ["report", str(out), "--html", str(html_path)])
    assert res.exit_code == 0, res.output
    assert "smollm2-135m" in html_path.read_text()[-400_000:]
    res = runner.invoke(app, ["report", str(tmp_path / "missing"), "--html", str(html_path)])
    assert res.exit_code == 2 and "not found" in res.output
