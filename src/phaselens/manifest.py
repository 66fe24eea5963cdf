"""The manifest of a dequantized model cache: what each cached file must hold, and which source it came from.

A cache folder (``$PHASELENS_CACHE/models/<name>``) holds ``manifest.json`` beside the model files::

    {"format": 1, "hash": "xxh3_128/64MiB",
     "files": {"model.safetensors": {"size": 538164736, "hash": "9c0e..."}, "config.json": {...}, ...},
     "source": {"path": ".../x.gguf", "size": ..., "mtime_ns": ..., "ctime_ns": ..., "ino": ..., "hash": "..."}}

``hash`` is a tree of xxHash3-128 digests (xxhash, PyPI): the file is cut into 64 MiB pieces, each piece is
hashed, and the file's hash is the xxh3-128 of the piece digests and the size. A file is hashed through a read-only
memory map, in place in the page cache (no copy), each piece in one call that releases the GIL, so pieces can be
hashed in threads while the model loads; a writer hashes the bytes as they are written (:class:`HashingWriter`), so
a new cache costs no second read.

A size-and-mtime check alone misses same-size damage (zeroed pages, a flipped bit); the content hash does not.
The source's size, mtime, ctime and inode are recorded too: when they still match, the source is taken as unchanged
without reading it (ctime cannot be set back by a user, so an edit that restores the mtime is still seen);
otherwise its content hash decides. Floor 0: imports nothing of phaselens but its errors and atomic writer.
"""

from __future__ import annotations

import json
import mmap
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any

import xxhash

from .errors import ModelError
from .files import write_json

NAME = "manifest.json"
FORMAT = 1
PIECE = 64 << 20  # bytes per hashed piece
HASH = "xxh3_128/64MiB"
_WILLNEED = getattr(mmap, "MADV_WILLNEED", None) if hasattr(mmap.mmap, "madvise") else None  # not on Windows


def _combine(digests: list[bytes], size: int) -> str:
    h = xxhash.xxh3_128()
    for d in digests:
        h.update(d)
    h.update(size.to_bytes(8, "little"))
    return h.hexdigest()


class Hasher:
    """The piece-tree hash of a byte stream fed in any chunking: ``update(bytes)`` ..., then :meth:`hexdigest`."""

    def __init__(self) -> None:
        self._digests: list[bytes] = []
        self._piece = xxhash.xxh3_128()
        self._fill = 0
        self.size = 0

    def update(self, data: Any) -> None:
        mv = memoryview(data).cast("B")
        self.size += len(mv)
        while len(mv):
            take = min(PIECE - self._fill, len(mv))
            self._piece.update(mv[:take])
            self._fill += take
            mv = mv[take:]
            if self._fill == PIECE:
                self._digests.append(self._piece.digest())
                self._piece, self._fill = xxhash.xxh3_128(), 0

    def hexdigest(self) -> str:
        digests = self._digests + ([self._piece.digest()] if self._fill or not self._digests else [])
        return _combine(digests, self.size)


class HashingWriter:
    """A binary file wrapper that hashes every byte written (``write``, ``tell``, ``hexdigest``, ``size``)."""

    def __init__(self, f: IO[bytes]) -> None:
        self.f, self.hasher = f, Hasher()

    def write(self, data: Any) -> int:
        self.hasher.update(data)
        return self.f.write(data)

    def tell(self) -> int:
        return self.f.tell()

    def hexdigest(self) -> str:
        return self.hasher.hexdigest()


def _piece_digests(path: Path, threads: int) -> tuple[list[bytes], int]:
    """The xxh3-128 digest of each 64 MiB piece of a file, and its size (both from one open file).

    Each piece is memory-mapped on its own (read-only) and its pages hashed where they lie in the page cache: no copy
    into a buffer (which cost as much as the hash itself), one GIL-free ``xxh3_128_digest`` call per piece, and at
    most ``threads`` pieces mapped at a time (a peak-RSS reading grows by at most that). A piece is advised
    ``MADV_WILLNEED`` first, so a file not in the page cache is read ahead in large requests. Like the model's own
    memory-mapped tensors, this assumes no one truncates the file meanwhile (a cache is replaced by renaming a
    whole folder, never rewritten in place)."""
    with open(path, "rb", buffering=0) as f:
        fd = f.fileno()
        size = os.fstat(fd).st_size
        if size == 0:
            return [xxhash.xxh3_128().digest()], 0  # mmap cannot map an empty file; an empty piece's digest

        def piece(start: int) -> bytes:
            with mmap.mmap(fd, min(PIECE, size - start), access=mmap.ACCESS_READ, offset=start) as mm:
                if _WILLNEED is not None:
                    mm.madvise(_WILLNEED)
                return xxhash.xxh3_128_digest(mm)

        starts = range(0, size, PIECE)
        if threads <= 1 or len(starts) == 1:
            return [piece(s) for s in starts], size
        with ThreadPoolExecutor(min(threads, len(starts))) as pool:
            return list(pool.map(piece, starts)), size


