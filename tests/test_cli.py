"""The command line: table, JSON and the demo figure."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from phaselens.cli import app

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
    assert out.stat().st_size > 100_000  # Plotly's JavaScript is embedded (works offline)


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
        (["sweep", "--max-cut", "0"], "--max-cut"),
        (["sweep", "--out", str(afile)], "--out"),
        (["sweep", "--recovery", "ghost"], "recovery"),
        (["sweep", "--heldout", missing], "--heldout"),
        (["phase-cuts", "-n", "0"], "-n"),
        (["phase-cuts", "-n", "2", "--methods", "ghosted,magic"], "--methods"),
        (["phase-cuts", "-n", "2", "--calibration", missing], "calibration"),
        (["collapse", "--criterion", "magic"], "criterion"),
        (["collapse", "--max-cut", "0"], "--max-cut"),
        (["lens", "fit", "--kind", "tunned", "--lens-file", str(tmp_path / "l.safetensors")], "--kind"),
        (["lens", "fit", "--lens-file", str(tmp_path), "--kind", "linear"], "--lens-file"),
        (["lens", "fit", "--lens-file", str(tmp_path / "l.safetensors"), "--vocab", "-5"], "--vocab"),
        (["lens", "kl", "--lens", "no-such.safetensors"], "--lens"),
        (["lens", "kl", "--seq-len", "1"], "--seq-len"),
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
