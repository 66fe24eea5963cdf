"""The run kinds of a study (``trace``, ``sweep``, ``phase-cuts``, ``noise``, ``ablate``, ``cka``, ``cka-contrast``),
one registered :class:`RunKind` each: it names the public function its jobs call, the parameters the study sets itself or
translates, how they are checked, and owns its run (:meth:`RunKind.run`) and its index numbers
(:meth:`RunKind.scalars`). ``@pl.register_run("name")`` adds one (see docs/architecture.md)."""

from __future__ import annotations

import inspect
import math
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .. import checks
from ..ablation import ABLATION_MODES, ablate, check_pairs
from ..calibration import heldout_texts, load_calibration
from ..cka import FORMS
from ..cka_contrast import cka_contrast
from ..errors import PhaselensError, PhaseCutsError, StudyError
from ..experiments.phase_cuts import compare_phase_cuts
from ..noise import eps_list, inject_noise
from ..final_readout import phase_of
from ..pruning import CRITERIA, prune, select_blocks, sweep_criteria
from ..pruning.criteria import check_placement_arg
from ..pruning.iterative import iterative_prune
from ..recovery import METHODS
from ..registry import Registry
from ..runner.layered import check_schedule
from ..stats import N_BOOT, seed_list
from ..similarity import POSITIONS, cka
from ..trace import Transition, decision_trace, transition_point


def int_at_least(lo: int = 0) -> Callable[[Any], bool]:
    """A check: an int (not a bool) ``>= lo``."""
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= lo


