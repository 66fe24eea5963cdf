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
        with pytest.raises(pl.PruningError):
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
