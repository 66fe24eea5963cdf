"""Per-layer decision metrics from option logits ``z [L, N, K]`` (DESIGN.md, "Metrics").

All functions are pure: tensors in, numpy arrays out. Padded option slots hold ``-inf``.
"""

from __future__ import annotations

import numpy as np
import torch

#: Additive (Jeffreys) smoothing of the slot counts in the bias KL: ``(count + 0.5) / (N + 0.5 K)``
#: for both the option frequency and the answer prior, so slots that no item answers or no
#: layer picks keep the KL finite.
BIAS_KL_SMOOTHING = 0.5


def item_margins(z: torch.Tensor, answers: torch.Tensor) -> np.ndarray:
    """``[N, L]``: ``z_l[a_i] - max_{j != a_i} z_l[j]`` per item and layer."""
    L, n, _ = z.shape
    ar = torch.arange(n)
    correct = z[:, ar, answers]  # [L, N]
    others = z.clone()
    others[:, ar, answers] = float("-inf")
    return (correct - others.max(-1).values).T.double().numpy()


def predictions(z: torch.Tensor) -> torch.Tensor:
    """``[L, N]`` argmax option per layer (first slot on ties)."""
    return z.argmax(-1)


def accuracy(z: torch.Tensor, answers: torch.Tensor) -> np.ndarray:
    """``[L]``: share of items whose argmax option is the answer."""
    return (predictions(z) == answers[None]).double().mean(1).numpy()


def option_frequency(z: torch.Tensor) -> np.ndarray:
    """``[L, K]``: ``OF_l[k]`` = share of items whose argmax is slot ``k``."""
    L, n, k = z.shape
    return torch.nn.functional.one_hot(predictions(z), k).double().mean(1).numpy()


def answer_prior(answers: torch.Tensor, k: int) -> np.ndarray:
    """``[K]``: share of items whose answer is slot ``k`` (unsmoothed)."""
    return np.bincount(answers.numpy(), minlength=k)[:k] / len(answers)


def _smooth(freq: np.ndarray, n: int) -> np.ndarray:
    k = freq.shape[-1]
    return (freq * n + BIAS_KL_SMOOTHING) / (n + BIAS_KL_SMOOTHING * k)


def bias_kl(z: torch.Tensor, answers: torch.Tensor) -> np.ndarray:
    """``[L]``: ``KL(OF_l || pi)`` in nats, both smoothed by :data:`BIAS_KL_SMOOTHING`."""
    n, k = z.shape[1], z.shape[2]
    p = _smooth(option_frequency(z), n)
    q = _smooth(answer_prior(answers, k), n)
    return (p * (np.log(p) - np.log(q))).sum(-1)


def convergence_kl(z: torch.Tensor) -> np.ndarray:
    """``[L]``: ``mean_i KL(softmax(z_{L-1}) || softmax(z_l))`` over the options, in nats."""
    logp = torch.log_softmax(z.double(), -1)
    final = logp[-1:]
    p = final.exp()
    terms = torch.where(p > 0, p * (final - logp), torch.zeros_like(p))
    return terms.sum(-1).mean(-1).numpy()


def bootstrap_indices(n: int, n_boot: int, seed: int) -> np.ndarray:
    """``[n_boot, n]`` item indices resampled with replacement."""
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def bootstrap_ci(values: np.ndarray, idx: np.ndarray, level: float = 0.95) -> np.ndarray:
    """``[2, L]`` percentile interval of the item mean of ``values [N, L]`` over resamples ``idx``."""
    means = values[idx].mean(1)  # [B, L]
    a = (1 - level) / 2
    return np.quantile(means, [a, 1 - a], axis=0)
