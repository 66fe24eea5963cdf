"""Export a view as a Hugging Face checkpoint folder, and load such a folder back as a view.

:func:`export_view` (``view.export(folder)``) writes

* a **plain checkpoint with fewer layers** when every operator folds exactly into weights: plain pruning
  (identity), and ReplaceMe's MLP-branch operator ``m -> m @ T`` where the branch ends in a bias-free
  ``down_proj`` (Llama, Qwen2: ``W_down' = T^T W_down``). ``num_hidden_layers`` and the per-layer config fields
  (``layer_types``, Qwen2's ``max_window_layers``, any other per-layer list) follow the kept blocks.
  ``AutoModelForCausalLM.from_pretrained(folder)`` loads it with no custom code.
* otherwise (a whole-stream operator ``h -> h @ W`` standing in for a cut span: ghosted, scalar, diagonal,
  symmetric, linearpatch; a branch operator that does not fold, e.g. on Gemma-3 where the branch ends in
  ``post_feedforward_layernorm``) the same checkpoint, the operators in :data:`OPERATORS_FILE` and a generated
  :data:`MODELING_FILE` that applies them between blocks (``trust_remote_code=True``; ``config.json`` gets a
  ``phaselens_`` model type and an ``auto_map``, so plain transformers refuses the folder instead of loading it
  without its operators). :func:`phaselens.load_model` reads such a folder from the safetensors alone (no code
  from the folder runs) as an :class:`ExportedView`.

An operator standing in for span ``[s, e)`` acts at *position* ``p`` of the exported model: on the residual stream
entering exported block ``p`` (``p`` = the number of kept blocks before ``s``; ``p = n_kept``: before the final
norm).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from . import placement
from .errors import ExportError
from .files import check_writable, write_safetensors
from .loading import load_model, parse_dtype, register_folder_loader
from .models import default_device, default_dtype
from .parts import mlp_branch
from .runner import Plan
from .tensorfile import read_tensor_file
from .version import __version__
from .view import EXPORTERS, EditedView, ModelView, digest, linear_map

#: The operators of an export that does not fold into weights (safetensors, float32).
OPERATORS_FILE = "phaselens_operators.safetensors"
#: The generated modeling file that applies them for plain-transformers users (``trust_remote_code=True``).
MODELING_FILE = "modeling_phaselens.py"
#: The ``config.json`` key holding what phaselens exported (source model, kept blocks, method).
CONFIG_KEY = "phaselens_export"


# ----------------------------------------------------------------------------- planning
@dataclass
class ExportPlan:
    """What an export writes, in the exported model's block numbering (``0..n_kept-1``).

    Attributes:
        kept: original indices of the exported blocks, in order.
        stream: ``{p: W [d, d]}`` whole-stream operators on the residual entering exported block ``p``.
        folded: ``{b: T [d, d]}`` MLP-branch operators folded into block ``b``'s ``down_proj``.
        branch: ``{b: (module name in the block, T [d, d])}`` branch operators applied by a hook.
    """

    kept: list[int]
    stream: dict[int, torch.Tensor] = field(default_factory=dict)
    folded: dict[int, torch.Tensor] = field(default_factory=dict)
    branch: dict[int, tuple[str, torch.Tensor]] = field(default_factory=dict)

    @property
    def needs_code(self) -> bool:
        return bool(self.stream or self.branch)


def plan_export(view: ModelView) -> ExportPlan:
    """Where each operator of ``view`` goes in the exported model (see :class:`ExportPlan`)."""
    kept = view.kept
    new = {b: i for i, b in enumerate(kept)}
    out = ExportPlan(kept)
    d = view.base.d_model
    for (s, e), w in view.operators.items():
        if torch.equal(w.float().cpu(), torch.eye(d)):
            continue  # an identity operator is plain pruning
        out.stream[sum(1 for b in kept if b < s)] = w
    for b, t in view.branch_operators.items():
        block = view.base.blocks[b]
        if foldable_branch(block):
            out.folded[new[b]] = t
        else:
            out.branch[new[b]] = (module_name(block, mlp_branch(block)), t)
    return out


def foldable_branch(block: nn.Module) -> bool:
    """Whether ``block``'s MLP branch ends in a bias-free linear ``down_proj`` (its output map folds into it)."""
    mlp = getattr(block, "mlp", None)
    down = getattr(mlp, "down_proj", None)
    return mlp is not None and mlp_branch(block) is mlp and isinstance(down, nn.Linear) and down.bias is None


def module_name(root: nn.Module, target: nn.Module) -> str:
    """The dotted name of ``target`` inside ``root``; an :class:`ExportError` if it is not there."""
    for name, mod in root.named_modules():
        if mod is target:
            return name
    raise ExportError(f"{type(target).__name__} is not a submodule of {type(root).__name__}; this architecture "
                      "cannot be exported")


