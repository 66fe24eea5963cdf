"""Files phaselens writes and reads, under attack: saving never deletes other data, and every file it is handed
(result JSON, array side file, lens, recovery) is untrusted: a crafted one ends in a phaselens error naming the
file and what is wrong, before any forward pass, and never hangs or reads without bound.

Each refusal asserts the exception type, the named thing in its message, and (where a model is involved) zero
forward passes; each integrity case asserts that the other data are unharmed. Property tests (hypothesis)
generate many bad references, sizes and nesting depths."""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import shutil
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import phaselens as pl
from phaselens import files
from phaselens.errors import LensError, RecoveryError, ResultsError
from test_plots import synthetic_trace

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                           HealthCheck.too_slow])


# ----------------------------------------------------------------------------- helpers
def _doc(path: Path) -> dict:
    return json.loads(path.read_text())


def _put(path: Path, doc: dict) -> Path:
    path.write_text(json.dumps(doc))
    return path


def _sides(folder: Path, stem: str) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(stem + ".") and p.name.endswith(".safetensors"))


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file() and not p.is_symlink()}


def _same_trace(a, b) -> bool:
    return np.array_equal(a.logits, b.logits) and np.array_equal(a.answers, b.answers)


def _side_file(folder: Path, stem: str, blob: bytes, ref_stem: str | None = None) -> tuple[str, str]:
    """Write ``blob`` as a side file named as phaselens names it; ``(name, sha256)``."""
    sha = hashlib.sha256(blob).hexdigest()
    name = f"{ref_stem or stem}.{sha[:12]}.safetensors"
    (folder / name).write_bytes(blob)
    return name, sha


# ----------------------------------------------------------------------------- data loss
def _writer(folder: str, trial_count: int, k: int, barrier) -> None:
    """One of several processes: in every trial, wait for the others, then save result ``a`` (its own data)."""
    for trial in range(trial_count):
        t = synthetic_trace(seed=1000 * trial + k)
        barrier.wait(timeout=120)
        t.save(Path(folder) / f"trial{trial}", "a")


def test_concurrent_writers_leave_every_result_readable(tmp_path):
    """4 processes save the same name at the same moment, 24 times: every trial's result loads (its side file is
    there and matches), it is one of the writers' data, and no side file or temporary is left over."""
    ctx = mp.get_context("fork")
    n_proc, n_trials = 4, 24
    for trial in range(n_trials):
        (tmp_path / f"trial{trial}").mkdir()
    barrier = ctx.Barrier(n_proc)
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), n_trials, k, barrier)) for k in range(n_proc)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(300)
    for p in procs:
        if p.is_alive():
            p.terminate()
    assert [p.exitcode for p in procs] == [0] * n_proc  # a writer that failed (or hung) fails the test
    for trial in range(n_trials):
        folder = tmp_path / f"trial{trial}"
        got = pl.load_result(folder / "a.json")
        assert any(_same_trace(got, synthetic_trace(seed=1000 * trial + k)) for k in range(n_proc))
        assert _sides(folder, "a") == [_doc(folder / "a.json")["arrays"]["file"]]
        assert sorted(p.name for p in folder.iterdir()) == sorted(["a.json", _sides(folder, "a")[0]])


