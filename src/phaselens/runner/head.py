"""Rows of an offloaded unembedding, read without loading the whole matrix.

A readout of the letters / cloze formats needs ``W_U[ids]``: the K options' rows per item, ``[N, K, d]``. When
accelerate offloads the head (or a tied embedding) to the CPU or disk, :func:`head_rows` reads just those rows from
the hook's weights map: a disk memmap (``.dat``) is indexed in place, a safetensors entry is sliced row by row
(``safe_open(...).get_slice``), a CPU state dict is indexed. Anything else falls back to the whole matrix.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from torch import nn


def offloaded_rows(module: nn.Module, name: str, ids: torch.Tensor) -> torch.Tensor | None:
    """``module.<name>[ids]`` (any shape of ``ids``) from accelerate's weights map, on the CPU; None when ``name`` is
    not offloaded there (or is stored in a way that cannot be read by rows)."""
    hook = getattr(module, "_hf_hook", None)
    wmap = getattr(hook, "weights_map", None)
    if wmap is None:
        return None
    key = f"{getattr(wmap, 'prefix', '')}{name}"
    data = getattr(wmap, "dataset", wmap)
    flat = ids.reshape(-1).cpu()
    uniq, inverse = torch.unique(flat, return_inverse=True)
    rows = _rows(data, key, uniq)
    if rows is None:
        return None
    return rows[inverse].reshape(*ids.shape, *rows.shape[1:])


def _rows(data: Any, key: str, uniq: torch.Tensor) -> torch.Tensor | None:
    state = getattr(data, "state_dict", None)
    index = getattr(data, "index", None)
    if state is not None and key in state:
        return state[key][uniq]
    if index is None:  # a plain mapping of tensors (cpu_offload's weights map)
        t = data.get(key) if hasattr(data, "get") else None
        return t[uniq] if isinstance(t, torch.Tensor) else None
    info = index.get(key)
    if info is None:
        return None
    if info.get("safetensors_file") is not None:
        from safetensors import safe_open

        with safe_open(info["safetensors_file"], framework="pt", device="cpu") as f:
            sl = f.get_slice(info.get("weight_name", key))
            rows = torch.stack([sl[int(r): int(r) + 1][0] for r in uniq])
        return rows.to(getattr(torch, info["dtype"])) if "dtype" in info else rows
    folder = getattr(data, "save_folder", None)
    if folder is None or info.get("dtype") in (None, "bfloat16") or str(info["dtype"]).startswith("float8"):
        return None
    mm = np.memmap(os.path.join(folder, f"{key}.dat"), dtype=info["dtype"], shape=tuple(info["shape"]), mode="r")
    return torch.from_numpy(np.ascontiguousarray(mm[uniq.numpy()]))


def head_rows(model: Any, ids: torch.Tensor, name: str = "weight") -> torch.Tensor:
    """``W_U[ids]`` (or ``b_U[ids]`` with ``name="bias"``) on the head's device: read by rows when accelerate offloads
    the head and it was not fetched whole already, else indexed from the resident matrix."""
    unembed = model.unembed
    t = getattr(unembed, name)
    if t.device.type != "meta" or name in model._offloaded:
        full = model.W_U if name == "weight" else model.b_U
        return full[ids.to(full.device)]
    rows = offloaded_rows(unembed, name, ids)
    if rows is None:
        full = model.W_U if name == "weight" else model.b_U
        return full[ids.to(full.device)]
    return rows.to(model.device)
