"""analyses/runs/claims.py: the at-size runs' claims from whatever jobs are finished, in the files every analysis
script writes, so analyses/make_claims.py picks them up. Tested on tiny studies built here (a tiny random model):
each claim's estimate is recomputed with numpy from the saved arrays, the three-way bookkeeping of a cut measured
on two tasks gives one perplexity claim, and a run with no finished job is listed as not judged."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import phaselens as pl

pytestmark = pytest.mark.timeout(300)
ROOT = Path(__file__).resolve().parents[1]


def _module(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def runs(tiny_llama_dir, tmp_path_factory):
    """``(specs, runs, out)``: run 3 (recovery, two tasks) and run 5 (a short BI sweep) finished; run 1 never run."""
    root = tmp_path_factory.mktemp("runs")
    specs, runs = root / "specs", root / "runs"
    specs.mkdir()
    tasks = '[{ name = "capitals", limit = 6, seed = 0 }, { name = "languages", limit = 6, seed = 0 }]'
    (specs / "run1_tiny_dense.toml").write_text(
        f'models = ["{tiny_llama_dir}"]\ntasks = {tasks}\n[[runs]]\nkind = "trace"\nn_boot = 100\n')
    (specs / "run3_tiny_ghosted.toml").write_text(
        f'models = ["{tiny_llama_dir}"]\ntasks = {tasks}\n[[runs]]\nkind = "recovery"\nprune = 0.34\n'
        'methods = ["identity", "ghosted", "diagonal"]\ncalibration_passages = 8\nheldout = 6\nseq_len = 64\n'
        'n_boot = 400\n')
    (specs / "run5_tiny_bi.toml").write_text(
        f'models = ["{tiny_llama_dir}"]\ntasks = [{{ name = "capitals", limit = 6, seed = 0 }}]\n[[runs]]\n'
        'kind = "sweep"\ncriterion = "bi"\nsteps = 2\ncalibration_passages = 1\nheldout = 1\nn_boot = 100\n')
    for name in ("run3_tiny_ghosted", "run5_tiny_bi"):
        df = pl.run_study(specs / f"{name}.toml", out=runs / name)
        assert (df.status == "done").all(), df.error.tolist()
    out = root / "results" / "runs"
    _module(ROOT / "analyses" / "runs" / "claims.py", "runs_claims").main(
        ["--runs", str(runs), "--specs", str(specs), "--out", str(out)])
    return specs, runs, out


def test_recovery_claims_are_the_saved_arrays_contrasts(runs):
    _, folder, out = runs
    doc = json.loads((out / "verdicts.json").read_text())
    table = pl.load_result(out / "claims.json")
    assert len(table.claims) == len(doc["claims"])
    res = pl.load_results(folder / "run3_tiny_ghosted")
    rcs = {r.tasks[0].task: r for r in res.values()}
    assert sorted(rcs) == ["capitals", "languages"]
    acc = [c for c in table.claims if "task accuracy" in c.claim]
    ppl = [c for c in table.claims if "perplexity" in c.claim]
    assert len(acc) == 2 * 2 and len(ppl) == 2  # 2 rivals x 2 tasks; perplexity once per cut (the same text)
    for c in acc:
        r = rcs[c.effect.task]
        rival = c.claim.rsplit(" ", 1)[-1]
        t = r.tasks[0]
        want = t.correct[r.methods.index("ghosted")].mean() - t.correct[r.methods.index(rival)].mean()
        assert c.effect.estimate == pytest.approx(want) and c.paper.startswith("Ghosted Layers (arXiv 2605.15491)")
    r = rcs["capitals"]
    for c in ppl:
        rival = c.claim.rsplit(" ", 1)[-1]
        p = {m: np.exp(r.nll[k].sum() / r.tokens.sum()) for k, m in enumerate(r.methods)}
        assert c.effect.estimate == pytest.approx(p[rival] - p["ghosted"], rel=1e-9)
    assert np.array_equal(rcs["capitals"].nll, rcs["languages"].nll)  # why one perplexity claim per cut is right
    for row in doc["claims"]:
        assert row["verdict"] in ("agree", "disagree", "undetermined") and row["evidence"].startswith("run 3:")
    assert {s["folder"]: (s["done"], s["planned"]) for s in doc["provenance"]["runs"]} == {
        "run1_tiny_dense": (0, 2), "run3_tiny_ghosted": (2, 2), "run5_tiny_bi": (1, 1)}


def test_unfinished_runs_and_too_few_pairs_are_listed_as_not_judged(runs):
    specs, folder, out = runs
    doc = json.loads((out / "verdicts.json").read_text())
    reasons = [u["reason"] for u in doc["untested"]]
    assert "run 1 not finished: 0 of 2 jobs done in runs/run1_tiny_dense/" in reasons
    assert not any("run 3 not finished" in r or "run 5 not finished" in r for r in reasons)
    fig8 = [u for u in doc["untested"] if "Figure 8" in u["claim"]]
    assert len(fig8) == 1 and "bi selection" in fig8[0]["claim"]  # one pair: no correlation to judge
    assert any(n.startswith("- run 5: sweep bi") for n in doc["notes"])


def test_the_above_chance_filter_is_accuracy_minus_one_over_k(runs):
    _, folder, _ = runs
    mod = _module(ROOT / "analyses" / "runs" / "claims.py", "runs_claims2")
    (sw,) = pl.load_results(folder / "run5_tiny_bi").values()
    e = mod.above_chance(sw)
    tr = sw.steps[0].trace
    k = np.asarray(tr.mask, dtype=bool).sum(1)
    assert e.estimate == pytest.approx(np.mean(np.asarray(tr.correct[:, -1], float)) - np.mean(1.0 / k))
    assert e.estimate == pytest.approx(sw.dense_accuracy - sw.chance)
    text = mod.collapse_text(sw)
    if sw.collapse_ratio is None:
        assert text == "no collapse"
    else:
        (c,) = sw.effects()
        assert text.startswith(f"collapse ratio {sw.collapse_ratio:.3f} [{c.lo:.3f}, {c.hi:.3f}]")


def test_make_claims_picks_the_runs_claims_up(runs, tmp_path):
    specs, folder, out = runs
    mc = _module(ROOT / "analyses" / "make_claims.py", "make_claims_for_runs")
    claims, sources, figures, provs, untested = mc.collect(out.parent)
    table = pl.load_result(out / "claims.json")
    assert len(claims) == len(table.claims) and set(sources) == {str(out / "claims.json")}
    # each claim links its job's section of the runs' report, and that section is on the page
    page = (out / "report.html").read_text()
    for f in figures:
        path, _, anchor = f.partition("#")
        assert path == str(out / "report.html") and f"id='{anchor}'" in page, f
    assert {c.paper for c in claims} == {"Ghosted Layers (arXiv 2605.15491)"}
    assert any("run 1 not finished" in u["reason"] for u in untested)
    assert provs[0]["script"] == "analyses/runs/claims.py"
    mc.main(["--results", str(out.parent), "--csv", str(tmp_path / "c.csv"), "--readme", str(tmp_path / "R.md"),
             "--runs", "none"])
    assert "run 1 not finished" in (tmp_path / "R.md").read_text()
    # one command: the runs' claims judged again from the study folders first, then the table
    results = tmp_path / "results"
    mc.main(["--results", str(results), "--csv", str(tmp_path / "c2.csv"), "--readme", str(tmp_path / "R2.md"),
             "--runs", str(folder), "--run-specs", str(specs)])
    assert json.loads((results / "runs" / "verdicts.json").read_text())["claims"] == \
        json.loads((out / "verdicts.json").read_text())["claims"]
    one, two = (pd.read_csv(tmp_path / f).drop(columns=["source", "figure"]) for f in ("c.csv", "c2.csv"))
    pd.testing.assert_frame_equal(one, two)


WORDS = "red blue green cat dog house river stone light music paper glass water fire earth wind north south east west".split()


@pytest.fixture(scope="module")
def run2(tiny_llama, tiny_llama_dir, tmp_path_factory):
    """Run 2's kinds (phase cuts, noise, ablation) on a task whose answers are the tiny model's own final choices,
    so it has a transition (a file task, as a TOML spec names it)."""
    root = tmp_path_factory.mktemp("run2")
    rng = np.random.default_rng(0)
    items = [{"question": " ".join(rng.choice(WORDS, 5)), "options": list(rng.choice(WORDS, 4, replace=False)),
              "answer": 0, "id": f"q{i}"} for i in range(40)]
    pred = pl.decision_trace(tiny_llama, pl.load_task(items)).predictions[:, -1]
    path = root / "own.jsonl"
    path.write_text("".join(json.dumps({**it, "answer": int(p)}) + "\n" for it, p in zip(items, pred)))
    tr = pl.transition_point(tiny_llama, pl.load_task(str(path)), n_boot=200)
    assert tr.layer is not None and 1 <= tr.layer <= tiny_llama.n_blocks - 1, tr.summary()  # the test's precondition
    specs, runs = root / "specs", root / "runs"
    specs.mkdir()
    (specs / "run2_tiny_arc.toml").write_text(
        f'models = ["{tiny_llama_dir}"]\ntasks = [{{ name = "{path}" }}]\n'
        '[[runs]]\nkind = "phase-cuts"\nn = 1\nfit_n = true\nmethods = ["identity", "ghosted"]\nseeds = 1\n'
        'calibration_passages = 8\nheldout = 2\nseq_len = 64\nn_boot = 400\n'
        '[[runs]]\nkind = "noise"\neps = [0.5, 1.0]\nseeds = 1\nn_boot = 400\n'
        '[[runs]]\nkind = "ablate"\npairs = false\nn_boot = 400\n'
        '[[runs]]\nkind = "cka-contrast"\nprune = 2\ncriterion = "random"\nn_tokens = 40\ngroups = 5\n')
    df = pl.run_study(specs / "run2_tiny_arc.toml", out=runs / "run2_tiny_arc")
    assert (df.status == "done").all(), df.error.tolist()
    out = root / "out"
    _module(ROOT / "analyses" / "runs" / "claims.py", "runs_claims3").main(
        ["--runs", str(runs), "--specs", str(specs), "--out", str(out)])
    res = {r.kind: pl.load_result(runs / "run2_tiny_arc" / f"{r.result}.json") for r in df.itertuples()}
    return res, pl.load_result(out / "claims.json"), json.loads((out / "verdicts.json").read_text())


def test_run2_kinds_give_their_results_own_effects_as_claims(run2):
    res, table, doc = run2
    by_text = {}
    for c in table.claims:
        by_text.setdefault(c.claim, []).append(c.effect)
    # ablation: at the transition against the rest of each phase, the estimate by hand from the saved margins
    ab = res["ablate"]
    drops = (ab.clean_margins[None] - ab.single_margins).mean(1)  # [S] mean drop per ablated block
    blocks, t = np.asarray(ab.singles), ab.transition
    at = drops[(blocks == t - 1) | (blocks == t)].mean()
    for rest, mask in (("rest of the silent phase (< l*-1)", blocks < t - 1),
                       ("rest of the decisive phase (> l*)", blocks > t)):
        text = f"ablating the blocks at the transition (l*-1, l*) hurts the decision more than the {rest}"
        if mask.any():
            (e,) = by_text[text]
            assert e.estimate == pytest.approx(at - drops[mask].mean())
        else:
            assert text not in by_text
    # noise: one silent − decisive claim per eps, equal to the result's own effect
    nz = res["noise"]
    effs = {e.name: e for e in nz.effects()}
    for eps in (0.5, 1):
        text = f"noise (eps={eps:g}) in the silent phase hurts the decision more than in the decisive phase"
        (e,) = by_text[text]
        assert e.estimate == effs[f"silent − decisive margin drop (noise eps={eps:g})"].estimate
        drop = nz.clean_margins[None] - nz.item_margins[:, nz.eps.index(eps)].mean(1)  # [B, N] over seeds
        b = np.asarray(nz.blocks)
        want = drop[b < nz.transition].mean() - drop[b >= nz.transition].mean()
        assert e.estimate == pytest.approx(want)
    # phase cuts: the plain-pruning contrast goes to the decision-transition paper, recovery's to the joint hypothesis
    pc_claims = [c for c in table.claims if "phase" in c.claim and "noise" not in c.claim and "ablating" not in c.claim]
    assert pc_claims and {c.paper for c in pc_claims} <= {"decision-transition (arXiv 2605.07271)",
                                                          "joint hypothesis (phaselens)"}
    pc = res["phase-cuts"].effects(["ghosted"])
    assert sorted(c.effect.estimate for c in pc_claims) == sorted(e.estimate for e in pc)
    assert any(c.claim.startswith("pruning the silent phase") for c in pc_claims)
    assert any("interaction" in c.claim for c in pc_claims)
    # CKA on the same items: hidden-state minus decision-token CKA over the blocks after the first cut, predicted > 0
    ck = res["cka-contrast"]
    (c,) = [c for c in table.claims if "decision-token representations diverge" in c.claim]
    assert c.paper == "decision-transition (arXiv 2605.07271), Figs. 2, 10, 11" and c.effect.predicted == "positive"
    assert c.effect.estimate == pytest.approx(float(np.mean(ck.hidden - ck.decision)))
    assert c.effect.ci_method == "jackknife" and c.effect.n == {"items": ck.n_items, "tokens": ck.n_tokens}
    (c,) = [c for c in table.claims if "than that of the template token" in c.claim]
    assert c.paper == "joint hypothesis (phaselens)" and c.effect.estimate == pytest.approx(float(np.mean(ck.control - ck.decision)))
    assert len(doc["claims"]) == len(table.claims) and not [u for u in doc["untested"] if "not finished" in u["reason"]]


def test_the_report_holds_every_finished_job_and_the_claims(runs):
    """``report.html``: one section per finished job of every run (counted from the study indexes) and the claims
    table; the unrun run 1 has none."""
    _, folder, out = runs
    page = (out / "report.html").read_text()
    jobs = [r.result for name in ("run3_tiny_ghosted", "run5_tiny_bi")
            for r in pl.load_study(folder / name).itertuples() if r.status == "done"]
    assert len(jobs) == 3
    for n, job in [(3, j) for j in jobs[:2]] + [(5, jobs[2])]:
        assert f">run {n} {job} (" in page, job
    assert page.count("<h2 id='r-run-") == len(jobs) and "run 1 " not in page.split("<h2")[-1]
    assert "id='r-claims" in page and "data-status" in page


def test_the_grid_run_pools_its_cuts_into_a_family_of_its_own(tiny_llama_dir, tmp_path):
    """Run 6's recovery jobs are grid cells: one claim per (rival, measure) pooled over the model's distinct cuts
    (the estimate by hand from the saved arrays), in the family "<paper>, grid" (make_claims keeps it apart from
    the headline family), and the grid's table in the paper's layout beside the claims."""
    specs, runs = tmp_path / "specs", tmp_path / "runs"
    specs.mkdir()
    (specs / "run6_tiny_grid.toml").write_text(
        f'models = ["{tiny_llama_dir}"]\ntasks = [{{ name = "capitals", limit = 6, seed = 0 }}]\n[[runs]]\n'
        'kind = "recovery"\nprune = [1, 2, 3]\ncriterion = ["bi", "angular"]\nmethods = ["identity", "ghosted"]\n'
        'calibration_passages = 8\nheldout = 6\nseq_len = 64\nn_boot = 200\n')
    df = pl.run_study(specs / "run6_tiny_grid.toml", out=runs / "run6_tiny_grid")
    assert (df.status == "done").all() and len(df) == 6, df.error.tolist()
    out = tmp_path / "results" / "runs"
    mod = _module(ROOT / "analyses" / "runs" / "claims.py", "runs_claims_grid")
    mod.main(["--runs", str(runs), "--specs", str(specs), "--out", str(out)])
    table = pl.load_result(out / "claims.json")
    assert {c.paper for c in table.claims} == {mod.GL_GRID}
    rcs = list(pl.load_results(runs / "run6_tiny_grid").values())
    cuts = {tuple(r.blocks): r for r in reversed(rcs)}  # one per distinct cut
    ppl = [c for c in table.claims if "perplexity" in c.claim]
    acc = [c for c in table.claims if "accuracy" in c.claim]
    assert len(ppl) == 1 and len(acc) == 1
    g = sum(r.nll[r.methods.index("ghosted")].sum() for r in cuts.values())
    i = sum(r.nll[r.methods.index("identity")].sum() for r in cuts.values())
    tok = sum(r.tokens.sum() for r in cuts.values())
    assert ppl[0].effect.estimate == pytest.approx((i - g) / tok, rel=1e-9)
    assert ppl[0].effect.n["placements"] == len(cuts)
    want = np.mean([r.tasks[0].correct[r.methods.index("ghosted")].mean()
                    - r.tasks[0].correct[r.methods.index("identity")].mean() for r in cuts.values()])
    assert acc[0].effect.estimate == pytest.approx(want)
    grid = pd.read_csv(out / "ghosted_grid.csv")
    assert len(grid) == 3 * len(cuts) and set(grid.method) == {"dense", "identity", "ghosted"}
    (fig,) = {row["figure"] for row in json.loads((out / "verdicts.json").read_text())["claims"]}
    assert fig.startswith("report.html#") and f"id='{fig.split('#')[1]}'" in (out / "report.html").read_text()
    mc = _module(ROOT / "analyses" / "make_claims.py", "make_claims_grid")
    claims, *_ = mc.collect(out.parent)
    assert {c.paper for c in claims} == {"Ghosted Layers (arXiv 2605.15491), grid"}
    assert mc.family("Ghosted Layers (arXiv 2605.15491), main comparison", "x") == \
        ("Ghosted Layers (arXiv 2605.15491)", "x (main comparison)")


def test_an_unfinished_grid_run_is_tabled_but_not_judged(tiny_llama_dir, tmp_path):
    """A grid run with jobs still to do gives its cells (ghosted_grid.csv, the report) but no grid claim: the grid
    pools all its cuts, and the cuts done first are not that design. The run is listed as not finished."""
    specs, runs = tmp_path / "specs", tmp_path / "runs"
    specs.mkdir()
    spec = specs / "run6_tiny_grid.toml"
    text = (f'models = ["{tiny_llama_dir}"]\ntasks = [{{ name = "capitals", limit = 6, seed = 0 }}]\n[[runs]]\n'
            'kind = "recovery"\nprune = PRUNE\ncriterion = "bi"\nmethods = ["identity", "ghosted"]\n'
            'calibration_passages = 8\nheldout = 6\nseq_len = 64\nn_boot = 200\n')
    spec.write_text(text.replace("PRUNE", "[1, 2]"))
    assert (pl.run_study(spec, out=runs / "run6_tiny_grid").status == "done").all()
    spec.write_text(text.replace("PRUNE", "[1, 2, 3]"))  # a third cut still to run
    out = tmp_path / "results" / "runs"
    mod = _module(ROOT / "analyses" / "runs" / "claims.py", "runs_claims_open_grid")
    mod.main(["--runs", str(runs), "--specs", str(specs), "--out", str(out)])
    doc = json.loads((out / "verdicts.json").read_text())
    assert not (out / "claims.json").exists() and not [r for r in doc["claims"] if r.get("paper") == mod.GL_GRID]
    assert [r["reason"] for r in doc["untested"]] == ["run 6 not finished: 2 of 3 jobs done in runs/run6_tiny_grid/"]
    grid = pd.read_csv(out / "ghosted_grid.csv")
    assert len(grid) == 3 * 2  # dense, identity and ghosted rows of the two cuts done
    assert "judged when the run is done" in (out / "summary.md").read_text()


def test_within_family_notes_compare_sizes_on_the_same_task():
    """Two sizes of one family traced on one task give one note (transition block and depth, accuracy, final margin,
    collapse ratio where a sweep ran, larger model first); a task traced for one size only, or another family's
    single model, gives none."""
    from types import SimpleNamespace

    from phaselens.trace import DecisionTrace

    mod = _module(ROOT / "analyses" / "runs" / "claims.py", "runs_claims_family")
    rng = np.random.default_rng(0)

    def transition(model, task, L, climb=True):
        N, K = 40, 4
        logits = rng.normal(0, 1, (L, N, K))
        logits[:, :, 0] += np.linspace(-6, 6, L)[:, None] if climb else -6
        return DecisionTrace(model, task, "letters", L, np.arange(L), logits, np.zeros(N, int), np.ones((N, K), bool),
                             np.full((N, K), 5), n_boot=100).transition(n_boot=100)

    big, small = transition("fam-1.5b", "mmlu", 28), transition("fam-0.5b", "mmlu", 24, climb=False)
    alone, other = transition("fam-1.5b", "arc-easy", 28), transition("solo-7b", "mmlu", 28)
    o = mod.Out()
    sweeps = [SimpleNamespace(model="fam-1.5b", task="mmlu", criterion="bi", collapse_ratio=0.25)]
    sweeps += [SimpleNamespace(model="fam-1.5b", task="mmlu", criterion="random", collapse_ratio=c) for c in (0.1, None)]
    mod.family_notes(o, [small, big, alone, other], sweeps)
    (note,) = o.notes
    assert "random collapse ratios 0.100, none (2 seeds)" in note
    assert note.startswith("- within fam, mmlu") and note.index("fam-1.5b") < note.index("fam-0.5b")
    assert f"transition at block {big.layer} of 28 ({big.layer / 28:.0%} of depth)" in note
    assert "bi collapse ratio 0.250" in note and "fam-0.5b (letters, 40 items): no transition" in note
    assert f"accuracy {small.trace.accuracy[-1]:.2f}" in note
    assert "(a description)" in note  # same format, same 40 items, no registry entry: nothing else differs

    def traced(model, fmt, ids):
        return SimpleNamespace(trace=SimpleNamespace(model=model, format=fmt, item_ids=ids, n_items=len(ids)))

    qwen = [traced("qwen2.5-coder-1.5b", "letters", ["a", "b"]), traced("qwen2.5-coder-0.5b", "letters", ["a", "b"])]
    assert mod.confounds(qwen) == ", confounded by quantisation"  # Q4_K_M against a Q4_K_M GGUF of an AWQ checkpoint
    qwen[1].trace.format, qwen[1].trace.item_ids = "continuation", ["a", "c"]
    assert mod.confounds(qwen) == ", confounded by format, quantisation and the items read"
