"""Option-restricted logit lens: every surviving block's residual stream at the decision
position, read through the model's own final norm and unembedding.

``letters`` / ``cloze``: ``z_l[i, k] = W_U[o_ik] . norm_final(h_l[i, t*_i]) (+ b_U, softcap)``.
Only ``[B, d]`` rows are gathered per block during the forward, so the pass costs what a
plain forward costs.

``continuation``: ``z_l[i, k] = sum_t log_softmax(lens_l(h_l[ik, t]))[c_ikt]`` over the
continuation tokens of option ``k``. The full-vocabulary log-softmax is computed one block
at a time and only at continuation positions (never ``[L, B, T, V]``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .encoding import Encoded, batches, encode, pad
from .runtime import Replay, applied, merge_taps, run_decoder
from .tasks.base import Task
from .view import ModelView, as_view

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


def default_batch_size(model: ModelView) -> int:
    return 64 if model.base.device.type == "cuda" else 16


def option_logits(
    model: Any,
    task: Task,
    *,
    batch_size: int | None = None,
    return_hidden: bool = False,
    progress: bool = False,
    encoded: Encoded | None = None,
    replay: Replay | None = None,
) -> OptionLogits:
    """Run ``task`` through ``model`` (a model, view or spec) and read every surviving block.

    ``replay`` (the iterative sweep) reuses stored block inputs of an earlier, identical prefix.
    """
    view = as_view(model)
    enc = encoded or encode(task, view.base.tokenizer)
    bs = batch_size or default_batch_size(view)
    if bs < 1:
        raise ValueError(f"batch_size must be >= 1, got {bs}")
    if enc.format == "continuation":
        z = _continuation_scores(view, enc, bs, progress, replay)
        return OptionLogits(z, enc.option_mask, enc.answers, view.kept)
    return _decision_scores(view, enc, bs, return_hidden, progress, replay)


def _progress(it, total: int, on: bool, desc: str):
    if not on:
        return it
    from tqdm.auto import tqdm

    return tqdm(it, total=total, desc=desc, leave=False)


def _decision_scores(view: ModelView, enc: Encoded, bs: int, return_hidden: bool, progress: bool,
                     replay: Replay | None = None) -> OptionLogits:
    base, kept = view.base, view.kept
    n = enc.n_items
    z = torch.empty(len(kept), n, enc.n_options)
    hidden = torch.empty(len(kept), n, base.d_model) if return_hidden else None
    pad_id = base.tokenizer.pad_token_id
    groups = batches([len(p) for p in enc.prompts], bs)
    rows: dict = {}
    taps = _taps(_read_at(kept, base.n_layers), rows)
    with torch.inference_mode():
        for idx in _progress(groups, len(groups), progress, f"lens {view.name}"):
            ids, att = pad([enc.prompts[i] for i in idx], pad_id, base.device)
            rows["pos"] = att.sum(1) - 1  # last real token of each row (right padding)
            rows["out"] = []
            key = ("lens", tuple(enc.prompts[i][-1] for i in idx), tuple(idx), ids.shape[1])
            plan, t_in, t_out = _plan_and_taps(view, taps, replay, key)
            with applied(base.blocks, plan, tap_in=t_in, tap_out=t_out, returns_tuple=base.returns_tuple):
                run_decoder(base.decoder, ids, att)
            h = torch.stack(rows["out"])  # [L, B, d]
            sel = torch.tensor(idx)
            z[:, sel] = base.readout(h, enc.option_ids[sel].to(base.device)).cpu()
            if hidden is not None:
                hidden[:, sel] = h.float().cpu()
    z = z.masked_fill(~enc.option_mask, float("-inf"))
    return OptionLogits(z, enc.option_mask, enc.answers, kept, hidden)


def _plan_and_taps(view: ModelView, taps: dict, replay: Replay | None, key: object) -> tuple:
    """``(plan, taps in, taps out)`` of one batch. With ``replay``, the stored prefix is replayed: the
    taps of blocks before the first changed one are fed their stored outputs now, in block order, and
    the rest run during the forward next to the taps that record the new suffix."""
    if replay is None:
        return view.plan(), {}, taps
    plan, t_in, rec_out, start = replay.plan(view.plan(), key)
    for b in sorted(taps):
        if b < start:
            taps[b](replay.output_of(key, b).to(view.base.device))
    return plan, t_in, merge_taps({b: t for b, t in taps.items() if b >= start}, rec_out)


def _read_at(kept: list[int], n_blocks: int) -> list[int]:
    """The block whose output gives each row: the surviving block itself, except that the last row
    reads the output of block ``L-1`` (skipped or not), so an operator standing in for a cut span at
    the end of the model is part of the final row, as it is of the model's own output logits."""
    return kept[:-1] + [n_blocks - 1]


def _taps(kept: list[int], rows: dict) -> dict:
    def tap(h: torch.Tensor) -> None:
        rows["out"].append(h[torch.arange(h.shape[0], device=h.device), rows["pos"]])

    return {b: tap for b in kept}


def _continuation_scores(view: ModelView, enc: Encoded, bs: int, progress: bool, replay: Replay | None = None) -> torch.Tensor:
    base, kept = view.base, view.kept
    assert enc.continuations is not None and enc.rows is not None
    seqs = [c + t for c, t in zip(enc.prompts, enc.continuations)]
    seq_scores = torch.zeros(len(kept), len(seqs))
    groups = batches([len(s) for s in seqs], bs)
    state: dict = {}
    layer_of = {b: j for j, b in enumerate(kept)}

    def make_tap(b: int):
        def tap(h: torch.Tensor) -> None:
            r, p, tgt = state["r"], state["p"], state["tgt"]
            tot = torch.zeros(h.shape[0], device=h.device)
            for c in range(0, len(r), _CONT_CHUNK):
                sl = slice(c, c + _CONT_CHUNK)
                logp = torch.log_softmax(base.full_logits(h[r[sl], p[sl]]), dim=-1)
                tot.index_add_(0, r[sl], logp.gather(1, tgt[sl, None])[:, 0])
            state["scores"][layer_of[b]] = tot.cpu()

        return tap

    taps = {r: make_tap(b) for b, r in zip(kept, _read_at(kept, base.n_layers))}
    with torch.inference_mode():
        for idx in _progress(groups, len(groups), progress, f"lens {view.name}"):
            ids, att = pad([seqs[i] for i in idx], base.tokenizer.pad_token_id, base.device)
            r, p, tgt = [], [], []
            for row, i in enumerate(idx):
                start = len(enc.prompts[i])
                for j, tok in enumerate(enc.continuations[i]):
                    r.append(row)
                    p.append(start + j - 1)  # the position that predicts continuation token j
                    tgt.append(tok)
            dev = base.device
            state.update(r=torch.tensor(r, device=dev), p=torch.tensor(p, device=dev), tgt=torch.tensor(tgt, device=dev))
            state["scores"] = torch.empty(len(kept), len(idx))
            plan, t_in, t_out = _plan_and_taps(view, taps, replay, ("cont", tuple(idx), ids.shape[1]))
            with applied(base.blocks, plan, tap_in=t_in, tap_out=t_out, returns_tuple=base.returns_tuple):
                run_decoder(base.decoder, ids, att)
            seq_scores[:, torch.tensor(idx)] = state["scores"]
    z = torch.full((len(kept), enc.n_items, enc.n_options), float("-inf"))
    items = torch.tensor([i for i, _ in enc.rows])
    opts = torch.tensor([k for _, k in enc.rows])
    z[:, items, opts] = seq_scores
    return z
