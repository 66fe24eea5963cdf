"""Renamed names keep working for one release, with a ``FutureWarning`` that names the new one.

* :func:`warn_renamed` issues the warning;
* :func:`renamed_kwargs` is a decorator for renamed keyword arguments (``seed=`` -> ``boot_seed=``);
* :func:`renamed_property` is a class attribute for a renamed attribute or property;
* :func:`module_getattr` builds a module ``__getattr__`` for renamed or moved module-level names.
"""

from __future__ import annotations

import functools
import importlib
import warnings
from typing import Any, Callable

from .errors import PhaselensError


def warn_renamed(old: str, new: str, where: str, *, stacklevel: int = 3) -> None:
    """Warn (``FutureWarning``) that ``old`` is deprecated in favour of ``new``; ``where`` says in what."""
    warnings.warn(f"phaselens: `{old}` is deprecated, use `{new}` ({where}); the old name goes in the next release",
                  FutureWarning, stacklevel=stacklevel)


def renamed_kwargs(**renames: str) -> Callable[[Callable], Callable]:
    """Decorator: ``@renamed_kwargs(seed="boot_seed")`` accepts ``seed=`` as a deprecated alias of ``boot_seed=``
    (it warns); giving both is an error."""

    def deco(fn: Callable) -> Callable:
        where = f"{fn.__module__}.{fn.__qualname__}"

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            for old, new in renames.items():
                if old in kwargs:
                    if new in kwargs:
                        raise PhaselensError(f"{fn.__name__}: got both {old}= and {new}=; {old}= is the deprecated "
                                             f"name of {new}=, pass only {new}=")
                    warn_renamed(f"{old}=", f"{new}=", where)
                    kwargs[new] = kwargs.pop(old)
            return fn(*args, **kwargs)

        wrapper.__renamed_kwargs__ = dict(renames)  # type: ignore[attr-defined]
        return wrapper

    return deco


def renamed_property(old: str, new: str) -> property:
    """A read-only property that warns and returns ``self.<new>``: ``n_layers = renamed_property("n_layers", "n_kept")``."""

    def get(self: Any) -> Any:
        cls = type(self).__name__
        warn_renamed(f"{cls}.{old}", f"{cls}.{new}", "attribute renamed")
        return getattr(self, new)

    return property(get, doc=f"Deprecated: use ``{new}``.")


def module_getattr(module: str, moved: dict[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for renamed or moved module-level names.

    ``moved`` maps an old name to ``"package.module:new_name"`` (or ``"package.module"`` when the name is the
    same there). The old name is looked up lazily, warns and returns the object at its new place."""

    def __getattr__(name: str) -> Any:
        if name not in moved:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        target = moved[name]
        mod_name, _, attr = target.partition(":")
        attr = attr or name
        warn_renamed(f"{module}.{name}", f"{mod_name}.{attr}", "moved" if attr == name else "renamed")
        return getattr(importlib.import_module(mod_name), attr)

    return __getattr__
