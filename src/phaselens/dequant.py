"""Dequantize a GGUF file into a Hugging Face folder, tensor by tensor, streamed to safetensors.

The fast, lean first load of a GGUF model (the embedded models and any ``.gguf`` path of a supported
architecture). transformers' own ``from_pretrained(..., gguf_file=...)`` dequantizes every tensor into one
dictionary, copies it into the model and phaselens then saved that model again: the whole model several
times in memory, and slow. Here:

1. the config and tokenizer come from transformers' GGUF metadata reader (no tensor is read);
2. the model is built on the ``meta`` device only to learn its parameter names and shapes;
3. each GGUF tensor name is mapped to its Hugging Face name with ``gguf``'s own name table
   (``gguf.get_tensor_name_map``), the inverse of llama.cpp's conversion;
4. the safetensors header (names, shapes, offsets) is written first, then each tensor is dequantized
   (``gguf.quants.dequantize``) a slab of rows at a time and appended: peak memory is one slab plus the
   memory-mapped GGUF, never the model.

The per-architecture undo of llama.cpp's conversion is the same as transformers' GGUF loader
(``transformers/modeling_gguf_pytorch_utils.py``): Llama's Q/K rows were permuted for llama.cpp's rotary
layout (reversed here), Gemma's norm weights were stored as ``1 + w`` (``- 1`` here), Qwen2 needs nothing.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from . import manifest
from .errors import ModelError
from .files import writing, writing_folder

#: GGUF ``general.architecture`` values this module converts (others go through transformers' loader).
SUPPORTED = ("llama", "qwen2", "gemma3")
ROWS_PER_SLAB = 4096  # rows dequantized at once (a Q4_K row of d = 1536 is 864 bytes -> 24 MiB of float32 per slab)


@dataclass
class Entry:
    """One GGUF tensor and where it goes: its HF name, HF shape and the fix-up applied after dequantizing."""

    gguf_name: str
    hf_name: str
    shape: tuple[int, ...]
    fix: Callable[[np.ndarray], np.ndarray] | None


def gguf_architecture(path: str | os.PathLike) -> str:
    """The file's ``general.architecture`` (``"llama"``, ``"qwen2"``, ``"gemma3"``, ...)."""
    from gguf import GGUFReader

    r = GGUFReader(str(path))
    f = r.fields["general.architecture"]
    return bytes(f.parts[f.data[0]]).decode()


def _reverse_permute(n_head: int) -> Callable[[np.ndarray], np.ndarray]:
    """Undo llama.cpp's Q/K row permutation ``[n_head, 2, dim/2] -> [n_head, dim/2, 2]`` (rows = axis 0)."""

    def fix(w: np.ndarray) -> np.ndarray:
        dim = w.shape[0] // n_head // 2
        return np.ascontiguousarray(w.reshape(n_head, dim, 2, *w.shape[1:]).swapaxes(2, 1).reshape(w.shape))

    return fix


def _minus_one(w: np.ndarray) -> np.ndarray:
    return w - np.float32(1.0)


def _fix_for(arch: str, gguf_name: str, config: Any) -> Callable[[np.ndarray], np.ndarray] | None:
    if arch == "llama":
        if ".attn_q." in gguf_name:
            return _reverse_permute(config.num_attention_heads)
        if ".attn_k." in gguf_name:
            return _reverse_permute(config.num_key_value_heads)
    if arch in ("gemma2", "gemma3") and gguf_name.endswith("norm.weight"):
        return _minus_one
    return None