def test_threads_writing_one_folder_are_serialised(tmp_path):
    """The folder lock also excludes threads of one process (flock per open file description)."""
    import threading

    errors = []

    def save(k):
        try:
            for i in range(5):
                synthetic_trace(seed=10 * k + i).save(tmp_path, "a")
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    ts = [threading.Thread(target=save, args=(k,)) for k in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors
    assert pl.load_result(tmp_path / "a.json").n_items == 24
    assert len(_sides(tmp_path, "a")) == 1


def test_a_backup_copy_keeps_its_arrays(tmp_path):
    old, new = synthetic_trace(seed=1), synthetic_trace(seed=2)
    old.save(tmp_path, "a")
    shutil.copy(tmp_path / "a.json", tmp_path / "a_backup.json")
    new.save(tmp_path, "a")
    assert _same_trace(pl.load_result(tmp_path / "a_backup.json"), old)
    assert _same_trace(pl.load_result(tmp_path / "a.json"), new)
    # once no JSON names the old side file, the next save deletes it; the backup's file stays while it is named
    (tmp_path / "a_backup.json").unlink()
    synthetic_trace(seed=3).save(tmp_path, "a")
    assert _sides(tmp_path, "a") == [_doc(tmp_path / "a.json")["arrays"]["file"]]


def test_resaving_the_same_data_keeps_the_side_file(tmp_path):
    t = synthetic_trace(seed=1)
    t.save(tmp_path, "a")
    t.save(tmp_path, "a")
    assert _same_trace(pl.load_result(tmp_path / "a.json"), t) and len(_sides(tmp_path, "a")) == 1


@pytest.mark.bad_input
@pytest.mark.parametrize("target", ["keep.json", "b_side", "outside"])
def test_a_crafted_reference_never_deletes_what_it_names(tmp_path, target):
    """``a.json`` naming another file (a user's JSON, another result's side file, a file outside the folder):
    loading it is refused naming the reference, and saving a new ``a`` leaves that file as it was."""
    folder = tmp_path / "r"
    synthetic_trace(seed=1).save(folder, "a")
    synthetic_trace(seed=2).save(folder, "b")
    (folder / "keep.json").write_text('{"mine": 1}')
    outside = tmp_path / "outside.0123456789ab.safetensors"
    outside.write_bytes(b"precious")
    doc = _doc(folder / "a.json")
    ref = {"keep.json": "keep.json", "b_side": _doc(folder / "b.json")["arrays"]["file"],
           "outside": f"../{outside.name}"}[target]
    doc["arrays"]["file"] = ref
    _put(folder / "a.json", doc)
    if target != "b_side":  # b's side file has phaselens' form, but its hash is not a's checksum
        with pytest.raises(ResultsError, match="a.json") as e:
            pl.load_result(folder / "a.json")
        assert repr(ref) in str(e.value)
    before = _snapshot(folder)
    synthetic_trace(seed=3).save(folder, "a")
    after = _snapshot(folder)
    assert {k: v for k, v in before.items() if not k.startswith("a.")} == \
        {k: v for k, v in after.items() if not k.startswith("a.")}
    assert outside.read_bytes() == b"precious"
    assert _same_trace(pl.load_result(folder / "b.json"), synthetic_trace(seed=2))
    assert _same_trace(pl.load_result(folder / "a.json"), synthetic_trace(seed=3))


# ----------------------------------------------------------------------------- untrusted result files
@pytest.fixture
def saved(tmp_path) -> Path:
    synthetic_trace(seed=1).save(tmp_path, "a")
    synthetic_trace(seed=2).save(tmp_path, "b")
    return tmp_path / "a.json"


@pytest.mark.bad_input
@pytest.mark.parametrize("ref", ["../../etc/passwd", "/etc/hostname", "sub/a.0123456789ab.safetensors",
                                 ".a.0123456789ab.safetensors", "a.safetensors", "", 7, None, ["x"]])
def test_side_file_references_outside_the_form_are_refused(saved, ref):
    doc = _doc(saved)
    doc["arrays"]["file"] = ref
    _put(saved, doc)
    with pytest.raises(ResultsError, match="a.json") as e:
        pl.load_result(saved)
    assert repr(ref) in str(e.value) and "side-file reference" in str(e.value)


@pytest.mark.bad_input
@pytest.mark.parametrize("arrays", [{"file": "x"}, {"sha256": "0" * 64}, [], "a.safetensors", {"file": "x", "sha256": "0" * 64,
                                                                                               "extra": 1}])
def test_a_malformed_arrays_entry_is_refused(saved, arrays):
    doc = _doc(saved)
    doc["arrays"] = arrays
    _put(saved, doc)
    with pytest.raises(ResultsError, match=r"a\.json: its 'arrays' entry must hold 'file' and 'sha256'"):
        pl.load_result(saved)


@pytest.mark.bad_input
def test_a_missing_sha256_is_a_results_error(saved):
    doc = _doc(saved)
    del doc["arrays"]["sha256"]
    _put(saved, doc)
    with pytest.raises(ResultsError, match=r"a\.json.*sha256"):
        pl.load_result(saved)


@pytest.mark.bad_input
def test_a_bad_sha256_is_refused(saved):
    doc = _doc(saved)
    doc["arrays"]["sha256"] = "not hex"
    _put(saved, doc)
    with pytest.raises(ResultsError, match=r"a\.json: its recorded sha256 'not hex'"):
        pl.load_result(saved)


def _craft_side(path: Path, blob: bytes) -> None:
    """Point the result ``path`` at a side file holding ``blob``, with a matching checksum (an attacker's file)."""
    doc = _doc(path)
    name, sha = _side_file(path.parent, path.stem, blob)
    doc["arrays"] = {"file": name, "sha256": sha}
    _put(path, doc)


@pytest.mark.bad_input
@pytest.mark.parametrize("n", [2**60, 2**64 - 1, 10**6, 0])
def test_a_side_file_declaring_a_huge_header_is_refused(saved, n):
    _craft_side(saved, struct.pack("<Q", n) + b'{"a0":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}' + b"\0" * 4)
    with pytest.raises(ResultsError, match=rf"a\.json: its array file a\.[0-9a-f]{{12}}\.safetensors declares a "
                                           rf"safetensors header of {n:,} bytes"):
        pl.load_result(saved)


@pytest.mark.bad_input
def test_a_side_file_with_a_bad_body_is_refused(saved):
    header = b'{"a0":{"dtype":"F32","shape":[1000000000],"data_offsets":[0,4000000000]}}'
    _craft_side(saved, struct.pack("<Q", len(header)) + header + b"\0" * 8)
    with pytest.raises(ResultsError, match=r"a\.json: its array file .* is not a valid safetensors file"):
        pl.load_result(saved)


@pytest.mark.bad_input
@pytest.mark.timeout(60)
def test_a_side_file_linked_to_dev_zero_is_refused_unread(saved):
    doc = _doc(saved)
    name = f"a.{doc['arrays']['sha256'][:12]}.safetensors"
    (saved.parent / name).unlink()
    (saved.parent / name).symlink_to("/dev/zero")
    with pytest.raises(ResultsError, match=rf"{name} is a symbolic link"):
        pl.load_result(saved)


@pytest.mark.bad_input
@pytest.mark.timeout(60)
def test_a_side_file_linked_to_a_real_one_is_refused(saved):
    """Even a link to the right bytes: side files are read only from the folder itself, never through a link."""
    doc = _doc(saved)
    side = saved.parent / doc["arrays"]["file"]
    real = saved.parent.parent / "elsewhere.safetensors"
    shutil.move(side, real)
    side.symlink_to(real)
    with pytest.raises(ResultsError, match="symbolic link"):
        pl.load_result(saved)


@pytest.mark.bad_input
def test_a_missing_side_file_is_named(saved):
    doc = _doc(saved)
    (saved.parent / doc["arrays"]["file"]).unlink()
    with pytest.raises(ResultsError, match=rf"a\.json: its array file {doc['arrays']['file']} is missing"):
        pl.load_result(saved)


@pytest.mark.bad_input
@pytest.mark.timeout(60)
def test_a_fifo_named_json_never_hangs(saved):
    fifo = saved.parent / "x.json"
    os.mkfifo(fifo)
    with pytest.warns(UserWarning, match=r"x\.json.*FIFO"):
        got = pl.load_results(saved.parent, skip_corrupt=True)
    assert sorted(got) == ["a", "b"]
    with pytest.raises(ResultsError, match=r"x\.json is a FIFO"):
        pl.load_results(saved.parent)
    with pytest.raises(ResultsError, match=r"x\.json is a FIFO"):
        pl.load_result(fifo)
    synthetic_trace(seed=5).save(saved.parent, "a")  # a writer scanning the folder does not open it either
    assert _same_trace(pl.load_result(saved), synthetic_trace(seed=5))


@pytest.mark.bad_input
@pytest.mark.timeout(60)
def test_a_result_that_is_a_device_or_folder_is_refused(tmp_path):
    (tmp_path / "d.json").mkdir()
    (tmp_path / "z.json").symlink_to("/dev/zero")
    with pytest.raises(ResultsError, match=r"z\.json is a character device"):
        pl.load_result(tmp_path / "z.json")
    with pytest.raises(ResultsError, match=r"d\.json is a folder"):
        pl.load_result(tmp_path / "d.json")
    with pytest.raises(ResultsError, match=r"cannot write the result .*d\.json: it is a folder"):
        synthetic_trace().save(tmp_path, "d")


@pytest.mark.bad_input
def test_a_json_link_out_of_the_folder_is_refused(saved, tmp_path_factory):
    other = tmp_path_factory.mktemp("other")
    synthetic_trace(seed=4).save(other, "c")
    (saved.parent / "c.json").symlink_to(other / "c.json")
    with pytest.raises(ResultsError, match=r"c\.json is a link to .*outside"):
        pl.load_results(saved.parent)


@pytest.mark.bad_input
@pytest.mark.parametrize("depth", [100_000, files.MAX_JSON_DEPTH + 1])
def test_deeply_nested_json_is_refused(saved, depth):
    saved.write_text('{"kind": "DecisionTrace", "format": 2, "data": ' + "[" * depth + "]" * depth + "}")
    with pytest.raises(ResultsError, match=rf"a\.json: nested deeper than the {files.MAX_JSON_DEPTH} levels"):
        pl.load_result(saved)
    with pytest.warns(UserWarning, match=r"a\.json: nested deeper"):
        assert sorted(pl.load_results(saved.parent, skip_corrupt=True)) == ["b"]


@pytest.mark.bad_input
def test_a_header_kind_that_does_not_match_the_data_is_refused(saved):
    doc = _doc(saved)
    doc["kind"] = "Transition"
    _put(saved, doc)
    with pytest.raises(ResultsError, match=r"a\.json: its header says kind 'Transition', but its data hold a "
                                           r"DecisionTrace"):
        pl.load_result(saved)


@pytest.mark.bad_input
@pytest.mark.parametrize("data, what", [({"__range__": "abc"}, "TypeError"), ({"__items__": [[{"a": 1}, 2]]}, "TypeError"),
                                        ({"__array__": ["x"]}, "TypeError"), ({"__float__": "x"}, "ValueError")])
def test_data_that_do_not_decode_are_refused(saved, data, what):
    doc = _doc(saved)
    doc["data"] = data
    _put(saved, doc)
    with pytest.raises(ResultsError, match=rf"a\.json: its data do not decode \({what}"):
        pl.load_result(saved)


@pytest.mark.bad_input
@pytest.mark.parametrize("limit, name", [("MAX_JSON_BYTES", "a.json"), ("MAX_SIDE_BYTES", "array file")])
def test_size_limits(saved, monkeypatch, limit, name):
    monkeypatch.setattr(files, limit, 100)
    with pytest.raises(ResultsError, match=rf"more than the 100 a (result file|result's array file) may have") as e:
        pl.load_result(saved)
    assert "a." in str(e.value)


@pytest.mark.bad_input
def test_a_huge_sparse_json_is_refused_unread(tmp_path):
    big = tmp_path / "big.json"
    with open(big, "wb") as f:
        f.truncate(files.MAX_JSON_BYTES + 1)
    with pytest.raises(ResultsError, match=rf"big\.json is {files.MAX_JSON_BYTES + 1:,} bytes, more than"):
        pl.load_result(big)


@pytest.mark.bad_input
@pytest.mark.parametrize("text", ["[1, 2]", '"x"', "NaN", '{"kind": "DecisionTrace", "format": 2, "data": NaN}',
                                  '{"kind": 3, "format": 2, "data": {}}'])
def test_json_that_is_no_result_is_refused(saved, text):
    saved.write_text(text)
    with pytest.raises(ResultsError, match=r"a\.json"):
        pl.load_result(saved)


# ----------------------------------------------------------------------------- property tests: results
_GOOD = "a.{}.safetensors"
bad_refs = st.one_of(
    st.text(max_size=40),
    st.builds(lambda p, n: p + n, st.sampled_from(["../", "/", "./", "sub/", "..\\", "~/", "/etc/"]), st.text(max_size=20)),
    st.builds(lambda h: f"a.{h}.safetensors", st.text(alphabet="0123456789abcdefABCDEF", min_size=0, max_size=20)),
    st.builds(lambda s: f"{s}.0123456789ab.safetensors", st.sampled_from(["../a", "/tmp/a", "x/../a", ".hidden", "a\x00b"])),
    st.integers(), st.none(), st.lists(st.text(max_size=3), max_size=2), st.dictionaries(st.text(max_size=3), st.integers(),
                                                                                          max_size=2),
)


@pytest.mark.bad_input
@SETTINGS
@given(ref=bad_refs)
def test_property_bad_references_are_refused_and_harm_nothing(tmp_path_factory, ref):
    folder = tmp_path_factory.mktemp("refs")
    synthetic_trace(seed=1).save(folder, "a")
    synthetic_trace(seed=2).save(folder, "b")
    (folder / "keep.json").write_text("{}")
    doc = _doc(folder / "a.json")
    sha = doc["arrays"]["sha256"]
    if ref == _GOOD.format(sha[:12]):
        return  # the one good reference
    doc["arrays"]["file"] = ref
    _put(folder / "a.json", doc)
    with pytest.raises(ResultsError, match=r"a\.json") as e:
        pl.load_result(folder / "a.json")
    assert "side-file reference" in str(e.value) or "is missing" in str(e.value)
    keep = {k: v for k, v in _snapshot(folder).items() if not k.startswith("a.")}
    synthetic_trace(seed=3).save(folder, "a")
    assert {k: v for k, v in _snapshot(folder).items() if not k.startswith("a.")} == keep
    assert _same_trace(pl.load_result(folder / "b.json"), synthetic_trace(seed=2))


@pytest.mark.bad_input
@SETTINGS
@given(n=st.integers(min_value=0, max_value=2**64 - 1), body=st.binary(max_size=64))
def test_property_side_file_header_sizes(tmp_path_factory, n, body):
    folder = tmp_path_factory.mktemp("hdr")
    synthetic_trace(seed=1).save(folder, "a")
    blob = struct.pack("<Q", n) + body
    _craft_side(folder / "a.json", blob)
    with pytest.raises(ResultsError, match=r"a\.json: its array file"):
        pl.load_result(folder / "a.json")


@pytest.mark.bad_input
@SETTINGS
@given(depth=st.integers(min_value=1, max_value=300_000), open_=st.sampled_from(["[", '{"k":']))
def test_property_nesting_depth(tmp_path_factory, depth, open_):
    """Nesting up to the limit loads (in the provenance, which is free-form); deeper is refused, never a
    RecursionError."""
    folder = tmp_path_factory.mktemp("deep")
    path = synthetic_trace(seed=1).save(folder, "a")
    doc = _doc(path)
    close = "]" if open_ == "[" else "}"
    nested = open_ * depth + "1" + close * depth
    text = json.dumps({**doc, "provenance": {"x": "@"}}).replace('"@"', nested)
    path.write_text(text)
    total = depth + 2  # the document and the provenance are two levels
    if total <= files.MAX_JSON_DEPTH:
        assert _same_trace(pl.load_result(path), synthetic_trace(seed=1))
    else:
        with pytest.raises(ResultsError, match=r"a\.json: nested deeper"):
            pl.load_result(path)


@pytest.mark.bad_input
@SETTINGS
@given(size=st.integers(min_value=1, max_value=2**20))
def test_property_json_size_limit(tmp_path_factory, size):
    folder = tmp_path_factory.mktemp("size")
    path = synthetic_trace(seed=1).save(folder, "a")
    n = path.stat().st_size
    old = files.MAX_JSON_BYTES
    files.MAX_JSON_BYTES = size
    try:
        if n <= size:
            assert pl.load_result(path).n_items == 24
        else:
            with pytest.raises(ResultsError, match=rf"a\.json is {n:,} bytes, more than the {size:,}"):
                pl.load_result(path)
    finally:
        files.MAX_JSON_BYTES = old


# ----------------------------------------------------------------------------- lens and recovery files
TEXT = ["The capital of France is Paris, the largest city of the country and its political centre."] * 12
QUESTION = [{"question": "The capital of France is", "options": ["Paris", "London"], "answer": 0}]


@pytest.fixture(scope="module")
def lens_file(tiny_llama, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("lens") / "lens.safetensors"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pl.fit_lens(tiny_llama, "linear", TEXT).save(path)
    return path


@pytest.fixture(scope="module")
def recovery_file(tiny_llama, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("rec") / "rec.safetensors"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pl.fit_recovery(pl.prune(tiny_llama, [2, 3]), TEXT).save(path)
    return path


def _meta(path: Path) -> dict[str, str]:
    with safe_open(str(path), "pt") as f:
        return dict(f.metadata())


def _variant(src: Path, dst: Path, meta: dict | None = None, tensors=None) -> Path:
    t = load_file(src)
    m = {**_meta(src), **(meta or {})}
    save_file(tensors(t) if tensors else t, dst, metadata=m)
    return dst


def _refused_before_forward(model, count_forwards, error, match, fn):
    with count_forwards(model) as c:
        with pytest.raises(error, match=match):
            fn()
    assert c.n == 0


@pytest.mark.bad_input
@pytest.mark.parametrize("meta, tensors, match", [
    ({"d_model": "32"}, None, "hidden size is 32"),
    ({"n_blocks": "4"}, None, "translator for block 3, but model has blocks 0..3"),
    (None, lambda t: {k: v[:32, :32].contiguous() if k.startswith("W") else v[:32].contiguous() for k, v in t.items()},
     r"shapes \(32, 32\) and \(32,\)"),
    ({"info": "[1, 2]"}, None, "its metadata 'info' holds a list"),
    ({"info": "[" * 100_000 + "]" * 100_000}, None, "its metadata 'info': nested deeper"),
    ({"info": "{"}, None, "its metadata 'info': not readable JSON"),
    ({"n_blocks": "six"}, None, "its metadata is malformed"),
    (None, lambda t: {k: v.to(torch.int64) for k, v in t.items()}, "hold torch.int64 values"),
    (None, lambda t: {**t, "W.x": t["W.0"].clone()}, "tensor named 'W.x'"),
])
def test_lens_metadata_that_disagrees_with_its_tensors(tiny_llama, lens_file, tmp_path, count_forwards, meta, tensors,
                                                       match):
    bad = _variant(lens_file, tmp_path / "bad.safetensors", meta, tensors)
    task = pl.load_task(QUESTION)
    for fn in (lambda: pl.load_lens(bad, tiny_llama), lambda: pl.decision_trace(tiny_llama, task, lens=str(bad))):
        _refused_before_forward(tiny_llama, count_forwards, LensError, rf"bad\.safetensors.*{match}", fn)


@pytest.mark.bad_input
@pytest.mark.parametrize("meta, tensors, match", [
    ({"removed": '"23"'}, None, "its metadata 'removed' holds a str"),
    ({"removed": "[2.7, 3.2]"}, None, r"'removed' must be a JSON list of block indices \(ints\)"),
    ({"removed": "[true, 3]"}, None, r"'removed' must be a JSON list"),
    ({"removed": "[2, 3, 5]"}, None, r"operators for \[\(2, 4\), \(5, 6\)\], but the file holds \[\(2, 4\)\]"),
    ({"removed": "[1, 2]"}, None, r"an operator for span \(2, 4\), but the cut spans"),
    ({"removed": "[2, 3, 40]"}, None, r"cuts blocks \[40\]"),
    ({"lam": "[1]"}, None, "its metadata 'lam' holds a list"),
    ({"lam": '{"2.4": -1}'}, None, "'lam' has the entry '2.4': -1"),
    ({"lam": '{"0.1": 1.0}'}, None, r"ridges for \[\(0, 1\)\], which are not cut spans"),
    ({"n_tokens": "-5"}, None, "'n_tokens' is '-5'"),
    ({"method": "bogus"}, None, "recovery method 'bogus'"),
    (None, lambda t: {k: v[:32, :32].contiguous() for k, v in t.items()}, r"shape \(32, 32\)"),
    (None, lambda t: {k: v.to(torch.int32) for k, v in t.items()}, "dtype torch.int32"),
    (None, lambda t: {**t, "junk": torch.eye(64)}, "tensor named 'junk'"),
    (None, lambda t: {}, r"operators for \[\(2, 4\)\], but the file holds \[\]"),
    (None, lambda t: {k: v * float("nan") for k, v in t.items()}, "NaN or Inf"),
])
def test_recovery_metadata_that_disagrees_with_its_tensors(tiny_llama, recovery_file, tmp_path, count_forwards, meta,
                                                           tensors, match):
    bad = _variant(recovery_file, tmp_path / "bad.safetensors", meta, tensors)
    _refused_before_forward(tiny_llama, count_forwards, RecoveryError, rf"bad\.safetensors.*{match}",
                            lambda: pl.load_recovery(bad, tiny_llama))


def test_good_lens_and_recovery_files_still_load(tiny_llama, lens_file, recovery_file):
    lens = pl.load_lens(lens_file, tiny_llama)
    assert lens.d_model == 64 and lens.blocks == list(range(5))
    rec = pl.load_recovery(recovery_file, tiny_llama)
    assert rec.removed == (2, 3) and list(rec.operators) == [(2, 4)]
    W = load_file(recovery_file)["span.2.4"]
    assert torch.equal(rec.operator((2, 4)).cpu(), W)


@pytest.mark.bad_input
@pytest.mark.timeout(60)
@pytest.mark.parametrize("load, error", [(pl.load_lens, LensError), (pl.load_recovery, RecoveryError)])
@pytest.mark.parametrize("make, match", [
    (lambda p: os.mkfifo(p), "is a FIFO"),
    (lambda p: p.symlink_to("/dev/zero"), "is a character device"),
    (lambda p: p.write_bytes(struct.pack("<Q", 2**60) + b"{}"), "is not a .* file: .*header too large"),
    (lambda p: p.write_bytes(struct.pack("<Q", 100) + b"{}"), "is not a .* file: .*SafetensorError"),
    (lambda p: p.write_bytes(b"\x80\x04" + b"\0" * 30), "looks like a pickle"),
    (lambda p: p.write_bytes(b"abc"), "is not a .* file: it looks like text"),
])
def test_tensor_files_that_are_not_regular_or_lie_about_their_header(tiny_llama, tmp_path, count_forwards, load, error,
                                                                      make, match):
    bad = tmp_path / "bad.safetensors"
    make(bad)
    _refused_before_forward(tiny_llama, count_forwards, error, rf"bad\.safetensors.*{match}", lambda: load(bad, tiny_llama))


@pytest.mark.bad_input
def test_a_huge_header_limit_is_the_module_limit(tiny_llama, lens_file, tmp_path, monkeypatch):
    monkeypatch.setattr(files, "MAX_HEADER_BYTES", 64)
    with pytest.raises(LensError, match=r"lens\.safetensors is not a lens file: its safetensors header is .* bytes, "
                                        r"more than the 64 phaselens reads"):
        pl.load_lens(lens_file, tiny_llama)


@pytest.mark.bad_input
@SETTINGS
@given(removed=st.recursive(st.one_of(st.none(), st.booleans(), st.floats(allow_nan=False), st.text(max_size=4),
                                      st.integers(-3, 9)),
                            lambda c: st.one_of(st.lists(c, max_size=3), st.dictionaries(st.text(max_size=2), c, max_size=2)),
                            max_leaves=6))
def test_property_recovery_removed_metadata(tiny_llama, recovery_file, tmp_path_factory, removed):
    """Any ``removed`` other than the list [2, 3] the operators were fitted for is refused, naming the file."""
    if removed == [2, 3] and all(type(b) is int for b in removed):
        return
    bad = _variant(recovery_file, tmp_path_factory.mktemp("rm") / "bad.safetensors", {"removed": json.dumps(removed)})
    with pytest.raises(RecoveryError, match=r"bad\.safetensors"):
        pl.load_recovery(bad, tiny_llama)


@pytest.mark.bad_input
@SETTINGS
@given(d=st.integers(1, 200), blocks=st.integers(-2, 12), width=st.integers(1, 96))
def test_property_lens_widths_and_block_counts(tiny_llama, lens_file, tmp_path_factory, d, blocks, width):
    """A lens whose declared width, block count or translator width disagree with each other or the model is
    refused on loading, naming the file."""
    if (d, blocks, width) == (64, 6, 64):
        return
    bad = _variant(lens_file, tmp_path_factory.mktemp("ln") / "bad.safetensors", {"d_model": str(d), "n_blocks": str(blocks)},
                   lambda t: {k: (v[:width, :width] if k.startswith("W") else v[:width]).contiguous()
                              if width <= 64 else torch.zeros((width, width) if k.startswith("W") else (width,))
                              for k, v in t.items()})
    with pytest.raises(LensError, match=r"bad\.safetensors"):
        pl.load_lens(bad, tiny_llama)


@pytest.mark.bad_input
@pytest.mark.timeout(300)
@pytest.mark.parametrize("damage", ["fifo", "garbage", "other shape"])
def test_a_damaged_tuned_lens_checkpoint_is_ignored_with_a_warning(tiny_llama, tmp_path, damage):
    """A checkpoint that is not the one this training wrote (a FIFO, garbage, tensors of another shape) is ignored
    with a warning naming it, and the lens is trained from step 0: the same translators as a fresh run."""
    from phaselens.calibration import load_calibration

    kw = dict(steps=4, lr=3e-3, batch_tokens=64, max_train_tokens=300, vocab=128, progress=False)
    cal = load_calibration()[:4]
    fresh = pl.fit_lens(tiny_llama, "tuned", cal, seed=0, **kw)
    pl.fit_lens(tiny_llama, "tuned", cal, seed=0, out=tmp_path, **kw)  # leaves its state folder and checkpoint
    ckpt = tmp_path / ".phaselens" / "tuned_lens" / "checkpoint.safetensors"
    assert ckpt.is_file()
    ckpt.unlink()
    if damage == "fifo":
        os.mkfifo(ckpt)
    elif damage == "garbage":
        ckpt.write_bytes(b"\x80\x04garbage" * 10)
    else:
        save_file({"A": torch.zeros(2, 3, 3), "b": torch.zeros(2, 3)}, ckpt, metadata={"step": "2"})
    with pytest.warns(UserWarning, match=r"ignoring the tuned-lens checkpoint .*checkpoint\.safetensors"):
        again = pl.fit_lens(tiny_llama, "tuned", cal, seed=0, out=tmp_path, **kw)
    for b in fresh.blocks:
        assert torch.equal(fresh.weights[b], again.weights[b]) and torch.equal(fresh.biases[b], again.biases[b])


@pytest.mark.bad_input
@pytest.mark.timeout(60)
def test_a_run_unit_that_is_a_fifo_is_recomputed_not_read(tmp_path):
    from phaselens.resume import RunFolder

    with RunFolder(tmp_path, "sweep", {"x": 1}) as run:
        run.save("step_000", {"n": 1})
        assert run.load("step_000") == {"n": 1}
        unit = run.path / "step_000.json"
        unit.unlink()
        os.mkfifo(unit)
        with pytest.warns(UserWarning, match=r"step_000\.json is a FIFO.*recomputing it"):
            assert run.load("step_000") is None
        unit.unlink()
        run.save("step_000", {"n": 2})  # the unit is written again and reads back
        assert run.load("step_000") == {"n": 2}
