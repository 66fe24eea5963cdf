"""The command line: table, JSON and the demo figure."""

from __future__ import annotations

import io
import json
import re

import numpy as np
import pytest
from rich.console import Console
from typer.testing import CliRunner

from phaselens.cli import app, transition_table
from phaselens.trace import DecisionTrace

runner = CliRunner()


def test_transition_json(smol):
    res = runner.invoke(app, ["transition", "--model", "smollm2-135m", "--task", "capitals", "--limit", "12", "--json"])
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)
    assert set(d) >= {"layer", "jump_layer", "ci", "silent", "decisive", "trace"}
    assert len(d["trace"]["margins"]) == smol.n_blocks and len(d["trace"]["item_margins"]) == 12


def test_transition_table_and_html(smol, tmp_path):
    out = tmp_path / "fig.html"
    res = runner.invoke(app, ["transition", "-m", "smollm2-135m", "-t", "capitals", "--limit", "8", "--html", str(out)])
    assert res.exit_code == 0, res.output
    assert "decisive" in res.stdout and "OF A" in res.stdout
    assert max(len(x) for x in res.stdout.splitlines()) <= 80  # not a terminal: 80 columns, one line per block
    assert sum(bool(re.match(r"^│\s+\d+\s+│", x)) for x in res.stdout.splitlines()) == smol.n_blocks
    assert out.stat().st_size > 100_000  # Plotly's JavaScript is embedded (works offline)


def test_transition_resume_folder(smol, tmp_path, monkeypatch):
    """--resume: the items are read in units saved in the folder; a rerun reads them back (no forward pass) and
    prints the same numbers; a file given as the folder is refused before the model loads."""
    import phaselens.trace as trace_mod

    monkeypatch.setattr(trace_mod, "TRACE_CHUNK", 5)
    args = ["transition", "-m", "smollm2-135m", "-t", "capitals", "--limit", "12", "--json", "--resume", str(tmp_path)]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert len(list((tmp_path / ".phaselens" / "trace").glob("items_*.json"))) == 3
    monkeypatch.setattr(trace_mod, "option_logits", lambda *a, **k: pytest.fail("a finished unit was recomputed"))
    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["trace"]["margins"] == json.loads(first.stdout)["trace"]["margins"]
    (tmp_path / "f").write_text("x")
    bad = runner.invoke(app, [*args[:-1], str(tmp_path / "f" / "sub")])
    assert bad.exit_code != 0 and "--resume" in bad.output


def _synthetic_transition(L: int, K: int, scale: float = 10.0):
    """A trace of L blocks whose margins climb from about -3*scale to +3*scale (wide numbers), N=40 items."""
    rng = np.random.default_rng(L * 10 + K)
    N = 40
    logits = rng.normal(0, scale, (L, N, K))
    logits[:, :, 0] += np.linspace(-3 * scale, 3 * scale, L)[:, None]
    return DecisionTrace("m", "t", "cloze", L, np.arange(L), logits, np.zeros(N, int), np.ones((N, K), bool),
                         np.full((N, K), 5), n_boot=100).transition(n_boot=100)


def _rendered(table, width: int) -> list[str]:
    c = Console(file=io.StringIO(), width=width, color_system=None)
    c.print(table)
    return c.file.getvalue().splitlines()


# the embedded models' depths (SmolLM2 30, Qwen-1.5B 28, Qwen-0.5B 24, Gemma 18) and option counts
@pytest.mark.parametrize("L,K,scale", [(30, 4, 10.0), (28, 4, 40.0), (24, 4, 1.0), (18, 4, 10.0), (30, 5, 10.0),
                                       (30, 2, 10.0), (80, 4, 10.0)])
def test_transition_table_fits_80_columns_one_line_per_block(L, K, scale):
    tr = _synthetic_transition(L, K, scale)
    lines = _rendered(transition_table(tr, 80), 80)
    assert max(len(x) for x in lines) <= 80, "\n".join(lines)
    rows = [int(m.group(1)) for x in lines if (m := re.match(r"^│\s+(\d+)\s+│", x))]
    assert rows == list(range(L))  # every block once
    body = lines[next(i for i, x in enumerate(lines) if x.startswith("┡")) + 1:]
    assert sum(x.startswith("│") for x in body) == L  # no row wraps onto a second line
    ci = np.asarray(tr.trace.margin_ci)
    first = next(x for x in lines if re.match(r"^│\s+0\s+│", x))
    m0, lo, hi = tr.trace.margins[0], ci[0, 0], ci[1, 0]
    folded = f"{m0:+.2f} [{lo:+.1f},{hi:+.1f}]" in first  # the interval folded beside the margin
    assert folded or (f"{m0:+.3f}" in first and f"[{lo:+.2f}, {hi:+.2f}]" in first), first  # or its own column
    assert folded == (K > 2)  # two options leave room for the wide layout
    if K <= 4 and scale <= 10:
        assert "OF A" in lines[next(i for i, x in enumerate(lines) if x.startswith("┏")) + 1]


