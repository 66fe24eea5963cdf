"""The lm-evaluation-harness backend: ``lm_eval --model phaselens`` evaluates any view.

Importing this module registers :class:`PhaselensLM` as lm-eval's model ``"phaselens"``. lm-eval 0.4.13 finds
models only in its own registry (no entry points), so run its CLI through phaselens, which imports this module
first::

    python -m phaselens.lmeval --model phaselens \\
        --model_args model=smollm2-135m,prune=12-15+20,recovery=ghosted.safetensors --tasks arc_easy
    phaselens-lm-eval ...            # the same, as a console script

lm-eval splits ``--model_args`` on commas, so a block list there is comma-free: ``prune=12-15+20``.

The backend answers ``loglikelihood``, ``loglikelihood_rolling`` (perplexity tasks) and ``generate_until``
(greedy decoding) with the request handling of lm-eval's ``HFLM`` (the same tokenisation, left truncation to the
model's context, rolling windows, stop sequences), but every forward pass goes through phaselens'
:class:`~phaselens.runner.Runner`, reading the final output only at the scored positions, so a pruned or
recovered view costs what the dense model costs. Generation runs without a KV cache (each new token is one pass
over the whole sequence).
"""

from __future__ import annotations

import json
import warnings
from typing import Any

import torch

# lm-eval is an optional, heavy dependency (the ``lmeval`` extra): only this module imports it, and phaselens
# imports this module lazily (pl.evaluate, python -m phaselens.lmeval)
from lm_eval import utils as lm_utils
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import (
    handle_stop_sequences,
    has_bos_prefix,
    normalize_gen_kwargs,
    postprocess_generated_text,
    resolve_max_length,
)

from .errors import PhaselensError
from .evaluation import view_from_args
from .runner import Batch, Positions, Read, Runner

#: lm-eval's default context when the config names none (as HFLM)
DEFAULT_MAX_LENGTH = 2048
#: floats per full-vocabulary readout chunk (positions x vocabulary), so Gemma's 262k vocabulary stays small
READOUT_FLOATS = 1 << 26


