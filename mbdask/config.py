"""mbdask's settings, through Dask's configuration.

The defaults live in ``mbdask/mbdask.yaml`` (each key documented there) and are merged
into ``dask.config`` the first time a setting is read, so that users set them where they
already configure Dask on a cluster: their Dask YAML files, ``DASK_MBDASK__...``
environment variables, or ``dask.config.set``. This is dask-jobqueue's convention for
``jobqueue.yaml``. Loaded on first use rather than at ``import mbdask``, which stays cheap.
"""

from __future__ import annotations

import copy
import functools
import threading
from pathlib import Path
from typing import Any

import yaml

from mbdask.errors import BadInputError

DEFAULTS = Path(__file__).with_name("mbdask.yaml")
_lock = threading.Lock()
_loaded = False


def load_defaults() -> None:
    """Merge ``mbdask.yaml`` into Dask's defaults (once; values the user set stay as they are).

    Merged again where the ``mbdask`` section has gone: a ``dask.config.set({"mbdask...": ...})``
    block opened before the first merge deletes the whole section when it closes, since the
    section did not exist when it opened.
    """
    global _loaded
    import dask.config

    with _lock:
        if not _loaded:
            dask.config.update_defaults(_packaged())
            _loaded = True
        elif "mbdask" not in dask.config.config:
            dask.config.update(dask.config.config, copy.deepcopy(_packaged()), priority="old")


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


#: The numeric settings: their type, and whether 0 is allowed (every one must be at least 0).
NUMBERS: dict[str, tuple[type, bool]] = {
    "mbdask.watch-interval": (float, False),
    "mbdask.context-timeout": (float, False),
    "mbdask.local-cluster.dashboard-min-seconds": (float, True),
    "mbdask.local-cluster.memory-fraction": (float, False),
    "mbdask.local-cluster.start-timeout": (float, False),
    "mbdask.local-cluster.close-timeout": (float, True),
    "mbdask.batching.min-seconds": (float, True),
    "mbdask.batching.max-seconds": (float, False),
    "mbdask.batching.units-per-worker": (int, False),
    "mbdask.graph.collect-nodes": (int, False),
    "mbdask.graph.min-collect-units": (int, False),
    "mbdask.cost.calibration-samples": (int, True),
    "mbdask.store.known-per-unit": (int, False),
    "mbdask.store.write-chunk": (int, False),
    "mbdask.store.close-patience": (float, True),
    "mbdask.result.inline-limit": (int, True),
    "mbdask.progress.log-interval": (float, True),
    "mbdask.progress.rate-window": (float, False),
    "mbdask.report.slowest": (int, True),
    "mbdask.report.plotted-fragments": (int, True),
    "mbdask.report.pair-map-fragments": (int, True),
    "mbdask.xyz.bond-tolerance": (float, False),
}


def number(key: str) -> Any:
    """The numeric setting ``key`` as its type (:data:`NUMBERS`); a value that is not one is bad input.

    Settings come from users' YAML files and ``DASK_MBDASK__...`` variables: "abc", 8.5 for a
    count or a negative timeout is refused in one line naming the setting (exit code 2 on
    the command line), not met later as a traceback.
    """
    kind, zero_allowed = NUMBERS[key]
    value = get(key)
    try:
        if isinstance(value, bool):
            raise ValueError
        converted = kind(value)
        if converted != converted or (kind is int and float(value) != converted):
            raise ValueError
    except (TypeError, ValueError):
        raise BadInputError(
            f"Dask config {key}: {value!r} is not {'a whole number' if kind is int else 'a number'}"
        ) from None
    if converted < 0 or (converted == 0 and not zero_allowed):
        raise BadInputError(f"Dask config {key}: {value!r} must be {'at least' if zero_allowed else 'above'} 0")
    return converted


def check_numbers() -> None:
    """Read every numeric setting once (:func:`number`), so that a bad one stops a run before it starts."""
    for key in NUMBERS:
        number(key)


def get(key: str) -> Any:
    """The setting ``key`` (``"mbdask.worker-timeout"``...): the user's value, else mbdask.yaml's."""
    import dask.config

    load_defaults()
    return dask.config.get(key)
