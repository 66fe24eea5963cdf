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
from typing import Any, Callable, Iterable

import numpy as np
import torch

from .encoding import Encoded, encode_task
from .errors import LensError
from .lenses import resolve_lens
from .lenses.base import read_at  # (was defined here; phaselens.readout.read_at still works)
from .runner import Batch, Positions, PrefixCache, Read, Runner, pack
from .runner.masks import text_config
from .tasks.base import Task
from .types import ModelLike
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


def check_blocks_arg(blocks: Any) -> None:
    """The form of a ``blocks=`` argument (``None``, ``"last"`` or block indices), checked before a model loads."""
    if blocks is None or (isinstance(blocks, str) and blocks == "last"):
        return
    if isinstance(blocks, (str, bytes)) or not isinstance(blocks, Iterable):
        raise LensError(f"blocks must be None (every surviving block), 'last' or a list of block indices, got {blocks!r}")
    bad = [b for b in blocks if isinstance(b, (bool, np.bool_)) or not isinstance(b, (int, np.integer))]
    if bad:
        raise LensError(f"blocks must be None, 'last' or a list of block indices (ints), got {blocks!r}")


def select_rows(view: ModelView, blocks: Any) -> list[int]:
    """The surviving blocks to read: ``None`` (all), ``"last"`` (the model's own output only), or a list of
    original indices of surviving blocks (in model order); a :class:`~phaselens.errors.LensError` otherwise."""
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
    share_prefix: bool = True,
    lens: Any = None,
) -> OptionLogits:
    """Run ``task`` through ``model`` (a model, view or spec) and read every surviving block (or ``blocks``:
    ``"last"`` for the model's own answer only, or a list of surviving blocks).

    ``batch_size`` caps the sequences per pass and ``max_tokens`` the padded tokens per pass (default
    :func:`~phaselens.runner.default_max_tokens`). ``cache`` (the iterative sweep, the phase cuts) replays
    stored block inputs of an identical prefix. ``share_prefix`` (continuation format): run each item's
    prompt once, its K continuations packed after it (same scores as ``prompt + cont_k`` row by row).
    ``lens``: ``None``/``"logit"``, a kind name, a saved lens's path or a :class:`~phaselens.lenses.Lens` (its translators are applied to each row's residual before the readout).
    """
    view = as_view(model)
    rows = select_rows(view, blocks)
    lens_ = resolve_lens(lens, view)
    transform = _identity if lens_.is_identity else lens_.transform
    enc = encoded or encode_task(task, view.base.tokenizer)
    runner = Runner(view, cache=cache)
    kw = dict(max_tokens=max_tokens, batch_size=batch_size, progress=f"lens {view.name}" if progress else None)
    check_context(view.base, enc, task)
    if enc.format == "continuation":
        z = _continuation_scores(runner, enc, rows, kw, share_prefix=share_prefix, transform=transform)
        return OptionLogits(z, enc.option_mask, enc.answers, rows)
    return _decision_scores(runner, enc, rows, return_hidden, kw, transform)


def context_length(base: Any) -> int | None:
    """The model's context (``max_position_embeddings`` of its text config), ``None`` when it has none."""
    n = getattr(text_config(base.hf), "max_position_embeddings", None)
    return int(n) if n else None


def check_context(base: Any, enc: Encoded, task: Task | None = None) -> None:
    """A :class:`~phaselens.errors.LensError` naming the first item whose prompt (letters, cloze) or prompt + option
    (continuation) is longer than the model's context (checked before any forward pass)."""
    ctx = context_length(base)
    if ctx is None:
        return
    if enc.continuations is None or enc.rows is None:  # letters, cloze: the prompt is read at its last token
        for i, p in enumerate(enc.prompts):
            if len(p) > ctx:
                name = (task.items[i].id if task is not None and i < len(task.items) else None) or f"#{i}"
                raise LensError(f"item {name}: its prompt is {len(p)} tokens, longer than {base.name}'s context of "
                                f"{ctx} tokens; shorten it (fewer shots) or drop the item")
        return
    for (i, k), p, c in zip(enc.rows, enc.prompts, enc.continuations):
        if len(p) + len(c) > ctx:
            name = (task.items[i].id if task is not None and i < len(task.items) else None) or f"#{i}"
            raise LensError(f"item {name} (option {k}): prompt + continuation is {len(p) + len(c)} tokens, longer than "
                            f"{base.name}'s context of {ctx} tokens; shorten it (fewer shots) or drop the item")


def _rows_at(view: ModelView, rows: list[int]) -> list[int]:
    """The block read for each of ``rows`` (the last surviving block reads the output of block ``L-1``)."""
    at = dict(zip(view.kept, read_at(view.kept, view.base.n_blocks)))
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


Transform = Callable[[int, torch.Tensor], torch.Tensor]


