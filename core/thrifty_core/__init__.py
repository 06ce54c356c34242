"""Thrifty's shared contract: API types, rendered gateway config, price catalog, errors."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("thrifty")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0"

__all__ = ["__version__"]
