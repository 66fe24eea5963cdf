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
    assert len(d["trace"]["margins"]) == smol.n_layers and len(d["trace"]["item_margins"]) == 12


def test_transition_table_and_html(smol, tmp_path):
    out = tmp_path / "fig.html"
    res = runner.invoke(app, ["transition", "-m", "smollm2-135m", "-t", "capitals", "--limit", "8", "--html", str(out)])
    assert res.exit_code == 0, res.output
    assert "decisive" in res.stdout and "OF A" in res.stdout
    assert out.stat().st_size > 100_000  # Plotly's JavaScript is embedded (works offline)


def test_demo_writes_figure(smol, tmp_path):
    out = tmp_path / "demo.html"
    res = runner.invoke(app, ["demo", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "plotly" in out.read_text()[:200_000].lower()


def test_bad_task_is_a_clear_error():
    res = runner.invoke(app, ["transition", "--task", "no-such-task-anywhere"])
    assert res.exit_code == 2
    assert "error" in res.output.lower()
