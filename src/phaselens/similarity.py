"""Linear CKA between the layers of two models, or of a model and a pruned view of it: collecting the
representations (decision positions or text tokens) and the :class:`CKAResult`. The maths is in :mod:`phaselens.cka`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from tqdm.auto import tqdm

from . import checks
from .calibration import load_calibration, tokenize
from .cka import FORMS, CKAAccumulator
from .effects import Effect
from .resampling import check_n_boot, percentile_interval, permutation_p
from .errors import CKAError, NotFoundError
from .readout import read_at
from .results import Result
from .runner import Batch, Positions, Read, Runner, default_max_tokens, token_batches
from .tasks import Task, load_task
from .types import ModelLike
from .view import as_view
from .runner.layered import scheduled  # schedule= / act_budget= / act_store= (issue 24)

POSITIONS = ("decision", "all")
#: ``cka(n_perm=None)`` builds the floor's permutation null (200 shuffles) up to this many samples
NULL_MAX_SAMPLES = 1024
NULL_PERMS = 200


# ----------------------------------------------------------------------------- result
@dataclass
class CKAResult(Result):
    """Linear CKA of every surviving block of ``model_a`` against every block of ``model_b``.

    Attributes:
        matrix: ``[L_a, L_b]`` CKA values (rows: ``model_a``'s blocks, columns: ``model_b``'s).
        blocks_a, blocks_b: original block index of each row / column (a pruned view's
            surviving blocks keep their dense-model indices).
        model_a, model_b: model names.
        positions: ``"decision"`` (each item's last prompt token) or ``"all"`` (every token; the first of each
            sequence only when ``first_token``).
        n_samples: representations compared (items or tokens) after subsampling.
        debiased: whether the unbiased HSIC estimator was used (``cka(debiased="auto")``: when ``n_samples`` is
            below the feature dimension).
        plugin: ``[L_a, L_b]`` the plug-in (biased) CKA of the same samples, beside ``matrix``.
        floor: ``[L_a, L_b]`` the CKA (``matrix``'s estimator) of a shuffled pairing: the samples of ``model_b``
            permuted at random against ``model_a``'s, what CKA reads when the pairing carries nothing (NaN in the
            feature form, which keeps no rows).
        null: ``[n_perm, M]`` the CKA of each matched block (:meth:`matched`) under ``n_perm`` shuffled pairings:
            the permutation null that :meth:`effects` tests against.
        null_blocks: ``[M]`` the matched blocks of ``null``'s columns.
        source: the task name, or ``"texts"`` / ``"calibration"``.
        form: ``"gram"`` or ``"feature"``, the accumulator form that computed it.
        first_token: whether ``positions="all"`` read each sequence's first token too (False for decision
            positions; results saved before version 3 read it).
    """

    matrix: np.ndarray
    blocks_a: list[int]
    blocks_b: list[int]
    model_a: str
    model_b: str
    positions: str
    n_samples: int
    debiased: bool = False
    source: str = ""
    form: str = ""
    seed: int = 0
    plugin: np.ndarray | None = None
    floor: np.ndarray | None = None
    null: np.ndarray | None = None
    null_blocks: list[int] | None = None
    first_token: bool = False

    version = 3  # version 1 had no plugin / floor / null; version 2 no first_token (its "all" read the first token)

    @classmethod
    def upgrade(cls, doc: dict[str, Any], version: int) -> dict[str, Any] | None:
        if version != 2:
            return None
        return {**doc, "first_token": doc.get("positions") == "all"}

    def __post_init__(self) -> None:
        self.matrix = np.asarray(self.matrix, dtype=float)
        for k in ("plugin", "floor"):
            v = getattr(self, k)
            if v is not None:
                setattr(self, k, np.asarray(v, dtype=float).reshape(self.matrix.shape))
        if self.null is not None:
            self.null = np.asarray(self.null, dtype=float)
            self.null_blocks = [int(b) for b in (self.null_blocks or [])]
            if self.null.ndim != 2 or self.null.shape[1] != len(self.null_blocks):
                raise CKAError(f"null has shape {self.null.shape}; expected [n_perm, {len(self.null_blocks)} matched "
                               "blocks]")
        self.blocks_a = [int(b) for b in self.blocks_a]
        self.blocks_b = [int(b) for b in self.blocks_b]
        if self.matrix.shape != (len(self.blocks_a), len(self.blocks_b)):
            raise CKAError(f"matrix shape {self.matrix.shape} does not match {len(self.blocks_a)} x {len(self.blocks_b)} blocks")

    def value(self, block_a: int, block_b: int) -> float:
        """CKA between original block ``block_a`` of model_a and ``block_b`` of model_b."""
        try:
            return float(self.matrix[self.blocks_a.index(block_a), self.blocks_b.index(block_b)])
        except ValueError:
            raise NotFoundError(f"block pair ({block_a}, {block_b}) not in blocks_a={self.blocks_a} x blocks_b={self.blocks_b}") from None

    def matched(self) -> tuple[np.ndarray, np.ndarray]:
        """(blocks present on both sides, CKA of each such block with itself across the models)."""
        common = [b for b in self.blocks_a if b in set(self.blocks_b)]
        return np.asarray(common, dtype=int), np.asarray([self.value(b, b) for b in common])

    def to_pandas(self):
        """Long format: one row per pair, columns ``block_a``, ``block_b``, ``cka``."""
        import pandas as pd

        ia, ib = np.meshgrid(np.arange(len(self.blocks_a)), np.arange(len(self.blocks_b)), indexing="ij")
        return pd.DataFrame({
            "block_a": np.asarray(self.blocks_a)[ia.ravel()],
            "block_b": np.asarray(self.blocks_b)[ib.ravel()],
            "cka": self.matrix.ravel(),
        })

    def plot(self, **kw):
        """Plotly heatmap (see :func:`phaselens.plots.cka_heatmap`)."""
        from .plots import cka_heatmap  # lazy: plotly is imported only when a figure is drawn

        return cka_heatmap(self, **kw)

    def summary(self) -> str:
        kind = "debiased linear CKA" if self.debiased else "linear CKA"
        s = (f"{kind} of {self.model_a} ({len(self.blocks_a)} blocks) against {self.model_b} ({len(self.blocks_b)} "
             f"blocks) on {self.source or 'inputs'}, {self.where}, n={self.n_samples}.")
        b, v = self.matched()
        if len(b):
            parts = [f"matched blocks' mean CKA {np.nanmean(v):.3f}"]
            idx = [(self.blocks_a.index(x), self.blocks_b.index(x)) for x in b]
            if self.plugin is not None:
                parts.append(f"plug-in {np.nanmean([self.plugin[i, j] for i, j in idx]):.3f}")
            if self.null is not None and self.null.size and np.isfinite(self.null).any():
                parts.append(f"shuffled-pairing floor {np.nanmean(self.null):.3f}")
            elif self.floor is not None and np.isfinite(self.floor).any():
                parts.append(f"shuffled-pairing floor {np.nanmean([self.floor[i, j] for i, j in idx]):.3f}")
            s += " " + "; ".join(parts) + "."
        return s

    @property
    def where(self) -> str:
        """The positions compared, in words (summaries, figures and claims say it the same way)."""
        if self.positions == "decision":
            return "decision positions"
        return "every token, each sequence's first token included" if self.first_token else \
            "every token but each sequence's first"

    def effects(self, *, level: float = 0.95) -> list[Effect]:
        """Each matched block's CKA against its shuffled-pairing floor: ``estimate = CKA − mean(null)``, ``p`` the
        two-sided permutation p of the observed CKA among its ``n_perm`` shuffled pairings (the samples of one side
        permuted against the other's), the interval the observed CKA minus the null's quantiles (so it excludes 0
        exactly when the observed value lies outside the null's central ``level`` range). It covers the pairing
        null only, not the sampling of items. Empty when the result has no null (``cka(n_perm=0)``, the feature
        form, or a result saved before the floor existed)."""
        if self.null is None or not self.null.size or not np.isfinite(self.null).any():
            return []
        check_n_boot(self.null.shape[0], level, "n_perm")
        unit = "items" if self.positions == "decision" else "tokens"
        out = []
        for k, b in enumerate(self.null_blocks or []):
            obs = self.value(b, b)
            null = self.null[:, k]
            reps = obs - null
            lo, hi = percentile_interval(reps, level)
            ok = null[np.isfinite(null)]
            out.append(Effect(
                name=f"CKA − shuffled-pairing floor, block {b}", estimate=float(obs - ok.mean()), lo=lo, hi=hi,
                p=permutation_p(null, obs), level=level, n={unit: int(self.n_samples)}, resampled=["pairings"],
                method=f"{'debiased' if self.debiased else 'plug-in'} linear CKA against {null.size} shuffled "
                       "pairings (permutation p; interval: observed minus the null's quantiles)",
                se=float(ok.std(ddof=1)), replicates=reps, n_boot=int(null.size), boot_seed=self.seed,
                model=self.model_a if self.model_a == self.model_b else f"{self.model_a} vs {self.model_b}",
                task=self.source))
        return out

    def table(self):
        """The blocks present in both models and their CKA with themselves, the plug-in value and the
        shuffled-pairing floor beside it (the full matrix is in the heatmap)."""
        import pandas as pd

        b, v = self.matched()
        df = pd.DataFrame({"block": b, "CKA with itself across the two models": v})
        idx = [(self.blocks_a.index(x), self.blocks_b.index(x)) for x in b]
        if self.plugin is not None:
            df["plug-in CKA"] = [self.plugin[i, j] for i, j in idx]
        if self.null is not None and self.null.size:
            col = {blk: k for k, blk in enumerate(self.null_blocks or [])}
            df["shuffled-pairing floor"] = [float(np.nanmean(self.null[:, col[x]])) if x in col else np.nan for x in b]
        elif self.floor is not None:
            df["shuffled-pairing floor"] = [self.floor[i, j] for i, j in idx]
        return df

    def provenance(self) -> dict[str, Any]:
        model = self.model_a if self.model_a == self.model_b else f"{self.model_a} vs {self.model_b}"
        return {"model": model, "task": self.source, "seed": self.seed}

    @classmethod
    def overview(cls, results: dict[str, Any]) -> list[tuple[str, Any]]:
        from .plots import cka_heatmaps  # lazy: plotly is imported only when a figure is drawn

        return [("CKA per block pair, side by side, one colour scale.", cka_heatmaps(results))]


# ----------------------------------------------------------------------------- models
def _is_texts(obj: Any) -> bool:
    return obj is None or (isinstance(obj, (list, tuple)) and len(obj) > 0 and all(isinstance(t, str) for t in obj))


def _same_computation(va, vb) -> bool:
    return va is vb or (va.base is vb.base and va.signature() == vb.signature())


def _prompt_ids(task, tokenizer) -> list[list[int]]:
    """Each item's prompt tokens, as :func:`phaselens.encoding.encode_task` tokenizes them."""
    prompts = [task.prompt(i) for i in range(len(task.items))]
    return [list(s) for s in tokenizer(prompts, add_special_tokens=True)["input_ids"]]


def collect(view, seqs: list[list[int]], groups: list[list[int]], pos: dict[int, list[int]]):
    """Per batch of ``groups``, every surviving block's output ``[L, m, d]`` (float32) at the sampled positions
    ``pos[seq]`` of each sequence, in the order of the group. The last row reads the output of block ``L-1``
    (an operator standing in for a cut reaching the last block is part of it, as in the lens)."""
    rows_at = read_at(view.kept, view.base.n_blocks)

    def reads(batch: Batch) -> dict[str, Read]:
        r = [row for row, s in enumerate(batch.rows) for _ in pos[s]]
        c = [p for s in batch.rows for p in pos[s]]
        return {"h": Read(tuple(rows_at), "out", Positions(torch.tensor(r), torch.tensor(c)))}

    for _batch, out in Runner(view).passes(seqs, reads, groups=groups):
        yield torch.stack([out["h"][b].float() for b in rows_at])


def _check_args(positions: Any, n_samples: Any, debiased: Any, seed: Any, batch_size: Any, max_tokens: Any,
                form: Any, seq_len: Any, n_perm: Any = None) -> None:
    """A :class:`CKAError` for the first bad argument of :func:`cka`."""
    if positions is not None and positions not in POSITIONS:
        raise CKAError(f"positions must be one of {POSITIONS}, got {positions!r}")
    if isinstance(n_samples, bool) or not isinstance(n_samples, (int, np.integer)) or n_samples < 2:
        raise CKAError(f"n_samples must be an integer >= 2 (CKA compares at least two inputs), got {n_samples!r}")
    if not (isinstance(debiased, (bool, np.bool_)) or debiased == "auto"):
        raise CKAError(f"debiased must be True, False or 'auto' (unbiased when n_samples < the feature dimension), "
                       f"got {debiased!r}")
    if debiased is True and n_samples < 4:
        raise CKAError(f"debiased CKA needs n_samples >= 4, got {n_samples}")
    checks.batching(batch_size, max_tokens, CKAError)
    checks.integer("seed", seed, error=CKAError)
    checks.integer("seq_len", seq_len, minimum=2, error=CKAError, what="tokens per text")
    if form not in FORMS:
        raise CKAError(f"form must be one of {FORMS}, got {form!r}")
    if n_perm is None:
        return
    checks.integer("n_perm", n_perm, minimum=0, error=CKAError, what="shuffled pairings of the floor's null")
    if 0 < n_perm < 100:
        raise CKAError(f"n_perm={n_perm} is too few shuffled pairings for a permutation null: pass n_perm >= 100, or 0 "
                       "for no null")


def _text_inputs(texts: Any, positions: str | None, tok_a, tok_b, seq_len: int):
    """``(source, positions, seqs_a, seqs_b)`` for texts (``None``: the calibration corpus): every token."""
    if (positions or "all") == "decision":
        raise CKAError("positions='decision' needs a task (decision positions are the items' last prompt tokens); "
                       "for texts use positions='all'")
    texts_ = load_calibration(texts)
    seqs_a = tokenize(tok_a, texts_, seq_len)
    seqs_b = seqs_a if tok_b is tok_a else tokenize(tok_b, texts_, seq_len)
    return ("calibration" if texts is None else "texts"), "all", seqs_a, seqs_b


def task_inputs(task: Any, positions: str | None, tok_a, tok_b):
    """``(source, positions, seqs_a, seqs_b)`` for a task: each item's prompt tokens under each tokenizer."""
    task = task if isinstance(task, Task) else load_task(task)
    seqs_a = _prompt_ids(task, tok_a)
    seqs_b = seqs_a if tok_b is tok_a else _prompt_ids(task, tok_b)
    if len(seqs_a) != len(seqs_b):
        raise CKAError(f"the two models see {len(seqs_a)} and {len(seqs_b)} items of {task.name}; decision positions "
                       "must pair up")
    empty = [i for i, (a, b) in enumerate(zip(seqs_a, seqs_b)) if not a or not b]
    if empty:
        raise CKAError(f"item {task.items[empty[0]].id or empty[0]} of {task.name} has an empty prompt for one of the "
                       "tokenizers")
    return task.name, positions or "decision", seqs_a, seqs_b


def check_pairing(va, vb, positions: str, seqs_a: list[list[int]], seqs_b: list[list[int]]) -> None:
    """``positions='all'`` pairs the models token by token: both must tokenize the inputs identically."""
    if positions == "all" and seqs_a != seqs_b:
        bad = next((i for i, (a, b) in enumerate(zip(seqs_a, seqs_b)) if a != b), min(len(seqs_a), len(seqs_b)))
        raise CKAError(
            f"positions='all' pairs the two models token by token, but {va.name} and {vb.name} tokenize the "
            f"inputs differently (first at sequence {bad}); use models that share a tokenizer, or positions='decision' "
            "with a task"
        )


@dataclass
class _Samples:
    """The sampled ``(sequence, position)`` pairs, the same for both models: sample ``j`` is position ``pos_a[j]``
    (``pos_b[j]``) of sequence ``seq[j]``."""

    seq: list[int]
    pos_a: list[int]
    pos_b: list[int]


def draw_samples(seqs_a, seqs_b, positions: str, n_samples: int, seed: int, debiased: bool, source: str,
                  first_token: bool = False) -> _Samples:
    """At most ``n_samples`` candidates (each sequence's last token, or every token: from the second on unless
    ``first_token``), drawn without replacement by a generator seeded with ``seed``, in candidate order."""
    if positions == "decision":
        cand_seq = torch.arange(len(seqs_a))
        cand_pos_a = torch.tensor([len(s) - 1 for s in seqs_a])
        cand_pos_b = torch.tensor([len(s) - 1 for s in seqs_b])
    else:
        start = 0 if first_token else 1
        lens = torch.tensor([max(len(s) - start, 0) for s in seqs_a], dtype=torch.long)
        cand_seq = torch.repeat_interleave(torch.arange(len(seqs_a)), lens)
        cand_pos_a = (torch.cat([torch.arange(start, start + int(n)) for n in lens]) if len(lens)
                      else torch.zeros(0, dtype=torch.long))
        cand_pos_b = cand_pos_a
    total = len(cand_seq)
    if total > n_samples:
        pick = torch.randperm(total, generator=torch.Generator().manual_seed(int(seed)))[:n_samples].sort().values
    else:
        pick = torch.arange(total)
    n = len(pick)
    if n < 2 or (debiased is True and n < 4):
        raise CKAError(f"{source} gives only {n} {'items' if positions == 'decision' else 'tokens'}; CKA needs at least "
                       f"{4 if debiased else 2}")
    return _Samples(seq=cand_seq[pick].tolist(), pos_a=cand_pos_a[pick].tolist(), pos_b=cand_pos_b[pick].tolist())


def _accumulate(va, vb, seqs_a, seqs_b, smp: _Samples, acc: CKAAccumulator, max_tokens: int | None,
                batch_size: int | None, progress: bool) -> None:
    """Fold both models' block outputs at the samples into ``acc``, batch by batch. Both models get the same batches
    of sequences (similar lengths, each cut after its last sampled token), so their rows pair up sample for sample;
    a view computing the same thing as ``va`` on the same tokens is not run twice."""
    by_seq: dict[int, list[int]] = {}
    for j, s in enumerate(smp.seq):
        by_seq.setdefault(s, []).append(j)
    seq_ids = sorted(by_seq)
    cut_a = [seqs_a[s][: max(smp.pos_a[j] for j in by_seq[s]) + 1] for s in seq_ids]
    cut_b = [seqs_b[s][: max(smp.pos_b[j] for j in by_seq[s]) + 1] for s in seq_ids]
    groups = token_batches([len(c) for c in cut_a], max_tokens or default_max_tokens(va.base.device), batch_size)
    pos_a = {k: [smp.pos_a[j] for j in by_seq[s]] for k, s in enumerate(seq_ids)}
    pos_b = {k: [smp.pos_b[j] for j in by_seq[s]] for k, s in enumerate(seq_ids)}
    same = _same_computation(va, vb) and seqs_a == seqs_b
    side_a = collect(va, cut_a, groups, pos_a)
    side_b = None if same else collect(vb, cut_b, groups, pos_b)
    it: Any = range(len(groups))
    if progress:
        it = tqdm(it, desc=f"cka {va.name} vs {vb.name}", leave=False)
    for _ in it:
        ha = next(side_a)
        acc.update(ha, ha if side_b is None else next(side_b))


@torch.inference_mode()
@scheduled
def cka(
    model_a: ModelLike,
    model_b: ModelLike,
    task_or_texts: Any = None,
    *,
    positions: str | None = None,
    n_samples: int = 2048,
    debiased: bool | str = "auto",
    seed: int = 0,
    batch_size: int | None = None,
    max_tokens: int | None = None,
    form: str = "auto",
    seq_len: int = 256,
    n_perm: int | None = None,
    first_token: bool = False,
    progress: bool = False,
) -> CKAResult:
    """Linear CKA between every surviving block of ``model_a`` and every one of ``model_b``: a :class:`CKAResult`
    whose ``matrix`` is ``[L_a, L_b]``.

    Args:
        model_a, model_b: models, pruned/recovered views (:class:`~phaselens.view.ModelView`) or
            anything ``load_model`` takes; ``model_b`` may be ``model_a`` itself or a view of it.
        task_or_texts: a :class:`~phaselens.Task` or anything ``load_task`` takes; or a list of
            strings; or ``None``: the bundled calibration corpus (``calibration.load_calibration``).
        positions: ``"decision"``: each item's decision position (its last prompt token), one
            sample per item; the two models may have different tokenizers. ``"all"``: every
            non-padding token (texts truncated to ``seq_len`` tokens); both models must tokenize
            the inputs identically. Default: ``"decision"`` for a task, ``"all"`` for texts.
        first_token: whether ``positions="all"`` samples each sequence's first token too. Default: no. The first
            token is the attention sink: its massive activations (norms ~100x the other tokens' in the middle
            blocks of SmolLM2, Gemma 3 and Qwen2.5) survive pruning and decide linear CKA on their own, which then
            reads near 1 whatever the other tokens do.
        n_samples: at most this many samples (items or tokens), drawn without replacement by a
            generator seeded with ``seed``; the same samples for both models.
        debiased: ``True``: the unbiased HSIC estimator (Song et al.); ``False``: the plug-in one; ``"auto"``
            (default): unbiased whenever the number of samples is below the feature dimension (the larger
            ``d_model``), where the plug-in CKA of unrelated representations is near 1. The plug-in matrix is
            always kept beside it (``CKAResult.plugin``).
        n_perm: shuffled pairings of the floor's permutation null for the matched blocks (``CKAResult.null``,
            tested by :meth:`CKAResult.effects`); 0 for none; default (``None``): 200 when at most
            :data:`NULL_MAX_SAMPLES` samples are compared, else none (the null costs ``n_perm`` x matched blocks x
            ``n^2``). ``CKAResult.floor`` is one more shuffle, every block pair, always.
        max_tokens: padded tokens per forward pass (default
            :func:`~phaselens.runner.default_max_tokens`: 4096 on the CPU, 32768 on a GPU).
        batch_size: at most this many sequences per pass (default: no cap beyond ``max_tokens``).
        form: the accumulator form, ``"auto"``, ``"gram"`` or ``"feature"`` (same values).

    Each model runs once over the selected sequences; sequences are cut after their last sampled
    token (the models are causal), and block outputs are gathered at the sampled positions only
    and folded into a :class:`~phaselens.cka.CKAAccumulator` batch by batch.
    """
    _check_args(positions, n_samples, debiased, seed, batch_size, max_tokens, form, seq_len, n_perm)
    if not isinstance(first_token, (bool, np.bool_)):
        raise CKAError(f"first_token must be True or False (whether positions='all' reads each sequence's first "
                       f"token), got {first_token!r}")
    va, vb = as_view(model_a), as_view(model_b)
    tok_a, tok_b = va.base.tokenizer, vb.base.tokenizer
    if _is_texts(task_or_texts):
        source, positions, seqs_a, seqs_b = _text_inputs(task_or_texts, positions, tok_a, tok_b, seq_len)
    else:
        source, positions, seqs_a, seqs_b = task_inputs(task_or_texts, positions, tok_a, tok_b)
    check_pairing(va, vb, positions, seqs_a, seqs_b)
    first_token = bool(first_token) and positions == "all"
    smp = draw_samples(seqs_a, seqs_b, positions, n_samples, seed, debiased, source, first_token)
    acc = CKAAccumulator(debiased=debiased, form=form, device=va.base.device)
    _accumulate(va, vb, seqs_a, seqs_b, smp, acc, max_tokens, batch_size, progress)
    matrix = acc.compute()
    common = [b for b in va.kept if b in set(vb.kept)]
    pairs = [(list(va.kept).index(b), list(vb.kept).index(b)) for b in common]
    if n_perm is None:
        n_perm = NULL_PERMS if acc.n <= NULL_MAX_SAMPLES else 0
    floor, null = acc.floor(n_perm=int(n_perm), pairs=pairs, seed=int(seed))
    return CKAResult(
        matrix=matrix, blocks_a=list(va.kept), blocks_b=list(vb.kept), model_a=va.name, model_b=vb.name,
        positions=positions, n_samples=len(smp.seq), debiased=bool(acc.resolved), source=source, form=acc.form,
        seed=int(seed), plugin=matrix if not acc.resolved else acc.compute(debiased=False), floor=floor,
        null=null if n_perm else None, null_blocks=common if n_perm else None, first_token=first_token,
    )
