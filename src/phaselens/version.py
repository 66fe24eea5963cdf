"""phaselens' version, read once from the installed package's metadata (``pyproject.toml`` is the one place it is
written). Floor 0: imports nothing of phaselens."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__: str = version("phaselens")
except PackageNotFoundError:  # a source tree on sys.path that was never installed
    __version__ = "0+unknown"

__all__ = ["__version__"]
