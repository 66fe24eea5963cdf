"""The ``recovery`` study run kind: a job is the public ``compare_recovery`` call (its numbers, the cut's size as a
rounded share of the blocks), its accuracy is a hand count from a hand-written forward, its index scalars are the
result's own numbers recomputed with numpy, and bad parameters are refused when the spec is read."""

from __future__ import annotations

import json
import math
from fractions import Fraction

import numpy as np
import pandas as pd
import pytest
import torch

import phaselens as pl
from phaselens.encoding import encode_task
from phaselens.errors import StudyError
from phaselens.study import parse_spec
from phaselens.study.runs import cut_size

pytestmark = pytest.mark.timeout(300)

RUN = {"kind": "recovery", "prune": 0.34, "methods": ["identity", "ghosted", "diagonal"], "calibration_passages": 8,
       "heldout": 6, "seq_len": 64, "n_boot": 200}


@pytest.mark.parametrize("share, n_blocks, want", [(0.25, 28, 7), (0.125, 28, 4), (0.375, 28, 11), (0.25, 18, 5),
                                                   (0.125, 18, 2), (0.125, 30, 4), (0.25, 30, 8), (0.375, 24, 9),
                                                   (0.01, 24, 1), (3, 28, 3), (0.5, 30, 15), (0.5, 18, 9), (0.5, 24, 12),
                                                   (0.125, 20, 3), (0.1, 25, 3), (0.45, 10, 5), (0.75, 6, 5),
                                                   (0.29, 50, 15), (0.58, 25, 15), (0.35, 90, 32)])
def test_cut_size_rounds_a_share_to_the_nearest_whole_block(share, n_blocks, want):
    """Hand values; halves up (0.125 x 20 = 2.5 -> 3, where Python's round() gives 2), also where the float product
    falls just below the half (0.29 x 50 = 14.499999999999998, exactly 14.5)."""
    assert cut_size(share, n_blocks) == want
    if isinstance(share, float):  # the nearest whole block of the exact decimal share, halves up
        exact = Fraction(str(share)) * n_blocks
        assert want == max(1, math.floor(exact + Fraction(1, 2)))


def test_cut_size_is_one_function_for_the_recovery_and_cka_kinds():
    import phaselens.study.recovery_run as rr
    import phaselens.study.runs as runs

    assert rr.cut_size is runs.cut_size