@register_model("phaselens")
class PhaselensLM(TemplateLM):
    """lm-eval's view of a phaselens model or view.

    Args:
        model: a view, a :class:`~phaselens.Model`, or anything :func:`~phaselens.load_model` takes.
        prune, recovery: the view's cut blocks and recovery (:func:`~phaselens.evaluation.view_from_args`).
        device, dtype: where and in what dtype a model given by name loads.
        max_tokens, batch_size: padded tokens / sequences per forward pass (``batch_size="auto"``: the budget);
            ``max_batch_size`` (which lm-eval passes) is not used.
        max_length: the context (default: the model's, as HFLM).
        max_gen_toks: tokens generated when a task does not say.
        add_bos_token: as HFLM's (``None``: the tokenizer's own default).
    """

    def __init__(self, model: Any = None, prune: Any = None, recovery: Any = None, *, device: Any = None,
                 dtype: Any = None, max_tokens: int | None = None, batch_size: Any = None, max_batch_size: Any = None,
                 max_length: int | None = None, max_gen_toks: int = 256, add_bos_token: bool | None = None) -> None:
        super().__init__()
        if model is None:
            raise PhaselensError("the phaselens backend needs model=... (an embedded name, a folder, a view)")
        self.view = view_from_args(model, prune, recovery, device=cpu_fallback(device), dtype=dtype)
        self.base = self.view.base
        self.tokenizer = self.base.tokenizer
        self.runner = Runner(self.view)
        self.max_tokens = max_tokens
        self.rows = rows_per_pass(batch_size)
        self._max_length = max_length
        self._max_gen_toks = int(max_gen_toks)
        self.add_bos_token = add_bos_token

    # -- what lm-eval asks of a model
    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        tok = self.tokenizer
        return tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id

    @property
    def max_length(self) -> int:
        return self._max_length or resolve_max_length(self.base.hf.config, self.tokenizer, default=DEFAULT_MAX_LENGTH)

    @property
    def max_gen_toks(self) -> int:
        return self._max_gen_toks

    @property
    def device(self) -> torch.device:
        return self.base.device

    @property
    def tokenizer_name(self) -> str:
        return str(self.tokenizer.name_or_path).replace("/", "__")

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, left_truncate_len: int | None = None,
                   **kwargs: Any) -> list[int]:
        """HFLM's encoding: the tokenizer's own special tokens unless told, none when the text starts with BOS."""
        kw: dict[str, Any] = {}
        if add_special_tokens is not None:
            kw["add_special_tokens"] = add_special_tokens
        elif self.add_bos_token is not None:
            kw["add_special_tokens"] = self.add_bos_token
        if add_special_tokens is None and has_bos_prefix(string, self.tokenizer.decode(self.prefix_token_id)):
            kw["add_special_tokens"] = False
        ids = self.tokenizer.encode(string, **kw)
        return ids[-left_truncate_len:] if left_truncate_len else ids

    def tok_decode(self, tokens: Any, skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=skip_special_tokens)

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        return self.tokenizer.apply_chat_template(chat_history, tokenize=False,
                                                  add_generation_prompt=add_generation_prompt)

    # -- scoring
    def _loglikelihood_tokens(self, requests: list, disable_tqdm: bool = False, **kwargs: Any) -> list[tuple[float, bool]]:
        """``(sum of log p(continuation), whether it is the greedy continuation)`` per ``(key, context, cont)``:
        HFLM's left truncation to ``max_length + 1`` tokens; requests with the same input share one row."""
        seqs, where = self.score_layout(requests)
        logp = [0.0] * len(requests)
        greedy = [True] * len(requests)
        by_seq: dict[int, list[int]] = {}
        for q, (i, _, _) in enumerate(where):
            by_seq.setdefault(i, []).append(q)
        L = self.base.n_blocks

        def reads(batch: Batch) -> dict[str, Read]:
            rows, cols, gather = [], [], []
            for row, i in enumerate(batch.rows):
                seen: dict[int, int] = {}
                for q in by_seq[i]:
                    _, start, cont = where[q]
                    for j, tok in enumerate(cont):
                        if start + j not in seen:
                            seen[start + j] = len(rows)
                            rows.append(row)
                            cols.append(start + j)
                        gather.append((seen[start + j], tok, q))
            fn = self.scorer(gather)
            return {"s": Read((L - 1,), "out", Positions(torch.tensor(rows), torch.tensor(cols)), fn=fn)}

        for _batch, out in self.runner.passes(seqs, reads, max_tokens=self.max_tokens, batch_size=self.rows):
            for q, lp, eq in out["s"][L - 1]:
                logp[q] += lp
                greedy[q] = greedy[q] and eq
        res = [(float(lp), bool(g)) for lp, g in zip(logp, greedy)]
        for (key, _, _), r in zip(requests, res):
            if key is not None:
                self.cache_hook.add_partial("loglikelihood", key, r)
        return res

    def score_layout(self, requests: list) -> tuple[list[list[int]], list[tuple[int, int, list[int]]]]:
        """``(distinct input sequences, [(sequence index, first scored position, continuation)] per request)``."""
        seqs: list[list[int]] = []
        index: dict[tuple[int, ...], int] = {}
        where = []
        for _, ctx, cont in requests:
            if not cont or len(cont) > self.max_length:
                raise PhaselensError(f"a continuation of {len(cont)} tokens cannot be scored with a context of "
                                     f"{self.max_length}")
            inp = (list(ctx) + list(cont))[-(self.max_length + 1):][:-1]
            i = index.setdefault(tuple(inp), len(seqs))
            if i == len(seqs):
                seqs.append(inp)
            where.append((i, len(inp) - len(cont), list(cont)))
        return seqs, where

    def scorer(self, gather: list[tuple[int, int, int]]):
        """``fn(block, h [m, d])`` -> ``[(request, log p(token), token is the argmax)]`` for each gathered
        ``(read row, token, request)``; the full-vocabulary readout runs a chunk of rows at a time."""
        base = self.base
        chunk = max(1, READOUT_FLOATS // int(base.W_U.shape[0]))

        def fn(b: int, h: torch.Tensor) -> list[tuple[int, float, bool]]:
            out: list[tuple[int, float, bool]] = []
            by_row: dict[int, list[tuple[int, int]]] = {}
            for r, tok, q in gather:
                by_row.setdefault(r, []).append((tok, q))
            for c in range(0, len(h), chunk):
                logp = torch.log_softmax(base.full_logits(h[c : c + chunk]), dim=-1)
                best = logp.argmax(-1)
                for r in range(c, min(c + chunk, len(h))):
                    for tok, q in by_row.get(r, ()):
                        out.append((q, float(logp[r - c, tok]), int(best[r - c]) == tok))
            return out

        return fn

    def loglikelihood_rolling(self, requests: list, disable_tqdm: bool = False) -> list[float]:
        """Perplexity tasks: HFLM's disjoint rolling windows of ``max_length`` tokens, each scored as above."""
        windows: list[tuple[None, list[int], list[int]]] = []
        owner: list[int] = []
        for k, (text,) in enumerate(req.args for req in requests):
            for ctx, cont in map(lm_utils.make_disjoint_window, lm_utils.get_rolling_token_windows(
                    token_list=self.tok_encode(text), prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length, context_len=1)):
                windows.append((None, ctx, cont))
                owner.append(k)
        totals = [0.0] * len(requests)
        for k, (lp, _) in zip(owner, self._loglikelihood_tokens(windows) if windows else []):
            totals[k] += lp
        for req, t in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, t)
        return totals

    # -- generation
    def generate_until(self, requests: list, disable_tqdm: bool = False) -> list[str]:
        """Greedy continuations, cut at the first stop sequence (HFLM's post-processing), grouped by their
        generation arguments; sampling is refused."""
        out: list[str] = [""] * len(requests)
        groups: dict[str, list[int]] = {}
        for k, req in enumerate(requests):
            groups.setdefault(json.dumps(req.args[1], sort_keys=True, default=str), []).append(k)
        eos = self.tok_decode(self.eot_token_id, skip_special_tokens=False)
        for ks in groups.values():
            kwargs = normalize_gen_kwargs(requests[ks[0]].args[1], self.max_gen_toks)
            if kwargs.get("do_sample"):
                raise PhaselensError("the phaselens backend decodes greedily; set do_sample=False / temperature=0 "
                                     "in the task's generation_kwargs (or --gen_kwargs)")
            until = handle_stop_sequences(kwargs.pop("until", None), eos=eos)
            n_new = int(kwargs.pop("max_gen_toks"))
            ctx = [self.context_ids(requests[k].args[0], self.max_length - n_new) for k in ks]
            for k, text in zip(ks, self.greedy(ctx, n_new, until)):
                out[k] = postprocess_generated_text(text, until, None)
                self.cache_hook.add_partial("generate_until", requests[k].args, out[k])
        return out

    def context_ids(self, text: str, max_ctx: int) -> list[int]:
        """A prompt's ids as HFLM's ``tok_batch_encode`` makes them, left-truncated to ``max_ctx``."""
        if max_ctx <= 0:
            raise PhaselensError(f"max_gen_toks leaves no room for a prompt in a context of {self.max_length} tokens")
        kw: dict[str, Any] = {}
        if has_bos_prefix(text, getattr(self.tokenizer, "bos_token", None)):
            kw["add_special_tokens"] = False
        elif self.add_bos_token is not None:
            kw["add_special_tokens"] = self.add_bos_token
        return self.tokenizer(text, **kw)["input_ids"][-max_ctx:]

    def greedy(self, contexts: list[list[int]], n_new: int, until: list[str]) -> list[str]:
        """Up to ``n_new`` greedy tokens after each context (one runner pass per step over the unfinished ones),
        stopping at an end-of-sequence token or once a stop sequence appears; the decoded continuations."""
        base, L = self.base, self.base.n_blocks
        stop_ids = self.stop_ids()
        gen: list[list[int]] = [[] for _ in contexts]
        live = list(range(len(contexts)))
        read = {"next": Read((L - 1,), "out", "last", fn=lambda b, h: base.full_logits(h).argmax(-1).cpu())}
        for _ in range(n_new):
            if not live:
                break
            seqs = [contexts[i] + gen[i] for i in live]
            for batch, res in self.runner.passes(seqs, read, max_tokens=self.max_tokens, batch_size=self.rows):
                for r, tok in zip(batch.rows, res["next"][L - 1].tolist()):
                    gen[live[r]].append(int(tok))
            live = [i for i in live if gen[i][-1] not in stop_ids
                    and not any(s and s in self.tok_decode(gen[i]) for s in until)]
        return [self.tok_decode([t for t in g if t not in stop_ids]) for g in gen]

    def stop_ids(self) -> set[int]:
        """The ids ``generate`` stops at: the generation config's end-of-sequence ids, else the tokenizer's."""
        gc = getattr(self.base.hf, "generation_config", None)
        ids = getattr(gc, "eos_token_id", None)
        if ids is None:
            ids = self.tokenizer.eos_token_id
        return set(ids if isinstance(ids, (list, tuple)) else [ids]) - {None}


