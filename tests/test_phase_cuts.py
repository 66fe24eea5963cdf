"""The phase-cut experiment: cut placement, agreement with plain pruning and one-off recoveries,
Ghosted Layers' boundary error, seeded random controls, resume, tables, figures and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import phaselens as pl
from phaselens.readout import option_logits
from phaselens.experiments import phase_cuts as pc
from phaselens.encoding import encode
from phaselens.metrics import bootstrap_indices
from phaselens.results import read_record, save_result
from phaselens.runner import patched as applied

N = 2
SEQ = 64
WORDS = "red blue green cat dog house river stone light music paper glass water fire earth wind north south east west".split()
RUN = dict(seq_len=SEQ, n_boot=200, boot_seed=0)


def _items(n: int = 40) -> list[dict]:
    rng = np.random.default_rng(0)
    return [{"question": " ".join(rng.choice(WORDS, 5)), "options": list(rng.choice(WORDS, 4, replace=False)), "answer": 0,
             "id": f"q{i}"} for i in range(n)]


@pytest.fixture(scope="module")
def cal() -> list[str]:
    return pl.load_calibration()[:16]


@pytest.fixture(scope="module")
def held() -> list[str]:
    return pl.heldout_texts()[:2]


@pytest.fixture(scope="module")
def cut_task(tiny_llama) -> pl.Task:
    """Word-list items whose answer is the dense tiny model's final-layer choice: the final margin
    is positive by construction, and earlier blocks disagree (a silent phase)."""
    items = _items()
    z = option_logits(tiny_llama, pl.load_task(items)).z
    task = pl.load_task([{**it, "answer": int(a)} for it, a in zip(items, z[-1].argmax(-1))])
    tr = pl.transition_point(tiny_llama, task, n_boot=200)
    assert tr.layer is not None and N <= tr.layer <= tiny_llama.n_blocks - N, tr.summary()  # the test's precondition
    return task


@pytest.fixture(scope="module")
def result(tiny_llama, cut_task, cal, held) -> pl.PhaseCuts:
    # one placement per phase (the default before 0.4.0), so each phase has one cut and its numbers are the old ones
    return pl.compare_phase_cuts(tiny_llama, cut_task, N, seeds=3, placement="adjacent", calibration=cal, heldout=held,
                                 **RUN)


def test_cuts_sit_inside_their_phases(result, tiny_llama, cut_task):
    tr = pl.transition_point(tiny_llama, cut_task, n_boot=200)
    assert result.transition.layer == tr.layer
    ls, L = tr.layer, tiny_llama.n_blocks
    s, d = result.cut("silent"), result.cut("decisive")
    assert s.blocks == list(range(ls - N, ls))  # adjacent: ends right before the transition
    assert d.blocks == list(range(ls, ls + N))  # adjacent: starts at the transition
    for kind, c in (("silent", s), ("decisive", d)):
        for u in result.units:
            if u.cut == kind:
                assert u.blocks == c.blocks
                assert sorted(set(u.curve_blocks) | set(c.blocks)) == list(range(L))
    view = pl.ModelView(tiny_llama)
    far = pc.phase_cuts(view, tr, N, placement="far", seeds=[])
    assert far[0].blocks == [0, 1] and far[1].blocks == list(range(L - N, L))
    center = pc.phase_cuts(view, tr, 1, placement="center", seeds=[])
    assert center[0].start == (ls - 1) // 2 and center[1].start == ls + (L - ls - 1) // 2
    at = pc.phase_cuts(view, tr, 1, placement=(0, ls + 1), seeds=[])  # block indices: the first cut block of each
    assert at[0].start == 0 and at[1].start == ls + 1
    with pytest.raises(pl.errors.PhaseCutsError, match="pair"):
        pc.phase_cuts(view, tr, 1, placement=ls, seeds=[])
    with pytest.raises(pl.errors.PhaseCutsError, match="do not fit inside the silent phase"):
        pc.phase_cuts(view, tr, N, placement=(1, "adjacent"), seeds=[])


def test_identity_rows_equal_a_plain_prune(result, tiny_llama, cut_task, held):
    for c in result.cuts:
        u = result.unit(c.kind, "identity", c.seed)
        view = pl.prune(tiny_llama, c.blocks)
        tr = pl.decision_trace(view, cut_task, n_boot=RUN["n_boot"], seed=RUN["boot_seed"])
        np.testing.assert_array_equal(u.curve_blocks, tr.blocks)
        np.testing.assert_allclose(u.margins, tr.margins, rtol=0, atol=1e-5)
        np.testing.assert_allclose(u.margin_ci, tr.margin_ci, rtol=0, atol=1e-5)
        np.testing.assert_allclose(u.accuracy, tr.accuracy, rtol=0, atol=0)
        np.testing.assert_allclose(u.item_margins, tr.item_margins[:, -1], rtol=0, atol=1e-5)
        assert u.perplexity == pytest.approx(pl.perplexity(view, held, seq_len=SEQ), rel=1e-6)


def test_units_match_one_off_recoveries(result, tiny_llama, cut_task, cal):
    c = result.cut("decisive")
    pruned = pl.prune(tiny_llama, c.blocks)
    fits = pl.fit_recovery(pruned, cal, ["ghosted", "symmetric", "replaceme"], seq_len=SEQ)
    for m, rec in fits.items():
        u = result.unit("decisive", m)
        tr = pl.decision_trace(rec, cut_task, n_boot=RUN["n_boot"], seed=RUN["boot_seed"])
        np.testing.assert_allclose(u.margins, tr.margins, rtol=0, atol=1e-4)
        assert u.boundary_mse == pytest.approx(float(rec.fit_error.mse[0]), rel=1e-6)
    # the fitted boundary error (from the statistics) is what a recovered forward measures
    measured = pl.boundary_error(fits["ghosted"], cal, seq_len=SEQ)
    assert result.unit("decisive", "ghosted").boundary_mse == pytest.approx(float(measured.mse[0]), rel=1e-3)


def test_ghosted_boundary_error_is_smallest_for_every_cut(result):
    for c in result.cuts:
        g = result.unit(c.kind, "ghosted", c.seed).boundary_mse
        for m in pl.experiments.WHOLE_STREAM:
            assert g <= result.unit(c.kind, m, c.seed).boundary_mse * (1 + 1e-9), (c.key, m)


def test_trailing_cut_final_row_is_the_model_output(tiny_llama, cut_task, cal):
    """A cut at the end of the model: the last row of the trace must include the operator, as the logits do."""
    L = tiny_llama.n_blocks
    rec = pl.fit_recovery(pl.prune(tiny_llama, [L - 2, L - 1]), cal, "ghosted", seq_len=SEQ)
    z = option_logits(rec, cut_task).z[-1]
    enc = encode(cut_task, tiny_llama.tokenizer)
    with torch.inference_mode(), applied(tiny_llama.blocks, rec.plan(), returns_tuple=tiny_llama.returns_tuple):
        for i in range(5):
            logits = tiny_llama.hf(input_ids=torch.tensor([enc.prompts[i]])).logits[0, -1]
            k = int(enc.option_mask[i].sum())
            np.testing.assert_allclose(z[i, :k].numpy(), logits[enc.option_ids[i, :k]].numpy(), rtol=1e-4, atol=1e-4)


def test_random_cuts_are_contiguous_and_reproducible(result, tiny_llama):
    L = tiny_llama.n_blocks
    tr = result.transition
    view = pl.ModelView(tiny_llama)
    a = pc.phase_cuts(view, tr, N, seeds=range(10))
    b = pc.phase_cuts(view, tr, N, seeds=[7, 3])
    ra = {c.seed: c for c in a if c.kind == "random"}
    for c in b[2:]:
        assert c == ra[c.seed]
    for s, c in ra.items():
        assert c.blocks == list(range(c.start, c.start + N)) and 0 <= c.start <= L - N
        assert c.start == int(np.random.default_rng(s).integers(0, L - N + 1))
    assert len({c.start for c in ra.values()}) > 1
    for s in result.seeds:
        assert result.cut("random", s).start == ra[s].start


def test_replaceme_at_block_0_is_skipped_and_said(result):
    zero = [c for c in result.cuts if c.start == 0]
    assert zero, "the tiny model's silent cut starts at block 0"
    for c in zero:
        assert {"cut": c.key, "method": "replaceme"} in [{k: s[k] for k in ("cut", "method")} for s in result.skipped]
        with pytest.raises(KeyError, match="block 0"):
            result.unit(c.kind, "replaceme", c.seed)
    assert "replaceme" in result.summary() and "block 0" in result.summary()


def test_contrast_and_random_summary_by_hand(result):
    c = result.contrast("silent", "decisive", "ghosted")
    diff = result.unit("silent", "ghosted").item_margins - result.unit("decisive", "ghosted").item_margins
    boot = diff[bootstrap_indices(len(diff), result.n_boot, result.seed)].mean(1)
    assert c["difference"] == pytest.approx(diff.mean())
    assert (c["lo"], c["hi"]) == pytest.approx(tuple(np.quantile(boot, [0.025, 0.975])))
    r = result.random_summary("identity")
    M = np.stack([result.unit("random", "identity", s).item_margins for s in result.seeds])
    assert r["mean"] == pytest.approx(M.mean())
    assert r["seed_min"] == pytest.approx(M.mean(1).min()) and r["seed_max"] == pytest.approx(M.mean(1).max())
    rng = np.random.default_rng(result.seed)
    si = rng.integers(0, M.shape[0], size=(result.n_boot, M.shape[0]))
    ii = rng.integers(0, M.shape[1], size=(result.n_boot, M.shape[1]))
    hand = np.array([M[si[b]][:, ii[b]].mean() for b in range(result.n_boot)])
    assert (r["lo"], r["hi"]) == pytest.approx(tuple(np.quantile(hand, [0.025, 0.975])))
    d = result.contrast("dense", "silent", "identity", metric="accuracy")
    assert d["difference"] == pytest.approx(result.dense_accuracy - result.unit("silent", "identity").final_accuracy)


def test_tables_figures_and_storage(result, tmp_path):
    df = result.to_pandas()
    assert len(df) == 1 + len(result.units)
    assert {"cut", "seed", "blocks", "method", "final_margin", "margin_lo", "margin_hi", "accuracy", "accuracy_lo",
            "accuracy_hi", "boundary_mse", "boundary_relative", "perplexity", "transition", "n_items"} <= set(df.columns)
    u = result.unit("decisive", "ghosted")
    row = df[(df.cut == "decisive") & (df.method == "ghosted")].iloc[0]
    assert row.final_margin == u.final_margin and (row.margin_lo, row.margin_hi) == u.final_margin_ci
    agg = result.to_pandas(aggregate=True)
    assert (agg.cut == "random").sum() == len(result.methods)
    rr = agg[(agg.cut == "random") & (agg.method == "ghosted")].iloc[0]
    assert rr.final_margin == pytest.approx(result.random_summary("ghosted")["mean"])
    fig = result.plot()
    assert len(fig.data) >= 3 and "recovery method" in fig.layout.xaxis.title.text
    curves = result.plot_curves()
    assert len(curves.data) >= 3 * (1 + len(result.methods) - 1)
    assert result.plot("accuracy").data
    path = save_result(result, tmp_path, "pc", model="tiny")
    back, head = read_record(path)
    assert head["kind"] == "PhaseCuts"
    assert back.to_dict() == json.loads(json.dumps(result.to_dict()))
    assert back.to_pandas().equals(result.to_pandas())


def test_resume_gives_identical_results(tiny_llama, cut_task, cal, held, tmp_path, monkeypatch):
    kw = dict(methods=["identity", "ghosted"], seeds=[1], placement="adjacent", calibration=cal, heldout=held,
              out=tmp_path, **RUN)
    first = pl.compare_phase_cuts(tiny_llama, cut_task, N, **kw)
    units = sorted((tmp_path / ".phaselens" / "phase_cuts").glob("unit_*.json"))
    assert len(units) == len(first.units) == 6
    units[2].unlink()  # as if the run was killed before this unit
    again = pl.compare_phase_cuts(tiny_llama, cut_task, N, **kw)
    assert again.to_dict() == first.to_dict()

    def boom(*a, **k):
        raise AssertionError("a finished unit was recomputed")

    monkeypatch.setattr(pc, "span_stats", boom)
    monkeypatch.setattr(pc, "decision_trace", boom)
    monkeypatch.setattr(pc, "perplexity", boom)
    assert pl.compare_phase_cuts(tiny_llama, cut_task, N, **kw).to_dict() == first.to_dict()
    with pytest.raises(pl.errors.RunFolderError, match="other arguments"):
        pl.compare_phase_cuts(tiny_llama, cut_task, N, **{**kw, "placement": "far"})


def test_clear_errors(tiny_llama, cut_task, cal, held):
    L = tiny_llama.n_blocks
    ls = pl.transition_point(tiny_llama, cut_task, n_boot=200).layer
    too_many = min(ls, L - ls) + 1  # fits one phase, not the other
    with pytest.raises(pl.errors.PhaseCutsError, match=rf"silent phase is blocks 0-{ls - 1} \({ls} blocks\).*decisive phase"):
        pl.compare_phase_cuts(tiny_llama, cut_task, too_many, calibration=cal, heldout=held, **RUN)
    wrong = pl.load_task([{**it.__dict__, "options": list(it.options), "answer": (it.answer + 1) % it.n_options}
                          for it in cut_task.items])
    with pytest.raises(pl.errors.PhaseCutsError, match="no silent -> decisive transition.*final-layer margin"):
        pl.compare_phase_cuts(tiny_llama, wrong, N, calibration=cal, heldout=held, **RUN)
    with pytest.raises(pl.errors.PhaseCutsError, match="dense model"):
        pl.compare_phase_cuts(pl.prune(tiny_llama, [1]), cut_task, N)
    with pytest.raises(pl.errors.PhaseCutsError, match="unknown recovery"):
        pl.compare_phase_cuts(tiny_llama, cut_task, N, methods=["ghosted", "magic"])
    with pytest.raises(pl.errors.PhaseCutsError, match="n must be"):
        pl.compare_phase_cuts(tiny_llama, cut_task, 0, calibration=cal, heldout=held, **RUN)


def test_old_keyword_names_warn_and_still_work(tiny_llama, cut_task, held):
    """``seed=`` and ``perplexity_texts=`` are deprecated names of ``boot_seed=`` and ``heldout=``."""
    with pytest.warns(FutureWarning, match="`seed` is deprecated, use `boot_seed`"):
        with pytest.raises(pl.errors.PhaseCutsError, match="n must be"):
            pl.compare_phase_cuts(tiny_llama, cut_task, 0, seed=0)
    with pytest.warns(FutureWarning, match="`perplexity_texts` is deprecated, use `heldout`"):
        with pytest.raises(pl.errors.PhaseCutsError, match="n must be"):
            pl.compare_phase_cuts(tiny_llama, cut_task, 0, perplexity_texts=held)
    with pytest.warns(FutureWarning), pytest.raises(pl.errors.PhaseCutsError, match="pass only boot_seed"):
        pl.compare_phase_cuts(tiny_llama, cut_task, N, seed=1, boot_seed=2)


# -- command line (SmolLM2, a few items and passages) ------------------------------------------

runner = CliRunner()


@pytest.fixture(scope="module")
def text_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("texts")
    (d / "cal.txt").write_text("\n\n".join(pl.load_calibration()[:16]))
    (d / "held.txt").write_text("\n\n".join(pl.heldout_texts()[:2]))
    return d / "cal.txt", d / "held.txt"


def test_cli_phase_cuts_json_and_out(smol, text_files, tmp_path):
    from phaselens.cli import app

    cal, held = text_files
    args = ["phase-cuts", "-m", "smollm2-135m", "-t", "capitals", "--limit", "16", "-n", "1", "--methods", "identity,ghosted",
            "--seeds", "1", "--placement", "adjacent", "--calibration", str(cal), "--heldout", str(held), "--out", str(tmp_path)]
    res = runner.invoke(app, args + ["--json"])
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)
    assert d["n"] == 1 and len(d["units"]) == 3 * 2 and d["transition"]["layer"] is not None
    saved = list(tmp_path.glob("phase-cuts_smollm2-135m_capitals_n1.json"))
    assert saved, list(tmp_path.iterdir())
    obj, head = read_record(saved[0])
    assert head["provenance"]["command"] == "phase-cuts" and head["provenance"]["model"] == "smollm2-135m"
    assert json.loads(obj.to_json()) == d
    table = runner.invoke(app, args)  # resumes from --out: the same numbers, as a table
    assert table.exit_code == 0, table.output
    assert "decisive" in table.stdout and "ghosted" in table.stdout
    assert "calibration tokens" in table.output


def test_cli_phase_cuts_errors(smol, text_files):
    from phaselens.cli import app

    cal, held = text_files
    res = runner.invoke(app, ["phase-cuts", "-t", "capitals", "--limit", "16", "-n", "20", "--calibration", str(cal),
                              "--heldout", str(held)])
    assert res.exit_code == 2 and "phase" in res.output and "blocks" in res.output
    res = runner.invoke(app, ["phase-cuts", "-t", "capitals", "-n", "1", "--methods", "ghosted,nope", "--limit", "4"])
    assert res.exit_code == 2 and "unknown recovery" in res.output


def test_cli_prune_and_sweep(smol, text_files, tmp_path):
    from phaselens.cli import app

    cal, held = text_files
    res = runner.invoke(app, ["prune", "-t", "capitals", "--limit", "8", "--blocks", "3,4", "--json"])
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)
    assert d["removed"] == [3, 4] and 3 not in d["pruned"]["trace"]["blocks"] and len(d["dense"]["trace"]["blocks"]) == 30
    res = runner.invoke(app, ["prune", "-t", "capitals", "--limit", "8", "--criterion", "bi", "-n", "2", "--calibration", str(cal)])
    assert res.exit_code == 0, res.output
    assert "cut" in res.stdout and "margin [95% CI]" in res.stdout and "transition" in res.stdout
    assert runner.invoke(app, ["prune", "-t", "capitals", "--limit", "8"]).exit_code == 2
    sweep = ["sweep", "-t", "capitals", "--limit", "8", "--criterion", "bi", "--max-cut", "1", "--calibration", str(cal),
             "--heldout", str(held), "--out", str(tmp_path)]
    res = runner.invoke(app, sweep)
    assert res.exit_code == 0, res.output
    assert "collapse ratio" in res.stdout and "perplexity" in res.stdout and "cut next" in res.stdout
    again = runner.invoke(app, sweep + ["--json"])  # resumes: both steps are read back
    assert again.exit_code == 0, again.output
    assert len(json.loads(again.stdout)["steps"]) == 2


def test_every_result_kind_summarises_tabulates_plots_and_round_trips(result, tiny_llama, cut_task, cal, held, tmp_path):
    """One instance of every registered Result kind: each answers summary(), to_pandas() and plot() itself (the
    report asks the result, never its class name), and save -> load gives the same numbers and summary."""
    import plotly.graph_objects as go

    from phaselens.experiments.collapse import CollapsePoint
    from phaselens.records import KINDS
    from phaselens.results import Result

    tr = pl.transition_point(tiny_llama, cut_task, n_boot=100)
    view = pl.fit_recovery(pl.prune(tiny_llama, [2, 3]), cal[:4], "ghosted", seq_len=SEQ)
    pts = [CollapsePoint("a", "t", "bi", 6, 3, 0.5, 0.9), CollapsePoint("b", "t", "bi", 6, 4, 0.3, 0.8),
           CollapsePoint("c", "t", "bi", 6, 5, 0.2, 0.7)]
    rc = pl.compare_recovery(tiny_llama, cut_task, "2-3", methods=["identity", "ghosted"], calibration=cal[:4],
                             heldout=held[:1], seq_len=SEQ, n_boot=100)
    rc2 = pl.compare_recovery(tiny_llama, cut_task, "1,4", methods=["identity", "ghosted"], calibration=cal[:4],
                              heldout=held[:1], seq_len=SEQ, n_boot=100)
    made = {
        "DecisionTrace": tr.trace, "Transition": tr, "PhaseCuts": result,
        "CKAResult": pl.cka(tiny_llama, pl.prune(tiny_llama, [2]), cut_task, n_samples=16),
        "CKAContrast": pl.cka_contrast(tiny_llama, pl.prune(tiny_llama, [2]), cut_task, n_tokens=16, groups=5),
        "NoiseResult": pl.inject_noise(tiny_llama, cut_task, [1, 4], 0.5, seeds=2, n_boot=100, transition=tr),
        "AblationResult": pl.ablate(tiny_llama, cut_task, [1, 4], pairs=False, n_boot=100, transition=tr),
        "Sweep": pl.iterative_prune(tiny_llama, cut_task, steps=1, calibration=cal[:2], perplexity_texts=held[:1],
                                    n_boot=100),
        "BoundaryErrorResult": pl.boundary_error(view, held[:1], seq_len=SEQ),
        "CollapseStudy": pl.transition_vs_collapse(pts),
        "RecoveryComparison": rc,
        "RecoveryGrid": pl.recovery_grid([rc, rc2], n_boot=100),
        "Effect": pl.paired_effect(np.arange(8.0), np.zeros(8), name="x", n_boot=100),
        "Claims": pl.claims([("paper", "x > 0", pl.paired_effect(np.arange(8.0), np.zeros(8), name="x", n_boot=100), "+")]),
        "LensHeatmap": pl.lens_heatmap(tiny_llama, "The capital of France is", lens="logit"),
        "Healing": pl.Healing(method="full", steps=3, lr=1e-4, batch_size=2, seq_len=SEQ, seed=0,
                              losses=[2.5, 2.25, 2.0], n_sequences=4, n_target_tokens=40, trainable=1000),
    }
    kinds = {name for name, cls in KINDS.items()  # phaselens' own kinds (other tests register subclasses of their own)
             if issubclass(cls, Result) and cls is not Result and cls.__module__.startswith("phaselens.")}
    assert kinds == set(made), kinds ^ set(made)
    for name, r in made.items():
        assert type(r).__name__ == name
        assert isinstance(r.summary(), str) and r.summary()
        df = r.to_pandas()
        assert len(df) > 0 and len(df.columns) > 0, name
        assert isinstance(r.plot(), go.Figure), name
        pl.save_result(r, tmp_path, name)
        back = pl.load_result(tmp_path / f"{name}.json")
        assert type(back) is type(r) and back.to_json() == r.to_json() and back.summary() == r.summary(), name


# -- several placements per phase and the effects (issue 21) --------------------------------------

def _lstar(curve: np.ndarray) -> float:
    """The transition by hand: one past the last non-positive mean margin, NaN when the last is not positive."""
    if not curve[-1] > 0:
        return np.nan
    bad = [j for j, v in enumerate(curve) if not v > 0]
    return float(bad[-1] + 1) if bad else 0.0


@pytest.fixture(scope="module")
def spread(tiny_llama, cut_task, cal, held) -> pl.PhaseCuts:
    """n = 1, placement="spread" (the default): 2-3 placements per phase."""
    return pl.compare_phase_cuts(tiny_llama, cut_task, 1, methods=["identity", "ghosted"], seeds=1, calibration=cal,
                                 heldout=held, **RUN)


def test_spread_cuts_every_distinct_placement_and_says_where_a_phase_is_short(spread, tiny_llama):
    ls, L = spread.transition.layer, tiny_llama.n_blocks
    assert spread.placement == "spread"
    starts = {"silent": {"adjacent": ls - 1, "far": 0, "center": (ls - 1) // 2},
              "decisive": {"adjacent": ls, "far": L - 1, "center": ls + (L - ls - 1) // 2}}
    for kind in ("silent", "decisive"):
        want = {}
        for p in ("adjacent", "far", "center"):  # a placement that coincides with an earlier one is cut once
            if starts[kind][p] not in want.values():
                want[p] = starts[kind][p]
        cuts = [c for c in spread.cuts if c.kind == kind]
        assert [spread.placement_of(c) for c in cuts] == [p for p in ("adjacent", "center", "far") if p in want]
        assert {spread.placement_of(c): c.start for c in cuts} == want
        assert cuts[0].start == starts[kind]["adjacent"] and spread.cut(kind) == cuts[0]  # the default: adjacent
        for p, s in want.items():
            assert spread.unit(kind, "ghosted", placement=p).blocks == [s]
        short = len(want) < 3
        assert any(f"the {kind} phase" in n for n in spread.placement_notes) == short
    assert len(spread.units) == 2 * len(spread.cuts)
    df = spread.to_pandas()
    assert set(df.placement.dropna()) <= {"adjacent", "center", "far"}
    assert len(df[(df.cut == "decisive") & (df.method == "identity")]) == len(spread.placements("decisive"))
    if spread.placement_notes:
        assert "Placements:" in spread.summary()
    assert spread.plot() and spread.plot_effects().data and len(spread.figures()) == 2
    curves = spread.plot_curves(methods=["identity"], seeds=[])  # one panel per phase cut, each its own unit's curve
    phase = [c for c in spread.cuts if c.kind != "random"]
    assert len(curves.data) == 2 * len(phase)
    for j, c in enumerate(phase):
        u = spread.unit(c.kind, "identity", placement=spread.placement_of(c))
        np.testing.assert_allclose(curves.data[2 * j + 1].y, u.margins)


def test_spread_units_equal_plain_prunes_at_every_placement(spread, tiny_llama, cut_task):
    for c in spread.cuts:
        if c.kind == "random":
            continue
        u = spread.unit(c.kind, "identity", placement=spread.placement_of(c))
        tr = pl.decision_trace(pl.prune(tiny_llama, c.blocks), cut_task, n_boot=RUN["n_boot"])
        np.testing.assert_allclose(u.item_margins, tr.item_margins[:, -1], rtol=0, atol=1e-5)


def _arrays(pc, method):
    """``{kind: {placement: item margins [N]}}`` from the units."""
    return {k: {pc.placement_of(u): u.item_margins for u in pc.units if u.cut == k and u.method == method}
            for k in ("silent", "decisive")}


def test_effect_estimates_equal_numpy_on_the_per_placement_arrays(spread):
    plain, main_g, inter = spread.effects()
    P, G = _arrays(spread, "identity"), _arrays(spread, "ghosted")
    common = [p for p in ("adjacent", "center", "far") if p in P["silent"] and p in P["decisive"]]
    assert len(common) >= 2 and inter.n == {"items": spread.n_items, "placements": len(common)}
    assert inter.fixed == ["placements"] and inter.resampled == ["items"]
    dense = spread.transition.trace.item_margins[:, -1]
    want_plain = np.mean([(dense - P["silent"][p]).mean() - (dense - P["decisive"][p]).mean() for p in common])
    assert plain.estimate == pytest.approx(want_plain, abs=1e-9)
    want_g = np.mean([(dense - G["silent"][p]).mean() - (dense - G["decisive"][p]).mean() for p in common])
    assert main_g.estimate == pytest.approx(want_g, abs=1e-9)
    per = {p: (G["decisive"][p] - P["decisive"][p]).mean() - (G["silent"][p] - P["silent"][p]).mean() for p in common}
    assert inter.estimate == pytest.approx(np.mean(list(per.values())), abs=1e-9)
    assert [c.name.rsplit("placement ", 1)[1].rstrip("]") for c in inter.clusters] == common
    for c in inter.clusters:
        assert c.estimate == pytest.approx(per[c.name.rsplit("placement ", 1)[1].rstrip("]")], abs=1e-9)
    assert inter.predicted == "positive" and "l* re-estimated" in inter.method
    acc = spread.effects(metric="accuracy")[0]  # the accuracy drop, from item_correct
    C = {k: {spread.placement_of(u): u.item_correct for u in spread.units if u.cut == k and u.method == "identity"}
         for k in ("silent", "decisive")}
    assert acc.estimate == pytest.approx(np.mean([C["decisive"][p].mean() - C["silent"][p].mean() for p in common]))


def test_interaction_interval_equals_a_hand_written_bootstrap_that_re_estimates_l_star(spread):
    """Items resampled with numpy's indices; in each replicate l* from the replicate's mean dense curve, each cut
    labelled silent/decisive by it, the interaction of the labelled cuts; NaN where undefined."""
    inter = spread.effects()[2]
    P, G = _arrays(spread, "identity"), _arrays(spread, "ghosted")
    common = [p for p in ("adjacent", "center", "far") if p in P["silent"] and p in P["decisive"]]
    D = spread.transition.trace.item_margins  # [N, L]
    cols = [(k, p) for k in ("silent", "decisive") for p in common]
    start = {(k, p): spread.unit(k, "identity", placement=p).blocks[0] for k, p in cols}
    gain = np.stack([G[k][p] - P[k][p] for k, p in cols], 1)  # [N, C]
    N, B = D.shape[0], spread.n_boot
    idx = np.random.default_rng(spread.seed).integers(0, N, size=(B, N))
    reps, no_tr = np.full(B, np.nan), 0
    for b in range(B):
        ls = _lstar(D[idx[b]].mean(0))
        if np.isnan(ls):
            no_tr += 1
            continue
        g = gain[idx[b]].mean(0)
        sil = [g[j] for j, c in enumerate(cols) if start[c] + spread.n <= ls]
        dec = [g[j] for j, c in enumerate(cols) if start[c] >= ls]
        if sil and dec:
            reps[b] = np.mean(dec) - np.mean(sil)
    np.testing.assert_allclose(inter.replicates, reps, rtol=0, atol=1e-9, equal_nan=True)
    ok = reps[np.isfinite(reps)]
    assert (inter.lo, inter.hi) == pytest.approx(tuple(np.quantile(ok, [0.025, 0.975])), abs=1e-12)
    assert inter.undefined == pytest.approx(1 - ok.size / B)
    assert f"no transition in {no_tr / B:.1%}" in inter.method


def test_phase_statistic_matches_scipy_bootstrap_when_the_transition_is_clear():
    """Synthetic items x blocks with a clear transition (l* never moves): the percentile interval of the silent −
    decisive drop equals scipy.stats.bootstrap's (paired, percentile) up to Monte-Carlo error."""
    from scipy import stats as sps

    from phaselens.experiments.phase_cut_effects import phase_statistic

    rng = np.random.default_rng(1)
    N, L = 60, 8
    dense = np.concatenate([np.full((N, 3), -2.0), np.full((N, 5), 3.0)], 1) + rng.normal(0, 0.3, (N, L))
    starts = [0, 2, 3, 7]  # silent far/adjacent, decisive adjacent/far (n = 1, l* = 3)
    cuts = rng.normal([-1.0, -0.4, 0.5, 1.2], 1.0, size=(N, 4))
    final = dense[:, -1]
    stat = phase_statistic(starts, 1, lambda m: m["final"][:, None] - m["cuts"], +1)
    e = pl.hierarchical_effect({"dense": dense, "final": final, "cuts": cuts}, name="drop", statistic=stat,
                               dims=("items",), require=(), n_boot=4000, boot_seed=2)
    assert e.undefined == 0
    diff = cuts[:, 2:].mean(1) - cuts[:, :2].mean(1)  # silent drop − decisive drop, per item
    assert e.estimate == pytest.approx(diff.mean(), abs=1e-12)
    ref = sps.bootstrap((diff,), np.mean, n_resamples=4000, method="percentile", random_state=3).confidence_interval
    se = diff.std(ddof=1) / np.sqrt(N)
    assert e.lo == pytest.approx(ref.low, abs=0.1 * se) and e.hi == pytest.approx(ref.high, abs=0.1 * se)


