"""Registries: the one way phaselens is extended.

Each extension point (recovery methods, selection criteria, lens kinds, study run kinds) is a
:class:`Registry` of objects that own their behaviour. Built-ins register themselves when their module is
imported; users register their own from their own code::

    import phaselens as pl

    @pl.register_method("half-ghosted")
    class HalfGhosted(pl.recovery.RecoveryMethod):
        ...

Other processes (the CLI, study workers) find user plugins without being told in code: on a name they do
not know, every registry first imports the plugin modules once, from

* the entry-point group ``phaselens.plugins`` (``[project.entry-points."phaselens.plugins"]`` in the
  plugin's ``pyproject.toml``; each entry point names a module, or a callable that is called once), and
* the environment variable ``PHASELENS_PLUGINS`` (module names or ``.py`` paths, separated by ``,``),
  which :func:`load_plugins` sets for child processes, and the CLI's ``--plugins``.

:func:`registered` lists what is registered, built-in and user-supplied, per kind.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Callable, Generic, Iterator, TypeVar

import pandas as pd

from .errors import PhaselensError

T = TypeVar("T")

#: the entry-point group that plugin packages declare
ENTRY_POINT_GROUP = "phaselens.plugins"
#: plugin modules (names or .py paths, comma-separated) every phaselens process imports on an unknown name
PLUGINS_ENV = "PHASELENS_PLUGINS"

_REGISTRIES: dict[str, "Registry"] = {}
_loaded: set[str] = set()
_entry_points_loaded = False


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered object: its name, the object, and whether phaselens ships it."""

    name: str
    obj: T
    builtin: bool
    module: str


class Registry(Generic[T]):
    """Named objects of one kind (``"method"``, ``"criterion"``, ``"lens"``, ``"run"``).

    ``error`` is the :class:`~phaselens.PhaselensError` subclass an unknown name raises; ``what`` is how the
    messages name one entry (``"recovery method"``).
    """

    def __init__(self, kind: str, what: str, error: type[PhaselensError] = PhaselensError) -> None:
        if kind in _REGISTRIES:
            raise PhaselensError(f"a registry of kind {kind!r} already exists")
        self.kind, self.what, self.error = kind, what, error
        self._entries: dict[str, Entry[T]] = {}
        _REGISTRIES[kind] = self

    def add(self, name: str, obj: T, *, builtin: bool | None = None, replace: bool = False) -> T:
        """Register ``obj`` as ``name``; refuse a name already taken unless ``replace=True``."""
        if not isinstance(name, str) or not name or any(c in name for c in ", \t\n"):
            raise self.error(f"a {self.what} name must be a non-empty string without commas or spaces, got {name!r}")
        if name in self._entries and not replace:
            old = self._entries[name]
            if old.obj is obj:
                return obj
            raise self.error(f"a {self.what} named {name!r} is already registered (from {old.module}); "
                             "choose another name, or pass replace=True")
        module = getattr(obj, "__module__", None) or type(obj).__module__
        if builtin is None:
            builtin = module.startswith("phaselens.")
        self._entries[name] = Entry(name, obj, builtin, module)
        return obj

    def register(self, name: str, *, replace: bool = False) -> Callable[[T], T]:
        """A decorator: ``@registry.register("name")`` registers the decorated object (a class is instantiated
        with no arguments when the registry holds instances of it, see :meth:`_coerce`)."""

        def deco(obj: T) -> T:
            self.add(name, self._coerce(name, obj), replace=replace)
            return obj

        return deco

    def _coerce(self, name: str, obj: Any) -> Any:
        """What is stored for a decorated object: a class is instantiated (``cls()``), with ``name`` set."""
        if isinstance(obj, type):
            inst = obj()
            if getattr(inst, "name", None) in (None, ""):
                try:
                    inst.name = name
                except AttributeError:
                    object.__setattr__(inst, "name", name)
            return inst
        return obj

    def remove(self, name: str) -> None:
        """Unregister ``name`` (for tests and notebooks); built-ins cannot be removed."""
        e = self._entries.get(name)
        if e is None:
            raise self.error(f"no {self.what} named {name!r} is registered")
        if e.builtin:
            raise self.error(f"{name!r} is a built-in {self.what}; it cannot be removed")
        del self._entries[name]

    def get(self, name: str) -> T:
        """The object registered as ``name``; an unknown name loads the plugins once, then raises ``error``
        naming every registered name."""
        if isinstance(name, str) and name not in self._entries:
            load_plugins()
        try:
            return self._entries[name].obj
        except (KeyError, TypeError):
            raise self.error(f"unknown {self.what} {name!r}; choose from {self.names()} "
                             f"(register your own with phaselens.register_{self.kind})") from None

    def check(self, names: Any, *, allow_empty: bool = False) -> tuple[str, ...]:
        """``names`` (one name or a list) as a tuple, every one registered; raises ``error`` naming the bad ones."""
        ms = (names,) if isinstance(names, str) else names
        try:
            ms = tuple(ms)
        except TypeError:
            raise self.error(f"expected a {self.what} name or a list of them, got {names!r}") from None
        if not all(isinstance(m, str) for m in ms):
            raise self.error(f"expected {self.what} names (strings), got {names!r}")
        if any(m not in self._entries for m in ms):
            load_plugins()
        bad = [m for m in ms if m not in self._entries]
        if bad:
            raise self.error(f"unknown {self.what}(s) {bad}; choose from {self.names()}")
        if not ms and not allow_empty:
            raise self.error(f"no {self.what} given; choose from {self.names()}")
        return ms

    def names(self) -> tuple[str, ...]:
        """Every registered name, built-ins first, in registration order."""
        es = list(self._entries.values())
        return tuple(e.name for e in es if e.builtin) + tuple(e.name for e in es if not e.builtin)

    def builtin_names(self) -> tuple[str, ...]:
        return tuple(e.name for e in self._entries.values() if e.builtin)

    def entries(self) -> Iterator[Entry[T]]:
        yield from self._entries.values()

    def items(self) -> list[tuple[str, T]]:
        """``(name, object)`` pairs in :meth:`names` order (the registry reads like the dict it replaced)."""
        return [(n, self._entries[n].obj) for n in self.names()]

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):  # a list or dict is no name (and unhashable): never a TypeError
            return False
        if name not in self._entries:
            load_plugins()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self.names())})"