def _cores() -> int:
    """The cores this process may run on (its affinity mask where the OS has one), at most 8 used for hashing."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    return max(1, min(8, n))


def hash_file(path: str | os.PathLike, threads: int | None = None) -> str:
    """The piece-tree hash of a file (its pieces hashed in ``threads`` threads, default one per core up to 8)."""
    digests, size = _piece_digests(Path(path), threads or _cores())
    return _combine(digests, size)


def check_threads() -> int:
    """Threads to hash a cache while it loads: one core is left to the load (one thread on two cores)."""
    return max(1, _cores() - 1)


def file_record(path: str | os.PathLike, digest: str | None = None) -> dict[str, Any]:
    """``{"size", "hash"}`` of a file (``digest`` when it was hashed while written)."""
    return {"size": Path(path).stat().st_size, "hash": digest or hash_file(path)}


def _stat_key(st: os.stat_result) -> dict[str, int]:
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns, "ino": st.st_ino}


def source_record(path: str | os.PathLike) -> dict[str, Any]:
    """What identifies a source file: its resolved path, size, mtime, ctime, inode and content hash."""
    path = Path(path).resolve()
    st = path.stat()
    digest = hash_file(path)
    return {"path": str(path), **_stat_key(st), "hash": digest}


def source_unchanged_on_disk(rec: dict[str, Any], path: Path) -> bool:
    """Whether ``path`` still has the recorded size, mtime, ctime and inode (no read)."""
    try:
        st = path.resolve().stat()
    except OSError:
        return False
    return _stat_key(st) == {k: rec.get(k) for k in ("size", "mtime_ns", "ctime_ns", "ino")}


def write_manifest(folder: str | os.PathLike, files: dict[str, dict[str, Any]], source: dict[str, Any] | None) -> Path:
    """Write ``folder/manifest.json`` (atomically)."""
    return write_json(Path(folder) / NAME, {"format": FORMAT, "hash": HASH, "files": files, "source": source},
                      indent=1, sort_keys=True)


def read_manifest(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The folder's manifest, ``None`` when it has none; a damaged manifest is a :class:`ModelError`."""
    p = Path(folder) / NAME
    if not p.is_file():
        return None
    try:
        m = json.loads(p.read_bytes()[:1 << 20])
        ok = (m.get("format") == FORMAT and m.get("hash") == HASH and isinstance(m.get("files"), dict)
              and all(isinstance(v, dict) and isinstance(v.get("size"), int) and isinstance(v.get("hash"), str)
                      for v in m["files"].values()))
    except (ValueError, AttributeError):
        ok = False
    if not ok:
        raise ModelError(f"{p}: the cache manifest is damaged")
    return m


def size_problems(folder: str | os.PathLike, manifest: dict[str, Any]) -> list[str]:
    """What a stat shows is wrong (no read): files missing, of another size, or not listed in the manifest."""
    folder = Path(folder)
    want = manifest["files"]
    have = {p.name for p in folder.iterdir() if p.name != NAME}
    probs = [f"{n} is missing" for n in sorted(set(want) - have)]
    probs += [f"{n} is not in the manifest" for n in sorted(have - set(want))]
    for n in sorted(set(want) & have):
        size = (folder / n).stat().st_size
        if size != want[n]["size"]:
            probs.append(f"{n} has {size:,} bytes, not {want[n]['size']:,}")
    return probs


def content_problems(folder: str | os.PathLike, manifest: dict[str, Any], threads: int | None = None) -> list[str]:
    """Files whose content hash differs from the manifest's (every byte is hashed, in ``threads`` threads)."""
    folder = Path(folder)
    return [f"{n}'s content differs from what was written" for n, rec in sorted(manifest["files"].items())
            if (folder / n).is_file() and hash_file(folder / n, threads) != rec["hash"]]


def weights_digest(manifest: dict[str, Any]) -> str:
    """One hash of the weight files' content hashes (``*.safetensors``, ``*.bin``), for a model's fingerprint."""
    h = xxhash.xxh3_128()
    for n, rec in sorted(manifest["files"].items()):
        if n.endswith((".safetensors", ".bin")):
            h.update(f"{n}:{rec['hash']};".encode())
    return h.hexdigest()