@pytest.mark.bad_input
def test_one_placement_per_phase_is_refused_naming_the_arm(result):
    """The hierarchy asks for placements: one cut per phase (placement="adjacent") is an EffectError naming the arm."""
    with pytest.raises(pl.errors.EffectError, match=r"arm 'silent'.*1 placement.*at least 2.*placement='spread'"):
        result.effects()
    with pytest.raises(pl.errors.EffectError, match="placement"):
        result.plot_effects()
    assert len(result.figures()) == 1  # the report shows no effects rather than failing
    assert any("effects need at least 2" in n for n in result.placement_notes)


@pytest.mark.bad_input
def test_hierarchical_effect_with_one_placement_names_the_arm():
    """The same refusal from the generic constructor: arms [items, placements, seeds] with one placement."""
    rng = np.random.default_rng(0)
    arms = {"silent": rng.normal(size=(8, 1, 3)), "decisive": rng.normal(size=(8, 1, 3))}
    with pytest.raises(pl.errors.EffectError, match=r"asks for placements but arm\(s\) 'silent'.* hold 1"):
        pl.hierarchical_effect(arms, name="drop")


@pytest.mark.bad_input
def test_effects_need_plain_pruning_and_a_fitted_method(spread):
    with pytest.raises(pl.errors.EffectError, match="'magic'"):
        spread.effects("magic")
    with pytest.raises(pl.errors.EffectError, match="metric"):
        spread.effects(metric="loss")