def registry(kind: str) -> Registry:
    """The registry of ``kind`` (``"method"``, ``"criterion"``, ``"lens"``, ``"run"``)."""
    try:
        return _REGISTRIES[kind]
    except KeyError:
        raise PhaselensError(f"no registry of kind {kind!r}; kinds: {sorted(_REGISTRIES)}") from None


def registered(kind: str | None = None) -> pd.DataFrame:
    """What is registered: a DataFrame with columns ``kind, name, builtin, module`` (one kind, or all)."""
    load_plugins()
    kinds = [kind] if kind is not None else sorted(_REGISTRIES)
    rows = []
    for k in kinds:
        for e in registry(k).entries():
            rows.append({"kind": k, "name": e.name, "builtin": e.builtin, "module": e.module})
    return pd.DataFrame(rows, columns=["kind", "name", "builtin", "module"])


def _import_plugin(spec: str) -> None:
    spec = spec.strip()
    if not spec or spec in _loaded:
        return
    try:
        if spec.endswith(".py"):
            path = Path(spec).expanduser().resolve()
            if not path.is_file():
                raise FileNotFoundError(f"no such file: {path}")
            name = "phaselens_plugin_" + hashlib.sha1(str(path).encode()).hexdigest()[:12]
            mod_spec = importlib.util.spec_from_file_location(name, path)
            assert mod_spec is not None and mod_spec.loader is not None
            module = importlib.util.module_from_spec(mod_spec)
            sys.modules[name] = module
            mod_spec.loader.exec_module(module)
        else:
            importlib.import_module(spec)
    except PhaselensError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure of a user's module is named, with its cause kept
        raise PhaselensError(f"the phaselens plugin {spec!r} could not be imported ({type(e).__name__}: {e}); "
                             f"fix it, or remove it from {PLUGINS_ENV} / --plugins / plugins=") from e
    _loaded.add(spec)


def load_plugins(plugins: Any = None) -> None:
    """Import plugin modules: ``plugins`` (names or ``.py`` paths), those in ``$PHASELENS_PLUGINS``, and (once)
    every entry point of the group ``phaselens.plugins``. ``plugins`` are added to ``$PHASELENS_PLUGINS`` so
    that child processes (study workers, a CLI started from Python) import them too."""
    global _entry_points_loaded
    given = [plugins] if isinstance(plugins, (str, os.PathLike)) else list(plugins or [])
    if not all(isinstance(p, (str, os.PathLike)) for p in given):
        raise PhaselensError(f"plugins must be module names or .py paths (a list of strings), got {plugins!r}")
    new = [str(Path(p).expanduser().resolve()) if str(p).endswith(".py") else str(p).strip() for p in given]
    for spec in new:  # imported before they enter the environment, so a broken one does not stay there
        _import_plugin(spec)
    if new:
        have = [p for p in os.environ.get(PLUGINS_ENV, "").split(",") if p]
        os.environ[PLUGINS_ENV] = ",".join(dict.fromkeys(have + [p for p in new if p]))
    for spec in os.environ.get(PLUGINS_ENV, "").split(","):
        _import_plugin(spec)
    if not _entry_points_loaded:
        _entry_points_loaded = True
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            if ep.value in _loaded:
                continue
            try:
                obj = ep.load()
            except Exception as e:  # noqa: BLE001
                raise PhaselensError(f"the phaselens plugin entry point {ep.name!r} ({ep.value}) could not be "
                                     f"loaded ({type(e).__name__}: {e})") from e
            if callable(obj) and not isinstance(obj, type):
                obj()
            _loaded.add(ep.value)


__all__ = ["ENTRY_POINT_GROUP", "PLUGINS_ENV", "Entry", "Registry", "load_plugins", "registered", "registry"]
