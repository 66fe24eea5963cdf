"""The prefix cache: block inputs of earlier passes, keyed by content."""

from __future__ import annotations

import torch


class PrefixCache:
    """Block inputs of earlier passes, replayed where a later pass would compute exactly the same.

    Entries are keyed by the batch's content (:attr:`Batch.key`) and, per block ``b``, by the hash of
    what blocks ``0..b-1`` compute (:func:`chain` of the view's signature). A pass replays the deepest
    block input whose whole prefix matches, so two different batches, or two views that differ before
    the replayed block, never share an entry.

    ``recording`` (default True) stores the inputs of the blocks a pass computes (one version per batch
    and block, the latest); set it False to replay without storing (trying candidate cuts). Memory:
    ``(L + 1) x tokens x d`` values in the model's dtype for a fully recorded pass.
    """

    def __init__(self, *, device: str | torch.device = "cpu", recording: bool = True) -> None:
        self.device = torch.device(device)
        self.recording = recording
        self.store: dict[str, dict[int, tuple[str, torch.Tensor]]] = {}

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
        self.store.setdefault(key, {})[b] = (prefix_hash, h.detach().to(self.device, copy=True))

    def clear(self) -> None:
        self.store.clear()

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for slot in self.store.values() for _, t in slot.values())
