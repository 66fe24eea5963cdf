"""The lm-evaluation-harness backend against lm-eval's own HFLM on the same Hugging Face model object.

The tasks are small local YAMLs (tests/lmeval_tasks/) over ../shared/data, so nothing is downloaded.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import phaselens as pl

lm_eval = pytest.importorskip("lm_eval")

from lm_eval.models.huggingface import HFLM  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

from phaselens.evaluation import parse_blocks, view_from_args  # noqa: E402
from phaselens.lmeval import PhaselensLM  # noqa: E402
from phaselens.tasks.loaders import data_dir  # noqa: E402

TASKS = Path(__file__).parent / "lmeval_tasks"
pytestmark = pytest.mark.skipif(not (data_dir() / "arc").is_dir(), reason="shared benchmark data not found")


@pytest.fixture(scope="session")
def task_manager(tmp_path_factory) -> TaskManager:
    """The task YAMLs with ${PHASELENS_DATA} set to the shared data folder."""
    out = tmp_path_factory.mktemp("lmeval_tasks")
    for f in TASKS.glob("*.yaml"):
        (out / f.name).write_text(f.read_text().replace("${PHASELENS_DATA}", str(data_dir())))
    return TaskManager(include_path=str(out))


def run(lm, task: str, tm: TaskManager, limit: int) -> dict:
    return lm_eval.simple_evaluate(model=lm, tasks=[task], limit=limit, bootstrap_iters=0, task_manager=tm,
                                   log_samples=True)


def responses(res: dict, task: str) -> list:
    return [s["filtered_resps"] for s in sorted(res["samples"][task], key=lambda s: s["doc_id"])]


@pytest.fixture(scope="session")
def hflm(smol) -> HFLM:
    return HFLM(pretrained=smol.hf, tokenizer=smol.tokenizer, batch_size=8)


def test_parse_blocks():
    assert parse_blocks("12-15+20") == [12, 13, 14, 15, 20]
    assert parse_blocks("3-5,9") == [3, 4, 5, 9]
    assert parse_blocks(7) == [7]
    for bad in ("3-", "5-3", "a", ""):
        with pytest.raises(pl.errors.PruningError):
            parse_blocks(bad)


@pytest.mark.slow
def test_multiple_choice_matches_hflm(smol, hflm, task_manager):
    """Same requests, same log-likelihoods (float error), acc and acc_norm equal."""
    ref = run(hflm, "arc_easy_local", task_manager, 20)
    mine = run(PhaselensLM(smol), "arc_easy_local", task_manager, 20)
    a, b = responses(ref, "arc_easy_local"), responses(mine, "arc_easy_local")
    assert [[r[1] for r in x] for x in a] == [[r[1] for r in x] for x in b]  # is_greedy
    lp_a = torch.tensor([[r[0] for r in x] for x in a])
    lp_b = torch.tensor([[r[0] for r in x] for x in b])
    assert torch.allclose(lp_a, lp_b, atol=1e-3, rtol=1e-5), (lp_a - lp_b).abs().max()
    for metric in ("acc,none", "acc_norm,none"):
        assert ref["results"]["arc_easy_local"][metric] == mine["results"]["arc_easy_local"][metric]


@pytest.mark.slow
def test_rolling_matches_hflm(smol, hflm, task_manager):
    ref = run(hflm, "arc_rolling_local", task_manager, 6)
    mine = run(PhaselensLM(smol), "arc_rolling_local", task_manager, 6)
    for metric in ("word_perplexity,none", "byte_perplexity,none", "bits_per_byte,none"):
        x, y = ref["results"]["arc_rolling_local"][metric], mine["results"]["arc_rolling_local"][metric]
        assert math.isclose(x, y, rel_tol=1e-5), (metric, x, y)


@pytest.mark.slow
def test_generate_matches_hflm(smol, hflm, task_manager):
    ref = run(hflm, "arc_generate_local", task_manager, 4)
    mine = run(PhaselensLM(smol), "arc_generate_local", task_manager, 4)
    assert responses(ref, "arc_generate_local") == responses(mine, "arc_generate_local")
    assert ref["results"]["arc_generate_local"]["exact_match,none"] == mine["results"]["arc_generate_local"]["exact_match,none"]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["pruned", "ghosted"])
def test_view_equals_its_export_under_hflm(smol, task_manager, tmp_path, kind):
    """A pruned / ghosted view under the phaselens backend scores as its exported folder under lm-eval's HFLM."""
    import warnings

    from transformers import AutoModelForCausalLM, AutoTokenizer

    view = pl.ModelView(smol, [0, 12, 13, 14, smol.n_blocks - 1])
    if kind == "ghosted":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            view = pl.fit_recovery(view, calibration=pl.heldout_texts()[:6], method="ghosted", lam=1e-2)
    folder = view.export(tmp_path / kind)
    code = kind == "ghosted"
    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, trust_remote_code=code)
    tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=code)
    ref = run(HFLM(pretrained=hf, tokenizer=tok, batch_size=8), "arc_easy_local", task_manager, 12)
    mine = run(PhaselensLM(view), "arc_easy_local", task_manager, 12)
    lp_a = torch.tensor([[r[0] for r in x] for x in responses(ref, "arc_easy_local")])
    lp_b = torch.tensor([[r[0] for r in x] for x in responses(mine, "arc_easy_local")])
    assert torch.allclose(lp_a, lp_b, atol=1e-3, rtol=1e-5), (lp_a - lp_b).abs().max()
    for metric in ("acc,none", "acc_norm,none"):
        assert ref["results"]["arc_easy_local"][metric] == mine["results"]["arc_easy_local"][metric]


