"""The one forward runner: every forward pass of phaselens goes through :class:`Runner`.

A pass runs the model's own Hugging Face decoder (SDPA attention, its masks and rotary tables,
accelerate's device hooks) with a :class:`Plan` of per-block edits installed for its duration, and
returns what was asked for by name and block (:class:`Read`). The runner owns

* **packed rows** (:mod:`.masks`): a prompt and its K continuations in one row, with a 4D block mask
  and restarted position ids, so the prompt runs once;
* **batching** by a token budget (padded tokens per pass), with out-of-memory halving on a GPU;
* **composition** of plans: a view's cuts and operators, interventions (noise, ablation), lens edits;
* **patches** that nest and restore exactly what was there before: a per-module stack of instance
  ``forward`` attributes (a ``forward`` set by accelerate or another library is put back, never
  deleted), hooks removed in ``finally``; a second thread running a pass on the same model gets a
  :class:`~phaselens.errors.RunnerError`, not corrupted patches;
* the **prefix cache** (:class:`PrefixCache`), keyed by content: the batch's token ids and mask, and
  per block a hash chain of what every earlier block computes, so a pass replays stored block
  inputs only where they are exactly what it would compute;
* **finiteness**: every read tensor is checked (one ``isfinite().all()`` each, synchronised once per
  pass); a NaN or Inf raises :class:`~phaselens.errors.NonFiniteError` naming the first block that
  produced it.

No other module installs hooks or patches a block's ``forward``.
"""


from __future__ import annotations

from .batch import Batch, Positions, Read, default_max_tokens, pad, token_batches
from .cache import PrefixCache
from .core import Runner, run_all
from .layered import SCHEDULES, Schedule, check_schedule, current_schedule, is_offloaded, schedule, scheduled
from .masks import Packed, block_mask, pack
from .patches import patched
from ..deprecation import module_getattr
from .plan import Edit, Plan, StopForward, chain, skip

__all__ = ["Batch", "Edit", "Packed", "Plan", "Positions", "PrefixCache", "Read", "Runner", "SCHEDULES", "Schedule", "StopForward",
           "block_mask", "chain", "check_schedule", "current_schedule", "default_max_tokens", "is_offloaded",
           "pack", "pad", "patched", "run_all", "schedule", "scheduled", "skip", "token_batches"]

__getattr__ = module_getattr(__name__, {"identity": "phaselens.runner.plan:skip"})  # the old name of skip
