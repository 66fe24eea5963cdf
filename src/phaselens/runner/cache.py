"""The prefix cache: block inputs of earlier passes, keyed by content."""

from __future__ import annotations

import os
import warnings

import torch

from ..errors import RunnerError


def available_memory() -> int:
    """Bytes of RAM available now (``MemAvailable`` of ``/proc/meminfo``; 8 GiB where it cannot be read)."""
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable"))
    except (OSError, StopIteration, ValueError):
        return 8 << 30


#: the environment variable giving this process's share of the machine's memory (see :func:`memory_share`)
MEMORY_SHARE_VAR = "PHASELENS_MEMORY_SHARE"
#: the environment variable giving this process's share of its GPU's free memory (see :func:`gpu_share`)
GPU_SHARE_VAR = "PHASELENS_GPU_SHARE"


def _share(var: str, what: str) -> float:
    v = os.environ.get(var)
    if v is None or v == "":
        return 1.0
    try:
        share = float(v)
    except ValueError:
        share = float("nan")
    if not 0 < share <= 1:
        raise RunnerError(f"{var}={v!r}: give a fraction of {what} in (0, 1], e.g. 0.5, or unset it")
    return share


def memory_share() -> float:
    """This process's share of the machine's RAM, in (0, 1], for the default bounds taken from it (a CPU prefix
    cache's ``max_bytes``, the layer schedule's wave budget in RAM): ``PHASELENS_MEMORY_SHARE``, 1 when unset. A
    study's worker processes set it to their part of the machine (1 / workers on it; a Ray actor, its share of its
    node's cores), so that N workers' default bounds add up to one process's, not N times it."""
    return _share(MEMORY_SHARE_VAR, "the machine's memory")


def gpu_share() -> float:
    """This process's share, in (0, 1], of the free GPU memory its default GPU bounds take (a GPU prefix cache's
    ``max_bytes``, the layer schedule's wave budget on the device): ``PHASELENS_GPU_SHARE``, 1 when unset. The
    ``processes`` executor sets 1 / workers (its workers share the machine's GPU: each reads the free memory when its
    cache is made, before the others have filled theirs); a Ray actor its ``num_gpus`` when under 1 (a fraction of
    one GPU)."""
    return _share(GPU_SHARE_VAR, "the GPU's free memory")


class PrefixCache:
    """Block inputs of earlier passes, replayed where a later pass would compute exactly the same.

    Entries are keyed by the batch's content (:attr:`Batch.key`) and, per block ``b``, by the hash of
    what blocks ``0..b-1`` compute (:func:`chain` of the view's signature). A pass replays the deepest
    block input whose whole prefix matches, so two different batches, or two views that differ before
    the replayed block, never share an entry.

    ``recording`` (default True) stores the inputs of the blocks a pass computes (one version per batch
    and block, the latest); set it False to replay without storing (trying candidate cuts). Memory:
    ``(L + 1) x tokens x d`` values in the model's dtype for a fully recorded pass, at most ``max_bytes``
    (default: half the RAM available when the cache is made times :func:`memory_share`, or for a GPU cache half the
    GPU's free memory times :func:`gpu_share`).
    A block input that would pass the bound is not stored (once, a warning says so): later passes replay a
    shallower prefix and compute the rest, so the numbers are the same and only the time saved shrinks.
    """

    def __init__(self, *, device: str | torch.device = "cpu", recording: bool = True,
                 max_bytes: int | None = None) -> None:
        self.device = torch.device(device)
        self.recording = recording
        if max_bytes is not None and (isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0):
            raise RunnerError(f"max_bytes must be a byte count >= 0 or None (half the available memory), got {max_bytes!r}")
        if max_bytes is None:
            if self.device.type == "cuda":
                max_bytes = int(torch.cuda.mem_get_info(self.device)[0] // 2 * gpu_share())
            else:
                max_bytes = int(available_memory() // 2 * memory_share())
        self.max_bytes = int(max_bytes)
        self.store: dict[str, dict[int, tuple[str, torch.Tensor]]] = {}
        self._bytes = 0
        self.dropped = 0  # block inputs not stored because of max_bytes

    def depth(self, key: str, prefix: list[str]) -> int:
        """The deepest ``s`` such that the stored inputs of blocks ``1..s`` all match ``prefix`` (0: none)."""
        slot = self.store.get(key)
        if not slot:
            return 0
        s = 0
        for b in range(1, len(prefix)):
            got = slot.get(b)
            if got is None or got[0] != prefix[b]:
                break
            s = b
        return s

    def get(self, key: str, b: int) -> torch.Tensor:
        return self.store[key][b][1]

    def put(self, key: str, b: int, prefix_hash: str, h: torch.Tensor) -> None:
        slot = self.store.setdefault(key, {})
        old = slot.pop(b, None)  # the latest version replaces it (or, past the bound, it goes: it is stale)
        if old is not None:
            self._bytes -= old[1].numel() * old[1].element_size()
        size = h.numel() * h.element_size()
        if self._bytes + size > self.max_bytes:
            if not self.dropped:
                warnings.warn(f"the prefix cache holds {self._bytes / 2**30:.2f} GiB and its bound is "
                              f"{self.max_bytes / 2**30:.2f} GiB (max_bytes): block inputs past it are not stored, "
                              "so later passes recompute more blocks (same numbers, less time saved)", stacklevel=2)
            self.dropped += 1
            return
        slot[b] = (prefix_hash, h.detach().to(self.device, copy=True))
        self._bytes += size

    def clear(self) -> None:
        self.store.clear()
        self._bytes = 0

    @property
    def nbytes(self) -> int:
        """Bytes of the stored block inputs (at most :attr:`max_bytes`)."""
        return self._bytes
