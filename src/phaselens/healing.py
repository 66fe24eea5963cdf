"""Heal a pruned view: fine-tune an exported copy of it (the decision-transition paper's Figure 7).

``pl.heal(view, data, method="lora" | "full", steps=, lr=, out=)``:

1. **Refuses bad input before any work**: an unknown method, ``steps < 1``, ``lr <= 0``, data that is not a task,
   texts or the calibration corpus, a non-empty ``out`` folder of another configuration, and full fine-tuning that
   does not fit in memory (:func:`full_memory`, named in GB, with LoRA offered instead).
2. **Materialises a copy**: the view is exported (:func:`phaselens.export.export_view`) into ``out/start`` and
   loaded back with :func:`phaselens.load_model`. The dense model the view was cut from is never changed.
   Plain pruning (and ReplaceMe folded into ``down_proj``) is a standard checkpoint with fewer layers. A view with
   whole-stream recovery operators (ghosted, scalar, diagonal, symmetric, LinearPatch; an unfolded branch operator)
   loads as an :class:`~phaselens.export.ExportedView`: **its operators stay frozen and applied** in every training
   pass (through the runner, :meth:`~phaselens.runner.Runner.logits` with ``grad=True``) and in the healed model,
   and only the checkpoint's weights train. (An operator before block 0 is folded into the input embedding at
   load, as :func:`~phaselens.export.load_exported` does; it trains with the embedding under full fine-tuning.)
3. **Trains** with AdamW (constant ``lr``, betas (0.9, 0.999), eps 1e-8, ``weight_decay``, no clipping) on
   batches of ``batch_size`` sequences drawn in a seeded order: LoRA adapters through ``peft`` (``rank``,
   ``lora_alpha``, dropout 0, on every linear layer of the blocks), or every weight (``method="full"``). The loss
   is the mean next-token cross-entropy over the target tokens: every token after the first of a text; the answer
   tokens of a task item (its prompt + the correct option's decision string, e.g. ``" B"`` for a lettered item).
   A progress bar shows the loss.
4. **Checkpoints** (the trainable weights, the optimizer, the step, the torch RNG and the losses) go to
   ``out/.phaselens/heal/checkpoint.pt`` every ``checkpoint_every`` steps, written atomically
   (:mod:`phaselens.files`). A run that is killed continues from its last checkpoint when called again with the
   same arguments, and ends with the same weights as an uninterrupted run.
5. **Writes** the healed model to ``out/model`` (loadable by :func:`phaselens.load_model` and, for a view with
   operators, by plain transformers with ``trust_remote_code=True``), the LoRA adapter to ``out/adapter`` (a
   ``peft`` adapter over ``out/start``), and ``out/heal.json`` (losses, settings, timing); and returns the healed
   model, which phaselens traces like any other (a :class:`~phaselens.Model`, or an
   :class:`~phaselens.export.ExportedView` when operators stay). A finished run folder returns its model without
   training again.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from .calibration import load_calibration
from .errors import HealError
from .export import CONFIG_KEY, MODELING_FILE, OPERATORS_FILE, ExportedView, export_view, read_operators
from .files import write_json, write_safetensors, writing, writing_folder
from .loading import load_model
from .models import quiet
from .results import Result
from .resume import RunFolder, digest
from .runner import Batch, Runner, pad
from .tasks import Task
from .version import __version__
from .view import EditedView, ModelView, as_view

METHODS = ("lora", "full")
#: learning rates used when ``lr`` is not given
DEFAULT_LR = {"lora": 2e-4, "full": 1e-5}
#: where a healing run keeps its state inside ``out`` (``out/.phaselens/heal/``)
RUN = "heal"
GB = 1e9


@dataclass
class Healing(Result):
    """What :func:`heal` did, attached to the model it returns as ``model.healing`` (a result: ``to_pandas()`` is
    the loss of each step, ``plot()`` its curve, ``save(folder)`` writes it).

    Attributes:
        method, steps, lr, batch_size, seq_len, seed: the settings.
        losses: ``[steps]`` training loss of each step (mean cross-entropy over the batch's target tokens).
        n_sequences, n_target_tokens: the training data, as tokenized.
        trainable: parameters that were trained; ``memory_gb``: :func:`full_memory` of this run.
        seconds: wall time of the steps run in this call; ``resumed_from``: the step it continued from.
        out: the run folder (``None`` without one).
    """

    method: str
    steps: int
    lr: float
    batch_size: int
    seq_len: int
    seed: int
    losses: list = field(default_factory=list)
    n_sequences: int = 0
    n_target_tokens: int = 0
    trainable: int = 0
    memory_gb: dict = field(default_factory=dict)
    seconds: float = 0.0
    resumed_from: int = 0
    data: str = ""
    out: str | None = None

    def summary(self) -> str:
        first = self.losses[0] if self.losses else float("nan")
        last = self.losses[-1] if self.losses else float("nan")
        return (f"healed by {self.method} fine-tuning: {self.steps} steps of {self.batch_size} sequences at lr "
                f"{self.lr:g} on {self.data}; loss {first:.4f} -> {last:.4f}; {self.trainable:,} trainable parameters")

    def to_pandas(self):
        """One row per step: ``step`` (1-based), ``loss``."""
        import pandas as pd

        return pd.DataFrame({"step": range(1, len(self.losses) + 1), "loss": [float(x) for x in self.losses]})

    def plot(self, **kw: Any):
        from .plots import healing_loss

        return healing_loss(self)


# ----------------------------------------------------------------------------- checks (before any work)
def _check_int(value: Any, name: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise HealError(f"{name} must be an int >= {low}, got {value!r}")
    return value


def check_args(method: Any, steps: Any, lr: Any, batch_size: Any, seq_len: Any, rank: Any,
               checkpoint_every: Any, weight_decay: Any) -> tuple[str, float]:
    """``(method, lr)`` after refusing bad settings (a :class:`HealError` naming the value)."""
    if method not in METHODS:
        raise HealError(f"method={method!r} is not a healing method; choose 'lora' (peft adapters) or 'full' "
                        "(every weight)")
    _check_int(steps, "steps", 1)
    if lr is None:
        lr = DEFAULT_LR[method]
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
        raise HealError(f"lr must be a positive number (the learning rate), got {lr!r}; e.g. lr={DEFAULT_LR[method]:g}")
    _check_int(batch_size, "batch_size", 1)
    _check_int(seq_len, "seq_len", 2)
    _check_int(rank, "rank", 1)
    if checkpoint_every is not None:
        _check_int(checkpoint_every, "checkpoint_every", 1)
    if isinstance(weight_decay, bool) or not isinstance(weight_decay, (int, float)) or not weight_decay >= 0:
        raise HealError(f"weight_decay must be a number >= 0, got {weight_decay!r}")
    return method, float(lr)


def check_data(data: Any) -> tuple[str, Any]:
    """``("task", Task)``, ``("texts", [str])`` or ``("calibration", [str])``; a :class:`HealError` otherwise."""
    if data is None or (isinstance(data, str) and data == "calibration"):
        return "calibration", load_calibration(None)
    if isinstance(data, Task):
        return "task", data
    if isinstance(data, (str, bytes, os.PathLike)):
        raise HealError(f"data={str(data)[:60]!r}: pass a task object (e.g. pl.load_task('arc-easy', split='train', "
                        "format='letters')), a list of texts, or None / 'calibration' for the bundled calibration corpus")
    try:
        texts = list(data)
    except TypeError:
        raise HealError(f"data must be a Task, a list of texts or None, got {type(data).__name__}") from None
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise HealError(f"data[{bad[0]}] is a {type(texts[bad[0]]).__name__}, not a text; data must be a Task or a "
                        "list of strings")
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise HealError("data holds no text; pass a non-empty list of strings, a Task, or None for the bundled corpus")
    return "texts", texts


def _folder_state(out: Path) -> str:
    """``"new"`` (absent or empty), ``"run"`` (holds a heal run's state) or ``"other"``."""
    if not out.exists() or not any(out.iterdir()):
        return "new"
    return "run" if (out / ".phaselens" / RUN / "args.json").is_file() else "other"


def check_out(out: Any) -> Path | None:
    if out is None:
        return None
    path = Path(out).expanduser()
    if path.exists() and not path.is_dir():
        raise HealError(f"out={path} is a file; pass a folder for the healing run")
    if _folder_state(path) == "other":
        raise HealError(f"out={path} is not empty and holds no healing run; pass an empty or new folder (or the "
                        "folder of an earlier pl.heal run with the same arguments, to resume it)")
    return path


# ----------------------------------------------------------------------------- memory
def count_parameters(view: ModelView) -> int:
    """Parameters of the exported copy of ``view``: the dense model's, less the removed blocks' (plus an untied
    input embedding when an operator before block 0 is folded into it)."""
    base = view.base
    gone = {id(p) for b in view.removed for p in base.blocks[b].parameters()}
    seen: set[int] = set()
    n = 0
    for p in base.hf.parameters():
        if id(p) in seen or id(p) in gone:
            continue
        seen.add(id(p))
        n += p.numel()
    emb = base.hf.get_input_embeddings().weight
    head = getattr(base.unembed, "weight", None)
    if any(s == 0 for s, _ in view.operators) and head is emb:
        n += emb.numel()
    return int(n)


def full_memory(n_params: int, *, n_layers: int, d_model: int, d_ff: int, vocab: int, tokens: int,
                itemsize: int = 4) -> dict[str, float]:
    """Memory of full fine-tuning with AdamW, in GB (1e9 bytes), without gradient checkpointing.

    ``weights + grads + Adam`` = ``n_params x 4 x itemsize`` (the weights, their gradients and Adam's two moments, all
    in the training dtype); ``activations`` = ``n_layers x tokens x (12 d_model + 5 d_ff) x itemsize`` (what each
    block keeps for the backward pass: norms, q/k/v, attention output, residuals, the MLP's gate/up/act/product)
    ``+ tokens x vocab x (itemsize + 8)`` (the logits, their float32 copy and its gradient); ``tokens`` =
    batch_size x seq_len. An estimate: it is what :func:`heal` compares with ``memory_gb``.
    """
    states = n_params * 4 * itemsize
    act = n_layers * tokens * (12 * d_model + 5 * d_ff) * itemsize + tokens * vocab * (itemsize + 8)
    return {"weights_grads_adam": states / GB, "activations": act / GB, "total": (states + act) / GB}


def device_memory_gb(device: torch.device) -> float:
    """The memory full fine-tuning may use by default: the GPU's, or the machine's RAM on the CPU (GB)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory / GB
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GB
    except (ValueError, OSError, AttributeError):
        return float("inf")


def check_memory(view: ModelView, batch_size: int, seq_len: int, memory_gb: Any) -> dict[str, float]:
    """Refuse full fine-tuning whose :func:`full_memory` exceeds ``memory_gb`` (default: the device's), naming it."""
    base = view.base
    text = base.hf.config.get_text_config()
    d_ff = int(getattr(text, "intermediate_size", None) or 4 * base.d_model)
    return _refuse_if_big(view.name, count_parameters(view), view.n_kept, base.d_model, d_ff, base.vocab_size,
                          base.dtype, base.device, batch_size, seq_len, memory_gb)


def check_folder_memory(folder: Path, batch_size: int, seq_len: int, memory_gb: Any) -> dict[str, float]:
    """:func:`check_memory` of a checkpoint folder, counted from its safetensors headers and ``config.json`` (no
    weights are read)."""
    from safetensors import safe_open

    files = sorted(folder.glob("*.safetensors"))
    weights = [f for f in files if f.name != OPERATORS_FILE]
    if not weights or not (folder / "config.json").is_file():
        raise HealError(f"{folder} holds no safetensors checkpoint with a config.json; pass a folder written by "
                        "view.export (or save_pretrained)")
    n, dt = 0, torch.float32
    for f in weights:
        with safe_open(str(f), framework="pt") as fh:
            for k in fh.keys():
                sl = fh.get_slice(k)
                n += math.prod(sl.get_shape())
                dt = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}.get(sl.get_dtype(), dt)
    cfg = json.loads((folder / "config.json").read_text())
    text = cfg.get("text_config") or cfg
    d = int(text["hidden_size"])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return _refuse_if_big(folder.name, n, int(text["num_hidden_layers"]), d, int(text.get("intermediate_size") or 4 * d),
                          int(text["vocab_size"]), dt, device, batch_size, seq_len, memory_gb)


def _refuse_if_big(name: str, n_params: int, n_layers: int, d: int, d_ff: int, vocab: int, dtype: torch.dtype,
                   device: torch.device, batch_size: int, seq_len: int, memory_gb: Any) -> dict[str, float]:
    itemsize = torch.empty(0, dtype=dtype).element_size()
    est = full_memory(n_params, n_layers=n_layers, d_model=d, d_ff=d_ff, vocab=vocab, tokens=batch_size * seq_len,
                      itemsize=itemsize)
    limit = device_memory_gb(device) if memory_gb is None else memory_gb
    if isinstance(limit, bool) or not isinstance(limit, (int, float)) or not limit > 0:
        raise HealError(f"memory_gb must be a positive number of GB, got {memory_gb!r}")
    if est["total"] > limit:
        raise HealError(
            f"full fine-tuning of {name} needs about {est['total']:.1f} GB ({n_params / 1e9:.2f}B parameters x "
            f"(weights + grads + 2 Adam states) in {str(dtype).removeprefix('torch.')} = "
            f"{est['weights_grads_adam']:.1f} GB, + {est['activations']:.1f} GB of activations for {batch_size} x "
            f"{seq_len} tokens), more than the {limit:.1f} GB available; heal it with method='lora' instead (or pass "
            "a smaller batch_size / seq_len, or memory_gb= if you know it fits)")
    est["limit"] = float(limit)
    return est


# ----------------------------------------------------------------------------- data
def task_sequences(task: Task, tokenizer: Any, seq_len: int) -> list[tuple[list[int], int]]:
    """``(ids, start)`` per item: the prompt + the correct option's decision string, tokens ``start..`` its answer
    (found as :mod:`phaselens.encoding` does: the tokens of ``prompt + answer`` after the prompt's). Longer than
    ``seq_len``: the prompt loses tokens from its start."""
    out = []
    for i, item in enumerate(task.items):
        prompt = task.prompt(i)
        answer = task.decision_strings(i)[item.answer]
        ctx = tokenizer(prompt, add_special_tokens=True)["input_ids"]
        whole = tokenizer(prompt + answer, add_special_tokens=True)["input_ids"]
        if not (whole[: len(ctx)] == ctx and len(whole) > len(ctx)):
            whole = list(ctx) + tokenizer(answer, add_special_tokens=False)["input_ids"]
        cut = max(0, len(whole) - seq_len)
        out.append((list(whole[cut:]), max(1, len(ctx) - cut)))
    return out


def text_sequences(texts: Sequence[str], tokenizer: Any, seq_len: int) -> list[tuple[list[int], int]]:
    """``(ids, 1)`` per text of at least 2 tokens (truncated to ``seq_len``): every token after the first is a target."""
    ids = tokenizer(list(texts), add_special_tokens=True, truncation=True, max_length=seq_len)["input_ids"]
    return [(list(s), 1) for s in ids if len(s) >= 2]


def batch_order(n: int, batch_size: int, seed: int, step: int) -> list[int]:
    """Indices of the sequences of ``step``: seeded permutations of ``0..n-1`` laid end to end (one per epoch),
    read ``batch_size`` at a time; a function of ``(seed, step)`` alone, so a resumed run draws what it would have."""
    start = step * batch_size
    out: list[int] = []
    while len(out) < batch_size:
        epoch, pos = divmod(start + len(out), n)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch)).tolist()
        out.extend(perm[pos: pos + batch_size - len(out)])
    return out


