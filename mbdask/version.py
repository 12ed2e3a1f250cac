"""mbdask's version, from the installed package's metadata (a module of its own so that the
pipeline's stages can record it without importing the package root)."""

from __future__ import annotations

import functools


@functools.cache
def package_version() -> str:
    """The installed distribution's version; ``0.0.0+source`` when running from a source tree."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mbdask")
    except PackageNotFoundError:
        return "0.0.0+source"
