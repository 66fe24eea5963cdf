"""A lens kind registered outside phaselens: ``mlp2``, a non-affine translator per block.

``T_l(h) = h + gelu(h @ W1_l + b1_l) @ W2_l + b2_l`` (``W1 [d, k]``, ``b1 [k]``, ``W2 [k, d]``, ``b2 [d]``, a small
hidden size ``k``), fitted by a few Adam steps so that ``norm_final(T_l(h_l))`` matches the model's own normed
final residual on calibration tokens. Only public phaselens names are used; the residuals come from plain Hugging
Face ``output_hidden_states``. Load it with ``phaselens.registry.load_plugins("tests/plugins/mlp_lens.py")`` or
``PHASELENS_PLUGINS=tests/plugins/mlp_lens.py``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

import phaselens as pl
from phaselens.calibration import load_calibration, tokenize


def mlp_translate(h: torch.Tensor, p: dict[str, torch.Tensor]) -> torch.Tensor:
    """``h [..., d]`` -> ``h + gelu(h W1 + b1) W2 + b2`` (float32)."""
    x = h.float()
    return x + F.gelu(x @ p["W1"] + p["b1"]) @ p["W2"] + p["b2"]


def _residuals(model: Any, texts: list[str], seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(H [L-1, n, d], Y [n, d])``: blocks 0..L-2's outputs and the model's normed final residual, every token."""
    hs_all, ys = [], []
    with torch.no_grad():
        for ids in tokenize(model.tokenizer, texts, seq_len):
            hs = model.hf(input_ids=torch.tensor([ids], device=model.device), output_hidden_states=True).hidden_states
            hs_all.append(torch.stack([hs[l + 1][0] for l in range(model.n_blocks - 1)]).float().cpu())
            ys.append(hs[-1][0].float().cpu())  # HF's last hidden state is already through the final norm
    return torch.cat(hs_all, 1), torch.cat(ys)


@pl.register_lens("mlp2")
class MLPLens(pl.LensKind):
    """Per block a two-layer MLP translator on a residual connection (non-affine)."""

    def fit(self, model: Any, calibration: Any = None, *, seed: int = 0, hidden: int = 8, steps: int = 5,
            lr: float = 1e-3, seq_len: int = 64, n_texts: int = 4, **opts: Any) -> pl.Lens:
        if opts:
            raise pl.LensError(f"the mlp2 lens does not take {sorted(opts)}")
        texts = load_calibration(calibration)[:n_texts]
        H, Y = _residuals(model, texts, seq_len)
        Lm1, n, d = H.shape
        g = torch.Generator().manual_seed(seed)
        W1 = (torch.randn(Lm1, d, hidden, generator=g) / d**0.5).requires_grad_()
        b1 = torch.zeros(Lm1, 1, hidden, requires_grad=True)
        W2 = (torch.randn(Lm1, hidden, d, generator=g) * 0.1 / hidden**0.5).requires_grad_()
        b2 = torch.zeros(Lm1, 1, d, requires_grad=True)
        opt = torch.optim.Adam([W1, b1, W2, b2], lr=lr)
        norm_dev = next(model.final_norm.parameters()).device
        with torch.enable_grad():
            for _ in range(steps):
                t = H + torch.bmm(F.gelu(torch.bmm(H, W1) + b1), W2) + b2
                x = model.final_norm(t.to(norm_dev, model.dtype)).float().cpu()
                loss = ((x - Y) ** 2).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
        params = {l: {"W1": W1[l].detach().clone(), "b1": b1[l, 0].detach().clone(),
                      "W2": W2[l].detach().clone(), "b2": b2[l, 0].detach().clone()} for l in range(Lm1)}
        info = {"hidden": hidden, "steps": steps, "lr": lr, "seed": seed, "n_tokens": n}
        return pl.Lens("mlp2", model.name, model.fingerprint, model.n_blocks, model.d_model, info=info, params=params)

    def transform(self, lens: pl.Lens, block: int, h: torch.Tensor) -> torch.Tensor:
        return mlp_translate(h, lens.on(block, h.device))

    def check_translator(self, lens: pl.Lens, block: int, params: dict[str, torch.Tensor]) -> None:
        d, k = lens.d_model, int(lens.info["hidden"])
        want = {"W1": (d, k), "b1": (k,), "W2": (k, d), "b2": (d,)}
        got = {name: tuple(t.shape) for name, t in params.items()}
        if got != want:
            raise pl.LensError(f"the mlp2 lens's translator of block {block} has tensors {got}; expected {want}")
