"""The model handle: a causal LM prepared for the logit lens.

A :class:`Model` (made by :func:`phaselens.loading.load_model`) holds the Hugging Face causal LM, its tokenizer,
and the three pieces the logit lens needs, found once: the decoder ``blocks``
(``L`` modules, 0-based), the ``final_norm`` and the unembedding ``W_U [V, d]``
(+ ``b_U``) with the model's own logit transform (Gemma-style soft-capping).

The measuring path runs the plain Hugging Face forward (SDPA attention), never the
TransformerBridge's hooked one; :meth:`Model.bridge` boots a bridge on demand for
users who want TransformerLens' hooks.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
import xxhash
from torch import nn


from .deprecation import renamed_property
from .errors import ModelError
from .runner.head import head_rows


def _state_digest(module: nn.Module) -> str:
    """xxHash3-128 of every parameter and buffer of ``module`` (names, dtypes, shapes and bytes; a tensor on the
    meta device, offloaded by accelerate, by its name, dtype and shape only)."""
    h = xxhash.xxh3_128()
    for name, t in sorted(module.state_dict(keep_vars=False).items()):
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        if t.device.type != "meta" and t.numel():
            flat = t.detach().reshape(-1).contiguous().cpu()
            h.update(flat.view(torch.uint8).numpy().data)
    return h.hexdigest()


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    """float32 on the CPU (exact readouts), bfloat16 on a GPU."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


