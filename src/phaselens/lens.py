"""Option-restricted logit lens: every surviving block's residual stream at the decision
position, read through the model's own final norm and unembedding.

``letters`` / ``cloze``: ``z_l[i, k] = W_U[o_ik] . norm_final(h_l[i, t*_i]) (+ b_U, softcap)``.
Only ``[B, d]`` rows are gathered per block during the forward, so the pass costs what a
plain forward costs.

``continuation``: ``z_l[i, k] = sum_t log_softmax(lens_l(h_l[ik, t]))[c_ikt]`` over the
continuation tokens of option ``k``. The full-vocabulary log-softmax is computed one block
at a time and only at continuation positions (never ``[L, B, T, V]``).

A lens other than the logit lens (``lens=``, :mod:`phaselens.lenses`) applies its translator ``T_b`` to the
residual read at each row's block before the readout (``transform(b, h)``); the last row, the output of block
``L-1``, reads through the identity, so it is always the model's own logits.

Every pass goes through :class:`~phaselens.runner.Runner`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .encoding import Encoded, encode
from .runner import Batch, Positions, PrefixCache, Read, Runner
from .tasks.base import Task
from .view import ModelView, as_view
from .types import ModelLike

_CONT_CHUNK = 256  # continuation positions per full-vocabulary readout


@dataclass
class OptionLogits:
    """Per-block option scores of a task.

    Attributes:
        z: ``[L, N, K]`` float32 option logits (``continuation``: summed log-probs);
            ``-inf`` at padded option slots.
        mask: ``[N, K]`` True at real options.
        answers: ``[N]`` correct option index.
        blocks: the ``L`` original block indices the rows of ``z`` come from.
        hidden: ``[L, N, d]`` decision-position residuals if asked for (letters/cloze).
    """

    z: torch.Tensor
    mask: torch.Tensor
    answers: torch.Tensor
    blocks: list[int]
    hidden: torch.Tensor | None = None


def read_at(kept: list[int], n_blocks: int) -> list[int]:
    """The block whose output gives each row: the surviving block itself, except that the last row
    reads the output of block ``L-1`` (skipped or not), so an operator standing in for a cut span at
    the end of the model is part of the final row, as it is of the model's own output logits."""
    return kept[:-1] + [n_blocks - 1]


def select_rows(view: ModelView, blocks: Any) -> list[int]:
    """The surviving blocks to read: ``None`` (all), ``"last"`` (the model's own output only), or a list of
    original indices of surviving blocks (in model order); a :class:`~phaselens.errors.LensError` otherwise."""
    from .errors import LensError

    kept = view.kept
    if blocks is None:
        return list(kept)
    if isinstance(blocks, str):
        if blocks != "last":
            raise LensError(f"blocks must be None (every surviving block), 'last' or a list of block indices, got {blocks!r}")
        return [kept[-1]]
    try:
        want = sorted({int(b) for b in blocks})
    except (TypeError, ValueError):
        raise LensError(f"blocks must be None, 'last' or a list of block indices, got {blocks!r}") from None
    bad = [b for b in want if b not in kept]
    if bad or not want:
        raise LensError(f"blocks {bad or want} are not surviving blocks of {view.name} (surviving: {kept})")
    return want


@torch.inference_mode()
def option_logits(
    model: ModelLike,
    task: Task,
    *,
    batch_size: int | None = None,
    max_tokens: int | None = None,
    return_hidden: bool = False,
    progress: bool = False,
    encoded: Encoded | None = None,
    cache: PrefixCache | None = None,
    blocks: Any = None,
    lens: Any = None,
) -> OptionLogits:
    """Run ``task`` through ``model`` (a model, view or spec) and read every surviving block (or ``blocks``:
    ``"last"`` for the model's own answer only, or a list of surviving blocks).

    ``batch_size`` caps the sequences per pass and ``max_tokens`` the padded tokens per pass (default
    :func:`~phaselens.runner.default_max_tokens`). ``cache`` (the iterative sweep, the phase cuts) replays
    stored block inputs of an identical prefix. ``lens``: ``None``/``"logit"``, a kind name, a saved lens's path or a
    :class:`~phaselens.lenses.Lens` (its translators are applied to each row's residual before the readout).
    """
    from .lenses import resolve_lens

    view = as_view(model)
    rows = select_rows(view, blocks)
    lens_ = resolve_lens(lens, view)
    transform = _identity if lens_.kind == "logit" else lens_.transform
    enc = encoded or encode(task, view.base.tokenizer)
    runner = Runner(view, cache=cache)
    kw = dict(max_tokens=max_tokens, batch_size=batch_size, progress=f"lens {view.name}" if progress else None)
    if enc.format == "continuation":
        z = _continuation_scores(runner, enc, rows, kw, transform)
        return OptionLogits(z, enc.option_mask, enc.answers, rows)
    return _decision_scores(runner, enc, rows, return_hidden, kw, transform)


