"""Where a model's weights go: ``device_map``, ``max_memory`` and ``offload_folder``, checked before any weights load.

:func:`load_model` passes these to ``from_pretrained`` (accelerate-style: blocks on several devices, some
offloaded to the CPU or to disk by accelerate's hooks). Everything here is checked first, so a device that does
not exist on this machine (``"cuda:3"`` with one GPU), a module name the model does not have, or disk offload
without a folder is a :class:`~phaselens.errors.ModelError` naming it, not a failure halfway through a load.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch

from .errors import ModelError

#: ``device_map`` strings accelerate plans itself (from the memory of each device).
STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")
_MEM = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|TB|KIB|MIB|GIB|TIB)?\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class Placement:
    """A checked placement: what ``from_pretrained`` gets (``kwargs``) and the devices it names."""

    device_map: Any = None
    max_memory: dict | None = None
    offload_folder: str | None = None
    devices: tuple[str, ...] = field(default=())

    @property
    def active(self) -> bool:
        return self.device_map is not None

    @property
    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``from_pretrained`` (empty when no device_map was given)."""
        if not self.active:
            return {}
        kw: dict[str, Any] = {"device_map": self.device_map}
        if self.max_memory is not None:
            kw["max_memory"] = self.max_memory
        if self.offload_folder is not None:
            kw["offload_folder"] = self.offload_folder
        return kw

    @property
    def main_device(self) -> torch.device:
        """The first accelerator the map names (where offloaded blocks execute), else the CPU."""
        for d in self.devices:
            if d not in ("cpu", "disk"):
                return torch.device(d)
        if self.device_map in STRATEGIES and torch.cuda.is_available():
            return torch.device("cuda", 0)
        return torch.device("cpu")


def _n_cuda() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def check_device(value: Any, what: str) -> str:
    """``value`` (an int GPU index, ``"cpu"``, ``"disk"``, ``"cuda:N"``, ``"mps"``, a torch device) as a device
    string that exists on this machine; a :class:`ModelError` naming ``what`` otherwise."""
    if isinstance(value, bool):
        raise ModelError(f"{what}: {value!r} is not a device; use 'cpu', 'disk', 'cuda:0', an int GPU index or 'mps'")
    if isinstance(value, int):
        if value < 0:
            raise ModelError(f"{what}: GPU index {value} is negative")
        value = f"cuda:{value}"
    if isinstance(value, str) and value == "disk":
        return "disk"
    try:
        dev = torch.device(value)
    except (RuntimeError, TypeError) as e:
        raise ModelError(f"{what}: {value!r} is not a device name; use 'cpu', 'disk', 'cuda:0', an int GPU index "
                         f"or 'mps' ({e})") from e
    n = _n_cuda()
    if dev.type == "cuda":
        if n == 0:
            raise ModelError(f"{what}: {value!r} names a CUDA GPU, but this machine has no CUDA GPU (torch "
                             f"{torch.__version__}, CUDA build: {torch.version.cuda is not None}); use 'cpu' (or "
                             "'disk' with offload_folder=)")
        idx = 0 if dev.index is None else dev.index
        if idx >= n:
            raise ModelError(f"{what}: {value!r} does not exist; this machine has {n} CUDA GPU(s) (cuda:0..cuda:{n - 1})")
        return f"cuda:{idx}"
    if dev.type == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise ModelError(f"{what}: {value!r}, but MPS is not available on this machine; use 'cpu'")
        return "mps"
    if dev.type == "cpu":
        return "cpu"
    raise ModelError(f"{what}: {value!r}: phaselens places weights on 'cpu', 'cuda:N', 'mps' or 'disk'")


def _check_memory(max_memory: Any) -> dict:
    if not isinstance(max_memory, dict) or not max_memory:
        raise ModelError(f"max_memory must be a dict {{device: size}}, e.g. {{0: '20GiB', 'cpu': '64GiB'}}, got {max_memory!r}")
    out: dict = {}
    for k, v in max_memory.items():
        dev = check_device(k, f"max_memory key {k!r}")
        if dev == "disk":
            raise ModelError("max_memory cannot limit 'disk'; give the GPU(s) and 'cpu' limits, and offload_folder= for the rest")
        if isinstance(v, bool) or not (isinstance(v, int) and v > 0 or isinstance(v, str) and _MEM.match(v)):
            raise ModelError(f"max_memory[{k!r}] = {v!r} is not a size; use bytes (an int > 0) or a string like '20GiB', '500MB'")
        out[int(dev.split(":")[1]) if dev.startswith("cuda") else dev] = v
    return out