def _continuation_scores(runner: Runner, enc: Encoded, kept: list[int], kw: dict, *, share_prefix: bool = True,
                         transform: Transform | None = None) -> torch.Tensor:
    """``[L, N, K]`` summed log-likelihood of each option's continuation, read at every block of ``kept``.

    ``share_prefix`` (default): one packed row per item, ``[prompt, cont_1, ..., cont_K]`` with a block mask and
    restarted position ids (:mod:`phaselens.runner.masks`), so the prompt runs once and the first continuation
    token of every option is scored from one readout at the last prompt position. Otherwise one row per
    (item, option), ``prompt + cont_k``. ``transform(b, h)`` maps the residual rows ``h [m, d]`` read at block
    ``b`` before the model's readout (identity by default; a translator lens goes here).
    """
    view, base = runner.view, runner.base
    rows_at = _rows_at(view, kept)
    assert enc.continuations is not None and enc.rows is not None
    # groups of (item, option) sequences sharing one prompt: one packed row each
    if share_prefix:
        by_prompt: dict[tuple[int, tuple[int, ...]], list[int]] = {}
        for s_i, (item, _k) in enumerate(enc.rows):
            by_prompt.setdefault((item, tuple(enc.prompts[s_i])), []).append(s_i)
        groups = list(by_prompt.values())
    else:
        groups = [[s_i] for s_i in range(len(enc.rows))]
    seqs: list[list[int]] = []
    layouts: list[tuple[list[int], list[int]]] | None = [] if share_prefix else None
    # per row: read positions (unique) and (read index, target, sequence) triples to gather
    plan: list[tuple[list[int], list[tuple[int, int, int]]]] = []
    for g in groups:
        prompt = enc.prompts[g[0]]
        conts = [enc.continuations[s_i] for s_i in g]
        packed = pack(prompt, conts)
        seqs.append(packed.ids)
        if layouts is not None:
            layouts.append(packed.layout)
        P = packed.prompt_len
        pos, gather = [P - 1], []
        for s_i, c, st in zip(g, conts, packed.starts):
            gather.append((0, c[0], s_i))  # the first token: predicted at the last prompt position, shared
            for j in range(1, len(c)):
                pos.append(st + j - 1)
                gather.append((len(pos) - 1, c[j], s_i))
        plan.append((pos, gather))

    seq_scores = torch.zeros(len(kept), len(enc.rows))
    dev = base.device  # the readout (W_U) runs on the head's device; scores are summed there

    def reads(batch: Batch) -> dict[str, Read]:
        r, p, gi, tg, sq = [], [], [], [], []
        for row, g_i in enumerate(batch.rows):
            pos, gather = plan[g_i]
            off = len(p)
            r += [row] * len(pos)
            p += pos
            for idx, tok, s_i in gather:
                gi.append(off + idx)
                tg.append(tok)
                sq.append(s_i)
        order = sorted(range(len(gi)), key=gi.__getitem__)
        gi_t = torch.tensor([gi[o] for o in order], device=dev)
        tg_t = torch.tensor([tg[o] for o in order], device=dev)
        sq_list = sorted(set(sq))
        local = {s_i: n for n, s_i in enumerate(sq_list)}
        sq_t = torch.tensor([local[sq[o]] for o in order], device=dev)
        cuts = torch.searchsorted(gi_t, torch.arange(0, len(p) + _CONT_CHUNK, _CONT_CHUNK, device=dev)).tolist()

        def score(b: int, h: torch.Tensor) -> tuple[list[int], torch.Tensor]:
            if transform is not None:
                h = transform(b, h)
            tot = torch.zeros(len(sq_list), device=dev)
            for n, c in enumerate(range(0, len(h), _CONT_CHUNK)):
                lo, hi = cuts[n], cuts[n + 1]
                if lo == hi:
                    continue
                logp = torch.log_softmax(base.full_logits(h[c : c + _CONT_CHUNK]), dim=-1)  # [chunk, V] float32
                tot.index_add_(0, sq_t[lo:hi], logp[gi_t[lo:hi] - c, tg_t[lo:hi]])
            return sq_list, tot.cpu()

        return {"score": Read(tuple(rows_at), "out", Positions(torch.tensor(r), torch.tensor(p)), fn=score)}

    for _batch, out in runner.passes(seqs, reads, layouts=layouts, **kw):
        for li, b in enumerate(rows_at):
            idx, tot = out["score"][b]
            seq_scores[li, torch.tensor(idx)] = tot
    z = torch.full((len(kept), enc.n_items, enc.n_options), float("-inf"))
    items = torch.tensor([i for i, _ in enc.rows])
    opts = torch.tensor([k for _, k in enc.rows])
    z[:, items, opts] = seq_scores
    return z