@dataclass(eq=False)
class Model:
    """A causal LM prepared for the logit lens.

    Attributes:
        hf: the ``transformers`` causal LM (``eval()`` mode).
        tokenizer: its tokenizer (right padding is forced by :mod:`phaselens.encoding`).
        name: a short name used in outputs.
        blocks: the ``L`` decoder blocks, 0-based (unwrapped if a bridge wraps them).
        final_norm: the final normalisation module.
        decoder: the module whose forward runs embeddings -> blocks -> final norm.
    """

    hf: nn.Module
    tokenizer: Any
    name: str
    blocks: list[nn.Module] = field(repr=False)
    final_norm: nn.Module = field(repr=False)
    decoder: nn.Module = field(repr=False)
    unembed: nn.Module = field(repr=False)
    softcap: float | None = None
    returns_tuple: bool = False
    attn_implementation: str | None = None  # the attention phaselens measures with (the load's: SDPA)
    _bridge: Any = field(default=None, repr=False)
    _offloaded: dict = field(default_factory=dict, repr=False)
    weights_digest: str | None = field(default=None, repr=False)  # the weight files' content hash (a checked cache)
    _fingerprint: str | None = field(default=None, repr=False)
    provenance: dict = field(default_factory=dict, repr=False)  # where it came from (an embedded model: its quantization)

    @property
    def n_blocks(self) -> int:
        """``L``: the model's decoder blocks."""
        return len(self.blocks)

    n_layers = renamed_property("n_layers", "n_blocks")

    @property
    def d_model(self) -> int:
        w = getattr(self.unembed, "weight", None)  # shape holds on the meta device: an offloaded head is not loaded
        return int(w.shape[1]) if isinstance(w, torch.Tensor) else int(self.W_U.shape[1])

    @property
    def vocab_size(self) -> int:
        """Rows of ``W_U`` (read from its shape: an offloaded head is not loaded)."""
        w = getattr(self.unembed, "weight", None)
        return int(w.shape[0]) if isinstance(w, torch.Tensor) else int(self.W_U.shape[0])

    @property
    def W_U(self) -> torch.Tensor:
        """Unembedding ``[V, d]`` (on its execution device, also when accelerate offloaded the head)."""
        return self._head_param("weight")

    @property
    def b_U(self) -> torch.Tensor | None:
        return self._head_param("bias") if getattr(self.unembed, "bias", None) is not None else None

    def _head_param(self, name: str) -> torch.Tensor:
        t = getattr(self.unembed, name)
        if t.device.type != "meta":
            return t
        # offloaded by accelerate (cpu/disk): its hook keeps the weights; the lens needs them at every block,
        # so they are fetched once to the head's execution device and kept
        if name not in self._offloaded:
            hook = getattr(self.unembed, "_hf_hook", None)
            wmap = getattr(hook, "weights_map", None)
            if wmap is None:
                raise ModelError(f"{self.name}: the unembedding's {name} is on the meta device and no accelerate hook holds "
                                 "it; load the model with its weights (or a device_map accelerate can dispatch)")
            self._offloaded[name] = wmap[name].to(_module_device(self.unembed, torch.device("cpu")))
        return self._offloaded[name]

    @property
    def device(self) -> torch.device:
        w = getattr(self.unembed, "weight", None)
        if isinstance(w, torch.Tensor) and w.device.type == "meta" and "weight" not in self._offloaded:
            return _module_device(self.unembed, torch.device("cpu"))  # offloaded: where its hook runs it
        return self.W_U.device

    @property
    def dtype(self) -> torch.dtype:
        w = getattr(self.unembed, "weight", None)
        return w.dtype if isinstance(w, torch.Tensor) else self.W_U.dtype

    @property
    def input_device(self) -> torch.device:
        """Where the token ids go: the device of the input embedding."""
        return _module_device(self.hf.get_input_embeddings(), self.device)

    @property
    def norm_device(self) -> torch.device:
        """Where the final norm runs (readouts run the norm there, then the unembedding on :attr:`device`)."""
        return _module_device(self.final_norm, self.device)

    def block_device(self, b: int) -> torch.device:
        """The device block ``b`` runs on (its weights', or accelerate's execution device when offloaded)."""
        return _module_device(self.blocks[b], self.device)

    @property
    def fingerprint(self) -> str:
        """A short hash of the architecture and of every weight loaded: identifies the model in saved files.

        A model read from a checked cache (:mod:`phaselens.manifest`) hashes its weight files' content hashes
        (:attr:`weights_digest`, free); any other model (a ``transformers`` object, a Hugging Face folder) hashes
        its parameters and buffers once (xxHash3, one pass over the weights). Computed once per loaded model.
        """
        if self._fingerprint is None:
            h = hashlib.sha256()
            h.update(json.dumps([type(self.hf).__name__, self.n_blocks, self.d_model, self.vocab_size]).encode())
            if self.weights_digest is not None:
                h.update(f"files:{self.weights_digest}".encode())
            else:
                h.update(b"params:" + _state_digest(self.hf).encode())
            self._fingerprint = h.hexdigest()[:16]
        return self._fingerprint

    def readout(self, h: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
        """Logit lens restricted to some tokens.

        Args:
            h: residual states ``[..., d]`` (any leading shape, e.g. ``[L, N, d]``).
            token_ids: ``[N, K]`` token ids per item (broadcast over leading dims of ``h``
                except the item axis, which must be ``h.shape[-2]``).
        Returns:
            float32 logits ``[..., N, K]``: ``W_U[ids] . norm_final(h) (+ b_U)``, soft-capped
            as the model does.
        """
        x = self.final_norm(h.to(self.norm_device, self.dtype)).float().to(self.device)
        w = head_rows(self, token_ids).float()  # [N, K, d]: only these rows of an offloaded head are read
        z = torch.einsum("...nd,nkd->...nk", x, w)
        if getattr(self.unembed, "bias", None) is not None:
            z = z + head_rows(self, token_ids, "bias").float()
        return self.apply_softcap(z)

    def full_logits(self, h: torch.Tensor) -> torch.Tensor:
        """Logit lens over the whole vocabulary: ``[..., d] -> [..., V]`` float32."""
        return self.unembed_logits(self.final_norm(h.to(self.norm_device, self.dtype)))

    def unembed_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The model's head on already-normed states: ``[..., d] -> [..., V]`` float32 (+ b_U, soft-capped)."""
        z = (x.to(self.device, self.dtype) @ self.W_U.T).float()
        if self.b_U is not None:
            z = z + self.b_U.float()
        return self.apply_softcap(z)

    def apply_softcap(self, z: torch.Tensor) -> torch.Tensor:
        if self.softcap:
            z = torch.tanh(z / self.softcap) * self.softcap
        return z

    def bridge(self) -> Any:
        """A TransformerLens ``TransformerBridge`` over this model (booted once, on demand).

        Booting wraps a model's submodules and switches it to eager attention (TransformerLens' choice, so its
        attention hooks fire). The bridge is booted on a twin of :attr:`hf` that shares every weight and buffer
        tensor (no weights are copied) but has its own modules and config, so this model keeps its SDPA forward
        and phaselens' numbers do not change when a bridge is booted.
        """
        if self._bridge is None:
            import copy
            import itertools

            from transformer_lens.model_bridge import TransformerBridge

            shared = {id(t): t for t in itertools.chain(self.hf.parameters(), self.hf.buffers())}
            twin = copy.deepcopy(self.hf, memo=shared)
            with quiet():
                self._bridge = TransformerBridge.boot_transformers(
                    self.name, hf_model=twin, tokenizer=self.tokenizer, device=str(self.device), dtype=self.dtype
                )
        return self._bridge

    def __repr__(self) -> str:
        return f"Model({self.name!r}, L={self.n_blocks}, d={self.d_model}, {self.dtype}, {self.device})"


# ----------------------------------------------------------------------------- helpers
def _module_device(mod: nn.Module, default: torch.device) -> torch.device:
    hook = getattr(mod, "_hf_hook", None)  # accelerate's offload / device-map hook
    dev = getattr(hook, "execution_device", None)
    if dev is not None:
        return torch.device("cuda", dev) if isinstance(dev, int) else torch.device(dev)
    p = next(mod.parameters(), None)
    return p.device if p is not None and p.device.type != "meta" else default


@contextlib.contextmanager
def quiet():
    """Silence transformers' progress bars and info logs during loads."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()
