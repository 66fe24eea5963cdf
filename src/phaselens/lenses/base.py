"""The :class:`Lens`, and the :class:`LensKind` registry that owns what each kind of lens does.

A lens reads block ``l``'s residual ``h [..., d]`` as ``z = W_U . norm_final(T_l(h))``. Its kind (a
:class:`LensKind` registered in :data:`LENS_KINDS`, by name) owns the translator ``T_l``: how it is fitted, how it
is applied (``[..., d] -> [..., d]``) and which named tensors it keeps per block. The built-in kinds are affine
(``T_l(h) = h @ W_l + b_l``, ``W_l [d, d]``, ``b_l [d]``, float32); a kind registered with
:func:`register_lens` may be any map. The last block ``L-1`` (the model's own output) is always the identity, so
every lens's last row is the model's own logits; so is any block without a translator. The logit lens has no
translators at all.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable

import torch

from ..deprecation import warn_renamed
from ..errors import LensError
from ..files import check_writable, write_safetensors
from ..registry import Registry
from ..version import __version__

#: padded tokens per pass when a lens reads every block's residual at every token on the CPU ([tokens, d] per block)
CPU_MAX_TOKENS = 1024


def gather_max_tokens(base: Any, max_tokens: int | None) -> int | None:
    """``max_tokens``, or :data:`CPU_MAX_TOKENS` off a GPU (``None``: the runner's default budget on a GPU)."""
    if max_tokens is None and base.device.type != "cuda":
        return CPU_MAX_TOKENS
    return max_tokens


def read_at(kept: list[int], n_blocks: int) -> list[int]:
    """The block whose output gives each row of a readout: the surviving block itself, except that the last row
    reads the output of block ``L-1`` (skipped or not), so an operator standing in for a cut span at the end of
    the model is part of the final row, as it is of the model's own output logits."""
    return kept[:-1] + [n_blocks - 1]


class LensKind:
    """What one kind of lens does; subclass it and register it with :func:`register_lens` (``@pl.register_lens("x")``).

    A kind owns its translators' tensors: ``lens.params[block]`` is a ``{name: tensor}`` dict per translated block
    (float32, on the CPU; blocks ``0..L-2``). Override:

    * :meth:`fit` (``model`` is a dense :class:`~phaselens.Model`; return a :class:`Lens` of this kind);
    * :meth:`transform` (``h [..., d]`` -> ``[..., d]``, any float dtype in, float32 out);
    * :meth:`check_translator` (raise a :class:`~phaselens.errors.LensError` on wrong names or shapes);
    * and, only for a file layout other than tensors ``<name>.<block>``, :meth:`to_tensors` / :meth:`from_tensors`.

    Settings a kind needs besides its tensors (a hidden size, how it was fitted) go in ``lens.info`` (saved as JSON).
    """

    #: the registered name (set by :func:`register_lens`)
    name: str = ""
    #: whether ``lens="<kind>"`` keeps its default fit in the phaselens cache folder (False: fitting costs nothing)
    cache: bool = True

    def fit(self, model: Any, calibration: Any = None, *, seed: int = 0, **opts: Any) -> "Lens":
        """A :class:`Lens` of this kind fitted on ``model`` (a dense :class:`~phaselens.Model`) and ``calibration``
        (``None``: the bundled fit passages, a text file or a list of strings); ``seed`` seeds a trained kind."""
        raise NotImplementedError(f"the lens kind {self.name!r} does not define fit()")

    def transform(self, lens: "Lens", block: int, h: torch.Tensor) -> torch.Tensor:
        """``T_block(h)``: ``h [..., d]`` -> ``[..., d]`` float32; ``lens.on(block, h.device)`` gives the block's
        tensors on ``h``'s device. Only called for blocks that have a translator."""
        raise NotImplementedError(f"the lens kind {self.name!r} does not define transform()")

    def check_translator(self, lens: "Lens", block: int, params: dict[str, torch.Tensor]) -> None:
        """Raise a :class:`~phaselens.errors.LensError` unless ``params`` is a valid translator of ``block``."""

    def to_tensors(self, lens: "Lens") -> dict[str, torch.Tensor]:
        """The tensors a lens file holds: ``<name>.<block>`` for every translator's tensors."""
        return {f"{name}.{b}": t.detach().float().cpu().contiguous() for b, p in lens.params.items() for name, t in p.items()}

    def from_tensors(self, tensors: dict[str, torch.Tensor], info: dict[str, Any]) -> dict[int, dict[str, torch.Tensor]]:
        """``{block: {name: tensor}}`` from a lens file's tensors (the inverse of :meth:`to_tensors`)."""
        params: dict[int, dict[str, torch.Tensor]] = {}
        for key in sorted(tensors):
            name, _, block = key.rpartition(".")
            if not name or not block.isdigit():
                raise LensError(f"a {self.name} lens file holds a tensor named {key!r}; expected <name>.<block>")
            params.setdefault(int(block), {})[name] = tensors[key]
        return params

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class AffineLensKind(LensKind):
    """A kind whose translators are affine, ``T_l(h) = h @ W_l + b_l`` (tensors ``W [d, d]`` and ``b [d]``)."""

    def transform(self, lens: "Lens", block: int, h: torch.Tensor) -> torch.Tensor:
        p = lens.on(block, h.device)
        w = p["W"]
        return torch.addmm(p["b"], h.reshape(-1, h.shape[-1]).float(), w).reshape(*h.shape[:-1], w.shape[1])

    def check_translator(self, lens: "Lens", block: int, params: dict[str, torch.Tensor]) -> None:
        d = lens.d_model
        for key, what in (("W", "matrix"), ("b", "bias")):
            if key not in params:
                raise LensError(f"the {lens.kind} lens's translator of block {block} lacks its {what}")
        extra = sorted(set(params) - {"W", "b"})
        if extra:
            raise LensError(f"the {lens.kind} lens's translator of block {block} has tensors {extra} besides W and b")
        w, v = params["W"], params["b"]
        if tuple(w.shape) != (d, d) or tuple(v.shape) != (d,):
            raise LensError(f"the {lens.kind} lens's translator of block {block} has shapes {tuple(w.shape)} and "
                            f"{tuple(v.shape)}, but {lens.model}'s hidden size is {d}: it must be [{d}, {d}] and [{d}]")


#: every lens kind, by name: the built-ins ``logit``, ``linear``, ``tuned`` and those registered with :func:`register_lens`
LENS_KINDS: Registry[LensKind] = Registry("lens", "lens kind", LensError)


def register_lens(name: str, *, replace: bool = False) -> Callable[[Any], Any]:
    """Register a lens kind: ``@pl.register_lens("mlp")`` on a :class:`LensKind` subclass (instantiated with no
    arguments) or instance. ``fit_lens(m, "mlp")``, ``lens="mlp"`` and saved ``mlp`` lens files then work."""
    return LENS_KINDS.register(name, replace=replace)


def lens_kind(kind: Any) -> LensKind:
    """The registered :class:`LensKind` named ``kind``; a :class:`~phaselens.errors.LensError` naming the
    registered kinds otherwise."""
    if not isinstance(kind, str):
        raise LensError(f"unknown lens kind {kind!r}; choose one of {LENS_KINDS.names()} (or pass a fitted Lens, or "
                        "the path of a saved one)")
    return LENS_KINDS.get(kind)


Params = dict[int, dict[str, torch.Tensor]]


class Lens:
    """Per-block translators fitted on one model; what they are is owned by the lens's kind (:class:`LensKind`).

    Attributes:
        kind: the registered kind's name (``"logit"``, ``"linear"``, ``"tuned"`` or a user kind).
        model: the name of the model it was fitted on; ``fingerprint`` its :attr:`~phaselens.Model.fingerprint`.
        n_blocks: ``L``, the model's blocks; ``d_model``: ``d``.
        params: ``{block: {name: tensor}}`` (float32) for blocks ``0..L-2`` (a block absent from it, and block
            ``L-1``, reads through the identity). The affine kinds hold ``W [d, d]`` and ``b [d]``, also given as
            ``weights`` and ``biases`` (``{block: W}``, ``{block: b}``).
        info: how it was fitted (calibration tokens, seed, steps, vocabulary subset, ridge, ...), saved with it.

    ``Lens(kind, model, fingerprint, n_blocks, d_model, weights, biases, info)`` builds an affine lens;
    ``Lens(..., info=..., params=...)`` any kind's.
    """

    def __init__(self, kind: str, model: str, fingerprint: str, n_blocks: int, d_model: int,
                 weights: dict[int, torch.Tensor] | None = None, biases: dict[int, torch.Tensor] | None = None,
                 info: dict[str, Any] | None = None, *, params: Params | None = None) -> None:
        self.lens_kind = lens_kind(kind)
        self.kind, self.model, self.fingerprint = kind, model, fingerprint
        for what, v in (("n_blocks", n_blocks), ("d_model", d_model)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise LensError(f"a lens's {what} must be an int >= 1, got {v!r}")
        self.n_blocks, self.d_model = n_blocks, d_model
        self.info = dict(info or {})
        if params is not None and (weights or biases):
            raise LensError("give a lens's translators as weights/biases (an affine kind) or as params, not both")
        if params is None:
            params = {}
            for key, ts in (("W", weights or {}), ("b", biases or {})):
                for b, t in ts.items():
                    params.setdefault(int(b), {})[key] = t
        self.params = self._checked(params)
        self._dev: dict[tuple[int, torch.device], dict[str, torch.Tensor]] = {}

    def _checked(self, params: Params) -> Params:
        L = self.n_blocks
        out: Params = {}
        for b in sorted(int(b) for b in params):
            p = params[b]
            if not 0 <= b < L - 1:
                raise LensError(f"the {self.kind} lens has a translator for block {b}, but {self.model} has blocks "
                                f"0..{L - 1} and block {L - 1} (the model's own output) reads through the identity")
            if not isinstance(p, dict) or not all(isinstance(t, torch.Tensor) for t in p.values()):
                raise LensError(f"the {self.kind} lens's translator of block {b} must be a dict of named tensors")
            odd = sorted(name for name, t in p.items() if not t.is_floating_point())
            if odd:
                raise LensError(f"the {self.kind} lens's translator of block {b} has tensors {odd} of dtype "
                                f"{p[odd[0]].dtype}; a translator holds floating-point tensors")
            self.lens_kind.check_translator(self, b, p)
            if not all(bool(torch.isfinite(t).all()) for t in p.values()):
                raise LensError(f"the {self.kind} lens's translator of block {b} holds NaN or Inf; refit the lens "
                                "(more calibration text, a smaller learning rate, or a larger lam=)")
            out[b] = {name: t.detach().float() for name, t in p.items()}
        return out

    @property
    def name(self) -> str:
        """What results record as their ``lens``: the kind."""
        return self.kind

    @property
    def digest(self) -> str:
        """A short hash of the kind, the model and every translator (what a resumable run records)."""
        h = hashlib.sha256(f"{self.kind}:{self.fingerprint}".encode())
        for b in self.blocks:
            for name in sorted(self.params[b]):
                h.update(self.params[b][name].contiguous().numpy().tobytes())
        return h.hexdigest()[:16]

    @property
    def blocks(self) -> list[int]:
        """The blocks that have a translator."""
        return sorted(self.params)

    @property
    def is_identity(self) -> bool:
        """True when no block has a translator (the logit lens): every row reads the residual as it is."""
        return not self.params

    @property
    def weights(self) -> dict[int, torch.Tensor]:
        """``{block: W [d, d]}`` of an affine kind (empty for a kind without ``W``)."""
        return {b: p["W"] for b, p in self.params.items() if "W" in p}

    @property
    def biases(self) -> dict[int, torch.Tensor]:
        """``{block: b [d]}`` of an affine kind (empty for a kind without ``b``)."""
        return {b: p["b"] for b, p in self.params.items() if "b" in p}

    def translator(self, b: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(W [d, d], b [d])`` of block ``b`` of an affine lens, or ``None`` where it reads through the identity
        (``lens.params[b]`` has any kind's tensors)."""
        if b not in self.params:
            return None
        if not isinstance(self.lens_kind, AffineLensKind):
            raise LensError(f"the {self.kind} lens is not affine: its translator of block {b} is lens.params[{b}] "
                            f"({sorted(self.params[b])}), not a matrix and a bias")
        return self.params[b]["W"], self.params[b]["b"]

    def on(self, b: int, device: torch.device) -> dict[str, torch.Tensor]:
        """Block ``b``'s tensors on ``device`` (copied once per device and kept)."""
        key = (b, device)
        if key not in self._dev:
            self._dev[key] = {name: t.to(device) for name, t in self.params[b].items()}
        return self._dev[key]

    def transform(self, b: int, h: torch.Tensor) -> torch.Tensor:
        """``T_b(h)``: block ``b``'s translator applied to residuals ``h [..., d]`` (float32 out, by the lens's kind);
        ``h`` itself for the identity. A non-finite result is a :class:`~phaselens.errors.LensError` naming the block."""
        if b not in self.params:
            return h
        out = self.lens_kind.transform(self, b, h)
        if tuple(out.shape) != tuple(h.shape):
            raise LensError(f"the {self.kind} lens kind's transform of block {b} returned shape {tuple(out.shape)} for "
                            f"residuals of shape {tuple(h.shape)}; a translator maps [..., d] to [..., d]")
        if not bool(torch.isfinite(out).all()):
            raise LensError(f"the {self.kind} lens's translator of block {b} produced NaN or Inf on {self.model}'s "
                            f"residuals; its weights are finite, so the residuals are huge or the lens is unstable: "
                            "refit it (a larger lam= or a smaller learning rate), or run the model in float32")
        return out

    def check_model(self, base: Any) -> None:
        """A :class:`~phaselens.errors.LensError` unless ``base`` (a :class:`~phaselens.Model`) is the model it was
        fitted on: the same fingerprint, block count and hidden size."""
        if (base.fingerprint, base.n_blocks, base.d_model) != (self.fingerprint, self.n_blocks, self.d_model):
            raise LensError(f"this {self.kind} lens was fitted on {self.model!r} (fingerprint {self.fingerprint}, "
                            f"{self.n_blocks} blocks of width {self.d_model}), not on {base.name!r} (fingerprint "
                            f"{base.fingerprint}, {base.n_blocks} blocks of width {base.d_model}); fit one for this "
                            "model (phaselens.fit_lens) or pass lens='logit'")

    def save(self, path: Any) -> Path:
        """Write the translators (the kind's tensors) and the model's fingerprint as safetensors
        (:func:`phaselens.load_lens` reads it); metadata: kind, model, fingerprint, n_blocks, d_model, info."""
        path = Path(path)
        if path.parent.exists() and not path.parent.is_dir():
            raise LensError(f"cannot save the lens under {path.parent}: it is a file, not a folder")
        check_writable(path, "file", what="path", error=LensError, parents=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = self.lens_kind.to_tensors(self)
        meta = {"phaselens_lens": __version__, "kind": self.kind, "model": self.model, "fingerprint": self.fingerprint,
                "n_blocks": str(self.n_blocks), "d_model": str(self.d_model), "info": json.dumps(self.info, default=str)}
        write_safetensors(path, tensors, meta)
        return path

    def summary(self) -> str:
        how = ", ".join(f"{k}={v}" for k, v in self.info.items() if not isinstance(v, (list, dict)))
        return f"{self.kind} lens of {self.model} ({len(self.params)} translators of {self.n_blocks - 1}; {how})"

    def __repr__(self) -> str:
        return f"Lens({self.kind!r}, model={self.model!r}, L={self.n_blocks}, translators={len(self.params)})"


def __getattr__(name: str) -> Any:
    if name == "KINDS":  # deprecated: the registry is the one list of kinds
        warn_renamed("phaselens.lenses.KINDS", "phaselens.lenses.LENS_KINDS.names()", "phaselens.lenses")
        return LENS_KINDS.names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