def cpu_fallback(device: Any) -> Any:
    """lm-eval's CLI passes ``device="cuda:0"`` unless told otherwise; on a machine without CUDA that becomes the
    default device (the CPU), with a warning, as HFLM does."""
    if isinstance(device, str) and device.startswith("cuda") and not torch.cuda.is_available():
        warnings.warn(f"phaselens: device={device!r} but this machine has no CUDA GPU; running on the CPU",
                      RuntimeWarning, stacklevel=3)
        return None
    return device


def rows_per_pass(batch_size: Any) -> int | None:
    """lm-eval's ``batch_size`` (an int, ``"8"``, ``"auto"``, ``"auto:4"``, ``None``) as a cap on sequences per
    pass; ``auto`` and ``None`` leave the token budget alone."""
    if isinstance(batch_size, bool):
        raise PhaselensError(f"batch_size must be a positive int or 'auto', got {batch_size!r}")
    if isinstance(batch_size, str) and batch_size.strip().isdigit():
        batch_size = int(batch_size)
    if isinstance(batch_size, int):
        if batch_size < 1:
            raise PhaselensError(f"batch_size must be a positive int or 'auto', got {batch_size!r}")
        return batch_size
    if batch_size is None or (isinstance(batch_size, str) and batch_size.startswith("auto")):
        return None
    raise PhaselensError(f"batch_size must be a positive int or 'auto', got {batch_size!r}")


def main() -> None:
    """``python -m phaselens.lmeval`` / ``phaselens-lm-eval``: lm-eval's CLI with the ``phaselens`` model registered."""
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()


if __name__ == "__main__":
    main()


__all__ = ["PhaselensLM", "cpu_fallback", "main", "rows_per_pass"]
