"""The tuned lens (Belrose et al. 2023, arXiv 2303.08112): one affine translator per block, trained.

``T_l(h) = h + h @ A_l + b_l`` with ``A_l, b_l`` starting at zero (the identity), trained with Adam to minimise
``mean_t KL(p_final,t || p_lens_l,t)`` over calibration tokens; ``T_{L-1}`` is the identity.

What is trained on (measured costs are in ``benchmarks/lens_speed.py``):

* the residuals ``h_l`` of every block at up to ``max_train_tokens`` calibration tokens are gathered once, in one
  pass of the model through the runner, and kept (``[L-1, n, d]`` float32);
* the vocabulary: ``vocab=None`` trains on the full vocabulary on a GPU and, on the CPU, on the ``2048`` tokens
  with the largest total final probability over the calibration tokens (both distributions renormalised over that
  subset; ``info["vocab_mass"]`` says how much of the final probability it covers). An integer ``vocab`` picks
  that many; ``vocab="full"`` the whole vocabulary. :func:`~phaselens.lens_kl` always measures the full vocabulary.

Training is seeded: the minibatch of step ``s`` is drawn from a generator seeded with ``(seed, s)``, so a run
resumed from its checkpoint (``out=DIR``: ``DIR/.phaselens/tuned_lens/checkpoint.safetensors``, written every
``checkpoint_every`` steps and on Ctrl-C) gives the same translators as an uninterrupted one.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..calibration import load_calibration, tokenize
from ..errors import LensError
from ..files import write_safetensors
from ..resume import digest, run_folder
from ..tensorfile import read_tensor_file
from ..runner import Read, Runner
from ..view import ModelView
from .base import CPU_MAX_TOKENS, AffineLensKind, Lens, register_lens

CPU_VOCAB = 2048
_CHUNK = 256


def _gather(base: Any, texts: list[str], seq_len: int, max_train_tokens: int, max_tokens: int | None):
    """``(H [L-1, n, d] float32, Y [n, d])``: every block's residual and the last block's output at the first
    ``max_train_tokens`` calibration tokens."""
    seqs, total = [], 0
    for s in tokenize(base.tokenizer, texts, seq_len):
        if total >= max_train_tokens:
            break
        s = s[: max(2, max_train_tokens - total)]
        seqs.append(s)
        total += len(s)
    L, d = base.n_blocks, base.d_model
    H = torch.empty(L - 1, total, d)
    Y = torch.empty(total, d)
    at = 0
    reads = {"h": Read(tuple(range(L)), "out", "tokens")}
    with torch.inference_mode():
        for _, out in Runner(ModelView(base)).passes(seqs, reads, max_tokens=max_tokens or CPU_MAX_TOKENS):
            m = out["h"][L - 1].shape[0]
            for b in range(L - 1):
                H[b, at: at + m] = out["h"][b].float().cpu()
            Y[at: at + m] = out["h"][L - 1].float().cpu()
            at += m
    return H.clone(), Y.clone()  # plain tensors (not inference tensors), usable by autograd


def _targets(base: Any, Y: torch.Tensor, vocab: Any) -> tuple[torch.Tensor | None, torch.Tensor, float]:
    """``(ids [k] or None for the full vocabulary, target log-probs [n, k], mean final mass covered by ids)``."""
    V = int(base.W_U.shape[0])
    dev = base.device
    if vocab is None:
        vocab = "full" if dev.type == "cuda" else CPU_VOCAB
    if vocab != "full" and (isinstance(vocab, bool) or not isinstance(vocab, int) or vocab < 2):
        raise LensError(f"vocab must be None (auto), 'full' or an int >= 2 (tokens trained on), got {vocab!r}")
    full = vocab == "full" or vocab >= V
    with torch.no_grad():
        if full:
            logp = torch.cat([torch.log_softmax(base.full_logits(Y[c: c + _CHUNK].to(dev)), -1).cpu()
                              for c in range(0, len(Y), _CHUNK)])
            return None, logp, 1.0
        mass = torch.zeros(V, dtype=torch.float64, device=dev)
        for c in range(0, len(Y), _CHUNK):
            mass += torch.softmax(base.full_logits(Y[c: c + _CHUNK].to(dev)), -1).double().sum(0)
        ids = torch.topk(mass, int(vocab)).indices.sort().values
        covered = float(mass[ids].sum() / len(Y))
        logp = torch.cat([torch.log_softmax(base.full_logits(Y[c: c + _CHUNK].to(dev))[:, ids], -1).cpu()
                          for c in range(0, len(Y), _CHUNK)])
        return ids.cpu(), logp, covered


def _lens_logp(base: Any, t: torch.Tensor, WU: torch.Tensor, bU: torch.Tensor | None) -> torch.Tensor:
    """Log-probabilities over the trained vocabulary of translated residuals ``t [m, d]`` (differentiable)."""
    x = base.final_norm(t.to(base.dtype)).float()
    z = x @ WU.T
    if bU is not None:
        z = z + bU
    return torch.log_softmax(base.apply_softcap(z), -1)


def _save_ckpt(path: Path, step: int, A, b, opt) -> None:
    st = opt.state
    tensors = {"A": A.detach(), "b": b.detach()}
    if A in st:
        tensors.update({"mA": st[A]["exp_avg"], "vA": st[A]["exp_avg_sq"], "mb": st[b]["exp_avg"], "vb": st[b]["exp_avg_sq"]})
    write_safetensors(path, {k: v.detach().cpu().contiguous() for k, v in tensors.items()}, {"step": str(step)})


def _load_ckpt(path: Path, A, b, opt, steps: int) -> int:
    """Restore ``A``, ``b`` and Adam's state from the checkpoint ``path``; the step to resume from. A checkpoint
    that is not one this training wrote (not a regular safetensors file, other shapes, a bad step) is ignored
    with a warning, and training starts over."""
    try:
        meta, t = read_tensor_file(path, "tuned-lens checkpoint", "fit_tuned", ("step",), LensError)
        step = int(meta["step"])
        shapes = {"A": A.shape, "b": b.shape, "mA": A.shape, "vA": A.shape, "mb": b.shape, "vb": b.shape}
        keys = set(t)
        if keys not in ({"A", "b"}, set(shapes)) or not 0 <= step <= steps:
            raise LensError(f"{path} holds {sorted(keys)} at step {step} (of {steps})")
        bad = [k for k in keys if tuple(t[k].shape) != tuple(shapes[k]) or not t[k].is_floating_point()
               or not bool(torch.isfinite(t[k]).all())]
        if bad:
            raise LensError(f"{path}: its tensors {sorted(bad)} do not fit this model's tuned lens "
                            f"(A {tuple(A.shape)}, b {tuple(b.shape)}, finite floats)")
    except (LensError, ValueError) as e:
        warnings.warn(f"ignoring the tuned-lens checkpoint {path} ({e}); training from step 0", stacklevel=3)
        return 0
    with torch.no_grad():
        A.copy_(t["A"])
        b.copy_(t["b"])
    if "mA" in t:
        for p, m, v in ((A, t["mA"], t["vA"]), (b, t["mb"], t["vb"])):
            opt.state[p] = {"step": torch.tensor(float(step)), "exp_avg": m.clone(), "exp_avg_sq": v.clone()}
    return step


def _step_loss(base, H, target, idx, A, b, WU, bU) -> torch.Tensor:
    """Sum over blocks of the mean KL(final || lens) on the tokens ``idx``."""
    p_log = target[idx]
    p = p_log.exp()
    loss = torch.zeros(())
    for l in range(H.shape[0]):
        x = H[l, idx]
        q_log = _lens_logp(base, x + x @ A[l] + b[l], WU, bU)
        loss = loss + (p * (p_log - q_log)).sum(-1).mean()
    return loss


def fit_tuned(base: Any, calibration: Any = None, *, seed: int = 0, steps: int = 150, lr: float = 1e-3,
              batch_tokens: int = 256, max_train_tokens: int = 4096, vocab: Any = None, seq_len: int = 256,
              max_tokens: int | None = None, out: Any = None, checkpoint_every: int = 25, progress: bool = True) -> Lens:
    """Train the tuned lens of ``base`` (a dense :class:`~phaselens.Model`); see the module docstring.

    Args:
        calibration: ``None`` (the bundled fit passages), a text file or a list of strings.
        seed: seeds the minibatches (same seed, same translators).
        steps, lr, batch_tokens: Adam steps, learning rate (linearly decayed to 0), tokens per step.
        max_train_tokens: calibration tokens gathered (the first ones, in passage order).
        vocab: the vocabulary trained on (``None``: full on a GPU, 2048 most probable tokens on the CPU).
        out: a folder to checkpoint into; a rerun with the same arguments resumes from the last checkpoint.
    """
    for name, v, lo in (("steps", steps, 1), ("batch_tokens", batch_tokens, 1), ("max_train_tokens", max_train_tokens, 2),
                        ("checkpoint_every", checkpoint_every, 1)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise LensError(f"{name} must be an int >= {lo}, got {v!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise LensError(f"seed must be an int, got {seed!r}")
    if not (isinstance(lr, (int, float)) and not isinstance(lr, bool) and lr > 0):
        raise LensError(f"lr must be a positive number, got {lr!r}")
    L, d = base.n_blocks, base.d_model
    if L < 2:
        raise LensError(f"{base.name} has one block; the tuned lens has nothing to translate (use lens='logit')")
    texts = load_calibration(calibration)
    args = {"model": base.fingerprint, "texts": digest(texts), "seed": seed, "steps": steps, "lr": lr, "batch_tokens": batch_tokens,
            "max_train_tokens": max_train_tokens, "vocab": vocab, "seq_len": seq_len}
    H, Y = _gather(base, texts, seq_len, max_train_tokens, max_tokens)
    n = H.shape[1]
    if n < 2:
        raise LensError("the calibration text gives fewer than 2 tokens; pass more text")
    ids, target, covered = _targets(base, Y, vocab)
    del Y
    with torch.no_grad():
        WU = (base.W_U if ids is None else base.W_U[ids.to(base.device)]).detach().float().cpu()
        bU = None if base.b_U is None else (base.b_U if ids is None else base.b_U[ids.to(base.device)]).detach().float().cpu()
    H, target = H.to("cpu"), target.to("cpu")
    A = torch.zeros(L - 1, d, d, requires_grad=True)
    b = torch.zeros(L - 1, d, requires_grad=True)
    opt = torch.optim.Adam([A, b], lr=lr)
    bar = None
    start = 0
    with run_folder(out, "tuned_lens", args, "tuned-lens training") as folder:
        ckpt = None if folder is None else folder.path / "checkpoint.safetensors"
        if ckpt is not None and (ckpt.exists() or ckpt.is_symlink()):
            start = _load_ckpt(ckpt, A, b, opt, steps)
        if progress:
            bar = tqdm(total=steps, initial=start, desc=f"tuned lens {base.name}", leave=False)
        step = start
        try:
            with torch.enable_grad():
                for step in range(start, steps):
                    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
                    idx = torch.randint(0, n, (min(batch_tokens, n),), generator=g)
                    loss = _step_loss(base, H, target, idx, A, b, WU, bU)
                    gA, gb = torch.autograd.grad(loss, [A, b])
                    A.grad, b.grad = gA, gb
                    for group in opt.param_groups:  # linear decay to 0 (a function of the step: resumable)
                        group["lr"] = lr * (1.0 - step / steps)
                    opt.step()
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(kl=f"{float(loss.detach()) / (L - 1):.3f}")  # detached: no grad warning
                    if ckpt is not None and (step + 1) % checkpoint_every == 0 and step + 1 < steps:
                        _save_ckpt(ckpt, step + 1, A, b, opt)
            step = steps
        except KeyboardInterrupt:
            if ckpt is not None:
                _save_ckpt(ckpt, step, A, b, opt)
                warnings.warn(f"tuned-lens training interrupted at step {step} of {steps}; the checkpoint is in {ckpt}: "
                              "rerun with the same arguments and out= to resume", RuntimeWarning, stacklevel=2)
            raise
        finally:
            if bar is not None:
                bar.close()
        if ckpt is not None:
            _save_ckpt(ckpt, steps, A, b, opt)
    eye = torch.eye(d)
    with torch.no_grad():
        weights = {l: eye + A[l].detach() for l in range(L - 1)}
        biases = {l: b[l].detach().clone() for l in range(L - 1)}
    info = {"n_tokens": n, "seed": seed, "steps": steps, "lr": lr, "batch_tokens": batch_tokens, "seq_len": seq_len,
            "vocab": "full" if ids is None else int(len(ids)), "vocab_mass": round(covered, 4), "optimizer": "adam",
            "calibration": "bundled fit passages" if calibration is None else f"{len(texts)} passages"}
    return Lens("tuned", base.name, base.fingerprint, L, d, weights, biases, info)


@register_lens("tuned")
class TunedKind(AffineLensKind):
    """Belrose et al.'s tuned lens, trained with Adam (:func:`fit_tuned`; ``seed`` seeds the minibatches)."""

    options = ("steps", "lr", "batch_tokens", "max_train_tokens", "vocab", "seq_len", "max_tokens", "out",
               "checkpoint_every", "progress")

    def fit(self, model: Any, calibration: Any = None, *, seed: int = 0, **opts: Any) -> Lens:
        bad = sorted(set(opts) - set(self.options))
        if bad:
            raise LensError(f"fit_lens(kind='tuned') does not take {bad}; it takes {sorted(self.options)}")
        return fit_tuned(model, calibration, seed=seed, **opts)