def test_view_from_args(tiny_llama, tmp_path):
    v = view_from_args(tiny_llama, prune="1-2+4")
    assert v.removed == (1, 2, 4)
    assert view_from_args(v) is v
    with pytest.raises(pl.errors.RecoveryError, match="neither a recovery method"):
        view_from_args(tiny_llama, prune="1", recovery=str(tmp_path / "missing.safetensors"))
    with pytest.raises(pl.errors.RecoveryError, match="needs prune"):
        view_from_args(tiny_llama, recovery="ghosted")
    with pytest.raises(pl.PhaselensError, match="a view already"):
        view_from_args(v, prune="3")
    rec = pl.fit_recovery(pl.ModelView(tiny_llama, [2, 3]), calibration=["a b c d e f g h"] * 80, method="scalar")
    path = rec.save(tmp_path / "rec.safetensors")
    back = view_from_args(tiny_llama, recovery=str(path))
    assert back.removed == (2, 3) and back.method == "scalar"
    with pytest.raises(pl.errors.RecoveryError, match="cuts"):
        view_from_args(tiny_llama, prune="1-2", recovery=str(path))


def test_evaluate_runs_a_pruned_view(tiny_llama, task_manager):
    """pl.evaluate from Python: the results dict of lm-eval for a view given by model + prune=."""
    res = pl.evaluate(tiny_llama, ["arc_easy_local"], prune="1-2", limit=3, bootstrap_iters=0,
                      task_manager=task_manager)
    assert 0.0 <= res["results"]["arc_easy_local"]["acc,none"] <= 1.0
    assert len(res["samples"]["arc_easy_local"]) == 3


def test_rows_per_pass():
    from phaselens.lmeval import rows_per_pass

    assert rows_per_pass("8") == 8 and rows_per_pass(4) == 4
    assert rows_per_pass("auto") is None and rows_per_pass("auto:4") is None and rows_per_pass(None) is None
    for bad in (0, "x", True):
        with pytest.raises(pl.PhaselensError):
            rows_per_pass(bad)


@pytest.mark.slow
def test_cli_finds_the_phaselens_model(tiny_llama_dir, task_manager, tmp_path):
    """`python -m phaselens.lmeval` is lm-eval's CLI with `--model phaselens` registered; a comma-free block list."""
    import os
    import subprocess
    import sys

    include = task_manager.include_path if isinstance(task_manager.include_path, str) else task_manager.include_path[0]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1] / "src"), HF_DATASETS_OFFLINE="1")
    out = subprocess.run([sys.executable, "-m", "phaselens.lmeval", "--model", "phaselens", "--model_args",
                          f"model={tiny_llama_dir},prune=1-2+4", "--tasks", "arc_easy_local", "--include_path",
                          str(include), "--limit", "2", "--device", "cpu", "--batch_size", "2"],
                         capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "arc_easy_local" in out.stdout and "'prune': '1-2+4'" in out.stdout