# ----------------------------------------------------------------------------- checks
def check_export(view: Any, folder: str | os.PathLike, overwrite: bool) -> Path:
    """The target folder, after refusing what cannot be exported (before any work)."""
    if not isinstance(view, ModelView):
        raise ExportError(f"export needs a model view (phaselens.prune / fit_recovery / as_view), got {type(view).__name__}")
    if isinstance(view, ExportedView):
        raise ExportError(f"{view.name} was loaded from an exported folder ({view.source.get('folder')}); copy that "
                          "folder instead of exporting it again")
    if isinstance(view, EditedView) and view.edits.blocks():
        raise ExportError(f"{view.name} carries edits (noise, ablation, ...) that are not part of a model; export the "
                          "pruned or recovered view without them")
    if not isinstance(overwrite, bool):
        raise ExportError(f"overwrite must be True or False, got {overwrite!r}")
    path = Path(folder).expanduser()
    if path.exists() and not path.is_dir():
        raise ExportError(f"cannot export into {path}: it is a file; pass a folder path")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise ExportError(f"{path} is not empty; pass overwrite=True to replace it, or choose another folder")
    check_writable(path.absolute().parent, "folder", what="folder", error=ExportError)  # the temporary sibling goes there
    meta = [n for n, p in view.base.hf.named_parameters() if p.device.type == "meta"]
    if meta:
        raise ExportError(f"{view.base.name}: parameters such as {meta[0]} are offloaded (meta device); load the model "
                          "without disk/CPU offload (device_map) to export it")
    return path