def check_placement(device_map: Any = None, max_memory: Any = None, offload_folder: Any = None, *,
                    device: Any = None) -> Placement:
    """Check ``device_map`` / ``max_memory`` / ``offload_folder`` (no model needed): every device exists here,
    disk offload has a folder, and ``device=`` is not given beside a map. Module names are checked against the
    model's architecture by :func:`check_modules`."""
    if device_map is None:
        if max_memory is not None or offload_folder is not None:
            what = "max_memory" if max_memory is not None else "offload_folder"
            raise ModelError(f"{what}= only applies with device_map= (e.g. device_map='auto'); pass one, or drop {what}=")
        return Placement()
    if device is not None:
        raise ModelError(f"pass device= or device_map=, not both (got device={device!r} and device_map={device_map!r}); "
                         "device_map={'': 'cuda:0'} puts the whole model on one device")
    devices: list[str] = []
    if isinstance(device_map, str) and device_map in STRATEGIES:
        dm: Any = device_map
    elif isinstance(device_map, dict):
        if not device_map:
            raise ModelError("device_map is an empty dict; map module names to devices, e.g. {'': 'cuda:0'}")
        dm = {}
        for k, v in device_map.items():
            if not isinstance(k, str):
                raise ModelError(f"device_map keys are module names (str), got {k!r}")
            dev = check_device(v, f"device_map[{k!r}]")
            devices.append(dev)
            dm[k] = int(dev.split(":")[1]) if dev.startswith("cuda") else dev
    elif isinstance(device_map, (str, int, torch.device)):
        dev = check_device(device_map, "device_map")
        if dev == "disk":
            raise ModelError("device_map='disk' puts the whole model on disk; map some modules to 'cpu' or a GPU")
        devices.append(dev)
        dm = {"": int(dev.split(":")[1]) if dev.startswith("cuda") else dev}
    else:
        raise ModelError(f"device_map must be one of {STRATEGIES}, a device, or a dict {{module name: device}}, "
                         f"got {type(device_map).__name__}")
    mem = _check_memory(max_memory) if max_memory is not None else None
    folder = None
    if offload_folder is not None:
        if not isinstance(offload_folder, (str, os.PathLike)):
            raise ModelError(f"offload_folder must be a path, got {type(offload_folder).__name__}")
        p = Path(offload_folder).expanduser()
        if p.exists() and not p.is_dir():
            raise ModelError(f"offload_folder={str(p)!r} is a file; pass a folder for the disk-offloaded weights")
        folder = str(p)
    if "disk" in devices and folder is None:
        raise ModelError("device_map sends modules to 'disk' but no offload_folder= was given; pass "
                         "offload_folder='some/folder' for accelerate to write their weights to")
    return Placement(dm, mem, folder, tuple(dict.fromkeys(devices)))


def check_modules(place: Placement, config: Any, name: str) -> Placement:
    """Every key of a dict ``device_map`` names a module of ``config``'s causal LM, and every weight is mapped;
    returns the placement with the map made explicit (a ``""`` default spelled out module by module, which
    ``from_pretrained`` needs beside disk-offloaded submodules).

    The module names come from a weightless (meta-device) instance of the architecture: nothing is loaded."""
    if not isinstance(place.device_map, dict) or set(place.device_map) == {""}:
        return place
    from transformers import AutoModelForCausalLM

    with torch.device("meta"), _quiet_init():
        model = AutoModelForCausalLM.from_config(config)
    modules = {n for n, _ in model.named_modules() if n}
    bad = [k for k in place.device_map if k and k not in modules]
    if bad:
        top = sorted({n for n in modules if n.count(".") <= 1})
        layers = sorted((n for n in modules if re.fullmatch(r".*layers\.\d+", n)), key=lambda s: (len(s), s))
        hint = f"e.g. {layers[0]!r}..{layers[-1]!r}, " if layers else ""
        raise ModelError(f"device_map names module(s) {bad} that {name} ({type(model).__name__}) does not have; "
                         f"its modules include {hint}{', '.join(repr(t) for t in top[:8])}")
    keys = [k for k in place.device_map]
    unmapped = sorted({p.rsplit(".", 1)[0] for p, _ in model.named_parameters()
                       if not any(k == "" or p == k or p.startswith(k + ".") for k in keys)})
    if unmapped:
        raise ModelError(f"device_map leaves module(s) {unmapped[:6]}{' ...' if len(unmapped) > 6 else ''} of {name} "
                         "without a device; map them too (or add '' for a default device)")
    if "" not in place.device_map:
        return place
    return dataclasses.replace(place, device_map=_explicit(model, place.device_map))


def _explicit(model: Any, dm: dict) -> dict:
    """``dm`` without its ``""`` default: each module not covered by a key gets the nearest mapped ancestor's device."""
    out: dict = {}

    def walk(mod: Any, prefix: str, default: Any) -> None:
        for child_name, child in mod.named_children():
            full = f"{prefix}{child_name}"
            if full in dm:
                out[full] = dm[full]
                if any(k.startswith(full + ".") for k in dm):
                    out.pop(full)
                    walk(child, full + ".", dm[full])
            elif any(k.startswith(full + ".") for k in dm):
                walk(child, full + ".", default)
            elif any(True for _ in child.parameters()) or any(True for _ in child.buffers()):
                out[full] = default
        own = [n for n, _ in mod.named_parameters(recurse=False)] + [n for n, _ in mod.named_buffers(recurse=False)]
        if own:
            out[prefix.rstrip(".") or ""] = default  # a split module with weights of its own (rare)

    walk(model, "", dm[""])
    return out


@contextlib.contextmanager
def _quiet_init() -> Iterator[None]:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


# The placement of the load in progress: read where from_pretrained runs (loading._load_hf / _load_cached).
_CURRENT: contextvars.ContextVar[Placement] = contextvars.ContextVar("phaselens_placement", default=Placement())


def current() -> Placement:
    """The placement of the :func:`~phaselens.load_model` call in progress (inactive outside one)."""
    return _CURRENT.get()


@contextlib.contextmanager
def loading_with(place: Placement) -> Iterator[None]:
    token = _CURRENT.set(place)
    try:
        yield
    finally:
        _CURRENT.reset(token)


def dispatch(hf: Any, place: Placement) -> Any:
    """Place an already loaded causal LM by ``place`` with accelerate (``infer_auto_device_map`` for a strategy)."""
    from accelerate import dispatch_model, infer_auto_device_map

    dm = place.device_map
    if isinstance(dm, str):
        no_split = getattr(hf, "_no_split_modules", None) or []
        dm = infer_auto_device_map(hf, max_memory=place.max_memory, no_split_module_classes=list(no_split))
    main = place.main_device
    return dispatch_model(hf, device_map=dm, main_device=str(main) if main.type != "cpu" else "cpu",
                          offload_dir=place.offload_folder)