def plan(reader: Any, arch: str, config: Any) -> tuple[list[Entry], list[str]]:
    """Map every GGUF tensor to the HF parameter it becomes.

    Returns:
        (entries in file order, GGUF tensor names that map to no HF parameter). A :class:`ModelError` when an
        HF parameter has no GGUF tensor (other than a tied ``lm_head``) or a shape disagrees.
    """
    import torch
    from gguf import MODEL_ARCH_NAMES, get_tensor_name_map
    from transformers import AutoModelForCausalLM

    arch_key = next((k for k, v in MODEL_ARCH_NAMES.items() if v == arch), None)
    if arch_key is None:
        raise ModelError(f"the gguf package does not know the GGUF architecture {arch!r}; upgrade it (pip install -U gguf)")
    with torch.device("meta"):
        meta = AutoModelForCausalLM.from_config(config)
    params = {k: tuple(v.shape) for k, v in meta.state_dict().items()}
    del meta
    names = get_tensor_name_map(arch_key, config.num_hidden_layers)
    hf_of: dict[str, str] = {}
    for hf_name in params:
        base, _, suffix = hf_name.rpartition(".")
        g = names.get_name(base) if suffix in ("weight", "bias") else None
        if g is not None:
            hf_of[f"{g}.{suffix}"] = hf_name
    entries, unused = [], []
    for t in reader.tensors:
        hf_name = hf_of.get(t.name)
        if hf_name is None:
            unused.append(t.name)
            continue
        shape = params[hf_name]
        n = int(np.prod(shape))
        if n != int(t.n_elements):
            raise ModelError(f"GGUF tensor {t.name} has {int(t.n_elements)} values, but {hf_name} of "
                             f"{type(config).__name__} has shape {shape}; the file and its metadata disagree")
        entries.append(Entry(t.name, hf_name, shape, _fix_for(arch, t.name, config)))
    covered = {e.hf_name for e in entries}
    tied = bool(getattr(config, "tie_word_embeddings", False))
    missing = [k for k in params if k not in covered and not (tied and k == "lm_head.weight")]
    if missing:
        raise ModelError(f"the GGUF file has no tensor for {len(missing)} parameter(s) of {type(config).__name__}: "
                         f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
    return entries, unused


def _header(entries: list[Entry]) -> bytes:
    meta: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    off = 0
    for e in entries:
        nbytes = 4 * int(np.prod(e.shape))
        meta[e.hf_name] = {"dtype": "F32", "shape": list(e.shape), "data_offsets": [off, off + nbytes]}
        off += nbytes
    raw = json.dumps(meta, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw


def _write_tensor(f: Any, t: Any, e: Entry) -> None:
    """Dequantize GGUF tensor ``t`` into ``f`` as float32 in HF layout (row-major ``e.shape``)."""
    from gguf.quants import dequantize

    data = t.data  # quantized: [rows, bytes per row]; float: [rows, cols] (GGUF order = row-major HF order)
    if e.fix is not None or data.ndim < 2:
        w = dequantize(data, t.tensor_type).astype(np.float32, copy=False).reshape(e.shape)
        if e.fix is not None:
            w = e.fix(w)
        f.write(np.ascontiguousarray(w, dtype=np.float32).data)
        return
    rows = data.reshape(-1, data.shape[-1])
    for i in range(0, rows.shape[0], ROWS_PER_SLAB):
        w = dequantize(rows[i:i + ROWS_PER_SLAB], t.tensor_type)
        f.write(np.ascontiguousarray(w, dtype=np.float32).data)


def _open(path: Path, architecture: str | None) -> tuple[Any, str, Any, list[Entry], list[str]]:
    """Read a GGUF file's metadata and plan its tensors: ``(reader, arch, config, entries, unused)``."""
    from gguf import GGUFReader
    from transformers import AutoConfig

    reader = GGUFReader(str(path))
    f = reader.fields["general.architecture"]
    arch = bytes(f.parts[f.data[0]]).decode()
    if arch not in SUPPORTED:
        raise ModelError(f"{path.name}: GGUF architecture {arch!r} is not one phaselens dequantizes itself "
                         f"({', '.join(SUPPORTED)})")
    config = AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
    if architecture or not getattr(config, "architectures", None):
        config.architectures = [architecture or _default_architecture(config)]
    config.dtype = "float32"
    entries, unused = plan(reader, arch, config)
    return reader, arch, config, entries, unused


def _write_weights(fh: Any, reader: Any, entries: list[Entry]) -> None:
    by_name = {t.name: t for t in reader.tensors}
    fh.write(_header(entries))
    for e in entries:
        _write_tensor(fh, by_name[e.gguf_name], e)


def dequantize_to_folder(path: str | os.PathLike, out: str | os.PathLike, *, architecture: str | None = None,
                         source: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write the GGUF file ``path`` as a Hugging Face folder ``out`` (config, tokenizer, float32 safetensors) with
    its manifest (:mod:`phaselens.manifest`): the weights are hashed as they are written, the source as it is read.

    The folder appears atomically (written to a temporary sibling, then renamed). ``source``: the source's
    :func:`~phaselens.manifest.source_record` when the caller has it already. Returns what was done:
    ``{"seconds", "tensors", "bytes", "unused", "architecture", "manifest"}``.
    """
    from transformers import AutoTokenizer

    path, out = Path(path), Path(out)
    t0 = time.perf_counter()
    source = source or manifest.source_record(path)
    reader, arch, config, entries, unused = _open(path, architecture)
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    with writing_folder(out) as tmp:
        with writing(tmp / "model.safetensors") as fh:
            hw = manifest.HashingWriter(fh)
            _write_weights(hw, reader, entries)
            weights = hw.hexdigest()
        config.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        files = {p.name: manifest.file_record(p, weights if p.name == "model.safetensors" else None)
                 for p in sorted(tmp.iterdir()) if p.is_file()}
        m = {"format": manifest.FORMAT, "hash": manifest.HASH, "files": files, "source": source}
        manifest.write_manifest(tmp, files, source)
    return {"seconds": time.perf_counter() - t0, "tensors": len(entries), "bytes": files["model.safetensors"]["size"],
            "unused": unused, "architecture": arch, "manifest": m}


class _NullSink:
    def write(self, data: Any) -> int:
        return len(memoryview(data).cast("B"))


def dequantized_weights_hash(path: str | os.PathLike, *, architecture: str | None = None) -> str:
    """The content hash :func:`dequantize_to_folder` would give ``model.safetensors`` (dequantized, hashed, nothing
    written): checks a cache written before manifests existed against its source."""
    path = Path(path)
    reader, _, _, entries, _ = _open(path, architecture)
    hw = manifest.HashingWriter(_NullSink())  # type: ignore[arg-type]
    _write_weights(hw, reader, entries)
    return hw.hexdigest()


def write_small_files(path: str | os.PathLike, out: str | os.PathLike, *, architecture: str | None = None) -> list[str]:
    """Write the config and tokenizer files of the GGUF file ``path`` into the existing folder ``out`` (each file
    atomically); returns their names."""
    from transformers import AutoTokenizer

    path, out = Path(path), Path(out)
    _, _, config, _, _ = _open(path, architecture)
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.small") as d:
        tmp = Path(d)
        config.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        names = sorted(p.name for p in tmp.iterdir() if p.is_file())
        for n in names:
            os.replace(tmp / n, out / n)
    return names


def _default_architecture(config: Any) -> str:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM._model_mapping[type(config)].__name__


def dequantize_with_transformers(path: Path, save_to: Path, *, architecture: str | None = None) -> dict[str, Any]:
    """The baseline first load: transformers' ``from_pretrained(gguf_file=...)`` (the whole model dequantized in
    memory), then ``save_pretrained`` into ``save_to`` (atomically). Returns ``{"seconds"}``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    hf = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    if not getattr(hf.config, "architectures", None):
        hf.config.architectures = [architecture or type(hf).__name__]
    # The dequantized weights are plain tensors now: drop the GGUF quantizer so it can be saved.
    hf.hf_quantizer = None
    if hasattr(hf.config, "quantization_config"):
        del hf.config.quantization_config
    source = manifest.source_record(path)
    with writing_folder(save_to) as tmp:  # atomic: an interrupted first load leaves no half-written cache
        hf.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        files = {p.name: manifest.file_record(p) for p in sorted(tmp.iterdir()) if p.is_file()}  # read back once
        manifest.write_manifest(tmp, files, source)
    del hf
    return {"seconds": time.perf_counter() - t0,
            "manifest": {"format": manifest.FORMAT, "hash": manifest.HASH, "files": files, "source": source}}