def collate(seqs: list[tuple[list[int], int]], rows: list[int], pad_id: int, device: torch.device
            ) -> tuple[Batch, torch.Tensor]:
    """A right-padded :class:`Batch` of ``rows`` and its ``[B, T]`` target mask (True at tokens predicted)."""
    ids, mask = pad([seqs[r][0] for r in rows], pad_id, device)
    target = torch.zeros_like(mask, dtype=torch.bool)
    for j, r in enumerate(rows):
        s, n = seqs[r][1], len(seqs[r][0])
        target[j, s:n] = True
    return Batch(list(rows), ids, mask), target


def loss_of(logits: torch.Tensor, ids: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of the target tokens: token ``t`` predicted from the logits at ``t - 1`` (float32)."""
    lp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    nll = -lp.gather(-1, ids[:, 1:, None].to(lp.device))[..., 0]
    m = target[:, 1:].to(nll.device)
    return nll[m].sum() / m.sum()


# ----------------------------------------------------------------------------- the copy
def export_start(view: Any, folder: Path) -> None:
    """``folder``: the exported copy of ``view`` (a view exported; a folder copied), written whole or not at all."""
    if isinstance(view, (str, os.PathLike)):
        with writing_folder(folder) as tmp:
            shutil.rmtree(tmp)
            shutil.copytree(Path(view).expanduser(), tmp)
        return
    with quiet():
        export_view(view, folder, overwrite=True)


def start_model(folder: Path, device: torch.device, dtype: torch.dtype) -> ModelView:
    """The exported copy loaded back (a view: plain, or an :class:`ExportedView` with its operators)."""
    with quiet():
        return as_view(load_model(str(folder), device=device, dtype=dtype))


def resolve_view(view: Any) -> tuple[Any, ModelView | None]:
    """``(what to export, the view)``: a folder (an export or a checkpoint) is copied as it is."""
    if isinstance(view, (str, os.PathLike)) and Path(view).expanduser().is_dir():
        return Path(view).expanduser(), None
    if isinstance(view, ExportedView):
        folder = view.source.get("folder")
        if folder and Path(folder).is_dir():
            return Path(folder), None
        raise HealError(f"{view.name} was loaded from an exported folder; pass that folder to pl.heal (it is copied and "
                        "healed with its operators frozen)")
    v = as_view(view)
    if isinstance(v, EditedView) and v.edits.blocks():
        raise HealError(f"{v.name} carries edits (noise, ablation, ...) that are not part of a model; heal the pruned or "
                        "recovered view without them")
    return v, v


# ----------------------------------------------------------------------------- training
def trainable(view: ModelView, method: str, rank: int, lora_alpha: int, target_modules: Any, seed: int) -> Any:
    """Make the copy trainable: LoRA adapters injected in place (``peft``; returns the ``PeftModel``) or every
    parameter (returns ``None``)."""
    hf = view.base.hf
    if method == "full":
        for p in hf.parameters():
            p.requires_grad_(True)
        return None
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:  # pragma: no cover - peft is a dependency of the heal extra
        raise HealError("LoRA healing needs peft: pip install 'phaselens[heal]' (or pip install peft)") from None
    torch.manual_seed(seed)
    cfg = LoraConfig(r=rank, lora_alpha=lora_alpha, lora_dropout=0.0, bias="none", target_modules=target_modules,
                     task_type="CAUSAL_LM")
    return get_peft_model(hf, cfg)  # injects the adapters into hf's own modules (view.base.blocks stay valid)


def trained_parameters(hf: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in hf.named_parameters() if p.requires_grad}


def save_checkpoint(path: Path, params: dict[str, torch.nn.Parameter], opt: torch.optim.Optimizer, step: int,
                    losses: list[float]) -> None:
    """The state a killed run resumes from, written atomically: trainable weights, optimizer, step, RNG, losses."""
    state = {"step": step, "params": {n: p.detach().cpu().clone() for n, p in params.items()},
             "optimizer": opt.state_dict(), "rng": torch.get_rng_state(), "losses": list(losses)}
    with writing(path) as f:
        torch.save(state, f)


def load_checkpoint(path: Path, params: dict[str, torch.nn.Parameter], opt: torch.optim.Optimizer) -> tuple[int, list]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - a damaged checkpoint: say which file
        raise HealError(f"{path} cannot be read ({type(e).__name__}: {e}); delete it to restart the run from step 0") from e
    if set(state["params"]) != set(params):
        raise HealError(f"{path} holds other parameters than this run trains; delete it to restart the run")
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(state["params"][n].to(p.device, p.dtype))
    opt.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["rng"])
    return int(state["step"]), list(state["losses"])


# ----------------------------------------------------------------------------- writing the healed model
def write_healed(folder: Path, view: ModelView, start: Path, record: dict[str, Any]) -> None:
    """``folder``: the healed weights as a checkpoint phaselens and transformers load; with operators, the start's
    operators (less one folded into the embedding at load, now part of the stored embedding) and modeling file."""
    hf, tok = view.base.hf, view.base.tokenizer
    with writing_folder(folder) as tmp, quiet():
        hf.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        config = json.loads((tmp / "config.json").read_text())
        if isinstance(view, ExportedView):
            meta, tensors = read_operators(start / OPERATORS_FILE)
            tensors.pop("stream.0", None)  # folded into the (trained) input embedding saved above
            if tensors:
                write_safetensors(tmp / OPERATORS_FILE, {k: v.contiguous() for k, v in tensors.items()}, meta)
                shutil.copy2(start / MODELING_FILE, tmp / MODELING_FILE)
                first = json.loads((start / "config.json").read_text())
                for key in ("model_type", "architectures", "auto_map"):
                    config[key] = first[key]
            config[CONFIG_KEY] = json.loads((start / "config.json").read_text()).get(CONFIG_KEY)
        config["phaselens_heal"] = record
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


# ----------------------------------------------------------------------------- heal
def heal(
    view: Any,
    data: Any = None,
    *,
    method: str = "lora",
    steps: int = 100,
    lr: float | None = None,
    out: str | os.PathLike | None = None,
    batch_size: int = 8,
    seq_len: int = 256,
    seed: int = 0,
    rank: int = 8,
    lora_alpha: int = 16,
    target_modules: Any = "all-linear",
    weight_decay: float = 0.0,
    checkpoint_every: int | None = None,
    memory_gb: float | None = None,
    progress: bool = True,
) -> Any:
    """Fine-tune an exported copy of ``view``; returns the healed model (see the module docstring).

    Args:
        view: a pruned or recovered view (``pl.prune``, ``pl.fit_recovery``), a model, or an exported folder.
        data: a :class:`~phaselens.Task` (trained on prompt + answer, e.g. ``pl.load_task("arc-easy",
            split="train", format="letters")``), a list of texts, or ``None`` / ``"calibration"`` (the bundled
            calibration corpus, its fit passages).
        method: ``"lora"`` (peft adapters of ``rank`` on every linear layer of the blocks, merged at the end) or
            ``"full"`` (every weight; refused when :func:`full_memory` exceeds ``memory_gb``).
        steps: optimizer steps, each on ``batch_size`` sequences of at most ``seq_len`` tokens.
        lr: AdamW's learning rate (constant; default 2e-4 for LoRA, 1e-5 for full fine-tuning).
        out: the run folder (checkpoints, ``start/``, ``model/``, ``adapter/``, ``heal.json``); a rerun with the same
            arguments resumes or returns the finished model; ``None``: a temporary copy, no checkpoints.
        seed: seeds the batch order and the LoRA initialisation.
        checkpoint_every: steps between checkpoints (default ``max(1, steps // 10)``).
        memory_gb: what full fine-tuning may use (default: the GPU's memory, or the machine's RAM on the CPU).
        progress: show a progress bar with the loss.

    Returns:
        the healed :class:`~phaselens.Model` (or :class:`~phaselens.export.ExportedView` when recovery operators
        stay), with ``.healing`` (:class:`Healing`: the losses and settings).
    """
    method, lr = check_args(method, steps, lr, batch_size, seq_len, rank, checkpoint_every, weight_decay)
    kind, payload = check_data(data)
    path = check_out(out)
    source, v = resolve_view(view)
    device = v.base.device if v is not None else None
    dtype = v.base.dtype if v is not None else None
    est = {}
    if method == "full":
        est = check_memory(v, batch_size, seq_len, memory_gb) if v is not None else \
            check_folder_memory(source, batch_size, seq_len, memory_gb)
    if v is not None:
        tokenizer = v.base.tokenizer
    else:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(source)
    seqs = task_sequences(payload, tokenizer, seq_len) if kind == "task" else text_sequences(payload, tokenizer, seq_len)
    if not seqs:
        raise HealError("the training data gives no sequence of at least 2 tokens; pass longer texts")
    n_targets = sum(len(s) - st for s, st in seqs)
    every = checkpoint_every or max(1, steps // 10)
    what = (f"task {payload.name} ({len(payload)} items, {payload.format})" if kind == "task"
            else f"{len(payload)} {'bundled calibration passages' if kind == 'calibration' else 'texts'}")
    args = {"method": method, "steps": steps, "lr": lr, "batch_size": batch_size, "seq_len": seq_len, "seed": seed,
            "rank": rank if method == "lora" else None, "lora_alpha": lora_alpha if method == "lora" else None,
            "target_modules": target_modules if method == "lora" else None, "weight_decay": weight_decay,
            "data": digest([s for s, _ in seqs] + [[st for _, st in seqs]]),
            "model": _identity(source, v), "phaselens_heal": 1}
    info = Healing(method, steps, lr, batch_size, seq_len, seed, n_sequences=len(seqs), n_target_tokens=n_targets,
                   memory_gb=est, data=what, out=str(path) if path else None)
    if path is None:
        with tempfile.TemporaryDirectory(prefix="phaselens-heal-") as tmp:
            return _train(source, Path(tmp), None, seqs, info, device, dtype, rank, lora_alpha, target_modules,
                          weight_decay, every, progress)
    with RunFolder(path, RUN, args, "a healing run") as rf:
        return _train(source, path, rf, seqs, info, device, dtype, rank, lora_alpha, target_modules, weight_decay,
                      every, progress)


def _identity(source: Any, v: ModelView | None) -> dict[str, Any]:
    if v is None:
        return {"folder": str(Path(source).resolve())}
    return {"name": v.name, "fingerprint": v.base.fingerprint, "removed": list(v.removed),
            "signature": {str(k): s for k, s in sorted(v.signature().items())}}


def _train(source: Any, root: Path, rf: RunFolder | None, seqs: list, info: Healing, device: Any, dtype: Any,
           rank: int, lora_alpha: int, target_modules: Any, weight_decay: float, every: int, progress: bool) -> Any:
    start, final = root / "start", root / "model"
    done_file = root / "heal.json"
    if rf is not None and final.is_dir() and done_file.is_file():  # a finished run: its model, no training
        model = start_model(final, device, dtype)
        model.base.name = f"{_start_name(final)} healed"
        saved = json.loads(done_file.read_text())
        _attach(model, Healing(**{k: v for k, v in saved.items() if k in Healing.__dataclass_fields__}))
        return _returned(model)
    if not (start / "config.json").is_file():
        export_start(source, start)
    view = start_model(start, device, dtype)
    hf = view.base.hf
    peft_model = trainable(view, info.method, rank, lora_alpha, target_modules, info.seed)
    params = trained_parameters(hf)
    info.trainable = sum(p.numel() for p in params.values())
    opt = torch.optim.AdamW(list(params.values()), lr=info.lr, betas=(0.9, 0.999), eps=1e-8,
                            weight_decay=weight_decay)
    ckpt = root / ".phaselens" / RUN / "checkpoint.pt"
    step, losses = 0, []
    if rf is not None and ckpt.is_file():
        step, losses = load_checkpoint(ckpt, params, opt)
    info.resumed_from = step
    runner = Runner(view, check_finite=False)
    pad_id = view.base.tokenizer.pad_token_id if view.base.tokenizer.pad_token_id is not None else 0
    from tqdm.auto import tqdm

    bar = tqdm(total=info.steps, initial=step, desc=f"heal ({info.method})", disable=not progress, leave=False)
    t0 = time.time()
    hf.train()
    try:
        while step < info.steps:
            rows = batch_order(len(seqs), info.batch_size, info.seed, step)
            batch, target = collate(seqs, rows, pad_id, view.base.input_device)
            loss = loss_of(runner.logits(batch, grad=True), batch.ids, target)
            if not torch.isfinite(loss):
                raise HealError(f"the training loss is {float(loss)} at step {step}; lower lr (now {info.lr:g})")
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            losses.append(float(loss.detach()))
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
            if rf is not None and (step % every == 0 or step == info.steps):
                _checkpoint(ckpt, params, opt, step, losses)
    finally:
        hf.eval()
        bar.close()
    info.losses, info.seconds = losses, time.time() - t0
    if peft_model is not None:
        if rf is not None:
            with writing_folder(root / "adapter") as tmp:
                peft_model.save_pretrained(tmp)
        peft_model.merge_and_unload()  # the adapters merged into hf's own weights, its modules plain again
    for p in hf.parameters():
        p.requires_grad_(False)
    view.base.name = f"{_start_name(start)} healed"
    _attach(view, info)
    if rf is not None:
        record = {"method": info.method, "steps": info.steps, "lr": info.lr, "data": info.data,
                  "phaselens": __version__}
        write_healed(final, view, start, record)
        write_json(done_file, {k: getattr(info, k) for k in Healing.__dataclass_fields__}, indent=1, default=str)
    return _returned(view)


#: the function a checkpoint is written through (a test wraps it to kill a run right after one)
_checkpoint = save_checkpoint


def _start_name(folder: Path) -> str:
    try:
        info = json.loads((folder / "config.json").read_text()).get(CONFIG_KEY) or {}
    except (OSError, ValueError):
        info = {}
    if info.get("source_model"):
        removed = info.get("removed") or []
        from .view import fmt_blocks

        rec = f" +{info['method']}" if info.get("method") else ""
        return f"{info['source_model']}" + (f" -{fmt_blocks(removed)}{rec}" if removed else "")
    return folder.name


def _attach(view: ModelView, info: Healing) -> None:
    view.base.healing = info  # type: ignore[attr-defined]
    view.healing = info  # type: ignore[attr-defined]


def _returned(view: ModelView) -> Any:
    """A plain view is returned as its :class:`Model`; one with operators as the :class:`ExportedView`."""
    return view if isinstance(view, ExportedView) else view.base


__all__ = ["DEFAULT_LR", "METHODS", "Healing", "count_parameters", "full_memory", "heal"]
