"""Shared fixtures: tiny random models (exact, fast) and the three embedded models (real)."""

from __future__ import annotations

import pytest
import torch

import phaselens as pl

CAPITALS = [
    ("The capital of France is", ["Paris", "London", "Berlin", "Madrid"], 0),
    ("The capital of Germany is", ["Paris", "London", "Berlin", "Madrid"], 2),
    ("The capital of Spain, a country in southern Europe, is", ["Paris", "Madrid", "Berlin", "Rome"], 1),
    ("The capital of Italy is", ["Paris", "Madrid", "Berlin", "Rome"], 3),
    ("The capital of the United Kingdom is", ["London", "Madrid"], 0),
    ("Japan's capital city is called", ["Paris", "Tokyo", "Berlin", "Rome", "Cairo"], 1),
]


@pytest.fixture(scope="session")
def smol() -> pl.Model:
    return pl.load_model("smollm2-135m", device="cpu", dtype=torch.float32)


@pytest.fixture(scope="session")
def gemma() -> pl.Model:
    return pl.load_model("gemma3-270m", device="cpu", dtype=torch.float32)


@pytest.fixture(scope="session")
def qwen() -> pl.Model:
    """Qwen2.5-Coder-1.5B-Instruct, float32 on the CPU (~7 GB; the first load dequantizes the GGUF, ~1.5 min)."""
    return pl.load_model("qwen2.5-coder-1.5b", device="cpu", dtype=torch.float32)


def tiny_model(config, tokenizer) -> pl.Model:
    """A random model of ``config`` (seed 0, 2-D weights scaled by 8 so margins are not all ~0), with ``tokenizer``."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    hf = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():  # larger weights than the init, so margins are not all ~0
        for p in hf.parameters():
            if p.dim() == 2:
                p.mul_(8.0)
    hf.tokenizer = tokenizer
    return pl.load_model(hf)


@pytest.fixture(scope="session")
def tiny_llama(smol) -> pl.Model:
    from transformers import LlamaConfig

    cfg = LlamaConfig(vocab_size=smol.tokenizer.vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=6,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
    return tiny_model(cfg, smol.tokenizer)


@pytest.fixture(scope="session")
def tiny_gemma(smol) -> pl.Model:
    """Gemma-3 layout: (1 + w) norms, sliding + full attention, final-logit soft-capping."""
    from transformers import Gemma3TextConfig

    cfg = Gemma3TextConfig(vocab_size=smol.tokenizer.vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=16, sliding_window=4,
                           layer_types=["sliding_attention", "full_attention"] * 2, final_logit_softcapping=5.0)
    cfg.architectures = ["Gemma3ForCausalLM"]
    return tiny_model(cfg, smol.tokenizer)


@pytest.fixture(scope="session")
def capitals_task() -> pl.Task:
    return pl.load_task([{"question": q, "options": o, "answer": a, "id": f"cap{i}"} for i, (q, o, a) in enumerate(CAPITALS)])


@pytest.fixture(scope="session")
def tiny_llama_dir(tiny_llama, tmp_path_factory):
    """``tiny_llama`` saved as a Hugging Face folder: loadable by path in another process (studies, workers)."""
    path = tmp_path_factory.mktemp("tiny-llama") / "tiny-llama"
    tiny_llama.hf.save_pretrained(path)
    tiny_llama.tokenizer.save_pretrained(path)
    return str(path)


class ForwardCounter:
    """Counts forward passes of a model: a hook on its input embedding (every pass starts there)."""

    def __init__(self, model: pl.Model) -> None:
        self.model, self.n, self._h = model, 0, None

    def __enter__(self) -> "ForwardCounter":
        def hook(*_):
            self.n += 1

        self._h = self.model.hf.get_input_embeddings().register_forward_hook(hook)
        return self

    def __exit__(self, *exc) -> None:
        self._h.remove()


@pytest.fixture
def count_forwards():
    """``with count_forwards(model) as c: ...; assert c.n == 0``: refusals must come before any forward pass."""
    return ForwardCounter


@pytest.fixture(scope="module")
def first_blocks():
    """A criterion that cuts the first blocks (lowest score = cut first: block 0, then 1, ...), so that the cut
    starts at block 0; registered for one test module."""
    from phaselens.pruning import CRITERIA, Criterion

    @pl.register_criterion("first-blocks")
    class First(Criterion):
        iterative = False

        def scores(self, view, *, calibration=None, seed=0, step=0, cache=None):
            return {b: float(b) for b in view.kept}

    yield "first-blocks"
    CRITERIA.remove("first-blocks")
