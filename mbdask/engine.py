"""One QCEngine program call, with the costs that cannot change inside a worker paid once.

``qcengine.compute`` rebuilds its ``TaskConfig`` (a pydantic-settings model that re-reads
the environment and looks for ``.env`` files) on every call: about 2 ms, a third of an
xtb fragment. And the first call in a process runs py-cpuinfo in a subprocess (about 1.1 s,
most of it measuring the clock) only to write the CPU's name into provenance; every
worker pays it. mbdask runs thousands of calls per worker with the same ``ncores`` and
``memory``, so:

* :func:`run_program` is ``qcengine.compute`` for one ``AtomicInput`` and one program,
  made from QCEngine's own parts (``get_program``, ``compute_wrapper``,
  ``environ_context``, ``handle_output_metadata``) with the ``TaskConfig`` cached per
  (ncores, memory, ``QCENGINE_*`` environment). Results, failures and provenance are
  QCEngine's; tests compare the two.
* :func:`fill_machine_info` fills QCEngine's machine cache with the CPU name read from
  ``/proc/cpuinfo`` (what py-cpuinfo reports on Linux) instead of starting py-cpuinfo.
  Where that name is not found, QCEngine's own path runs.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Optional
from unittest import mock

import qcengine
from qcelemental.models.v2 import AtomicInput
from qcengine.util import compute_wrapper, environ_context, handle_output_metadata

#: What a spec's extras may carry for QCEngine's task config (then the plain path runs).
_LOCAL_CONFIG = "_qcengine_local_config"


def _qcengine_environment() -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith("QCENGINE_")))


def _task_options(ncores: int, memory_gib: Optional[float]) -> dict[str, Any]:
    """What mbdask gives QCEngine's ``task_config``: cores, memory if set, no QCEngine retries (Dask retries)."""
    options: dict[str, Any] = {"ncores": int(ncores), "retries": 0}
    if memory_gib:
        options["memory"] = float(memory_gib)
    return options


@functools.lru_cache(maxsize=32)
def _cached_task_config(ncores: int, memory_gib: Optional[float], environment: tuple) -> Any:
    return qcengine.get_config(task_config=_task_options(ncores, memory_gib))


def task_config(ncores: int, memory_gib: Optional[float] = None) -> Any:
    """QCEngine's ``TaskConfig`` for ``ncores`` and ``memory_gib``, built once per process and environment."""
    return _cached_task_config(int(ncores), float(memory_gib) if memory_gib else None, _qcengine_environment())


def run_program(atomic_input: AtomicInput, program: str, ncores: int = 1, memory_gib: Optional[float] = None) -> Any:
    """``qcengine.compute(atomic_input, program, task_config={ncores, memory, retries: 0})``, config cached.

    Returns the ``AtomicResult``, or a ``FailedOperation`` (never raises for a failed
    calculation), exactly as ``qcengine.compute(..., raise_error=False)`` does.
    """
    if _LOCAL_CONFIG in atomic_input.specification.extras:
        return qcengine.compute(atomic_input, program, raise_error=False, task_config=_task_options(ncores, memory_gib))
    output: Any = atomic_input
    with compute_wrapper(capture_output=False, raise_error=False) as metadata:
        config = task_config(ncores, memory_gib)
        executor = qcengine.get_program(program)
        with environ_context(config=config):
            output = executor.compute(atomic_input, config)
    if not metadata["success"]:
        output = atomic_input  # as qcengine.compute does for QCSchema v2 inputs
    return handle_output_metadata(output, metadata, raise_error=False, return_dict=False, convert_version=2)


def cpu_name() -> Optional[str]:
    """The CPU's model name from ``/proc/cpuinfo`` (Linux), or None."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Processor", "cpu model") and value.strip():
                    return value.strip()
    except OSError:
        pass
    return None


def fill_machine_info() -> None:
    """Fill QCEngine's per-process machine information without starting py-cpuinfo, where the CPU name is known."""
    name = cpu_name()
    if name is None:
        qcengine.config.get_global()
        return
    with mock.patch("cpuinfo.get_cpu_info", lambda: {"brand_raw": name}):
        qcengine.config.get_global()