@pytest.fixture(scope="module")
def job(tiny_llama_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("recovery-study")
    spec = {"models": [tiny_llama_dir], "tasks": [{"name": "capitals", "limit": 6}], "seeds": [3], "runs": [RUN]}
    df = pl.run_study(spec, out=out)
    assert (df.status == "done").all(), df.error.tolist()
    row = df.iloc[0]
    return row, pl.load_result(out / f"{row.result}.json"), out


def test_a_recovery_job_is_the_direct_compare_recovery_call(job, tiny_llama_dir):
    row, got, _ = job
    m = pl.load_model(tiny_llama_dir)
    t = pl.load_task("capitals", limit=6, seed=3)
    direct = pl.compare_recovery(m, [t], n=2, criterion="angular", methods=["identity", "ghosted", "diagonal"],
                                 calibration=pl.load_calibration()[:8], heldout=pl.heldout_texts()[:6], seq_len=64,
                                 n_boot=200, boot_seed=3)
    assert isinstance(got, pl.RecoveryComparison)
    assert got.to_json() == direct.to_json()
    assert got.criterion == "angular" and len(got.blocks) == 2 == row.cut_n  # round(0.34 x 6) = 2; angular by default
    assert got.n_passages == 6 and got.tasks[0].n_items == 6 and json.loads(row.params)["prune"] == 0.34


def test_the_accuracy_is_a_hand_count_from_a_hand_written_forward(job, tiny_llama):
    """Plain pruning's (identity) and the dense model's accuracy, counted from the logits of the kept HF decoder
    layers called by hand, read at each prompt's last token over the options' first tokens."""
    from test_pruning import hand_logits, hand_states  # noqa: PLC0415 (shared hand-written forward)

    _, got, _ = job
    t = pl.load_task("capitals", limit=6, seed=3)
    enc = encode_task(t, tiny_llama.tokenizer)
    kept = [b for b in range(tiny_llama.n_blocks) if b not in got.blocks]

    def count(blocks):
        right = 0
        for i, ids in enumerate(enc.prompts):
            z = hand_logits(tiny_llama, hand_states(tiny_llama, ids, blocks)[-1][-1])
            k = int(enc.option_mask[i].sum())
            right += int(torch.argmax(z[enc.option_ids[i, :k]]).item() == int(enc.answers[i]))
        return right / len(enc.prompts)

    assert got.accuracy("identity") == count(kept)
    assert float(got.tasks[0].dense_correct.mean()) == count(list(range(tiny_llama.n_blocks)))


def test_the_index_scalars_are_the_results_numbers_recomputed(job):
    row, r, _ = job
    t = r.tasks[0]
    ppl = {m: float(np.exp(r.nll[k].sum() / r.tokens.sum())) for k, m in enumerate(r.methods)}
    acc = {m: float(t.correct[k].mean()) for k, m in enumerate(r.methods)}
    for m in r.methods:
        assert row[f"accuracy_{m}"] == pytest.approx(acc[m]) and row[f"perplexity_{m}"] == pytest.approx(ppl[m])
    assert row.dense_perplexity == pytest.approx(float(np.exp(r.dense_nll.sum() / r.tokens.sum())))
    assert row.dense_accuracy == pytest.approx(float(t.dense_correct.mean()))
    assert row.n_items == 6 and row.n_passages == 6 and row.n_blocks == 6
    b = r.blocks
    assert row.cut == (f"{b[0]}-{b[-1]}" if b == list(range(b[0], b[-1] + 1)) else ",".join(map(str, b)))
    rivals = ["identity", "diagonal"]
    best_acc = max(rivals, key=lambda m: (acc[m], -rivals.index(m)))
    best_ppl = min(rivals, key=lambda m: (ppl[m], rivals.index(m)))
    assert (row.rival_accuracy, row.rival_perplexity) == (best_acc, best_ppl)
    assert row.ghosted_gain_accuracy == pytest.approx(acc["ghosted"] - acc[best_acc])
    assert row.ghosted_gain_perplexity == pytest.approx(ppl[best_ppl] - ppl["ghosted"])
    # the intervals: paired percentile bootstraps by hand (items for accuracy; passages, NLL with tokens, for perplexity)
    g, k = r.methods.index("ghosted"), r.methods.index(best_acc)
    diff = t.correct[g] - t.correct[k]
    hand = diff[np.random.default_rng(3).integers(0, 6, size=(200, 6))].mean(1)
    assert (row.ghosted_gain_accuracy_lo, row.ghosted_gain_accuracy_hi) == pytest.approx(
        tuple(np.quantile(hand, [0.025, 0.975])), abs=1e-12)
    k = r.methods.index(best_ppl)
    idx = np.random.default_rng(3).integers(0, 6, size=(200, 6))
    tok = r.tokens.astype(float)
    hand = np.exp(r.nll[k][idx].sum(1) / tok[idx].sum(1)) - np.exp(r.nll[g][idx].sum(1) / tok[idx].sum(1))
    assert (row.ghosted_gain_perplexity_lo, row.ghosted_gain_perplexity_hi) == pytest.approx(
        tuple(np.quantile(hand, [0.025, 0.975])), rel=1e-10)


def test_the_report_of_a_recovery_study_shows_the_comparison(job, tmp_path):
    _, r, folder = job
    page = pl.build_report(folder, tmp_path / "r.html").read_text()
    assert "RecoveryComparison" in page or "recovered with" in page
    assert f"{r.perplexity('ghosted'):.2f}" in page


def test_a_recovery_run_is_a_grid_over_shares_and_criteria():
    s = parse_spec({"models": ["m"], "tasks": ["capitals", "languages"], "runs": [
        {"kind": "recovery", "prune": [0.125, 0.25, 0.375], "criterion": ["bi", "angular", "sleb"],
         "methods": ["ghosted", "identity"], "heldout": 24}]})
    jobs = s.jobs()
    assert len(jobs) == 2 * 9
    assert {(j.params["prune"], j.params["criterion"]) for j in jobs} == {
        (p, c) for p in (0.125, 0.25, 0.375) for c in ("bi", "angular", "sleb")}
    assert all(j.params["methods"] == ["ghosted", "identity"] and j.params["heldout"] == 24 for j in jobs)
    assert "recovery" in pl.study.RUNS


@pytest.mark.bad_input
@pytest.mark.parametrize("run, words", [
    ({}, ["give blocks", "or prune", "exactly one"]),
    ({"prune": 0.25, "blocks": "3-5"}, ["exactly one"]),
    ({"prune": 1.5}, ["prune = 1.5", "(0, 1)"]),
    ({"prune": 0}, ["prune = 0"]),
    ({"prune": True}, ["prune = True"]),
    ({"prune": 0.25, "criterion": "random"}, ["criterion = 'random'", "'angular'", "'sleb'"]),
    ({"prune": 0.25, "criterion": "silent"}, ["criterion = 'silent'"]),
    ({"blocks": "3-5", "criterion": "bi"}, ["criterion chooses the cut of prune"]),
    ({"blocks": "last"}, ["'last' is not a cut"]),
    ({"blocks": "x-"}, ["blocks = 'x-'"]),
    ({"prune": 0.25, "methods": ["ghost"]}, ["methods", "'ghosted'"]),
    ({"prune": 0.25, "methods": ["ghosted", "ghosted"]}, ["repeats a method"]),
    ({"prune": 0.25, "methods": "ghosted"}, ["methods must be a list"]),
    ({"prune": 0.25, "n_boot": 10}, ["n_boot = 10", "100"]),
    ({"prune": 0.25, "heldout": 25}, ["heldout = 25", "24 bundled"]),
    ({"prune": 0.25, "calibration_passages": 0}, ["calibration_passages = 0"]),
    ({"prune": 0.25, "n": 3}, ["unknown key(s) ['n']", "'prune'"]),
    ({"prune": 0.25, "seq_len": 1}, ["seq_len = 1"]),
    ({"blocks": "0-2", "methods": ["ghosted", "replaceme"]}, ["cannot be recovered by replaceme", "(0, 3)", "block 0"]),
    ({"blocks": "0-2"}, ["cannot be recovered by replaceme"]),  # the default methods include it
])
def test_bad_recovery_parameters_are_refused_before_any_model_loads(run, words, tmp_path):
    """The model ``never-loaded`` does not exist: the refusal comes from reading the spec, before any load."""
    spec = {"models": ["never-loaded"], "tasks": ["capitals"], "runs": [{"kind": "recovery", **run}]}
    with pytest.raises(StudyError) as e:
        pl.run_study(spec, out=tmp_path / "never")
    for w in words:
        assert w in str(e.value), (w, str(e.value))
    assert "never-loaded" not in str(e.value)
    assert not (tmp_path / "never").exists()


@pytest.mark.bad_input
def test_a_share_that_would_cut_every_block_is_refused():
    with pytest.raises(StudyError, match="cuts 28 of the model's 28 blocks"):
        cut_size(0.99, 28)
    with pytest.raises(StudyError, match="cuts 6 of the model's 6 blocks"):
        cut_size(6, 6)


def test_cli_status_of_a_recovery_study_and_a_refused_spec(job, tmp_path):
    from typer.testing import CliRunner

    from phaselens.cli import app

    _, _, folder = job
    runner = CliRunner(env={"COLUMNS": "200"})
    res = runner.invoke(app, ["study", "status", str(folder)])
    assert res.exit_code == 0, res.output
    assert "1 done, 0 failed, 0 not run yet" in " ".join(res.output.split()) and "recovery" in res.output
    bad = tmp_path / "bad.toml"
    bad.write_text('models = ["never-loaded"]\ntasks = ["capitals"]\n[[runs]]\nkind = "recovery"\nprune = 0.25\n'
                   'criterion = "random"\n')
    res = runner.invoke(app, ["study", "run", str(bad), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "criterion = 'random'" in " ".join(res.output.split()), res.output


def test_a_method_refusing_the_chosen_cut_is_left_out_of_the_job(first_blocks, tiny_llama_dir, tmp_path):
    """ReplaceMe cannot recover a cut starting at block 0: the job runs the other methods (equal to the direct call,
    which skips it too) instead of failing, names it in the result's ``skipped`` and leaves its index columns empty;
    a given cut it cannot recover is refused when the spec is read (above)."""
    run = {**RUN, "prune": 2, "criterion": first_blocks, "methods": ["identity", "ghosted", "replaceme"]}
    df = pl.run_study({"models": [tiny_llama_dir], "tasks": [{"name": "capitals", "limit": 6}], "runs": [run]},
                      out=tmp_path / "s")
    assert (df.status == "done").all(), df.error.tolist()
    row = df.iloc[0]
    got = pl.load_result(tmp_path / "s" / f"{row.result}.json")
    assert got.blocks == [0, 1] and got.methods == ["identity", "ghosted"] and got.criterion == first_blocks
    assert got.skipped == {"replaceme": "span (0, 2): ReplaceMe regresses the MLP branch of the block before the cut, "
                                        "and this cut starts at block 0"}
    m = pl.load_model(tiny_llama_dir)
    direct = pl.compare_recovery(m, [pl.load_task("capitals", limit=6, seed=0)], n=2, criterion=first_blocks,
                                 methods=["identity", "ghosted", "replaceme"], calibration=pl.load_calibration()[:8],
                                 heldout=pl.heldout_texts()[:6], seq_len=64, n_boot=200, boot_seed=0)
    assert got.to_json() == direct.to_json()
    assert pd.isna(row.accuracy_replaceme) and pd.isna(row.perplexity_replaceme)  # NaN (None when no job has it)
    assert row.accuracy_ghosted == pytest.approx(float(got.tasks[0].correct[1].mean()))
    assert row.rival_accuracy == "identity" == row.rival_perplexity  # the skipped method is no rival