def test_transition_table_uses_a_wide_terminal():
    tr = _synthetic_transition(30, 5)
    lines = _rendered(transition_table(tr, 160), 160)
    head = lines[next(i for i, x in enumerate(lines) if x.startswith("┏")) + 1]
    assert "95% CI" in head and "OF E" in head and "accuracy" in head  # the interval in a column of its own
    assert max(len(x) for x in lines) <= 160
    narrow = _rendered(transition_table(tr, 80), 80)
    assert "OF E" not in "\n".join(narrow) and "option frequencies" in "\n".join(narrow)


def test_demo_writes_figure(smol, tmp_path):
    out = tmp_path / "demo.html"
    res = runner.invoke(app, ["demo", "--html", str(out)])
    assert res.exit_code == 0, res.output
    assert "plotly" in out.read_text()[:200_000].lower()


def test_bad_task_is_a_clear_error():
    res = runner.invoke(app, ["transition", "--task", "no-such-task-anywhere"])
    assert res.exit_code == 2
    assert "error" in res.output.lower()


def _bad_option_cases(tmp_path):
    afile = tmp_path / "a-file"
    afile.write_text("x")
    missing = str(tmp_path / "nowhere" / "cal.txt")
    nodir = str(tmp_path / "no-such-folder" / "fig.html")
    return [
        (["transition", "--batch-size", "0"], "--batch-size"),
        (["transition", "--out", str(afile / "sub")], "--out"),
        (["transition", "--html", nodir], "--html"),
        (["transition", "--lens", "tunde"], "--lens"),
        (["transition", "--out", str(afile)], "--out"),
        (["demo", "--html", str(tmp_path)], "--html"),
        (["demo", "--out", str(afile)], "--out"),
        (["cka", "--prune-b", "3,x"], "--prune-b"),
        (["cka", "--on-texts", "--calibration", missing], "calibration"),
        (["cka", "--positions", "every"], "--positions"),
        (["cka", "--n-samples", "0"], "--n-samples"),
        (["noise", "--eps", "0.5,nan"], "--eps"),
        (["noise", "--eps", "a,b"], "--eps"),
        (["noise", "--blocks", "1-x"], "--blocks"),
        (["noise", "--seeds", "0"], "--seeds"),
        (["ablate", "--mode", "half"], "--mode"),
        (["ablate", "--window", "-1"], "--window"),
        (["prune", "--blocks", "3,,x"], "--blocks"),
        (["prune", "--criterion", "bi", "-n", "0"], "-n"),
        (["prune", "--blocks", "3", "--calibration", missing], "calibration"),
        (["prune", "--blocks", "3", "--no-first-token"], "--no-first-token"),
        (["sweep", "--max-cut", "0"], "--max-cut"),
        (["sweep", "--out", str(afile)], "--out"),
        (["sweep", "--recovery", "ghost"], "recovery"),
        (["sweep", "--heldout", missing], "--heldout"),
        (["phase-cuts", "-n", "0"], "-n"),
        (["phase-cuts", "-n", "2", "--methods", "ghosted,magic"], "--methods"),
        (["phase-cuts", "-n", "2", "--calibration", missing], "calibration"),
        (["recovery", "--blocks", "3", "-n", "2"], "-n N"),
        (["recovery", "-n", "2", "--criterion", "taylor-like"], "--criterion"),
        (["recovery", "--blocks", "3", "--methods", "ghosted,magic"], "--methods"),
        (["recovery", "--blocks", "3", "--task", " , "], "--task"),
        (["recovery", "--blocks", "3", "--heldout", missing], "--heldout"),
        (["collapse", "--criterion", "magic"], "criterion"),
        (["collapse", "--max-cut", "0"], "--max-cut"),
        (["lens", "fit", "--kind", "tunned", "--lens-file", str(tmp_path / "l.safetensors")], "--kind"),
        (["lens", "fit", "--lens-file", str(tmp_path), "--kind", "linear"], "--lens-file"),
        (["lens", "fit", "--lens-file", str(tmp_path / "l.safetensors"), "--vocab", "-5"], "--vocab"),
        (["lens", "kl", "--lens", "no-such.safetensors"], "--lens"),
        (["lens", "kl", "--seq-len", "1"], "--seq-len"),
        (["heatmap", "--prompt", "  "], "--prompt"),
        (["heatmap", "--top-k", "0"], "--top-k"),
        (["heatmap", "--lens", "tunde"], "--lens"),
        (["heatmap", "--html", nodir], "--html"),
        (["heatmap", "--out", str(afile)], "--out"),
    ]