# -- the recovery comparison ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def recov(tiny_llama, cut_task, cal) -> pl.RecoveryComparison:
    return pl.compare_recovery(tiny_llama, cut_task, "2-3", methods=["identity", "ghosted", "diagonal"], calibration=cal,
                               heldout=pl.heldout_texts()[:6], seq_len=SEQ, n_boot=400, boot_seed=1)


def test_passage_nll_equals_plain_transformers(tiny_llama):
    from phaselens.calibration import tokenize

    texts = pl.heldout_texts()[:3]
    nll, tok = pl.passage_nll(tiny_llama, texts, seq_len=SEQ, batch_size=2)
    for p, ids in enumerate(tokenize(tiny_llama.tokenizer, texts, SEQ)):
        x = torch.tensor([ids])
        with torch.no_grad():
            logits = tiny_llama.hf(input_ids=x).logits[0, :-1].double()
        want = torch.nn.functional.cross_entropy(logits, x[0, 1:], reduction="sum").item()
        assert tok[p] == len(ids) - 1 and nll[p] == pytest.approx(want, rel=1e-5)
    assert np.exp(nll.sum() / tok.sum()) == pytest.approx(pl.perplexity(tiny_llama, texts, seq_len=SEQ), rel=1e-6)


def test_recovery_comparison_numbers_and_effects_against_numpy(recov, tiny_llama, cut_task, cal):
    held = pl.heldout_texts()[:6]
    assert recov.blocks == [2, 3] and recov.n_passages == 6
    assert recov.perplexity("identity") == pytest.approx(pl.perplexity(pl.prune(tiny_llama, [2, 3]), held, seq_len=SEQ),
                                                         rel=1e-6)
    tr = pl.decision_trace(pl.prune(tiny_llama, [2, 3]), cut_task, n_boot=100)
    assert recov.accuracy("identity") == pytest.approx(tr.accuracy[-1])
    # every method's per-item margins and correctness are a full trace's last column of the same fitted view (to
    # float32 rounding: one readout and a stack of readouts may round differently)
    fitted = pl.fit_recovery(pl.prune(tiny_llama, [2, 3]), cal, recov.methods, seq_len=SEQ)
    for k, m in enumerate(recov.methods):
        full = pl.decision_trace(fitted[m], cut_task, n_boot=100)
        np.testing.assert_allclose(recov.tasks[0].margins[k], full.item_margins[:, -1], rtol=0, atol=1e-5)
        np.testing.assert_array_equal(recov.tasks[0].correct[k], full.correct[:, -1])
    dense = pl.decision_trace(tiny_llama, cut_task, n_boot=100)
    np.testing.assert_allclose(recov.tasks[0].dense_margins, dense.item_margins[:, -1], rtol=0, atol=1e-5)
    effs = recov.effects()
    assert [e.name for e in effs] == ["identity − ghosted perplexity", "ghosted − identity accuracy",
                                      "diagonal − ghosted perplexity", "ghosted − diagonal accuracy"]
    k, g = recov.methods.index("diagonal"), recov.methods.index("ghosted")
    nm, ng, tok = recov.nll[k], recov.nll[g], recov.tokens.astype(float)
    ppl = effs[2]
    assert ppl.n == {"passages": 6} and ppl.predicted == "positive"
    assert ppl.estimate == pytest.approx(np.exp(nm.sum() / tok.sum()) - np.exp(ng.sum() / tok.sum()), rel=1e-12)
    idx = np.random.default_rng(1).integers(0, 6, size=(400, 6))  # passages resampled: NLL and tokens together
    hand = np.exp(nm[idx].sum(1) / tok[idx].sum(1)) - np.exp(ng[idx].sum(1) / tok[idx].sum(1))
    np.testing.assert_allclose(ppl.replicates, hand, rtol=1e-10)
    assert (ppl.lo, ppl.hi) == pytest.approx(tuple(np.quantile(hand, [0.025, 0.975])), rel=1e-10)
    t = recov.tasks[0]
    acc = effs[3]
    diff = t.correct[g] - t.correct[k]
    assert acc.estimate == pytest.approx(diff.mean()) and acc.n == {"items": len(cut_task)}
    hand = diff[np.random.default_rng(1).integers(0, len(diff), size=(400, len(diff)))].mean(1)
    assert (acc.lo, acc.hi) == pytest.approx(tuple(np.quantile(hand, [0.025, 0.975])), abs=1e-12)
    df = recov.to_pandas()
    assert set(df.method) == {"dense", "identity", "ghosted", "diagonal"} and recov.summary() and recov.plot().data


@pytest.mark.bad_input
def test_recovery_comparison_bad_input(tiny_llama, cut_task, recov, count_forwards):
    with count_forwards(tiny_llama) as fw:
        with pytest.raises(pl.errors.RecoveryError, match="exactly one of blocks= .* and n="):
            pl.compare_recovery(tiny_llama, cut_task, "2-3", n=2)
        with pytest.raises(pl.errors.RecoveryError, match="outside 0..5"):
            pl.compare_recovery(tiny_llama, cut_task, "4-9")
    assert fw.n == 0
    with pytest.raises(pl.errors.EffectError, match="reference arm 'linearpatch'"):
        recov.effects("linearpatch")
    few = pl.RecoveryComparison(**{**{f: getattr(recov, f) for f in recov.__dataclass_fields__},
                                   "nll": recov.nll[:, :3], "tokens": recov.tokens[:3], "dense_nll": recov.dense_nll[:3]})
    with pytest.raises(pl.errors.EffectError, match="holds 3 items; an effect needs at least 5"):
        few.effects()
