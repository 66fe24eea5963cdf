"""What stood between a researcher and the answer: first-N items, templates on item lists, per-item
predictions, a last-block-only readout, and a TransformerLens bridge that must not change phaselens' numbers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import phaselens as pl
from phaselens.tasks.loaders import data_dir

needs_data = pytest.mark.skipif(not (data_dir() / "arc").is_dir(), reason="shared benchmark data not found")


@needs_data
def test_first_n_items_in_file_order_and_recorded():
    rows = [json.loads(line) for line in open(data_dir() / "arc" / "ARC-Easy-test.jsonl") if line.strip()]
    first = pl.load_task("arc-easy", limit=7, sample=False)
    assert [it.id for it in first.items] == [r["id"] for r in rows[:7]]
    assert first.selection == f"the first 7 of {len(rows)} items"
    rand = pl.load_task("arc-easy", limit=7)
    assert rand.selection.startswith("a random 7 of") and [it.id for it in rand.items] != [r["id"] for r in rows[:7]]
    with pytest.raises(pl.errors.TaskError, match="limit must be a positive int"):
        pl.load_task("arc-easy", limit=2.5)
    with pytest.raises(pl.errors.TaskError, match="limit must be a positive int"):
        pl.load_task("arc-easy", limit="8")


def test_first_n_items_from_the_cli_and_from_a_study_spec(smol):
    """``--first`` and a study task's ``sample = false`` take the file's first N items, as load_task(sample=False)."""
    from typer.testing import CliRunner

    from phaselens.cli import app
    from phaselens.study.spec import parse_spec

    builtin = pl.load_task("capitals")
    res = CliRunner().invoke(app, ["transition", "-t", "capitals", "--limit", "4", "--first", "--json"])
    assert res.exit_code == 0, res.output
    trace = json.loads(res.stdout)["trace"]
    assert trace["item_ids"] == [it.id for it in builtin.items[:4]]
    assert "the first 4 of" in trace["task_note"]
    res = CliRunner().invoke(app, ["transition", "-t", "capitals", "--first"])
    assert res.exit_code == 2 and "--limit" in res.output
    spec = parse_spec({"models": ["smollm2-135m"], "tasks": [{"name": "capitals", "limit": 4, "sample": False}],
                       "runs": [{"kind": "trace"}]})
    assert spec.tasks[0].config(0)["sample"] is False
    plain = parse_spec({"models": ["smollm2-135m"], "tasks": [{"name": "capitals", "limit": 4}], "runs": [{"kind": "trace"}]})
    assert "sample" not in plain.tasks[0].config(0)  # the job identity of a spec without the key is unchanged
    with pytest.raises(pl.errors.StudyError, match=r"tasks\[0\]\.sample must be true"):
        parse_spec({"models": ["smollm2-135m"], "tasks": [{"name": "capitals", "sample": "no"}], "runs": [{"kind": "trace"}]})


@needs_data
def test_item_lists_keep_or_take_a_template_and_a_name():
    arc = pl.load_task("arc-easy", limit=5, sample=False)
    assert arc.prompt(0) == f"Question: {arc.items[0].question}\nAnswer:" and arc.layout_note == ""
    again = arc.with_items(arc.items[:3])  # re-wrapping a task's own items keeps its template and name
    assert again.prompt(0) == arc.prompt(0) and again.name == "arc-easy"
    listed = pl.load_task(list(arc.items[:3]), name="arc-easy-3", cloze_template="Question: {question}\nAnswer:",
                          format="continuation")
    assert listed.prompt(0) == arc.prompt(0) and listed.name == "arc-easy-3"
    bare = pl.load_task(list(arc.items[:3]))
    assert bare.prompt(0) == arc.items[0].question and bare.name == "custom"
    other = pl.load_task("arc-easy", limit=3, cloze_template="{question}")
    assert "not lm-eval's" in other.layout_note
    letters = pl.load_task("arc-easy", limit=3, format="letters")
    assert "reformulation" in letters.layout_note
    with pytest.raises(pl.errors.TaskError, match="must contain"):
        pl.load_task("arc-easy", cloze_template="no placeholder")


@needs_data
def test_the_trace_says_how_its_prompt_differs(tiny_llama):
    t = pl.decision_trace(tiny_llama, pl.load_task("arc-easy", limit=4, cloze_template="{question}"), n_boot=100)
    assert "not lm-eval's" in t.task_note and "random 4" in t.task_note
    assert t.provenance()["task_note"] == t.task_note and t.task_note in t.summary()


def test_per_item_predictions_and_correctness(tiny_llama, capitals_task):
    tr = pl.decision_trace(tiny_llama, capitals_task, n_boot=100)
    z = tr.logits  # [L, N, K], -inf at padded slots
    for i, it in enumerate(capitals_task.items):
        for j in range(tr.n_read):
            row = list(z[j, i, : len(it.options)])
            assert tr.predictions[i, j] == row.index(max(row))
            assert tr.correct[i, j] == float(row.index(max(row)) == it.answer)
    df = tr.items()
    assert len(df) == tr.n_items * tr.n_read and set(df.columns) >= {"item", "block", "prediction", "correct"}


def test_continuation_acc_norm_is_lm_evals(tiny_llama, capitals_task):
    """acc_norm: the argmax of log-likelihood / len(choice in characters), lm-eval's rule, evaluated by hand."""
    task = capitals_task.with_format("continuation")
    tr = pl.decision_trace(tiny_llama, task, n_boot=100)
    for j in range(tr.n_read):
        hits = 0
        for i, it in enumerate(task.items):
            ll = [tr.logits[j, i, k] / len(opt) for k, opt in enumerate(it.options)]
            hits += ll.index(max(ll)) == it.answer
        assert tr.acc_norm[j] == pytest.approx(hits / len(task.items))
    assert "acc_norm" in tr.to_pandas().columns
    assert tr.with_scoring("norm").accuracy[-1] == pytest.approx(tr.acc_norm[-1])