# ----------------------------------------------------------------------------- the export
def export_view(view: ModelView, folder: str | os.PathLike, *, dtype: torch.dtype | str | None = None,
                overwrite: bool = False) -> Path:
    """Write ``view`` as a Hugging Face checkpoint folder; returns the folder.

    Args:
        view: a pruned or recovered view (``pl.prune``, ``pl.fit_recovery``, ``pl.load_recovery``).
        folder: where to write; a non-empty folder is refused unless ``overwrite=True``.
        dtype: the weights' dtype (default: the source model's); operators stay float32.
        overwrite: replace a non-empty ``folder``.

    The files are written into a temporary sibling folder renamed into place, so ``folder`` never holds a half
    export. See the module docstring for what is written.
    """
    path = check_export(view, folder, overwrite)
    dt = parse_dtype(dtype) or view.base.dtype
    plan = plan_export(view)
    hf = view.base.hf
    tmp = path.parent / f".{path.name}.tmp{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        state = export_state(view, plan, dt)
        with torch.no_grad():
            hf.save_pretrained(tmp, state_dict=state)
        config = export_config(view, plan, dt)
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        view.base.tokenizer.save_pretrained(tmp)
        if plan.needs_code:
            write_operators(tmp / OPERATORS_FILE, view, plan)
            (tmp / MODELING_FILE).write_text(modeling_source(view, config))
        if path.exists():
            shutil.rmtree(path)
        tmp.rename(path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return path


def export_state(view: ModelView, plan: ExportPlan, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The exported state dict: the kept blocks renumbered ``0..n_kept-1``, branch operators folded into
    ``down_proj`` (``W' = T^T W`` in float64), every tensor in ``dtype``."""
    hf = view.base.hf
    prefix = module_name(hf, view.base.blocks[0]).rsplit(".", 1)[0] + "."
    new = {b: i for i, b in enumerate(plan.kept)}
    out: dict[str, torch.Tensor] = {}
    for key, t in hf.state_dict().items():
        if key.startswith(prefix):
            idx, rest = key[len(prefix):].split(".", 1)
            if int(idx) not in new:
                continue
            b = new[int(idx)]
            key = f"{prefix}{b}.{rest}"
            if b in plan.folded and rest == "mlp.down_proj.weight":
                t = (plan.folded[b].double().T.to(t.device) @ t.double())
        out[key] = t.to(dtype) if t.is_floating_point() else t
    return out


def export_config(view: ModelView, plan: ExportPlan, dtype: torch.dtype) -> dict[str, Any]:
    """``config.json`` of the export: fewer layers, per-layer fields of the kept blocks, the dtype, and what
    phaselens exported (``phaselens_export``); with operators, a ``phaselens_`` model type and an ``auto_map``."""
    hf = view.base.hf
    cfg = copy.deepcopy(hf.config)
    text = cfg.get_text_config()
    L, kept = view.base.n_blocks, plan.kept
    for name, value in list(vars(text).items()):
        if isinstance(value, (list, tuple)) and len(value) == L and "layer" in name:
            setattr(text, name, [value[b] for b in kept])
    if isinstance(getattr(text, "max_window_layers", None), int):
        text.max_window_layers = sum(1 for b in kept if b < text.max_window_layers)
    text.num_hidden_layers = len(kept)
    out = cfg.to_dict()
    out["dtype"] = str(dtype).removeprefix("torch.")
    base_type, arch = out["model_type"], type(hf).__name__
    out[CONFIG_KEY] = {
        "source_model": view.base.name, "fingerprint": view.base.fingerprint, "n_blocks": L,
        "removed": list(view.removed), "kept": kept, "method": view.method, "base_model_type": base_type,
        "base_architecture": arch, "operators_file": OPERATORS_FILE if plan.needs_code else None,
    }
    if plan.needs_code:
        out["model_type"] = f"phaselens_{base_type}"
        out["architectures"] = ["PhaselensForCausalLM"]
        out["auto_map"] = {"AutoConfig": f"{MODELING_FILE[:-3]}.PhaselensConfig",
                           "AutoModelForCausalLM": f"{MODELING_FILE[:-3]}.PhaselensForCausalLM"}
    return out


def write_operators(path: Path, view: ModelView, plan: ExportPlan) -> None:
    """The operators file: ``stream.{p}`` and ``branch.{b}`` float32 tensors, with the branch modules' names."""
    tensors = {f"stream.{p}": w.detach().float().cpu().contiguous() for p, w in plan.stream.items()}
    tensors.update({f"branch.{b}": t.detach().float().cpu().contiguous() for b, (_, t) in plan.branch.items()})
    meta = {"format": "pt", "phaselens": __version__, "method": str(view.method), "source_model": view.base.name,
            "n_kept": str(len(plan.kept)), "branch_modules": json.dumps({str(b): m for b, (m, _) in plan.branch.items()})}
    write_safetensors(path, tensors, meta)


def modeling_source(view: ModelView, config: dict[str, Any]) -> str:
    """The generated ``modeling_phaselens.py`` of an export with operators."""
    hf = view.base.hf
    info = config[CONFIG_KEY]
    return MODELING_TEMPLATE.format(
        version=__version__, arch=info["base_architecture"], config_cls=type(hf.config).__name__,
        model_type=config["model_type"], layers=module_name(hf, view.base.blocks[0]).rsplit(".", 1)[0],
        norm=module_name(hf, view.base.final_norm), file=OPERATORS_FILE)


MODELING_TEMPLATE = '''"""Generated by phaselens {version}: {arch} with phaselens' recovery operators applied between blocks.

The weights are a plain {arch} checkpoint; the operators in {file} act on the residual stream:
``stream.p`` (W [d, d]) maps the hidden state entering block p (p = number of layers: before the final norm) as
h -> h @ W, and ``branch.b`` maps the output of block b's MLP-branch module. Load with
AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True), or phaselens.load_model(folder), which
reads the operators without running this file.
"""

import json
import os

import torch
from safetensors import safe_open
from transformers import {arch} as _Base
from transformers import {config_cls} as _BaseConfig

OPERATORS_FILE = "{file}"


class PhaselensConfig(_BaseConfig):
    model_type = "{model_type}"


def _get(root, path):
    for part in path.split("."):
        root = getattr(root, part)
    return root


class PhaselensForCausalLM(_Base):
    config_class = PhaselensConfig

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        model = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        path = os.path.join(str(pretrained_model_name_or_path), OPERATORS_FILE)
        if not os.path.isfile(path):
            from huggingface_hub import hf_hub_download

            path = hf_hub_download(str(pretrained_model_name_or_path), OPERATORS_FILE, revision=kwargs.get("revision"))
        model.attach_operators(path)
        return model

    def attach_operators(self, path):
        layers, norm = _get(self, "{layers}"), _get(self, "{norm}")
        with safe_open(path, framework="pt") as f:
            modules = json.loads((f.metadata() or {{}}).get("branch_modules", "{{}}"))
            tensors = {{k: f.get_tensor(k) for k in f.keys()}}
        for key, w in sorted(tensors.items()):
            kind, idx = key.split(".")
            idx = int(idx)
            name = "phaselens_" + kind + "_" + str(idx)
            self.register_buffer(name, w, persistent=False)
            if kind == "branch":
                _get(layers[idx], modules[str(idx)]).register_forward_hook(
                    lambda mod, args, out, _n=name: self._phaselens_map(out, _n))
            elif idx < len(layers):
                layers[idx].register_forward_pre_hook(
                    lambda mod, args, kwargs, _n=name: self._phaselens_pre(args, kwargs, _n), with_kwargs=True)
            else:
                norm.register_forward_pre_hook(
                    lambda mod, args, kwargs, _n=name: self._phaselens_pre(args, kwargs, _n), with_kwargs=True)

    def _phaselens_map(self, h, name):
        if isinstance(h, tuple):
            return (self._phaselens_map(h[0], name),) + tuple(h[1:])
        w = getattr(self, name)
        return h @ w.to(device=h.device, dtype=h.dtype)

    def _phaselens_pre(self, args, kwargs, name):
        if args:
            return (self._phaselens_map(args[0], name),) + tuple(args[1:]), kwargs
        kwargs = dict(kwargs)
        kwargs["hidden_states"] = self._phaselens_map(kwargs["hidden_states"], name)
        return args, kwargs
'''


# ----------------------------------------------------------------------------- loading an export back
@dataclass(eq=False)
class ExportedView(EditedView):
    """A model loaded from an exported folder with operators: the exported checkpoint (``base``, ``n_kept``
    blocks) plus its whole-stream operators as edits (``after`` the block before each position; an operator at
    position 0 is folded into the input embedding at load) and its unfolded branch operators.

    ``source`` is the export's ``phaselens_export`` record (source model, original kept blocks, method)."""

    source: dict = field(default_factory=dict)


def is_export(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` is an export with operators (it needs :func:`load_exported`, not a plain load)."""
    p = Path(folder).expanduser()
    return p.is_dir() and (p / OPERATORS_FILE).is_file() and (p / "config.json").is_file()


def load_exported(folder: str | os.PathLike, *, device: torch.device | None = None,
                  dtype: torch.dtype | None = None) -> ExportedView:
    """The view an export with operators computes, read from its safetensors and ``config.json`` alone (the
    generated modeling file is never run): the checkpoint loads as its base architecture, the operators become
    edits of the view."""
    path = Path(folder).expanduser()
    config = json.loads((path / "config.json").read_text())
    info = config.get(CONFIG_KEY)
    if not isinstance(info, dict) or "base_model_type" not in info:
        raise ExportError(f"{path}: config.json has no {CONFIG_KEY!r} record; it is not a phaselens export")
    meta, tensors = read_operators(path / OPERATORS_FILE)
    for key in ("auto_map", "model_type"):
        config.pop(key, None)
    config["architectures"] = [info["base_architecture"]]
    dev = device or default_device()
    dt = dtype or default_dtype(dev)
    cfg = AutoConfig.for_model(info["base_model_type"], **config)
    hf = AutoModelForCausalLM.from_pretrained(path, config=cfg, dtype=dt, **placement.current().kwargs)
    tok = AutoTokenizer.from_pretrained(path, config=cfg)  # the base config: config.json's auto_map is never read
    stream = {int(k.split(".")[1]): w for k, w in tensors.items() if k.startswith("stream.")}
    branch = {int(k.split(".")[1]): w for k, w in tensors.items() if k.startswith("branch.")}
    if 0 in stream:
        fold_into_embedding(hf, stream.pop(0))
    hf.config._name_or_path = path.name
    base = load_model(hf, tokenizer=tok, device=device, dtype=dtype)
    return exported_view(base, stream, branch, meta, info)


def read_operators(path: Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:

    return read_tensor_file(path, "exported operators", "phaselens' export", ("phaselens", "n_kept"), ExportError)


def fold_into_embedding(hf: nn.Module, w: torch.Tensor) -> None:
    """An operator on the stream entering block 0 folded into the input embedding ``E' = E W`` (untied from the
    head, which keeps ``E``): exact, since every embedding row is mapped alike (Gemma's scale commutes)."""
    emb = hf.get_input_embeddings()
    with torch.no_grad():
        new = (emb.weight.float() @ w.float().to(emb.weight.device)).to(emb.weight.dtype)  # as the view computes it
    emb.weight = nn.Parameter(new, requires_grad=False)
    hf.config.get_text_config().tie_word_embeddings = False


def exported_view(base: Any, stream: dict[int, torch.Tensor], branch: dict[int, torch.Tensor], meta: dict[str, str],
                  info: dict) -> ExportedView:
    n = base.n_blocks
    bad = [p for p in stream if not 1 <= p <= n] + [b for b in branch if not 0 <= b < n]
    if bad:
        raise ExportError(f"the exported operators name positions {bad}, outside the model's {n} blocks; the folder "
                          "is damaged, export it again")
    after = {p - 1: linear_map(w.to(base.device)) for p, w in stream.items()}
    names = {p - 1: f"the exported {meta.get('method')} operator after block {p - 1}" for p in stream}
    edits = Plan(after=after, names=names)
    view = ExportedView(base, branch_operators={b: w.to(base.device) for b, w in branch.items()},
                        method=meta.get("method"), edits=edits, source=dict(info))
    view.source["stream_digests"] = {p: digest(w) for p, w in stream.items()}
    return view


__all__ = ["CONFIG_KEY", "MODELING_FILE", "OPERATORS_FILE", "ExportPlan", "ExportedView", "export_view",
           "is_export", "load_exported", "plan_export"]


# view.export(...) and load_model(folder) reach this module through these hooks (it sits on a higher floor than both)
EXPORTERS.append(export_view)
register_folder_loader(is_export, load_exported)
