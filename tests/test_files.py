"""phaselens.files: every file phaselens writes goes through one atomic writer. A failure mid-write (the data is in
the temporary, the fsync or rename fails) leaves the old file exactly as it was and no temporary behind."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import phaselens as pl
from phaselens import files


class Boom(RuntimeError):
    pass


@pytest.fixture
def failing_fsync(monkeypatch):
    """Make every fsync of phaselens.files fail, after the data was written to the temporary."""

    def boom(fd):
        raise Boom("disk gone")

    monkeypatch.setattr(files.os, "fsync", boom)


def _only(folder: Path, names: set[str]) -> None:
    """``folder`` holds exactly ``names`` (no temporary ``.NAME.tmpPID`` left)."""
    assert {p.name for p in folder.iterdir()} == names


def _old(tmp_path: Path, name: str = "f", data: bytes = b"old contents") -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


def test_temporary_is_the_name_the_lock_takeover_sweeps(tmp_path):
    from phaselens import resume

    assert resume.temporary is files.temporary
    assert files.temporary(tmp_path / "a.json", 123) == tmp_path / ".a.json.tmp123"
    assert files.temporary(tmp_path / "a.json").name == f".a.json.tmp{os.getpid()}"


@pytest.mark.parametrize("write, data, read", [
    (files.write_bytes, b"new bytes", Path.read_bytes),
    (files.write_text, "new text é", lambda p: p.read_text("utf-8")),
    (files.write_atomic, "new text", lambda p: p.read_text("utf-8")),
    (files.write_json, {"a": [1, 2.5]}, lambda p: json.loads(p.read_text())),
])
def test_whole_file_writers_write_and_fail_cleanly(tmp_path, monkeypatch, write, data, read):
    p = _old(tmp_path)
    assert write(p, data) == p and read(p) == data
    _only(tmp_path, {"f"})
    monkeypatch.setattr(files.os, "fsync", lambda fd: (_ for _ in ()).throw(Boom("disk gone")))
    with pytest.raises(Boom):
        write(p, data if not isinstance(data, (bytes, str)) else data * 2)
    assert read(p) == data  # the old file is intact
    _only(tmp_path, {"f"})


def test_write_json_refuses_before_touching_anything(tmp_path):
    p = _old(tmp_path)
    with pytest.raises(TypeError):
        files.write_json(p, {"x": object()})
    assert p.read_bytes() == b"old contents"
    _only(tmp_path, {"f"})


def test_write_safetensors(tmp_path, monkeypatch):
    p = tmp_path / "t.safetensors"
    files.write_safetensors(p, {"w": torch.arange(6.0).reshape(2, 3)}, {"k": "v"})
    np.testing.assert_array_equal(load_file(str(p))["w"].numpy(), np.arange(6.0).reshape(2, 3))
    before = p.read_bytes()
    monkeypatch.setattr(files.os, "fsync", lambda fd: (_ for _ in ()).throw(Boom("disk gone")))
    with pytest.raises(Boom):
        files.write_safetensors(p, {"w": torch.zeros(100)}, {"k": "other"})
    assert p.read_bytes() == before
    _only(tmp_path, {"t.safetensors"})


def test_streaming_writer(tmp_path):
    p = _old(tmp_path)
    with files.writing(p) as f:
        for i in range(3):
            f.write(b"chunk%d;" % i)
        assert p.read_bytes() == b"old contents"  # nothing in place until the block ends
    assert p.read_bytes() == b"chunk0;chunk1;chunk2;"
    with pytest.raises(Boom):
        with files.writing(p) as f:
            f.write(b"half")
            raise Boom("killed mid-write")
    assert p.read_bytes() == b"chunk0;chunk1;chunk2;"
    _only(tmp_path, {"f"})
    with files.writing(tmp_path / "t.txt", "w") as f:
        f.write("text é")
    assert (tmp_path / "t.txt").read_text("utf-8") == "text é"
    with pytest.raises(pl.PhaselensError, match="mode"):
        with files.writing(p, "a"):
            pass


def test_folder_writer(tmp_path):
    out = tmp_path / "model"
    with files.writing_folder(out) as d:
        (d / "a").write_text("1")
    assert (out / "a").read_text() == "1"
    with pytest.raises(Boom):
        with files.writing_folder(out) as d:
            (d / "b").write_text("2")
            raise Boom("killed mid-write")
    assert sorted(p.name for p in out.iterdir()) == ["a"]
    _only(tmp_path, {"model"})
    with files.writing_folder(out) as d:  # replaces the old folder
        (d / "c").write_text("3")
    assert sorted(p.name for p in out.iterdir()) == ["c"]
    _only(tmp_path, {"model"})


# ------------------------------------------------------------------ every writer of phaselens goes through it
def _lens() -> pl.Lens:
    return pl.Lens("linear", "m", "fp", 2, 3, {0: torch.eye(3)}, {0: torch.zeros(3)}, {"n": 1})


def test_lens_save_is_atomic(tmp_path, monkeypatch):
    from phaselens.lenses.io import read_lens

    p = _lens().save(tmp_path / "l.safetensors")
    before = p.read_bytes()
    monkeypatch.setattr(files.os, "fsync", lambda fd: (_ for _ in ()).throw(Boom("disk gone")))
    lens = _lens()
    lens.weights[0] = 2 * torch.eye(3)
    with pytest.raises(Boom):
        lens.save(p)
    assert p.read_bytes() == before and torch.equal(read_lens(p).weights[0], torch.eye(3))
    _only(tmp_path, {"l.safetensors"})


def test_tuned_lens_checkpoint_is_atomic(tmp_path, monkeypatch):
    from phaselens.lenses.tuned import _save_ckpt

    A, b = torch.nn.Parameter(torch.eye(2)), torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.Adam([A, b])
    p = tmp_path / "ckpt.safetensors"
    _save_ckpt(p, 1, A, b, opt)
    before = p.read_bytes()
    monkeypatch.setattr(files.os, "fsync", lambda fd: (_ for _ in ()).throw(Boom("disk gone")))
    with pytest.raises(Boom):
        _save_ckpt(p, 2, A, b, opt)
    assert p.read_bytes() == before
    _only(tmp_path, {"ckpt.safetensors"})


def test_result_save_is_atomic(tmp_path, monkeypatch):
    from test_plots import synthetic_trace

    t = synthetic_trace()
    path = t.save(tmp_path, "r")
    before = {q.name: q.read_bytes() for q in tmp_path.iterdir()}
    monkeypatch.setattr(files.os, "fsync", lambda fd: (_ for _ in ()).throw(Boom("disk gone")))
    with pytest.raises(Boom):
        t.save(tmp_path, "r")
    assert {q.name: q.read_bytes() for q in tmp_path.iterdir()} == before
    assert pl.load_result(path).n_items == t.n_items


def test_recovered_save_is_atomic(tiny_llama, tmp_path, monkeypatch):
    rec = pl.fit_recovery(pl.prune(tiny_llama, [2, 3]), ["The capital of France is Paris, the largest city."] * 4)
    p = rec.save(tmp_path / "rec.safetensors")
    before = p.read_bytes()
    monkeypatch.setattr(files.os, "fsync", lambda fd: (_ for _ in ()).throw(Boom("disk gone")))
    with pytest.raises(Boom):
        rec.save(p)
    assert p.read_bytes() == before
    _only(tmp_path, {"rec.safetensors"})


def test_study_index_is_atomic(tmp_path, monkeypatch):
    from phaselens.study.store import INDEX, StudyFolder

    row = {"job": "j1", "status": "done", "order": 0}
    with StudyFolder(tmp_path) as folder:
        folder.write_index({"j1": row})
        before = (tmp_path / INDEX).read_bytes()
        monkeypatch.setattr(files.os, "fsync", lambda fd: (_ for _ in ()).throw(Boom("disk gone")))
        with pytest.raises(Boom):
            folder.write_index({"j1": row, "j2": {**row, "job": "j2"}})
        monkeypatch.undo()
    assert (tmp_path / INDEX).read_bytes() == before
    assert not [p for p in tmp_path.rglob("*") if ".tmp" in p.name]


def test_join_chunks_is_atomic(tmp_path, monkeypatch):
    from phaselens import embedded

    parts = [tmp_path / f"part{i}.bin" for i in (1, 2)]
    for i, p in enumerate(parts):
        p.write_bytes(bytes([i]) * 10)
    monkeypatch.setenv("PHASELENS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(embedded.EMBEDDED, "fake", {"file": "fake.gguf", "size": 20, "pip": "a\nb", "chunks": ["a", "b"]})
    monkeypatch.setattr(embedded, "chunk_paths", lambda key: parts)
    target = embedded.join_chunks("fake")
    assert target.read_bytes() == b"\0" * 10 + b"\1" * 10
    target.write_bytes(b"x" * 20)  # an earlier join of the right size is reused
    assert embedded.join_chunks("fake").read_bytes() == b"x" * 20
    target.write_bytes(b"old")  # a damaged earlier join (wrong size) is rejoined; a failure mid-copy keeps it

    def half(src, dst, length=0):
        dst.write(src.read(3))
        raise Boom("killed mid-copy")

    monkeypatch.setattr(embedded.shutil, "copyfileobj", half)
    with pytest.raises(Boom):
        embedded.join_chunks("fake")
    assert target.read_bytes() == b"old"
    _only(target.parent, {"fake.gguf"})


def test_save_html_is_atomic(tmp_path, monkeypatch):
    import plotly.graph_objects as go

    from phaselens.plots import save_html

    p = tmp_path / "fig.html"
    save_html(go.Figure(), str(p), offline=False)
    before = p.read_bytes()
    assert b"<html>" in before
    monkeypatch.setattr(files.os, "fsync", lambda fd: (_ for _ in ()).throw(Boom("disk gone")))
    with pytest.raises(Boom):
        save_html(go.Figure(go.Scatter(x=[1], y=[2])), str(p), offline=False)
    assert p.read_bytes() == before
    _only(tmp_path, {"fig.html"})