def _rows_at(view: ModelView, rows: list[int]) -> list[int]:
    """The block read for each of ``rows`` (the last surviving block reads the output of block ``L-1``)."""
    at = dict(zip(view.kept, read_at(view.kept, view.base.n_layers)))
    return [at[b] for b in rows]


def _identity(b: int, h: torch.Tensor) -> torch.Tensor:
    return h


def _decision_scores(runner: Runner, enc: Encoded, kept: list[int], return_hidden: bool, kw: dict,
                     transform=_identity) -> OptionLogits:
    view, base = runner.view, runner.base
    rows_at = _rows_at(view, kept)
    z = torch.empty(len(kept), enc.n_items, enc.n_options)
    hidden = torch.empty(len(kept), enc.n_items, base.d_model) if return_hidden else None
    reads = {"h": Read(tuple(rows_at), "out", "last")}
    for batch, out in runner.passes(enc.prompts, reads, **kw):
        h = torch.stack([out["h"][b].to(base.device) for b in rows_at])  # [L, B, d]
        sel = torch.tensor(batch.rows)
        t = h if transform is _identity else torch.stack([transform(b, h[r]) for r, b in enumerate(rows_at)])
        z[:, sel] = base.readout(t, enc.option_ids[sel].to(base.device)).cpu()
        if hidden is not None:
            hidden[:, sel] = h.float().cpu()
    z = z.masked_fill(~enc.option_mask, float("-inf"))
    return OptionLogits(z, enc.option_mask, enc.answers, kept, hidden)


def _continuation_scores(runner: Runner, enc: Encoded, kept: list[int], kw: dict, transform=_identity) -> torch.Tensor:
    view, base = runner.view, runner.base
    rows_at = _rows_at(view, kept)
    assert enc.continuations is not None and enc.rows is not None
    seqs = [c + t for c, t in zip(enc.prompts, enc.continuations)]
    seq_scores = torch.zeros(len(kept), len(seqs))

    def reads(batch: Batch) -> dict[str, Read]:
        r, p, tgt = [], [], []
        for row, i in enumerate(batch.rows):
            start = len(enc.prompts[i])
            for j, tok in enumerate(enc.continuations[i]):  # type: ignore[index]
                r.append(row)
                p.append(start + j - 1)  # the position that predicts continuation token j
                tgt.append(tok)
        r_t, tgt_t = torch.tensor(r), torch.tensor(tgt)

        def score(b: int, h: torch.Tensor) -> torch.Tensor:
            h = transform(b, h)  # the lens's translator of block b (identity for the logit lens)
            rr, tt = r_t.to(h.device), tgt_t.to(h.device)
            tot = torch.zeros(batch.size, device=h.device)
            for c in range(0, len(rr), _CONT_CHUNK):
                sl = slice(c, c + _CONT_CHUNK)
                logp = torch.log_softmax(base.full_logits(h[sl]), dim=-1)
                tot.index_add_(0, rr[sl], logp.gather(1, tt[sl, None])[:, 0])
            return tot.cpu()

        return {"score": Read(tuple(rows_at), "out", Positions(r_t, torch.tensor(p)), fn=score)}

    for batch, out in runner.passes(seqs, reads, **kw):
        seq_scores[:, torch.tensor(batch.rows)] = torch.stack([out["score"][b] for b in rows_at])
    z = torch.full((len(kept), enc.n_items, enc.n_options), float("-inf"))
    items = torch.tensor([i for i, _ in enc.rows])
    opts = torch.tensor([k for _, k in enc.rows])
    z[:, items, opts] = seq_scores
    return z