@pytest.mark.parametrize("fmt", ["cloze", "continuation"])
def test_last_block_only_equals_the_full_trace_last_row(tiny_llama, capitals_task, fmt):
    task = capitals_task.with_format(fmt)
    full = pl.decision_trace(tiny_llama, task, n_boot=100)
    last = pl.decision_trace(tiny_llama, task, n_boot=100, blocks="last")
    assert last.blocks.tolist() == [tiny_llama.n_blocks - 1] and not last.complete
    np.testing.assert_allclose(last.logits[0], full.logits[-1], atol=1e-5)
    some = pl.decision_trace(pl.prune(tiny_llama, [2]), task, n_boot=100, blocks=[0, 3])
    np.testing.assert_allclose(some.logits, pl.decision_trace(pl.prune(tiny_llama, [2]), task, n_boot=100).logits[[0, 2]],
                               atol=1e-5)
    with pytest.raises(pl.PhaselensError, match="needs every surviving block"):
        last.transition()
    with pytest.raises(pl.errors.LensError, match="not surviving blocks"):
        pl.decision_trace(pl.prune(tiny_llama, [2]), task, blocks=[2])


def test_a_booted_bridge_does_not_change_phaselens_numbers(smol, capitals_task):
    """TransformerLens' bridge switches a model to eager attention: it is booted on a twin sharing the weights, so the
    model phaselens measures keeps its SDPA forward and its numbers stay bit for bit."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=smol.tokenizer.vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2)
    cfg.architectures = ["LlamaForCausalLM"]
    torch.manual_seed(0)
    hf = LlamaForCausalLM(cfg).eval()
    m = pl.load_model(hf, tokenizer=smol.tokenizer)
    assert m.attn_implementation == "sdpa"
    before = pl.decision_trace(m, capitals_task, n_boot=100).logits
    bridge = m.bridge()
    assert hf.config._attn_implementation == "sdpa"  # phaselens' model is untouched
    assert bridge.original_model.config._attn_implementation == "eager"  # the bridge's twin runs eager
    assert bridge.original_model.model.layers[0].self_attn.q_proj.weight is hf.model.layers[0].self_attn.q_proj.weight
    after = pl.decision_trace(m, capitals_task, n_boot=100).logits
    assert np.array_equal(before, after)
    with torch.no_grad():
        ids = torch.tensor([[1, 2, 3]])
        torch.testing.assert_close(bridge(ids), hf(input_ids=ids).logits, atol=1e-4, rtol=0)


def test_a_folder_named_phaselens_beside_a_script_does_not_shadow_the_package(tmp_path):
    import subprocess
    import sys

    (tmp_path / "phaselens").mkdir()  # a clone's folder, or any folder of that name
    out = subprocess.run([sys.executable, "-c", "import phaselens; print(hasattr(phaselens, 'load_model'))"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "True", out.stderr
