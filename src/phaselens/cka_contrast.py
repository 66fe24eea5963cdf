"""Decision tokens against hidden states, on the same items (decision-transition paper, Figs. 2, 10, 11): does
pruning move the decision-token representation away from the dense model's more than the hidden states?

:func:`cka_contrast` reads, for each item of a task, its decision position (the last prompt token) and a sample of
its other prompt tokens, in the dense model and in a pruned view, and compares the debiased linear CKA of each
surviving block with itself on the two representations. Both come from the same items, so the contrast is resampled
over items: a delete-a-group jackknife (items split into groups at random; a group's tokens leave with it). The
bootstrap does not apply: a resample repeats items, and the unbiased HSIC estimator reads a repeated row as a
perfectly matched pair.

A control beside it: the prompt token just before the decision token (in every format a token of the prompt's template
too, the same few token types across items, like the decision token). Hidden states mix many token types, whose
identity the residual stream carries past a cut, so a lower decision-token CKA may say only "one position of a
template" rather than "the decision": the control position measures that.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy import stats

from . import checks
from .cka import u_center
from .effects import Effect
from .errors import CKAError
from .results import Result
from .runner import default_max_tokens, token_batches
from .similarity import check_pairing, collect, draw_samples, task_inputs
from .types import ModelLike
from .view import as_view

#: what the paper predicts: hidden-state CKA minus decision-token CKA is positive after the first cut
NAME = "hidden-state CKA − decision-token CKA"
#: the control: the template token before the decision token against the decision token
CONTROL = "control-token CKA − decision-token CKA"
#: the representations, in the order of :attr:`CKAContrast.jackknife`'s last axis
REPRESENTATIONS = ("decision", "hidden", "control")


@dataclass
class CKAContrast(Result):
    """The two CKAs of each surviving block after the first cut, dense against pruned, on the same items.

    Attributes:
        blocks: ``[M]`` the blocks kept by the pruned view that come after its first cut (original indices).
        decision: ``[M]`` debiased linear CKA of each block with itself at the items' decision positions.
        hidden: ``[M]`` the same at the sampled prompt tokens (every token but each prompt's first unless
            ``first_token``).
        control: ``[M]`` the same at each item's control position, the prompt token before its decision token.
        jackknife: ``[G, M, 3]`` the three CKAs (decision, hidden, control) with each of ``G`` item groups left out.
        item_group: ``[n_items]`` each item's jackknife group (items in task order).
        removed: the blocks the pruned view cut.
        n_items, n_tokens: decision positions (one per item) and prompt tokens compared.
    """

    blocks: list[int]
    decision: np.ndarray
    hidden: np.ndarray
    control: np.ndarray
    jackknife: np.ndarray
    removed: list[int]
    item_group: list[int]
    model_a: str
    model_b: str
    source: str
    n_items: int
    n_tokens: int
    seed: int = 0
    first_token: bool = False
    level: float = 0.95

    version = 1

    def __post_init__(self) -> None:
        self.blocks = [int(b) for b in self.blocks]
        self.removed = [int(b) for b in self.removed]
        self.item_group = [int(g) for g in self.item_group]
        self.decision = np.asarray(self.decision, dtype=float).reshape(-1)
        self.hidden = np.asarray(self.hidden, dtype=float).reshape(-1)
        self.control = np.asarray(self.control, dtype=float).reshape(-1)
        self.jackknife = np.asarray(self.jackknife, dtype=float).reshape(-1, len(self.blocks), len(REPRESENTATIONS))
        if not (len(self.decision) == len(self.hidden) == len(self.control) == len(self.blocks)):
            raise CKAError(f"{len(self.blocks)} blocks but {len(self.decision)} decision, {len(self.hidden)} hidden and "
                           f"{len(self.control)} control values")

    @property
    def groups(self) -> int:
        return int(self.jackknife.shape[0])

    def jackknife_se(self, leave_out: np.ndarray) -> np.ndarray:
        """The delete-a-group jackknife standard error of a statistic from its ``[G, ...]`` leave-one-group-out
        values: ``sqrt((G - 1) / G * sum_g (v_g - mean)^2)`` over the first axis."""
        G = self.groups
        return np.sqrt((G - 1) / G * ((leave_out - leave_out.mean(0)) ** 2).sum(0))

    def difference(self) -> float:
        """Hidden-state minus decision-token CKA, averaged over :attr:`blocks`."""
        return float(np.mean(self.hidden - self.decision))

    def effects(self, *, level: float | None = None) -> list[Effect]:
        """Two effects, each a mean over :attr:`blocks` with its interval from the delete-a-group jackknife over items
        (Student t with ``G - 1`` degrees of freedom) and the two-sided p of the same t, both predicted positive:
        hidden-state minus decision-token CKA (:meth:`difference`; the paper: decision tokens diverge more), and
        control-token minus decision-token CKA (the control: the decision token diverges more than the template
        token before it)."""
        level = self.level if level is None else level
        G = self.groups
        model = self.model_a if self.model_a == self.model_b else f"{self.model_a} vs {self.model_b}"
        out = []
        for name, k, n in ((NAME, 1, {"items": self.n_items, "tokens": self.n_tokens}),
                           (CONTROL, 2, {"items": self.n_items})):
            reps = (self.jackknife[:, :, k] - self.jackknife[:, :, 0]).mean(1)  # [G] the statistic, a group left out
            est = float(np.mean((self.hidden if k == 1 else self.control) - self.decision))
            se = float(self.jackknife_se(reps))
            q = float(stats.t.ppf(0.5 + level / 2, G - 1))
            p = float(2 * stats.t.sf(abs(est) / se, G - 1)) if se > 0 else (0.0 if est != 0 else 1.0)
            out.append(Effect(
                name=f"{name}, mean over the {len(self.blocks)} blocks after the first cut", estimate=est,
                lo=est - q * se, hi=est + q * se, p=p, level=level, predicted="positive", n=n, resampled=["items"],
                method=f"debiased linear CKA; delete-a-group jackknife over {G} random groups of items (a group's "
                       f"tokens leave with it), t interval with {G - 1} df", ci_method="jackknife", se=se,
                replicates=reps, n_boot=G, boot_seed=self.seed, model=model, task=self.source))
        return out

    def to_pandas(self):
        """One row per block: ``block``, ``decision``, ``hidden``, ``control``, ``difference`` (hidden − decision)."""
        import pandas as pd

        return pd.DataFrame({"block": self.blocks, "decision": self.decision, "hidden": self.hidden,
                             "control": self.control, "difference": self.hidden - self.decision})

    def table(self):
        return self.to_pandas()

    def plot(self, **kw):
        """Plotly line plot of the two CKAs per block (see :func:`phaselens.plots.cka_contrast`)."""
        from .plots import cka_contrast as draw  # lazy: plotly is imported only when a figure is drawn

        return draw(self, **kw)

    def summary(self) -> str:
        e, c = self.effects()
        left_out = "" if self.first_token else ", each prompt's first token left out"
        return (f"CKA of {self.model_a} against {self.model_b} (cut {len(self.removed)} blocks) on {self.source}, "
                f"the {len(self.blocks)} blocks after the first cut: decision tokens {np.mean(self.decision):.3f} "
                f"({self.n_items} items), hidden states {np.mean(self.hidden):.3f} ({self.n_tokens} prompt tokens"
                f"{left_out}), control tokens {np.mean(self.control):.3f}; hidden − decision "
                f"{e.estimate:+.3f} [{e.lo:+.3f}, {e.hi:+.3f}], p = {e.p:.3g}; control − decision "
                f"{c.estimate:+.3f} [{c.lo:+.3f}, {c.hi:+.3f}], p = {c.p:.3g} ({e.method}).")

    def provenance(self) -> dict[str, Any]:
        model = self.model_a if self.model_a == self.model_b else f"{self.model_a} vs {self.model_b}"
        return {"model": model, "task": self.source, "seed": self.seed}


# ----------------------------------------------------------------------------- the estimator
def _cka_u(K: torch.Tensor, L: torch.Tensor) -> float:
    """Debiased linear CKA of Gram matrices ``[n, n]``: unbiased HSICs (their common factor ``1 / (n (n - 3))``
    cancels) from the U-centred Grams, each centred once (on copies: ``K`` and ``L`` are kept)."""
    uk, ul = u_center(K.clone()), u_center(L.clone())
    return float((uk * ul).sum() / torch.sqrt((uk * uk).sum() * (ul * ul).sum()))


def _grams(x: torch.Tensor) -> torch.Tensor:
    x = x.double()
    return x @ x.T


# ----------------------------------------------------------------------------- the function
@torch.inference_mode()
def cka_contrast(
    model_a: ModelLike,
    model_b: ModelLike,
    task: Any,
    *,
    n_tokens: int = 1024,
    groups: int = 20,
    first_token: bool = False,
    seed: int = 0,
    level: float = 0.95,
    batch_size: int | None = None,
    max_tokens: int | None = None,
) -> CKAContrast:
    """Decision-token against hidden-state CKA of ``model_a`` (dense) and ``model_b`` (a pruned view of it) on the
    same items of ``task``: a :class:`CKAContrast`.

    Args:
        model_a, model_b: the dense model and a view of it with blocks cut (both tokenize the prompts identically).
        task: a :class:`~phaselens.Task` or anything ``load_task`` takes; every item is read.
        n_tokens: prompt tokens sampled for the hidden states (without replacement, seeded by ``seed``); the
            decision positions are every item's last prompt token.
        groups: item groups of the jackknife (at least 5; at most the number of items).
        first_token: whether each prompt's first token may be sampled (default: not; it is the attention sink,
            whose massive activations decide linear CKA on their own, see :func:`phaselens.cka`).
    """
    checks.integer("n_tokens", n_tokens, minimum=4, error=CKAError, what="prompt tokens sampled")
    checks.integer("groups", groups, minimum=5, error=CKAError, what="item groups of the jackknife")
    checks.integer("seed", seed, error=CKAError)
    checks.batching(batch_size, max_tokens, CKAError)
    if not isinstance(first_token, (bool, np.bool_)):
        raise CKAError(f"first_token must be True or False, got {first_token!r}")
    if not (isinstance(level, float) and 0 < level < 1):
        raise CKAError(f"level must be a float in (0, 1), got {level!r}")
    va, vb = as_view(model_a), as_view(model_b)
    removed = sorted(set(va.kept) - set(vb.kept))
    if not removed or set(vb.kept) - set(va.kept):
        raise CKAError(f"model_b must be model_a with blocks cut (a pruned view of it); {vb.name} keeps "
                       f"{list(vb.kept)} of {va.name}'s {list(va.kept)}")
    blocks = [b for b in vb.kept if b > removed[0]]
    if not blocks:
        raise CKAError(f"{vb.name} keeps no block after its first cut (block {removed[0]}); nothing to compare")
    source, _, seqs_a, seqs_b = task_inputs(task, "decision", va.base.tokenizer, vb.base.tokenizer)
    check_pairing(va, vb, "all", seqs_a, seqs_b)
    n_items = len(seqs_a)
    if groups > n_items:
        raise CKAError(f"groups={groups} is more than the {n_items} items of {source}; pass groups <= {n_items}")
    smp = draw_samples(seqs_a, seqs_b, "all", n_tokens, seed, True, source, bool(first_token))
    short = [i for i, s in enumerate(seqs_a) if len(s) < 2 + (not first_token)]
    if short:
        raise CKAError(f"item {short[0]} of {source} has a prompt of {len(seqs_a[short[0]])} token(s); the control "
                       "position is the token before the decision token (and not the first)")
    # per item: its decision position, its control position, then its sampled tokens
    pos: dict[int, list[int]] = {i: [len(s) - 1, len(s) - 2] for i, s in enumerate(seqs_a)}
    for s, p in zip(smp.seq, smp.pos_a):
        pos[s].append(p)
    rows_a = [list(va.kept).index(b) for b in blocks]
    rows_b = [list(vb.kept).index(b) for b in blocks]
    batches = token_batches([len(s) for s in seqs_a], max_tokens or default_max_tokens(va.base.device), batch_size)
    feats = []
    for view, rows in ((va, rows_a), (vb, rows_b)):
        parts = [h[rows] for h in collect(view, seqs_a, batches, pos)]  # [M, m, d] per batch, rows in group order
        feats.append(torch.cat(parts, 1))
    # the row of each (item, position) in the collected order: batches list sequences, each its positions in order
    seq_of_row = [s for g in batches for s in g for _ in pos[s]]
    first_of: dict[int, int] = {}
    for r, s in enumerate(seq_of_row):
        first_of.setdefault(s, r)
    dec_rows = torch.tensor([first_of[i] for i in range(n_items)])
    ctl_rows = dec_rows + 1
    hid_rows = torch.tensor([r for r, s in enumerate(seq_of_row) if r - first_of[s] >= 2])
    hid_item = torch.tensor([seq_of_row[int(r)] for r in hid_rows])
    gen = torch.Generator().manual_seed(int(seed))
    group_of = torch.empty(n_items, dtype=torch.long)
    group_of[torch.randperm(n_items, generator=gen)] = torch.arange(n_items) % groups
    M = len(blocks)
    value = np.zeros((M, 3))
    jack = np.zeros((groups, M, 3))
    items = torch.arange(n_items)
    for m in range(M):
        for k, (rows, owner) in enumerate(((dec_rows, items), (hid_rows, hid_item), (ctl_rows, items))):
            K, L = _grams(feats[0][m, rows]), _grams(feats[1][m, rows])
            value[m, k] = _cka_u(K, L)
            for g in range(groups):
                keep = torch.nonzero(group_of[owner] != g).squeeze(1)
                jack[g, m, k] = _cka_u(K[keep][:, keep], L[keep][:, keep])
    return CKAContrast(blocks=blocks, decision=value[:, 0], hidden=value[:, 1], control=value[:, 2], jackknife=jack,
                       removed=removed, item_group=group_of.tolist(), model_a=va.name, model_b=vb.name, source=source,
                       n_items=n_items, n_tokens=len(hid_rows), seed=int(seed), first_token=bool(first_token),
                       level=float(level))


__all__ = ["CKAContrast", "cka_contrast"]
