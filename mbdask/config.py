"""mbdask's settings, through Dask's configuration.

The defaults live in ``mbdask/mbdask.yaml`` (each key documented there) and are merged
into ``dask.config`` the first time a setting is read, so that users set them where they
already configure Dask on a cluster: their Dask YAML files, ``DASK_MBDASK__...``
environment variables, or ``dask.config.set``. This is dask-jobqueue's convention for
``jobqueue.yaml``. Loaded on first use rather than at ``import mbdask``, which stays cheap.
"""

from __future__ import annotations

import functools
import threading
from pathlib import Path
from typing import Any

import yaml

DEFAULTS = Path(__file__).with_name("mbdask.yaml")
_lock = threading.Lock()
_loaded = False


def load_defaults() -> None:
    """Merge ``mbdask.yaml`` into Dask's defaults (once; values the user set stay as they are)."""
    global _loaded
    import dask.config

    with _lock:
        if not _loaded:
            dask.config.update_defaults(_packaged())
            _loaded = True


@functools.lru_cache(maxsize=1)
def _packaged() -> dict:
    """mbdask.yaml, read once per process."""
    return yaml.safe_load(DEFAULTS.read_text())


def packaged_default(key: str) -> Any:
    """The value ``key`` has in mbdask.yaml, read without importing Dask (``--help`` shows it and stays instant)."""
    node: Any = _packaged()
    for part in key.split("."):
        node = node[part]
    return node


def get(key: str) -> Any:
    """The setting ``key`` (``"mbdask.worker-timeout"``...): the user's value, else mbdask.yaml's."""
    import dask.config

    load_defaults()
    return dask.config.get(key)