def is_ratio(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < 1


def is_texts(v: Any) -> bool:
    """A non-empty list of strings (texts given in the spec itself)."""
    return isinstance(v, list) and bool(v) and all(isinstance(x, str) for x in v)


def choices() -> dict[str, tuple]:
    """Allowed values of the enumerated run parameters (what every kind checks unless it says otherwise)."""
    return {"criterion": sweep_criteria(), "recovery": (None, *METHODS), "methods": METHODS, "mode": ABLATION_MODES,
            "positions": (None, *POSITIONS), "form": FORMS, "placement": ("adjacent", "far", "center"),
            "until": ("steps", "collapse"), "on": ("task", "heldout"),
            "schedule": ("auto", "batch", "layer")}


def bundled(kind: str, n: int | None) -> list[str] | None:
    """The first ``n`` bundled ``"calibration"`` or ``"heldout"`` passages (``None``: not asked for)."""
    if n is None:
        return None
    texts = load_calibration() if kind == "calibration" else heldout_texts()
    if n > len(texts):
        raise StudyError(f"{kind}_passages = {n}, but there are {len(texts)} bundled {kind} passages")
    return texts[:n]


#: the spec keys that name held-out text: ``heldout`` (N bundled passages, or the texts) and its old names
HELDOUT_KEYS = ("heldout", "heldout_passages", "perplexity_texts")


def pop_texts(p: dict[str, Any]) -> tuple[list[str] | None, list[str] | None]:
    """``(calibration, heldout)`` texts of a job, popped from its parameters ``p`` (``None``: the default)."""
    cal = bundled("calibration", p.pop("calibration_passages", None))
    cal = p.pop("calibration", None) if cal is None else cal  # texts given in the spec itself
    held = None
    for key in HELDOUT_KEYS:
        v = p.pop(key, None)
        if v is not None:
            held = bundled("heldout", v) if isinstance(v, int) else list(v)
    return cal, held


def sweep_cap(n_layers: int, steps: int | None, max_ratio: float | None) -> int:
    """The most cuts of a sweep job: ``steps``, or ``ceil(max_ratio * L)``, or ``L - 1``; never more than ``L - 1``."""
    if max_ratio is not None:
        steps = max(1, int(math.ceil(max_ratio * n_layers - 1e-9)))
    return n_layers - 1 if steps is None else min(int(steps), n_layers - 1)


def cut_size(prune: int | float, n_blocks: int) -> int:
    """Blocks to cut (the ``recovery`` and ``cka`` kinds' ``prune``): ``prune`` itself when an int, else
    ``prune * n_blocks`` rounded to the nearest whole block, halves up (0.25 x 18 = 4.5 -> 5, 0.125 x 20 = 2.5 -> 3:
    not Python's round(), which rounds halves to even; 0.29 x 50, 14.499999999999998 in floats, is 14.5 -> 15), at
    least 1; a :class:`StudyError` when no block would be left."""
    n = prune if isinstance(prune, int) else max(1, int(math.floor(prune * n_blocks + 0.5 + 1e-9)))
    if n >= n_blocks:
        raise StudyError(f"prune = {prune!r} cuts {n} of the model's {n_blocks} blocks; leave at least one (a share "
                         f"below {(n_blocks - 0.5) / n_blocks:.3f} or at most {n_blocks - 1} blocks)")
    return n


def transition_scalars(tr: Any) -> dict[str, Any]:
    """The index numbers of a :class:`~phaselens.Transition`."""
    t = tr.trace
    lo, hi = tr.ci if tr.ci is not None else (None, None)
    return {"transition": tr.layer, "transition_lo": lo, "transition_hi": hi, "n_blocks": int(t.n_blocks),
            "transition_fraction": tr.fraction, "final_accuracy": float(t.accuracy[-1]), "final_margin": float(t.margins[-1]),
            "n_items": int(t.n_items)}


class RunKind:
    """One kind of study run. Subclass it and register it with ``@phaselens.register_run("name")``.

    Attributes:
        fixed: parameters of :meth:`fn` the study sets itself (model, task, seeds, folders, progress).
        listy: parameters whose value is a list (a list of lists is a grid over them).
        study: parameters the study translates, ``{name: (check, default)}``.
        required: parameters without a default.
    """

    name: str = ""
    fixed: tuple[str, ...] = ()
    listy: tuple[str, ...] = ()
    study: dict[str, tuple[Callable[[Any], bool], Any]] = {}
    required: tuple[str, ...] = ()

    def fn(self) -> Callable | None:
        """The public function a job calls; its keywords (less :attr:`fixed`) are valid run parameters."""
        return None

    def allowed(self) -> list[str]:
        """Every parameter a run of this kind may set."""
        fn = self.fn()
        sig = inspect.signature(fn).parameters if fn is not None else {}
        passed = [p for p, v in sig.items() if p not in self.fixed and v.kind is not v.VAR_KEYWORD]
        return sorted(set(passed) | set(self.study))

    def choices(self) -> dict[str, tuple]:
        """Allowed values of this kind's enumerated parameters."""
        return choices()

    def check(self, params: dict[str, Any], where: str) -> None:
        """Checks of one job's parameters beyond keys, choices and :attr:`study` checks, run when the spec is read
        (before any model loads); raise StudyError (a phaselens error of an argument check is turned into one).
        This one checks the parameters with one meaning in every kind (:data:`COMMON`); a kind that overrides it
        calls ``super().check(params, where)``."""
        check_common(params, where)

    def run(self, model: Any, task: Any, seed: int, params: dict[str, Any], scratch: Path) -> Any:
        """Run one job (``model`` loaded, ``task`` a Task, ``seed`` the study's seed, ``scratch`` a folder of this
        job's own); returns a :class:`~phaselens.Result`."""
        raise NotImplementedError(f"run kind {self.name!r} has no run()")

    def scalars(self, result: Any) -> dict[str, Any]:
        """The key numbers of one job's result, for the index (None / NaN where a number does not exist)."""
        return {}

    def hashed(self, params: dict[str, Any]) -> dict[str, Any]:
        """The parameters as the job id hashes them. A kind whose default changed what a job computes adds that
        parameter here when the spec leaves it out, so that jobs finished under the old default are not reused."""
        return params

    def __repr__(self) -> str:
        return f"<run kind {self.name!r}>"


def _blocks(v: Any) -> None:
    if v is None or v == "last":
        return
    got = checks.block_list(v, "blocks", StudyError)
    if not got or len(set(got)) != len(got):
        raise StudyError(f"blocks must list distinct block indices, got {v!r}")


def _schedule(v: Any, key: str) -> None:
    if key == "act_store":
        if v is not None and not isinstance(v, str):
            raise StudyError(f"act_store must be 'device', 'cpu' or a folder, got {v!r}")
        return
    check_schedule(**{"kind" if key == "schedule" else key: v if v is not None or key != "schedule" else "auto"})


def _placement(v: Any) -> None:
    """A placement: a name or a block index (both phases), a pair [silent, decisive] or a table of the two."""
    parts = list(v.values()) if isinstance(v, dict) else list(v) if isinstance(v, (list, tuple)) and len(v) == 2 else [v]
    if isinstance(v, dict) and set(v) != {"silent", "decisive"}:
        raise StudyError(f"placement as a table takes the keys silent and decisive, got {sorted(v)}")
    for p in parts:
        check_placement_arg(p)


def _int(name: str, lo: int, optional: bool = False) -> Callable[[Any], None]:
    return lambda v: checks.integer(name, v, minimum=lo, optional=optional, error=StudyError)


def _flag(name: str) -> Callable[[Any], None]:
    return lambda v: checks.flag(name, v, error=StudyError)


def _passages(kind: str) -> Callable[[Any], None]:
    """A check: ``N`` (an int) is at most the number of bundled ``kind`` passages (texts given as a list pass)."""
    return lambda v: bundled(kind, v) if isinstance(v, int) and not isinstance(v, bool) else None


#: the checks of the run parameters that mean the same in every kind, run by :meth:`RunKind.check` when a spec is
#: read: each takes the value and raises a phaselens error naming the parameter
COMMON: dict[str, Callable[[Any], Any]] = {
    "n_boot": lambda v: checks.check_n_boot(v, error=StudyError),
    "batch_size": _int("batch_size", 1, True), "max_tokens": _int("max_tokens", 1, True),
    "reuse_prefix": _flag("reuse_prefix"), "measure_boundary": _flag("measure_boundary"), "debiased": _flag("debiased"),
    "seq_len": _int("seq_len", 2), "n_samples": _int("n_samples", 2), "window": _int("window", 0),
    "steps": _int("steps", 1, True), "n": _int("n", 1),
    "lam": lambda v: checks.number("lam", v, minimum=0.0, optional=True, error=StudyError),
    "blocks": _blocks, "pairs": check_pairs, "eps": eps_list, "placement": _placement,
    "seeds": lambda v: seed_list(v, minimum=1, error=StudyError),
    "schedule": lambda v: _schedule(v, "schedule"), "act_budget": lambda v: _schedule(v, "act_budget"),
    "act_store": lambda v: _schedule(v, "act_store"),
    "calibration_passages": _passages("calibration"), "heldout": _passages("heldout"),
    "heldout_passages": _passages("heldout"),
}


def check_common(params: dict[str, Any], where: str) -> None:
    """Every parameter of ``params`` that :data:`COMMON` knows, checked; a :class:`StudyError` naming ``where``."""
    for k, v in params.items():
        fn = COMMON.get(k)
        if fn is None:
            continue
        try:
            fn(v)
        except PhaselensError as e:
            raise StudyError(f"{where}.{k} = {v!r} is not valid: {e}") from None


RUNS: Registry[RunKind] = Registry("run", "study run kind", StudyError)


def register_run(name: str, *, replace: bool = False) -> Callable:
    """Decorator: register a :class:`RunKind` subclass (instantiated with no arguments) as ``name``."""
    return RUNS.register(name, replace=replace)


_TEXTS = {"calibration_passages": (int_at_least(1), None),
          "heldout": (lambda v: int_at_least(1)(v) or is_texts(v), None),
          "heldout_passages": (int_at_least(1), None), "perplexity_texts": (is_texts, None)}


@register_run("trace")
class TraceRun(RunKind):
    fixed = ("model", "task", "seed", "boot_seed", "progress", "cache", "device", "out")
    listy = ("blocks",)

    def fn(self):
        return decision_trace

    def run(self, model, task, seed, params, scratch):
        trace = decision_trace(model, task, boot_seed=seed, out=scratch, **params)  # resumable in units of items
        return trace.transition() if trace.complete else trace

    def scalars(self, r):
        if isinstance(r, Transition):
            return transition_scalars(r)
        return {"n_blocks": int(r.n_blocks), "final_accuracy": float(r.accuracy[-1]), "final_margin": float(r.margins[-1]),
                "n_items": int(r.n_items)}


@register_run("sweep")
class SweepRun(RunKind):
    fixed = ("model", "task", "out", "seed", "boot_seed", "progress")
    listy = ("calibration", *HELDOUT_KEYS)
    study = {**_TEXTS, "max_ratio": (is_ratio, None), "until": (lambda v: True, "steps"), "chunk": (int_at_least(1), 4),
             "require_transition": (lambda v: isinstance(v, bool), False)}

    def fn(self):
        return iterative_prune

    def check(self, params, where):
        super().check(params, where)
        if "steps" in params and "max_ratio" in params:
            raise StudyError(f"{where}: give steps or max_ratio, not both")

    def run(self, model, task, seed, params, scratch):
        p = dict(params)
        cal, held = pop_texts(p)
        until, chunk = p.pop("until", "steps"), p.pop("chunk", 4)
        need = p.pop("require_transition", False)
        cap = sweep_cap(model.n_blocks, p.pop("steps", None), p.pop("max_ratio", None))
        kw = dict(out=scratch, boot_seed=seed, calibration=cal, heldout=held, **p)
        if need:  # Figure 8 uses only pairs with a dense transition: without one, stop after the first cut
            sw = iterative_prune(model, task, steps=1, **kw)
            if sw.steps[0].transition.layer is None:
                return sw
        if until != "collapse":
            return iterative_prune(model, task, steps=cap, **kw)
        k = 0
        while True:  # extend chunk cuts at a time (resuming from the scratch folder) until accuracy collapses
            k = min(cap, k + chunk)
            sw = iterative_prune(model, task, steps=k, **kw)
            if sw.collapse_ratio is not None or k >= cap or sw.dense_accuracy <= sw.chance:
                return sw

    def scalars(self, r):
        out = transition_scalars(r.steps[0].transition)
        out.update({"dense_accuracy": float(r.dense_accuracy), "final_accuracy": float(r.steps[-1].accuracy),
                    "final_margin": float(r.steps[-1].margin), "collapse_ratio": r.collapse_ratio,
                    "steps": len(r.steps) - 1, "criterion": r.criterion})
        return out


@register_run("phase-cuts")
class PhaseCutsRun(RunKind):
    fixed = ("model", "task", "out", "seed", "boot_seed", "progress")
    listy = ("methods", "seeds", "calibration", *HELDOUT_KEYS)
    study = {**_TEXTS, "fit_n": (lambda v: isinstance(v, bool), False)}
    required = ("n",)

    def fn(self):
        return compare_phase_cuts

    def check(self, params, where):
        super().check(params, where)
        if not int_at_least(1)(params["n"]):
            raise StudyError(f"{where}.n must be an int >= 1 (blocks per cut), got {params['n']!r}")

    def run(self, model, task, seed, params, scratch):
        p = dict(params)
        cal, held = pop_texts(p)
        n = p.pop("n")
        if p.pop("fit_n", False):
            tr = transition_point(model, task, boot_seed=seed)
            if tr.layer is None:
                raise PhaseCutsError(f"{model.name} on {task.name}: {tr.reason} (no phases to cut)")
            n = min(n, tr.layer, model.n_blocks - tr.layer)
        if isinstance(p.get("placement"), list):
            p["placement"] = tuple(p["placement"])
        return compare_phase_cuts(model, task, n, boot_seed=seed, out=scratch, calibration=cal, heldout=held, **p)

    def scalars(self, r):
        out = transition_scalars(r.transition)
        out.update({"dense_accuracy": float(r.dense_accuracy), "cut_n": int(r.n)})
        for m in r.methods:
            try:
                c = r.contrast("silent", "decisive", method=m, metric="margin")
            except Exception:  # noqa: BLE001 - a skipped combination (replaceme at block 0)
                continue
            out[f"contrast_{m}"], out[f"contrast_{m}_lo"], out[f"contrast_{m}_hi"] = c["difference"], c["lo"], c["hi"]
        return out


def _clean(r: Any) -> dict[str, Any]:
    """The index numbers shared by the noise and ablation results (clean model, per item)."""
    return {"transition": r.transition, "n_blocks": int(r.n_blocks), "n_items": int(r.n_items),
            "final_accuracy": float(np.mean(r.clean_correct)), "final_margin": float(np.mean(r.clean_margins))}


@register_run("noise")
class NoiseRun(RunKind):
    fixed = ("model", "task", "boot_seed", "progress", "transition", "out")
    listy = ("blocks", "seeds", "eps")
    study = {"stride": (int_at_least(1), None)}

    def fn(self):
        return inject_noise

    def check(self, params, where):
        super().check(params, where)
        eps = params.get("eps", 0.0)
        if not all(isinstance(e, (int, float)) and not isinstance(e, bool) for e in (eps if isinstance(eps, list) else [eps])):
            raise StudyError(f"{where}.eps must be a number or a list of numbers (one job; a list of lists is "
                             f"a grid), got {eps!r}")

    def run(self, model, task, seed, params, scratch):
        p = dict(params)
        stride = p.pop("stride", None)
        if stride is not None:
            L = model.n_blocks
            tr = transition_point(model, task, boot_seed=seed, n_boot=p.get("n_boot", N_BOOT), lens=p.get("lens"),
                                  out=scratch)  # the phases read through the job's lens, as inject_noise would
            p["blocks"] = sorted(set(range(0, L, stride)) | ({tr.layer} if tr.layer is not None else set()) | {L - 1})
            p["transition"] = tr
        return inject_noise(model, task, boot_seed=seed, out=scratch, **p)

    def scalars(self, r):
        out = _clean(r)
        sens = r.sensitivity()
        gap = sens[sens.phase == "silent - decisive"]
        for e, row in zip(gap.eps, gap.itertuples()):
            suf = "" if len(r.eps) == 1 else f"_eps{e:g}"
            out[f"noise_gap{suf}"], out[f"noise_gap{suf}_lo"], out[f"noise_gap{suf}_hi"] = \
                row.margin_drop, row.margin_drop_lo, row.margin_drop_hi
        return out


@register_run("ablate")
class AblateRun(RunKind):
    fixed = ("model", "task", "boot_seed", "progress", "transition", "out")
    listy = ("blocks", "pairs")

    def fn(self):
        return ablate

    def run(self, model, task, seed, params, scratch):
        p = dict(params)
        if isinstance(p.get("pairs"), list):
            p["pairs"] = [tuple(x) for x in p["pairs"]]
        return ablate(model, task, boot_seed=seed, out=scratch, **p)

    def scalars(self, r):
        out = _clean(r)
        ph = np.asarray([phase_of(b, r.transition) for b in r.singles])
        d = r.single_drop
        if (ph == "silent").any() and (ph == "decisive").any():
            out["ablation_gap"] = float(d[ph == "silent"].mean() - d[ph == "decisive"].mean())
        return out


def cka_criteria() -> tuple[str, ...]:
    """The criteria a dense-vs-pruned CKA run may prune by: those that need no task."""
    return tuple(n for n, c in CRITERIA.items() if not c.needs_task)


class _DenseVsPruned(RunKind):
    """A kind comparing the model with itself pruned: ``prune`` (a share, or a number of blocks) chosen by a
    task-free ``criterion`` on the calibration text."""

    study = {**_TEXTS, "prune": (lambda v: is_ratio(v) or int_at_least(1)(v), 0.5), "criterion": (lambda v: True, "bi")}

    def choices(self):
        return {**choices(), "criterion": cka_criteria()}

    def pruned(self, model: Any, p: dict[str, Any], seed: int) -> tuple[Any, list[str] | None]:
        """``(pruned view, held-out texts or None)``; pops the study's own keys from ``p``."""
        cal, held = pop_texts(p)
        cut, crit = p.pop("prune", 0.5), p.pop("criterion", "bi")
        return prune(model, select_blocks(model, cut_size(cut, model.n_blocks), crit, calibration=cal, seed=seed)), held


@register_run("cka")
class CkaRun(_DenseVsPruned):
    fixed = ("model_a", "model_b", "task_or_texts", "seed", "progress")
    listy = HELDOUT_KEYS
    study = {**_DenseVsPruned.study, "on": (lambda v: True, "task")}

    def fn(self):
        return cka

    def run(self, model, task, seed, params, scratch):
        p = dict(params)
        on = p.pop("on", "task")
        pruned, held = self.pruned(model, p, seed)
        inputs = task if on == "task" else (held if held is not None else heldout_texts())
        return cka(model, pruned, inputs, seed=seed, **p)

    def hashed(self, params):
        # positions = "all" skips each sequence's first token since CKAResult version 3: a job that reads every
        # token hashes first_token, so one finished before (which read the first token) is not reused
        reads_all = params.get("positions", "all" if params.get("on") == "heldout" else "decision") == "all"
        return {**params, "first_token": False} if reads_all and "first_token" not in params else params

    def scalars(self, r):
        b, v = r.matched()
        return {"cka_matched": float(np.mean(v)) if len(v) else float("nan"), "cut_n": len(r.blocks_a) - len(r.blocks_b),
                "n_samples": int(r.n_samples)}


@register_run("cka-contrast")
class CkaContrastRun(_DenseVsPruned):
    """Decision-token against hidden-state CKA of the dense model and a pruned one on the same items
    (:func:`~phaselens.cka_contrast`), the cut chosen as the ``cka`` kind chooses it."""

    fixed = ("model_a", "model_b", "task", "seed")

    def fn(self):
        return cka_contrast

    def run(self, model, task, seed, params, scratch):
        p = dict(params)
        pruned, _ = self.pruned(model, p, seed)
        return cka_contrast(model, pruned, task, seed=seed, **p)

    def scalars(self, r):
        e, c = r.effects()
        return {"cka_decision": float(np.mean(r.decision)), "cka_hidden": float(np.mean(r.hidden)),
                "cka_control": float(np.mean(r.control)),
                "cka_contrast": e.estimate, "cka_contrast_lo": e.lo, "cka_contrast_hi": e.hi,
                "cka_control_contrast": c.estimate, "cka_control_lo": c.lo, "cka_control_hi": c.hi,
                "cut_n": len(r.removed), "n_samples": int(r.n_items)}


__all__ = ["COMMON", "HELDOUT_KEYS", "check_common", "RUNS", "RunKind", "bundled", "choices", "cut_size", "int_at_least",
           "is_ratio", "is_texts", "pop_texts", "register_run", "sweep_cap", "transition_scalars"]
