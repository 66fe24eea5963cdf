"""The runner: one pass of a model view, with reads, edits, the prefix cache and finiteness checks."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch

from ..errors import NonFiniteError, RunnerError
from .batch import Batch, Read, select_at, default_max_tokens, pad, pad_layouts, token_batches
from .masks import decoder_mask
from .cache import PrefixCache
from .layered import Schedule, check_schedule, current_schedule, default_budget, resolve, run_wave, waves
from .patches import exclusive, patched
from .plan import Plan, StopForward, chain, skip


_OOM_WARNED = False


@dataclass(eq=False)
class Pass:
    """One prepared pass of a batch (:meth:`Runner.prepare`): what it reads (``out``, filled by its taps), the
    plan it runs (``run_plan``: the view's plan, its edits, the prefix cache's replay), its taps per block
    ``(in, out, mlp)``, and the deepest block it computes (``last``; ``stop_in``: it stops at that block's input)."""

    batch: Batch
    plan: Plan
    out: dict[str, dict[int, Any]]
    run: bool = True
    run_plan: Plan | None = None
    taps: tuple[dict, dict, dict] = ({}, {}, {})
    last: int = 0
    stop_in: bool = False
    flags: list = field(default_factory=list)
    small: list = field(default_factory=list)


#: reads of at most this many values (a block's last position: [B, d]) are checked for NaN/Inf together after the
#: pass, one kernel for all blocks; larger ones (every token) right away, each with its own check
STACKED_CHECK = 1 << 16


class DenseView:
    """A :class:`~phaselens.Model` run as itself: what ``ModelView(model)`` runs (no plan, an empty signature),
    without the runner importing :mod:`phaselens.view` (which imports the runner)."""

    def __init__(self, base: Any) -> None:
        self.base = base
        self.name = base.name

    def plan(self) -> Plan:
        return Plan({}, mlp={}, names={})

    def signature(self) -> dict[int, str]:
        return {}


def dense_view(view: Any) -> Any:
    """``view`` when it is a view (has ``base``, ``plan()``, ``signature()``); a :class:`DenseView` of a model."""
    if all(hasattr(view, a) for a in ("base", "plan", "signature")):
        return view
    if all(hasattr(view, a) for a in ("hf", "blocks", "decoder", "name")):
        return DenseView(view)
    raise RunnerError(f"the runner runs a model view or a loaded model, got {type(view).__name__}; "
                      "use phaselens.as_view(...) or phaselens.load_model(...) first")


class Runner:
    """Runs passes of one model view (a :class:`~phaselens.view.ModelView`).

    ``forward(batch, reads)`` returns ``{name: {block: value}}`` for each :class:`Read`; ``passes(seqs,
    reads)`` batches sequences by the token budget and yields ``(batch, result)`` pass by pass.
    ``edits`` (a :class:`Plan`) adds per-pass edits on top of the view's own plan; a block an edit
    touches has no cache entries past it (its content is unknown to the cache).

    ``schedule``: ``"batch"``, ``"layer"`` or ``"auto"`` (a :class:`~phaselens.runner.layered.Schedule` or its
    kind); None follows :func:`~phaselens.runner.layered.current_schedule` (``with phaselens.runner.schedule(...)``).
    Both schedules give the same numbers; the layer schedule reads each offloaded block's weights once per wave.
    """

    def __init__(self, view: Any, *, cache: PrefixCache | None = None, check_finite: bool = True,
                 schedule: Schedule | str | None = None) -> None:
        self.schedule = check_schedule(schedule) if schedule is not None else None  # None: current_schedule()
        self.view = dense_view(view)
        self.base = self.view.base
        self.cache = cache
        self.check_finite = check_finite
        self.plan = self.view.plan()
        self._sig = self.view.signature()
        # which model object computes: one cache handed to two models never replays one's activations in the other
        self._model_key = f"{type(self.base.hf).__name__}:{id(self.base.hf)}:{self.base.fingerprint}"
        self._devices = [self.base.block_device(b) for b in range(self.base.n_blocks)]  # accelerate may spread them

    @property
    def n_blocks(self) -> int:
        return self.base.n_blocks

    # -- batching
    def batches(self, seqs: Sequence[Sequence[int]], *, max_tokens: int | None = None,
                batch_size: int | None = None, groups: list[list[int]] | None = None,
                layouts: Sequence[tuple[Sequence[int], Sequence[int]]] | None = None) -> list[Batch]:
        """The passes over ``seqs``: padded batches within the token budget (default :func:`default_max_tokens`),
        or exactly ``groups`` (lists of indices into ``seqs``) when given (two models fed the same batches).
        ``layouts``: ``(positions, segments)`` of each sequence when they are packed rows (:mod:`.masks`)."""
        if not seqs:
            raise RunnerError("no sequences to run")
        empty = [i for i, s in enumerate(seqs) if len(s) == 0]
        if empty:
            raise RunnerError(f"sequence {empty[0]} is empty; every sequence needs at least one token")
        if layouts is not None:
            if len(layouts) != len(seqs):
                raise RunnerError(f"{len(layouts)} layouts for {len(seqs)} sequences; give one per sequence")
            bad = [i for i, (s, (p, g)) in enumerate(zip(seqs, layouts)) if not len(s) == len(p) == len(g)]
            if bad:
                raise RunnerError(f"sequence {bad[0]}: its positions and segments must be as long as its tokens")
        if groups is None:
            budget = max_tokens if max_tokens is not None else default_max_tokens(self.base.device)
            groups = token_batches([len(s) for s in seqs], budget, batch_size)
        return [self._batch(seqs, g, layouts) for g in groups]

    def _batch(self, seqs: Sequence[Sequence[int]], rows: list[int],
               layouts: Sequence[tuple[Sequence[int], Sequence[int]]] | None = None) -> Batch:
        pad_id = self.base.tokenizer.pad_token_id if self.base.tokenizer.pad_token_id is not None else 0
        ids, att = pad([seqs[i] for i in rows], pad_id, self.base.input_device)
        if layouts is None:
            return Batch(list(rows), ids, att)
        pos, seg = pad_layouts([layouts[i] for i in rows], self.base.input_device)
        return Batch(list(rows), ids, att, pos, seg)

    def passes(self, seqs: Sequence[Sequence[int]], reads: dict[str, Read] | Callable[[Batch], dict[str, Read]], *,
               edits: Plan | Callable[[Batch], Plan | None] | None = None, max_tokens: int | None = None,
               batch_size: int | None = None, groups: list[list[int]] | None = None,
               layouts: Sequence[tuple[Sequence[int], Sequence[int]]] | None = None,
               progress: str | None = None) -> Iterator[tuple[Batch, dict]]:
        """Yield ``(batch, forward(batch, reads))`` over ``seqs``; ``reads`` and ``edits`` may depend on the
        batch. On a GPU, an out-of-memory error halves the batch and retries (said once). ``layouts``: see
        :meth:`batches` (packed rows). Under the layer schedule (:mod:`.layered`) the batches of a wave are yielded
        together after the wave's last block: a read without ``fn`` is kept for the whole wave."""
        todo = self.batches(seqs, max_tokens=max_tokens, batch_size=batch_size, groups=groups, layouts=layouts)
        sched = self.schedule or current_schedule()
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(seqs), desc=progress, leave=False)
        if resolve(self, sched, todo) == "layer":
            yield from self._layer_passes(todo, reads, edits, sched, bar)
            return
        while todo:
            batch = todo.pop(0)
            r = reads(batch) if callable(reads) else reads
            e = edits(batch) if callable(edits) else edits
            try:
                out = self.forward(batch, r, edits=e)
            except torch.cuda.OutOfMemoryError:
                if batch.size == 1:
                    raise
                _warn_oom(batch)
                torch.cuda.empty_cache()
                half = batch.size // 2
                todo[:0] = [self._batch_from(batch, slice(0, half)), self._batch_from(batch, slice(half, None))]
                continue
            if bar is not None:
                bar.update(batch.size)
            yield batch, out
        if bar is not None:
            bar.close()

    def _layer_passes(self, todo: list[Batch], reads: Any, edits: Any, sched: Schedule, bar: Any
                      ) -> Iterator[tuple[Batch, dict]]:
        """The layer schedule: waves of batches within the activation budget, each run block by block
        (:func:`~phaselens.runner.layered.run_wave`); an out-of-memory error splits the wave (or halves its batch)."""
        queue = waves(self.base, todo, default_budget(sched, self._devices[0]))
        while queue:
            wave = queue.pop(0)
            prepared = [self.prepare(b, reads(b) if callable(reads) else reads,
                                     edits=edits(b) if callable(edits) else edits) for b in wave]
            try:
                run_wave(self, prepared, sched)
            except torch.cuda.OutOfMemoryError:
                if len(wave) == 1 and wave[0].size == 1:
                    raise
                _warn_oom(wave[0])
                torch.cuda.empty_cache()
                if len(wave) > 1:
                    queue[:0] = [wave[: len(wave) // 2], wave[len(wave) // 2:]]
                else:
                    half = wave[0].size // 2
                    queue[:0] = [[self._batch_from(wave[0], slice(0, half)), self._batch_from(wave[0], slice(half, None))]]
                continue
            for p in prepared:
                out = self.finish(p)
                if bar is not None:
                    bar.update(p.batch.size)
                yield p.batch, out
        if bar is not None:
            bar.close()

    def _batch_from(self, batch: Batch, sl: slice) -> Batch:
        ids, mask = batch.ids[sl], batch.mask[sl]
        width = int(mask.sum(1).max())
        if not batch.packed:
            return Batch(batch.rows[sl], ids[:, :width], mask[:, :width])
        return Batch(batch.rows[sl], ids[:, :width], mask[:, :width], batch.positions[sl, :width],  # type: ignore[index]
                     batch.segments[sl, :width])  # type: ignore[index]

    # -- one pass
    def forward(self, batch: Batch, reads: dict[str, Read], *, edits: Plan | None = None,
                logits: bool = False) -> dict[str, Any]:
        """Run one pass; ``{name: {block: selection or fn(block, selection)}}`` for every read.

        ``logits=True`` runs the whole causal LM (its own head) and adds ``"logits"`` ``[B, T, V]``: the
        model's own output, which the readout check compares the lens with."""
        p = self.prepare(batch, reads, edits=edits, logits=logits)
        if logits:
            p.out["logits"] = self._run(p, head=True)
        elif p.run:
            self._run(p)
        return self.finish(p)

    def logits(self, batch: Batch, *, edits: Plan | None = None, grad: bool = False) -> torch.Tensor:
        """The view's own output logits ``[B, T, V]`` of one pass of ``batch`` (its plan and ``edits`` installed; no
        reads, no prefix cache). ``grad=True`` runs with autograd on and returns logits that keep their graph
        (:func:`phaselens.heal` trains through the view's operators this way); otherwise under ``inference_mode``."""
        base = self.base
        plan = self.plan.merged(edits)
        with (torch.enable_grad() if grad else torch.inference_mode()), exclusive(base.decoder, base.name):
            with patched(base.blocks, plan, returns_tuple=base.returns_tuple):
                return base.hf(**self._inputs(batch), use_cache=False).logits

    def prepare(self, batch: Batch, reads: dict[str, Read], *, edits: Plan | None = None,
                logits: bool = False) -> Pass:
        """Everything one pass of ``batch`` needs before a block runs: the merged plan, the replay point, the
        reads served from the cache, the taps (reads, cache recording, the stop) per block. Shared by both
        schedules: the batch schedule runs it through the decoder, the layer schedule block by block."""
        L = self.n_blocks
        plan = self.plan.merged(edits)
        sig = dict(self._sig)
        if edits is not None:
            for b in edits.blocks():
                sig[b] = f"{sig.get(b, '')}+edit{edits.serial}"
        prefix = chain(sig, L, self._model_key)
        for name, rd in reads.items():
            bad = [b for b in rd.blocks if not 0 <= b < L]
            if bad:
                raise RunnerError(f"read {name!r}: blocks {bad} are outside 0..{L - 1}")

        cache = self.cache
        start = cache.depth(batch.key, prefix) if cache is not None and not logits else 0
        # an MLP-branch read or an edit of a block before the replay point cannot be replayed: start at it
        for rd in reads.values():
            if rd.site == "mlp" and rd.blocks:
                start = min(start, min(rd.blocks))
        p = Pass(batch=batch, plan=plan, out={name: {} for name in reads})

        def keep(name: str, rd: Read, b: int, h: torch.Tensor) -> None:
            if rd.site == "in":  # a block's input arrives from the previous block's device: read it on its own
                h = h.to(self._devices[b])
            sel = select_at(h, rd.at, batch)
            if self.check_finite:
                if sel.numel() <= STACKED_CHECK:
                    p.small.append((b, name, sel))
                else:
                    p.flags.append((b, name, torch.isfinite(sel).all()))
            p.out[name][b] = rd.fn(b, sel) if rd.fn is not None else sel

        # reads served from the cache (what blocks before ``start`` computed)
        taps_in: dict[int, list[Callable]] = {}
        taps_out: dict[int, list[Callable]] = {}
        taps_mlp: dict[int, list[Callable]] = {}
        deepest = (-1, 0)  # (block, 0: its input / 1: its output): where the pass may stop
        for name, rd in reads.items():
            for b in rd.blocks:
                src = b if rd.site == "in" else b + 1  # the stored input of block b / of block b + 1 (key L: final)
                if rd.site != "mlp" and 1 <= src <= start and cache is not None:
                    keep(name, rd, b, cache.get(batch.key, src).to(self._devices[min(b, L - 1)]))
                    continue
                deepest = max(deepest, (b, 0 if rd.site == "in" else 1))
                target = {"in": taps_in, "out": taps_out, "mlp": taps_mlp}[rd.site]
                target.setdefault(b, []).append(lambda h, _n=name, _r=rd, _b=b: keep(_n, _r, _b, h))
        recording = cache is not None and cache.recording
        p.run = deepest[0] >= 0 or (recording and start < L)
        stop_at = None if (recording or logits) else deepest
        self._arm(p, start, prefix, taps_in, taps_out, taps_mlp, stop_at)
        return p

    def finish(self, p: Pass) -> dict[str, Any]:
        """The pass's reads, after the NaN/Inf checks (a failure names the first block that produced it)."""
        if p.small:  # one isfinite over each group of equal-shape small reads (the last position of every block)
            groups: dict[tuple, list[torch.Tensor]] = {}
            for _, _, t in p.small:
                groups.setdefault((tuple(t.shape), t.dtype, t.device), []).append(t)
            if not all(bool(torch.isfinite(torch.stack(g)).all()) for g in groups.values()):
                p.flags.extend((b, n, torch.isfinite(t).all()) for b, n, t in p.small)
        if p.flags:
            ok = torch.stack([f for _, _, f in p.flags]).all()
            if not bool(ok):
                self._nonfinite(p.batch, p.plan, p.flags)
        return p.out

    def _arm(self, p: Pass, start: int, prefix: list[str], taps_in: dict, taps_out: dict, taps_mlp: dict,
             stop_at: tuple[int, int] | None) -> None:
        """Set ``p``'s run plan (the replay of the cached input of block ``start``) and its taps per block."""
        L, cache, batch, plan = self.n_blocks, self.cache, p.batch, p.plan
        if start > 0:
            cached = cache.get(batch.key, start)  # type: ignore[union-attr]
            replace = {b: fn for b, fn in plan.replace.items() if b >= start}
            replace[0] = lambda h, _c=cached: _c.to(h.device, h.dtype)
            for b in range(1, start):
                replace[b] = skip
            plan = Plan(replace, {b: f for b, f in plan.after.items() if b >= start},
                        {b: f for b, f in plan.mlp.items() if b >= start},
                        {b: f for b, f in plan.attn.items() if b >= start}, plan.names)
            # taps of blocks before ``start`` would see the replayed stand-ins (they were served from the cache);
            # block 0's input is the embedding output, genuine whatever block 0 computes
            taps_in = {b: t for b, t in taps_in.items() if b >= start or b == 0}
            taps_out = {b: t for b, t in taps_out.items() if b >= start}
        if cache is not None and cache.recording:
            for b in range(start, L):
                taps_in.setdefault(b, []).append(lambda h, _b=b: cache.put(batch.key, _b, prefix[_b], h))
            taps_out.setdefault(L - 1, []).append(lambda h: cache.put(batch.key, L, prefix[L], h))
        p.last = L - 1
        if stop_at is not None and stop_at < (L - 1, 1):
            def stop(h: torch.Tensor) -> None:
                raise StopForward

            (taps_in if stop_at[1] == 0 else taps_out).setdefault(stop_at[0], []).append(stop)
            p.last, p.stop_in = stop_at[0], stop_at[1] == 0
        p.run_plan = plan
        p.taps = (_fan(taps_in), _fan(taps_out), _fan(taps_mlp))

    def _run(self, p: Pass, head: bool = False) -> Any:
        """The batch schedule: one decoder forward of ``p`` (stopped after its deepest read)."""
        base = self.base
        t_in, t_out, t_mlp = p.taps
        with torch.inference_mode(), exclusive(base.decoder, base.name):
            with patched(base.blocks, p.run_plan, tap_in=t_in, tap_out=t_out, tap_mlp=t_mlp,
                         returns_tuple=base.returns_tuple):
                if head:
                    return base.hf(**self._inputs(p.batch), use_cache=False).logits
                try:
                    base.decoder(**self._inputs(p.batch), use_cache=False)
                except StopForward:
                    pass
        return None

    def _inputs(self, batch: Batch) -> dict[str, Any]:
        """The decoder's inputs: ids and the 2D padding mask, or for packed rows their block mask and position ids."""
        if not batch.packed:
            return {"input_ids": batch.ids, "attention_mask": batch.mask}
        mask = decoder_mask(self.base.hf, self.base.attn_implementation, batch.segments, batch.positions, self.base.dtype)
        return {"input_ids": batch.ids, "attention_mask": mask, "position_ids": batch.positions}

    def _nonfinite(self, batch: Batch, plan: Plan, flags: list) -> None:
        bad_read = min(((b, n) for b, n, f in flags if not bool(f)), key=lambda x: x[0])  # the earliest block
        first = None
        seen: dict[int, bool] = {}

        def probe(b: int, h: torch.Tensor) -> None:
            seen[b] = bool(torch.isfinite(h[batch.mask.to(h.device).bool()]).all())

        taps = {b: (lambda h, _b=b: probe(_b, h)) for b in range(self.n_blocks)}
        with torch.inference_mode(), exclusive(self.base.decoder, self.base.name):
            with patched(self.base.blocks, plan, tap_out=taps, returns_tuple=self.base.returns_tuple):
                try:
                    self.base.decoder(**self._inputs(batch), use_cache=False)
                except StopForward:
                    pass
        first = next((b for b in sorted(seen) if not seen[b]), bad_read[0])
        what = plan.names.get(first) or (f"block {first} itself" if first not in plan.blocks() else "an edit")
        raise NonFiniteError(
            f"{self.view.name}: the forward pass produced NaN or Inf, first in the output of block {first} "
            f"(what runs there: {what}); it reached the read {bad_read[1]!r} at block {bad_read[0]}. No margin or "
            "transition is computed from it. Check that operator, lens or edit for NaN/Inf (or huge values), or run "
            "the model in float32")


def _fan(taps: dict[int, list[Callable]]) -> dict[int, Callable]:
    def both(ts: list[Callable]) -> Callable:
        if len(ts) == 1:
            return ts[0]

        def f(h: torch.Tensor) -> None:
            for t in ts:
                t(h)

        return f

    return {b: both(ts) for b, ts in taps.items()}


def _warn_oom(batch: Batch) -> None:
    global _OOM_WARNED
    if not _OOM_WARNED:
        _OOM_WARNED = True
        warnings.warn(f"phaselens: out of GPU memory with a batch of {batch.size} sequences x {batch.ids.shape[1]} "
                      "tokens; halving batches that run out of memory from now on (said once). Pass a smaller "
                      "max_tokens= to avoid the retries", RuntimeWarning, stacklevel=4)


def run_all(view: Any, seqs: Sequence[Sequence[int]], reads: dict[str, Read] | Callable[[Batch], dict[str, Read]],
            **kw: Any) -> Iterable[tuple[Batch, dict]]:
    """:meth:`Runner.passes` of a fresh runner (no cache)."""
    return Runner(view).passes(seqs, reads, **kw)
