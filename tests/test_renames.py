"""One vocabulary (issue 19): each deprecated name warns and gives what the new name gives; one block-list
grammar in every command; ``--out`` is always a folder."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from typer.testing import CliRunner

import phaselens as pl
from phaselens import errors
from phaselens.cli import app
from phaselens.commands import common, probes, pruning
from phaselens.commands import lenses as lenses_cmd
from phaselens.commands import report as report_cmd
from phaselens.deprecation import module_getattr, renamed_kwargs, renamed_property, warn_renamed

runner = CliRunner()


# -- the helpers ------------------------------------------------------------------------------------------------
def test_warn_renamed_message():
    with pytest.warns(FutureWarning) as rec:
        warn_renamed("old", "new", "somewhere")
    assert str(rec[0].message) == ("phaselens: `old` is deprecated, use `new` (somewhere); the old name goes in the "
                                   "next release")


def test_renamed_kwargs_property_and_module_getattr():
    @renamed_kwargs(seed="boot_seed")
    def f(*, boot_seed: int = 0) -> int:
        return boot_seed

    with pytest.warns(FutureWarning, match=r"`seed=` is deprecated, use `boot_seed=`"):
        assert f(seed=7) == 7
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert f(boot_seed=7) == 7
    with pytest.raises(errors.PhaselensError, match="both seed= and boot_seed="):
        f(seed=1, boot_seed=2)

    class C:
        n_new = 3
        n_old = renamed_property("n_old", "n_new")

    with pytest.warns(FutureWarning, match=r"`C.n_old` is deprecated, use `C.n_new`"):
        assert C().n_old == 3
    get = module_getattr("phaselens.somewhere", {"OLD": "phaselens.errors:PhaselensError"})
    with pytest.warns(FutureWarning, match=r"phaselens.somewhere.OLD"):
        assert get("OLD") is errors.PhaselensError
    with pytest.raises(AttributeError):
        get("NOPE")


# -- API renames: each old name warns and gives the same thing ---------------------------------------------------
def test_boot_seed_alias_same_trace(tiny_llama, capitals_task):
    new = pl.decision_trace(tiny_llama, capitals_task, n_boot=100, boot_seed=3)
    with pytest.warns(FutureWarning, match="boot_seed"):
        old = pl.decision_trace(tiny_llama, capitals_task, n_boot=100, seed=3)
    assert old.to_json() == new.to_json() and new.boot_seed == new.seed == 3
    with pytest.warns(FutureWarning, match="boot_seed"):
        t_old = pl.transition_point(tiny_llama, capitals_task, n_boot=100, seed=3)
    assert t_old.to_json() == new.transition().to_json()
    with pytest.warns(FutureWarning, match="boot_seed"):
        assert new.transition(seed=5).to_json() == new.transition(boot_seed=5).to_json()
    # n_read: the rows read; n_blocks: the dense depth; n_layers (the old, overloaded name) warns
    view = pl.prune(tiny_llama, [1, 2])
    tr = pl.decision_trace(view, capitals_task, n_boot=100)
    assert tr.n_read == len(view.kept) == view.n_kept and tr.n_blocks == tiny_llama.n_blocks == view.n_blocks
    for obj, new_value in ((tr, tr.n_read), (view, view.n_kept), (tiny_llama, tiny_llama.n_blocks)):
        with pytest.warns(FutureWarning, match="n_layers"):
            assert obj.n_layers == new_value


def test_n_boot_has_one_default():
    from phaselens import ablation, noise, final_readout as probes_mod, stats, trace

    assert stats.N_BOOT == 1000
    assert trace.N_BOOT is probes_mod.N_BOOT is stats.N_BOOT
    import inspect

    for fn in (pl.decision_trace, noise.inject_noise, ablation.ablate):
        assert inspect.signature(fn).parameters["n_boot"].default == stats.N_BOOT, fn


def test_moved_top_level_names_warn_and_are_the_same_objects():
    from phaselens.embedded import EMBEDDED
    from phaselens.pruning import CRITERIA
    from phaselens.recovery import METHODS
    from phaselens.recovery.boundary import BoundaryErrorResult

    moved = {"PruningError": errors.PruningError, "ReportWarning": errors.ReportWarning, "CRITERIA": CRITERIA,
             "METHODS": METHODS, "EMBEDDED": EMBEDDED, "BoundaryError": BoundaryErrorResult}
    for old, obj in moved.items():
        assert old not in pl.__all__
        with pytest.warns(FutureWarning, match=rf"phaselens\.{old}"):
            assert getattr(pl, old) is obj
    assert "PhaselensError" in pl.__all__ and "registered" in pl.__all__
    assert not [n for n in pl.__all__ if n.endswith(("Error", "Warning")) and n != "PhaselensError"]
    with pytest.raises(AttributeError):
        pl.NoSuchName  # noqa: B018


def test_renamed_module_names_warn():
    import phaselens.encoding
    import phaselens.records
    import phaselens.recovery
    import phaselens.runner

    pairs = [(phaselens.runner, "identity", phaselens.runner.skip), (phaselens.encoding, "encode", phaselens.encoding.encode_task),
             (phaselens.records, "encode", phaselens.records.encode_record),
             (phaselens.recovery, "BoundaryError", phaselens.recovery.BoundaryErrorResult)]
    for mod, old, new in pairs:
        with pytest.warns(FutureWarning, match=old):
            assert getattr(mod, old) is new


def test_old_boundary_error_kind_loads(tiny_llama, tmp_path):
    view = pl.fit_recovery(pl.prune(tiny_llama, [2, 3]), pl.heldout_texts()[:2], "ghosted", seq_len=32)
    r = pl.boundary_error(view, pl.heldout_texts()[:1], seq_len=32)
    path = pl.save_result(r, tmp_path, "b")
    doc = json.loads(path.read_text())
    assert doc["kind"] == "BoundaryErrorResult"
    text = path.read_text().replace('"BoundaryErrorResult"', '"BoundaryError"')  # a file written before the rename
    path.write_text(text)
    back = pl.load_result(path)
    assert isinstance(back, pl.BoundaryErrorResult) and np.array_equal(back.mse, r.mse)


def test_max_steps_alias_of_transition_vs_collapse():
    from phaselens.experiments.collapse import CollapsePoint

    pts = [CollapsePoint("a", "t", "bi", 6, 3, 0.5, 0.9), CollapsePoint("b", "t", "bi", 6, 4, 0.3, 0.8),
           CollapsePoint("c", "t", "bi", 6, 5, 0.2, 0.7)]
    new = pl.transition_vs_collapse(pts, max_cut=3)
    with pytest.warns(FutureWarning, match="max_cut"):
        old = pl.transition_vs_collapse(pts, max_steps=3)
    assert old.to_json() == new.to_json()


# -- one block grammar --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, blocks", [("3-5,9", [3, 4, 5, 9]), ("12-15+20", [12, 13, 14, 15, 20]),
                                          ("12-15,20", [12, 13, 14, 15, 20]), ("7", [7]), (" 1 , 2-3 ", [1, 2, 3]),
                                          ("all", None), (None, None)])
def test_block_grammar(text, blocks):
    assert common.parse_blocks(text) == blocks


@pytest.mark.parametrize("text", ["3-x", "1--2", "5-3", "a", "3,,x", "-1", ""])
def test_block_grammar_refuses(text):
    with pytest.raises(errors.PhaselensError, match="--blocks"):
        common.parse_blocks(text, "--blocks")


class _Captured(errors.PhaselensError):
    pass


def _capture(monkeypatch, module, name, key):
    """Replace ``module.name`` by a stub that records its argument ``key`` (positional index or keyword) and stops
    the command (no model runs); the model is a stand-in."""
    seen: list = []

    def stub(*args, **kw):
        seen.append(kw[key] if isinstance(key, str) else args[key])
        raise _Captured("captured")

    monkeypatch.setattr(module, name, stub)
    monkeypatch.setattr(common, "open_model", lambda *a, **k: object())
    return seen


@pytest.mark.parametrize("text, blocks", [("3-5,9", [3, 4, 5, 9]), ("12-15+20", [12, 13, 14, 15, 20])])
def test_noise_and_prune_parse_blocks_alike(monkeypatch, text, blocks):
    seen = _capture(monkeypatch, probes, "inject_noise", 2)
    res = runner.invoke(app, ["noise", "--blocks", text, "--limit", "4"])
    assert res.exit_code == 2 and "captured" in res.output, res.output
    monkeypatch.setattr(pruning, "transition_point", lambda *a, **k: None)
    seen_prune = _capture(monkeypatch, pruning, "prune", 1)
    res = runner.invoke(app, ["prune", "--blocks", text, "--limit", "4"])
    assert res.exit_code == 2 and "captured" in res.output, res.output
    assert seen == seen_prune == [blocks]


def test_out_must_be_a_folder(tmp_path):
    afile = tmp_path / "results.json"
    afile.write_text("{}")
    for cmd in (["transition"], ["noise"], ["prune", "--blocks", "3"], ["sweep"], ["demo"]):
        res = runner.invoke(app, [*cmd, "--out", str(afile)])
        text = " ".join(res.output.split())
        assert res.exit_code == 2 and "--out" in text and "is a file, not a folder" in text, (cmd, res.output)


# -- deprecated CLI options: they warn and mean what the new name means -------------------------------------------
def test_deprecated_cli_options(monkeypatch, tmp_path):
    seen = _capture(monkeypatch, pruning, "iterative_prune", "steps")
    res = runner.invoke(app, ["sweep", "--steps", "3", "--limit", "4"])
    assert "--steps is deprecated, use --max-cut" in res.output and seen == [3], res.output
    res = runner.invoke(app, ["sweep", "--max-cut", "3", "--limit", "4"])
    assert "deprecated" not in res.output and seen == [3, 3], res.output
    seen = _capture(monkeypatch, probes, "transition_vs_collapse", "max_cut")
    res = runner.invoke(app, ["collapse", "--max-steps", "2", "--tasks", "capitals"])
    assert "--max-steps is deprecated, use --max-cut" in res.output and seen == [2], res.output
    seen = _capture(monkeypatch, report_cmd, "build_report", 1)
    res = runner.invoke(app, ["report", str(tmp_path), "-o", str(tmp_path / "r.html")])
    assert "--out is deprecated, use --html" in res.output and seen == [tmp_path / "r.html"], res.output
    seen = _capture(monkeypatch, lenses_cmd, "fit_lens", 1)
    res = runner.invoke(app, ["lens", "fit", "--kind", "linear", "--out", str(tmp_path / "l.safetensors")])
    assert "--out is deprecated, use --lens-file" in res.output and seen == ["linear"], res.output


def test_plugins_option_loads_a_module(tmp_path, monkeypatch):
    plugin = tmp_path / "my_plugin.py"
    plugin.write_text("import os\nos.environ['PHASELENS_TEST_PLUGIN_RAN'] = '1'\n")
    monkeypatch.delenv("PHASELENS_TEST_PLUGIN_RAN", raising=False)
    monkeypatch.setenv("PHASELENS_PLUGINS", "")
    res = runner.invoke(app, ["--plugins", str(plugin), "tasks"])
    assert res.exit_code == 0, res.output
    import os

    assert os.environ.get("PHASELENS_TEST_PLUGIN_RAN") == "1"
    res = runner.invoke(app, ["--plugins", "no_such_phaselens_plugin_module", "tasks"])
    assert res.exit_code == 2 and "--plugins" in res.output, res.output


@pytest.mark.parametrize("argv, module, name", [
    (["noise"], probes, "inject_noise"), (["ablate"], probes, "ablate"), (["prune", "--blocks", "3-5"], pruning, "transition_point"),
    (["sweep"], pruning, "iterative_prune"), (["phase-cuts", "-n", "2"], pruning, "compare_phase_cuts"),
])
def test_lens_option_reaches_the_readout(monkeypatch, argv, module, name):
    seen = _capture(monkeypatch, module, name, "lens")
    res = runner.invoke(app, [*argv, "--limit", "4", "--lens", "linear"])
    assert res.exit_code == 2 and "captured" in res.output and seen == ["linear"], res.output
    res = runner.invoke(app, [*argv, "--lens", "tunde"])
    assert res.exit_code == 2 and "--lens" in res.output and seen == ["linear"], res.output


def test_renamed_modules_keep_their_names_for_one_release():
    """``phaselens.lens`` is now ``phaselens.readout`` and ``phaselens.probes`` is ``phaselens.final_readout``."""
    from phaselens import final_readout, readout

    with pytest.warns(FutureWarning, match=r"phaselens\.lens\.option_logits.*phaselens\.readout\.option_logits"):
        from phaselens.lens import option_logits
    assert option_logits is readout.option_logits
    with pytest.warns(FutureWarning, match=r"phaselens\.probes\.FinalRunner.*phaselens\.final_readout"):
        from phaselens.probes import FinalRunner
    assert FinalRunner is final_readout.FinalRunner