def test_every_command_refuses_a_bad_option_before_loading_a_model(tmp_path, monkeypatch):
    """A bad option costs nothing: the error names the option, and no model (nor a task from disk) is loaded."""
    import phaselens
    import phaselens.loading

    def no_load(*a, **k):
        raise AssertionError("a model was loaded before the options were checked")

    monkeypatch.setattr(phaselens, "load_model", no_load)
    monkeypatch.setattr(phaselens.loading, "load_model", no_load)
    for argv, named in _bad_option_cases(tmp_path):
        res = runner.invoke(app, argv)
        assert res.exit_code == 2, (argv, res.output, res.exception)
        assert "error" in res.output.lower() and named in res.output, (argv, res.output)
        assert "a model was loaded" not in res.output, argv


def test_prune_recovers_without_each_passages_first_token(smol, tmp_path):
    """`--no-first-token` reaches the fit: the saved pruned transition says so, and its margins differ from the fit on
    every token (on SmolLM2's blocks 12-17 the sink is most of the boundary)."""
    cal = tmp_path / "cal.txt"
    import phaselens as pl

    cal.write_text("\n\n".join(pl.load_calibration()[:24]))
    got = {}
    for flag in ("--first-token", "--no-first-token"):
        out = tmp_path / flag.strip("-")
        res = runner.invoke(app, ["prune", "-m", "smollm2-135m", "-t", "capitals", "--limit", "8", "--blocks", "12-17",
                                  "--recovery", "ghosted", flag, "--calibration", str(cal), "--json", "--out", str(out)])
        assert res.exit_code == 0, res.output
        got[flag] = np.array(json.loads(res.stdout)["pruned"]["trace"]["margins"])
        files = sorted(out.glob("transition_*pruned*.json"))
        assert len(files) == 1 and ("no-first-token" in files[0].name) == (flag == "--no-first-token")
        prov = json.loads(files[0].read_text())["provenance"]
        assert prov.get("first_token", True) is (flag == "--first-token")
    assert not np.allclose(got["--first-token"], got["--no-first-token"])


def test_recovery_command_gives_the_independently_computed_numbers(tiny_llama_dir, tmp_path):
    """`phaselens recovery`: plain pruning's accuracy is the pruned model's own transition (prune + transition_point),
    Ghosted Layers' perplexity is fit_recovery + perplexity on the same texts; a rerun on --out resumes to the same
    result, and the table names every method."""
    import phaselens as pl

    cal, held = tmp_path / "cal.txt", tmp_path / "held.txt"
    cal.write_text("\n\n".join(pl.load_calibration()[:6]))
    held.write_text("\n\n".join(pl.heldout_texts()[:5]))
    args = ["recovery", "-m", tiny_llama_dir, "-t", "capitals", "--limit", "10", "--blocks", "2-3", "--methods",
            "identity,ghosted", "--calibration", str(cal), "--heldout", str(held), "--out", str(tmp_path / "r")]
    res = runner.invoke(app, [*args, "--json"])
    assert res.exit_code == 0, res.output
    got = json.loads(res.stdout)
    m = pl.load_model(tiny_llama_dir)
    task = pl.load_task("capitals", limit=10, seed=0)
    pruned = pl.prune(m, [2, 3])
    acc = pl.transition_point(pruned, task).trace.accuracy[-1]
    ghosted = pl.fit_recovery(pruned, pl.load_calibration()[:6], "ghosted")
    ppl = pl.perplexity(ghosted, pl.heldout_texts()[:5])
    rc = pl.load_results(tmp_path / "r")
    (r,) = rc.values()
    assert r.accuracy("identity") == pytest.approx(acc, abs=1e-12)
    assert r.perplexity("ghosted") == pytest.approx(float(ppl), rel=1e-4)
    assert got["blocks"] == [2, 3] and got["methods"] == ["identity", "ghosted"]
    again = runner.invoke(app, args)  # resumed from the folder: the same numbers, printed as the table
    assert again.exit_code == 0, again.output
    assert "identity" in again.output and "ghosted" in again.output and "Paired effects" in again.output
    assert f"{r.perplexity('ghosted'):.2f}" in again.output
