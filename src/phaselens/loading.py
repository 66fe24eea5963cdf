"""Loading: one :class:`~phaselens.models.Model` from a name, a path, a GGUF file, a transformers model or a bridge.

:func:`load_model` checks every argument (device, dtype, placement) before any weights load, then reads an embedded
model from its dequantized cache (:mod:`phaselens.embedded`, :mod:`phaselens.dequant`), a Hugging Face name or
folder, a GGUF file, or wraps an already loaded model, and refuses a model whose last block read through the final
norm and unembedding is not its own logits.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import struct
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from . import dequant, manifest, placement
from .embedded import EMBEDDED, cache_dir, check_gguf, embedded_gguf_path
from .errors import ModelError
from .log import logger
from .models import Model, quiet, default_device, default_dtype
from .parts import find_decoder
from .placement import check_device
from .runner import Batch, Read, Runner
from .runner.patches import block_returns_tuple

#: ``(recognises(path) -> bool, load(path, device=, dtype=))`` for folders :func:`load_model` reads another way than
#: a plain Hugging Face checkpoint; a higher floor registers itself (:func:`register_folder_loader`), so this module
#: never imports it.
FOLDER_LOADERS: list[tuple[Any, Any]] = []


def register_folder_loader(recognises: Any, load: Any) -> None:
    """Let :func:`load_model` read the folders ``recognises(path)`` accepts with ``load(path, device=, dtype=)``."""
    if (recognises, load) not in FOLDER_LOADERS:
        FOLDER_LOADERS.append((recognises, load))


def load_model(
    spec: Any,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    tokenizer: Any = None,
    device_map: Any = None,
    max_memory: dict | None = None,
    offload_folder: str | os.PathLike | None = None,
) -> Model:
    """Load a model for the logit lens.

    Args:
        spec: an embedded name (``"smollm2-135m"``, ``"gemma3-270m"``, ``"qwen2.5-coder-1.5b"``), a Hugging Face model
            name or local directory (offline: read from the local HF cache; a folder written by ``view.export``
            with operators loads as that view, an :class:`~phaselens.export.ExportedView`), a ``.gguf`` path,
            a loaded ``transformers`` causal LM, a ``TransformerBridge``, or a :class:`Model`.
        device: ``"cpu"``, ``"cuda"``, ... (default: CUDA if available).
        dtype: default float32 on the CPU, bfloat16 on a GPU.
        tokenizer: the tokenizer of a ``transformers`` model passed as ``spec`` (default:
            ``spec.tokenizer`` or the one saved beside its weights).
        device_map: place the weights accelerate-style instead of on one ``device``: ``"auto"`` (or
            ``"balanced"``, ``"sequential"``), a device, or ``{module name: device}`` with devices ``"cpu"``,
            ``"cuda:N"`` / an int, ``"disk"``. Passed to ``from_pretrained`` for every spec (a loaded
            ``transformers`` model is dispatched with accelerate). Blocks on several devices and blocks
            offloaded by accelerate's hooks run every phaselens path unchanged.
        max_memory: ``{device: size}`` limits for ``device_map="auto"``, e.g. ``{0: "20GiB", "cpu": "64GiB"}``.
        offload_folder: where disk-offloaded weights are written (needed when the map names ``"disk"``).

    Every placement argument is checked before any weights load (:mod:`phaselens.placement`): a device this
    machine does not have, or a module name the architecture does not have, is a :class:`ModelError`.
    """
    if isinstance(spec, Model):
        if device_map is not None:
            raise ModelError(f"{spec.name} is already loaded; pass device_map= when loading it (load_model(name, device_map=...))")
        return spec
    dev = parse_device(device)
    dt = parse_dtype(dtype)
    place = placement.check_placement(device_map, max_memory, offload_folder, device=device)
    if place.active:
        if dt is None:
            dt = default_dtype(place.main_device)
        if _is_bridge(spec):
            raise ModelError("device_map= cannot place a TransformerBridge's model; load the model with "
                             "load_model(name, device_map=...) and call .bridge() on it")
        if isinstance(spec, nn.Module):
            place = placement.check_modules(place, spec.config, type(spec).__name__)
            placement.dispatch(spec.to(dt), place)
        else:
            if isinstance(place.device_map, dict) and set(place.device_map) != {""}:
                place = placement.check_modules(place, _config_for(spec), str(spec))
            with placement.loading_with(place):
                return load_model(spec, dtype=dt, tokenizer=tokenizer)
    if _is_bridge(spec):
        hf, tok, name = spec.original_model, spec.tokenizer, getattr(spec.cfg, "model_name", "bridge")
        m = _prepare(hf, tok, str(name), dev, dt)
        m._bridge = spec
        return m
    if isinstance(spec, nn.Module):
        tok = tokenizer or getattr(spec, "tokenizer", None)
        if tok is None:
            path = getattr(spec.config, "_name_or_path", "")
            try:
                from transformers import AutoTokenizer

                tok = AutoTokenizer.from_pretrained(path)
            except Exception as e:  # noqa: BLE001
                raise ModelError(
                    "a transformers model was passed without a tokenizer; pass load_model(model, tokenizer=...) "
                    f"(could not load one from {path!r}: {e})"
                ) from e
        return _prepare(spec, tok, getattr(spec.config, "_name_or_path", type(spec).__name__) or "model", dev, dt)
    if not isinstance(spec, (str, os.PathLike)):
        raise ModelError(f"cannot load a model from {type(spec).__name__}; pass a name, a path or a transformers model")
    s = str(spec)
    key = s.lower()
    if key in EMBEDDED:
        return _load_embedded(key, dev, dt)
    if s.endswith(".gguf"):
        p = Path(s).expanduser()
        check_gguf(p)
        return _load_gguf(p, p.stem, None, dev, dt)
    for recognises, load in FOLDER_LOADERS:  # e.g. a folder written by view.export with operators (phaselens.export)
        if recognises(s):
            return load(s, device=dev, dtype=dt)
    return _load_hf(s, dev, dt)


DTYPES = ("float32", "float16", "bfloat16", "float64")


def _config_for(spec: Any) -> Any:
    """The architecture config of a spec, read without loading weights (to check a device_map's module names)."""
    from transformers import AutoConfig

    s = str(spec)
    key = s.lower()
    try:
        with quiet():
            if key in EMBEDDED:
                cached = cache_dir() / "models" / key
                if (cached / "config.json").exists():
                    return AutoConfig.from_pretrained(cached)
                p = embedded_gguf_path(key)
                return AutoConfig.from_pretrained(p.parent, gguf_file=p.name)
            if s.endswith(".gguf"):
                p = Path(s).expanduser()
                check_gguf(p)
                return AutoConfig.from_pretrained(p.parent, gguf_file=p.name)
            local = Path(s).expanduser().is_dir()
            return AutoConfig.from_pretrained(s, **({} if local else {"local_files_only": True}))
    except OSError as e:
        raise ModelError(f"could not read the config of {s!r} to check its device_map ({type(e).__name__}: {str(e)[:200]}); "
                         "pass an embedded name, a local folder, a .gguf file or a model in the local HF cache") from e


def parse_device(device: Any) -> torch.device | None:
    """``device`` as a torch device that exists on this machine (the rule a device map's entries follow,
    :func:`phaselens.placement.check_device`); a :class:`ModelError` naming it otherwise."""
    if device is None:
        return None
    if isinstance(device, str) and device == "disk":
        raise ModelError("device='disk' cannot run a model; offload blocks to disk with device_map= and offload_folder=")
    check_device(device, f"device={device!r}")
    return torch.device(device)


def parse_dtype(dtype: Any) -> torch.dtype | None:
    """``dtype`` (a torch dtype or its name) as a floating torch dtype; a :class:`ModelError` otherwise."""
    if dtype is None:
        return None
    if isinstance(dtype, str):
        name = dtype.removeprefix("torch.")
        if name not in DTYPES:
            raise ModelError(f"dtype={dtype!r} is not one of {', '.join(DTYPES)}")
        return getattr(torch, name)
    if isinstance(dtype, torch.dtype) and dtype.is_floating_point:
        return dtype
    raise ModelError(f"dtype must be a floating torch dtype or one of {', '.join(DTYPES)}, got {dtype!r}")


def _is_bridge(obj: Any) -> bool:
    return type(obj).__name__ == "TransformerBridge" and hasattr(obj, "original_model")


def _load_hf(name: str, dev: torch.device | None, dt: torch.dtype | None) -> Model:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dev = dev or default_device()
    dt = dt or default_dtype(dev)
    local = Path(name).expanduser().is_dir()
    kw: dict[str, Any] = {} if local else {"local_files_only": True}
    try:
        with quiet():
            tok = AutoTokenizer.from_pretrained(name, **kw)
            hf = AutoModelForCausalLM.from_pretrained(name, dtype=dt, **kw, **placement.current().kwargs)
    except OSError as e:
        raise ModelError(
            f"could not load {name!r}: not an embedded name ({', '.join(EMBEDDED)}), not a local directory, "
            f"and not in the local Hugging Face cache (phaselens works offline). Download it on a machine with "
            f"internet (huggingface-cli download {name}) or pass a path. ({e.__class__.__name__}: {str(e)[:200]})"
        ) from e
    return _prepare(hf, tok, Path(name).name if local else name, dev, dt)


def _load_embedded(key: str, dev: torch.device | None, dt: torch.dtype | None) -> Model:
    target = cache_dir() / "models" / key
    m = _load_gguf(lambda: embedded_gguf_path(key), key, EMBEDDED[key]["architecture"], dev, dt, save_to=target)
    m.provenance = {"model": key, "title": EMBEDDED[key]["title"], "quantization": EMBEDDED[key].get("quantization"),
                    "gguf": EMBEDDED[key]["file"]}
    return m


def _load_gguf(
    source: Path | Callable[[], Path], name: str, arch: str | None, dev: torch.device | None, dt: torch.dtype | None,
    save_to: Path | None = None,
) -> Model:
    """Dequantize a GGUF file once into a checked cache folder, then load that folder.

    ``source``: the GGUF path, or a function finding it (an embedded model's: called only when the cache must be
    built or checked against it). Architectures :mod:`phaselens.dequant` knows (Llama, Qwen2, Gemma-3) are
    dequantized tensor by tensor and streamed to disk; others go through transformers' ``gguf_file=`` loader
    (:func:`~phaselens.dequant.dequantize_with_transformers`). Every load checks the cache against its manifest
    (:mod:`phaselens.manifest`): a cache whose files changed, or whose source changed, is rebuilt (and says so); a
    damaged cache whose source is gone is a :class:`ModelError` naming the file.
    """
    if importlib.util.find_spec("gguf") is None:
        raise ModelError("reading GGUF files needs the gguf package:\n    pip install gguf")
    find = source if callable(source) else (lambda: source)
    if save_to is None:
        p = find()
        save_to = cache_dir() / "models" / f"{p.stem}-{hashlib.sha256(str(p.resolve()).encode()).hexdigest()[:8]}"
    target = save_to
    if not (target.is_dir() and any(p for p in target.iterdir() if not p.name.startswith("."))):
        return _build_and_load(find(), name, arch, dev, dt, target)
    try:
        m = manifest.read_manifest(target)
    except ModelError as e:
        return _rebuild(find, name, arch, dev, dt, target, str(e))
    if m is None:
        m = _adopt_unlisted(find, arch, target)
        if m is None:
            return _build_and_load(find(), name, arch, dev, dt, target)
    src = m.get("source") or {}
    sp = Path(src["path"]) if isinstance(src.get("path"), str) else None
    if sp is not None and sp.is_file() and not manifest.source_unchanged_on_disk(src, sp):
        new = manifest.source_record(sp)  # touched: its content decides
        if new["hash"] != src.get("hash"):
            logger.info(f"{sp} has changed since {target} was built from it; rebuilding the cache")
            return _build_and_load(sp, name, arch, dev, dt, target)
        m["source"] = new
        try:
            manifest.write_manifest(target, m["files"], new)  # so the next load need not hash it again
        except OSError:
            pass  # a read-only cache: it is hashed again next time, nothing else changes
    problems = manifest.size_problems(target, m)
    if problems:
        return _rebuild(find, name, arch, dev, dt, target, "; ".join(problems))
    model, problems = _load_checked(target, m, name, dev, dt, verify=True)
    if problems:
        del model
        return _rebuild(find, name, arch, dev, dt, target, "; ".join(problems))
    assert model is not None
    return model


def _rebuild(find: Callable[[], Path], name: str, arch: str | None, dev: torch.device | None,
             dt: torch.dtype | None, target: Path, why: str) -> Model:
    """Rebuild a damaged cache from its source (a :class:`ModelError` naming the damage when the source is gone)."""
    try:
        src = find()
    except ModelError as e:
        raise ModelError(f"the cached model {target} is damaged ({why}), and its source is not available to rebuild "
                         f"it: {e}") from e
    logger.info(f"the cached model {target} is damaged ({why}); rebuilding it from {src}")
    return _build_and_load(src, name, arch, dev, dt, target)


def _build_and_load(path: Path, name: str, arch: str | None, dev: torch.device | None, dt: torch.dtype | None,
                    target: Path) -> Model:
    check_gguf(path)
    logger.info(f"dequantizing {path.name} into {target} (first load; later loads read the cache)")
    try:
        fast = dequant.gguf_architecture(path) in dequant.SUPPORTED
        with quiet():
            if fast:
                info = dequant.dequantize_to_folder(path, target, architecture=arch)
            else:
                info = dequant.dequantize_with_transformers(path, target, architecture=arch)
    except ModelError:
        raise
    except (struct.error, UnicodeDecodeError, ValueError, KeyError, IndexError, OSError, EOFError) as e:
        raise ModelError(f"{path}: the GGUF file could not be read ({type(e).__name__}: {str(e)[:200]}); it is "
                         "truncated, corrupt or of an architecture transformers cannot read") from e
    logger.info(f"dequantized {path.name} in {info['seconds']:.0f}s; cached at {target}")
    model, problems = _load_checked(target, info["manifest"], name, dev, dt, verify=False)  # hashed as written
    assert model is not None and not problems
    return model


def _adopt_unlisted(find: Callable[[], Path], arch: str | None, target: Path) -> dict[str, Any] | None:
    """A cache written before manifests existed: dequantize its source once into a hash (nothing written) and
    compare. Returns the new manifest when the weights match (the config and tokenizer files are rewritten from the
    source), ``None`` when the cache must be rebuilt; a :class:`ModelError` when the source is gone."""
    try:
        src = find()
    except ModelError as e:
        raise ModelError(f"the cached model {target} was written by a phaselens before 0.4 without a manifest, so its "
                         f"contents cannot be checked, and its source is not available to check it against: {e}\n"
                         f"Install the source, or delete {target} and load the model from another source.") from e
    weights = target / "model.safetensors"
    if not (weights.is_file() and dequant.gguf_architecture(src) in dequant.SUPPORTED):
        logger.info(f"the cached model {target} has no manifest (written before phaselens 0.4); rebuilding it")
        return None
    logger.info(f"the cached model {target} has no manifest (written before phaselens 0.4); checking it once "
                f"against {src.name}")
    with quiet():
        want = dequant.dequantized_weights_hash(src, architecture=arch)
    if manifest.hash_file(weights) != want:
        logger.info(f"{weights} differs from what {src.name} dequantizes to; rebuilding it")
        return None
    with quiet():
        names = dequant.write_small_files(src, target, architecture=arch)
    extra = sorted(p.name for p in target.iterdir() if p.name not in {*names, "model.safetensors"})
    if extra:
        logger.info(f"{target} holds files phaselens does not write ({', '.join(extra)}); rebuilding it")
        return None
    files = {n: manifest.file_record(target / n, want if n == "model.safetensors" else None)
             for n in ["model.safetensors", *names]}
    source = manifest.source_record(src)
    manifest.write_manifest(target, files, source)
    logger.info(f"{target} matches its source; its manifest is written and later loads check it")
    return {"format": manifest.FORMAT, "hash": manifest.HASH, "files": files, "source": source}


def _load_checked(target: Path, m: dict[str, Any], name: str, dev: torch.device | None, dt: torch.dtype | None,
                  *, verify: bool) -> tuple[Model | None, list[str]]:
    """Load the cached folder; with ``verify``, hash its files against the manifest meanwhile.

    The hash runs in a background thread (:func:`manifest.check_threads` threads: one core is left to the load) for
    the whole load, the tokenizer, ``from_pretrained`` and the readout check of :func:`_prepare`, and is waited for
    only at the end; a hash mismatch wins over whatever the load did with the damaged bytes (an error, a refused
    readout). Returns ``(model, problems)``: a model only when there are no problems."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dev = dev or default_device()
    dt = dt or default_dtype(dev)
    model: Model | None = None
    refused: Exception | None = None
    with ThreadPoolExecutor(1) as pool:
        check = pool.submit(manifest.content_problems, target, m, manifest.check_threads()) if verify else None
        try:
            with quiet():
                tok = AutoTokenizer.from_pretrained(target)
                hf = AutoModelForCausalLM.from_pretrained(target, dtype=dt, **placement.current().kwargs)
            err: Exception | None = None
        except Exception as e:  # noqa: BLE001 - a damaged file fails in many ways; the hashes say which
            err, hf, tok = e, None, None
        if err is None:
            try:
                model = _prepare(hf, tok, name, dev, dt, weights_digest=manifest.weights_digest(m))
            except Exception as e:  # noqa: BLE001 - damaged weights can fail the readout check: the hashes decide
                if check is None:
                    raise
                refused = e
        problems = check.result() if check is not None else []
    if problems:
        return None, problems
    if refused is not None:
        raise refused  # the files match their manifest: the model itself is refused (e.g. its readout)
    if err is not None:
        raise ModelError(f"the cached model {target} matches its manifest but could not be loaded "
                         f"({type(err).__name__}: {str(err)[:200]}); delete the folder to rebuild it") from err
    return model, []


# ----------------------------------------------------------------------------- preparation
def _prepare(hf: nn.Module, tok: Any, name: str, dev: torch.device | None, dt: torch.dtype | None,
             weights_digest: str | None = None) -> Model:
    if tok is None:
        raise ModelError(f"{name}: no tokenizer")
    blocks, norm, decoder, unembed = find_decoder(hf, name)
    if getattr(hf, "hf_device_map", None) is None and (dev is not None or dt is not None):
        hf.to(device=dev, dtype=dt)  # a model placed by a device_map stays where accelerate put it
    hf.eval()
    if getattr(tok, "pad_token_id", None) is None:
        tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.convert_ids_to_tokens(0)
    softcap = getattr(hf.config, "final_logit_softcapping", None) or getattr(
        getattr(hf.config, "text_config", None), "final_logit_softcapping", None
    )
    model = Model(hf, tok, name, blocks, norm, decoder, unembed, softcap,
                  attn_implementation=getattr(hf.config, "_attn_implementation", None), weights_digest=weights_digest)
    probe = torch.tensor([[tok.eos_token_id or 1, 5, 17, 42, 7]], device=model.input_device) % model.W_U.shape[0]
    model.returns_tuple = block_returns_tuple(blocks, decoder, probe)
    _check_readout(model, probe)
    model._offloaded.clear()  # an offloaded head fetched whole for the check is not kept: readouts read its rows
    return model


def _check_readout(model: Model, ids: torch.Tensor) -> None:
    """Refuse a model whose last block read through norm -> W_U is not its own output logits."""
    L = model.n_blocks
    out = Runner(model).forward(Batch([0], ids, torch.ones_like(ids)), {"h": Read((L - 1,), "out", "all")},
                                logits=True)
    with torch.inference_mode():
        mine = model.full_logits(out["h"][L - 1].to(model.device))
    ref = out["logits"].float().to(mine.device)
    err = (mine - ref).abs().max().item() / max(ref.std().item(), 1e-6)
    tol = 1e-3 if model.dtype == torch.float32 else 5e-2
    if not err < tol:
        raise ModelError(
            f"{model.name}: reading the last block through the final norm and unembedding does not give the "
            f"model's own logits (relative error {err:.3g}); its readout is not final norm -> unembedding, "
            "so the logit lens would not be the model's own readout. phaselens refuses it."
        )


