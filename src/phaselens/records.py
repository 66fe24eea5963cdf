"""Records: dataclasses phaselens can save, and their generic, exact encoding (arrays by reference into a side
file; tuples, ranges, non-string dict keys and non-finite floats tagged), plus a lossy plain-JSON form."""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, ClassVar

import numpy as np

from .deprecation import module_getattr
from .errors import ResultsError

KINDS: dict[str, type] = {}
#: old kind names (a renamed result class) -> the class name they load as
KIND_ALIASES: dict[str, str] = {"BoundaryError": "BoundaryErrorResult"}


class Record:
    """A dataclass phaselens can save: registered by class name, encoded field by field (init fields only)."""

    version: ClassVar[int] = 1
    #: derived attributes added to :meth:`to_json` (never stored: they are recomputed from the fields)
    derived: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        old = KINDS.get(cls.__name__)
        if old is not None and (old.__module__, old.__qualname__) != (cls.__module__, cls.__qualname__):
            raise ResultsError(f"two result classes are named {cls.__name__} ({old.__module__} and {cls.__module__}); "
                            "the name is the kind stored in files, so it must be unique")
        KINDS[cls.__name__] = cls

    @classmethod
    def upgrade(cls, doc: dict[str, Any], version: int) -> dict[str, Any] | None:
        """The stored fields ``doc`` of format ``version`` (older than :attr:`version`) as the current version
        stores them, or ``None`` when that version cannot be read (the default: recompute it). A class that bumps
        its :attr:`version` and can still read the previous one overrides this."""
        return None

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict of the fields, arrays inline as lists (for ``--json`` output; files use a side file)."""
        return encode_record(self, None)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Any:
        """Inverse of :meth:`to_dict`."""
        obj = decode(d, None)
        if not isinstance(obj, cls):
            raise ResultsError(f"expected a {cls.__name__}, the data holds a {type(obj).__name__}")
        return obj

    def to_json(self, **kw: Any) -> str:
        """Plain JSON for other tools (``--json``): fields and derived values, arrays as nested lists, NaN/Inf as
        null, tuples and ranges as lists. Not read back by phaselens (files use :func:`save_result`)."""
        return json.dumps(plain(self), **kw)


def _fields(obj: Any) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(obj) if f.init]


def encode_record(obj: Any, arrays: dict[str, np.ndarray] | None) -> Any:
    """JSON-safe form of ``obj``; arrays go into ``arrays`` (referenced by key), or inline when it is None."""
    import torch

    if isinstance(obj, Record):
        out: dict[str, Any] = {"__kind__": type(obj).__name__, "__v__": type(obj).version}
        for f in _fields(obj):
            out[f.name] = encode_record(getattr(obj, f.name), arrays)
        return out
    if isinstance(obj, torch.Tensor):
        return {"__tensor__": encode_record(obj.detach().cpu().numpy(), arrays)}
    if isinstance(obj, np.ndarray):
        if obj.dtype == object:
            raise ResultsError("cannot store an object array in a result; use numbers, bools or a list of strings")
        if arrays is None:
            return {"__array__": {"dtype": str(obj.dtype), "shape": list(obj.shape),
                                  "data": [encode_record(v, None) for v in obj.ravel().tolist()]}}
        key = f"a{len(arrays)}"
        arrays[key] = np.ascontiguousarray(obj)
        return {"__array__": key}
    if isinstance(obj, (np.bool_, np.integer, np.floating)):
        return encode_record(obj.item(), arrays)
    if isinstance(obj, float) and not math.isfinite(obj):
        return {"__float__": repr(obj)}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, tuple):
        return {"__tuple__": [encode_record(v, arrays) for v in obj]}
    if isinstance(obj, list):
        return [encode_record(v, arrays) for v in obj]
    if isinstance(obj, range):
        return {"__range__": [obj.start, obj.stop, obj.step]}
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: encode_record(v, arrays) for k, v in obj.items()}
        return {"__items__": [[encode_record(k, arrays), encode_record(v, arrays)] for k, v in obj.items()]}
    raise ResultsError(f"cannot store a {type(obj).__name__} in a result")


def plain(obj: Any) -> Any:
    """The JSON-friendly form of :meth:`Record.to_json` (lossy: for reading by other tools)."""
    import torch

    if isinstance(obj, Record):
        out = {f.name: plain(getattr(obj, f.name)) for f in _fields(obj)}
        out.update({name: plain(getattr(obj, name)) for name in type(obj).derived})
        return out
    if isinstance(obj, torch.Tensor):
        obj = obj.detach().cpu().numpy()
    if isinstance(obj, np.ndarray):
        return plain(obj.tolist())
    if isinstance(obj, (np.bool_, np.integer, np.floating)):
        obj = obj.item()
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, range):
        return [obj.start, obj.stop]
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    return obj


def decode(doc: Any, arrays: dict[str, np.ndarray] | None) -> Any:
    """Inverse of :func:`encode_record`."""
    if isinstance(doc, list):
        return [decode(v, arrays) for v in doc]
    if not isinstance(doc, dict):
        return doc
    if "__kind__" in doc:
        return _decode_record(doc, arrays)
    if "__array__" in doc:
        ref = doc["__array__"]
        if isinstance(ref, dict):
            vals = [decode(v, None) for v in ref["data"]]
            return np.asarray(vals, dtype=ref["dtype"]).reshape(ref["shape"])
        if arrays is None or ref not in arrays:
            raise ResultsError(f"array {ref!r} is missing from the result's side file")
        return arrays[ref]
    if "__tensor__" in doc:
        import torch

        return torch.from_numpy(np.array(decode(doc["__tensor__"], arrays)))
    if "__float__" in doc:
        return float(doc["__float__"])
    if "__tuple__" in doc:
        return tuple(decode(v, arrays) for v in doc["__tuple__"])
    if "__range__" in doc:
        return range(*doc["__range__"])
    if "__items__" in doc:
        return {_hashable(decode(k, arrays)): decode(v, arrays) for k, v in doc["__items__"]}
    return {k: decode(v, arrays) for k, v in doc.items()}


def _hashable(k: Any) -> Any:
    return tuple(_hashable(x) for x in k) if isinstance(k, list) else k


def _decode_record(doc: dict, arrays: dict | None) -> Any:
    kind = doc["__kind__"]
    kind = KIND_ALIASES.get(kind, kind)  # files written before a result class was renamed
    cls = KINDS.get(kind)  # every result class is registered: importing phaselens.records ran phaselens/__init__
    if cls is None:
        raise ResultsError(f"unknown result kind {kind!r}; known kinds: {sorted(KINDS)}")
    v = doc.get("__v__", 1)
    if v != cls.version:
        up = cls.upgrade(dict(doc), v) if isinstance(v, int) and not isinstance(v, bool) and v < cls.version else None
        if up is None:
            raise ResultsError(f"{kind} was stored in version {doc.get('__v__')} of its format; this phaselens reads "
                               f"version {cls.version}. Recompute it with this version")
        doc = up
    names = [f.name for f in _fields(cls)]
    missing = [n for n in names if n not in doc]
    if missing:
        raise ResultsError(f"{kind} is missing field(s) {missing}: the file is incomplete or was not written by "
                           "phaselens; recompute it")
    extra = sorted(set(doc) - set(names) - {"__kind__", "__v__"})
    if extra:
        raise ResultsError(f"{kind} has unknown field(s) {extra}: written by another phaselens version; recompute it")
    try:
        return cls(**{n: decode(doc[n], arrays) for n in names})
    except ResultsError:
        raise
    except (TypeError, ValueError) as e:
        raise ResultsError(f"{kind}: the stored fields do not make a valid result ({e})") from e


__getattr__ = module_getattr(__name__, {"encode": f"{__name__}:encode_record"})  # the old name of encode_record
