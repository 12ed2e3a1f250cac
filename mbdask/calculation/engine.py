"""One QCEngine program call, with the costs that cannot change inside a worker paid once.

``qcengine.compute`` rebuilds its ``TaskConfig`` (a pydantic-settings model that re-reads
the environment and looks for ``.env`` files) on every call: about 2 ms, a third of an
xtb fragment. And the first call in a process runs py-cpuinfo in a subprocess (about 1.1 s,
most of it measuring the clock) only to write the CPU's name into provenance; every
worker pays it. mbdask runs thousands of calls per worker with the same ``ncores`` and
``memory``, so:

* :func:`run_program` is ``qcengine.compute`` for one ``AtomicInput`` and one program
  (:func:`mbdask.upstream.qcengine_compute`, made from QCEngine's own parts) with the
  harness from ``qcengine.get_program`` and the ``TaskConfig`` from ``qcengine.get_config``,
  cached per (ncores, memory, ``QCENGINE_*`` environment). Results, failures and
  provenance are QCEngine's; tests compare the two. :class:`ProgramRunner` does the same for the
  fragments of one unit, looking the harness and config up once, and skips QCEngine's
  provenance (a dump and validation of the whole result) for results whose numbers
  alone are kept.
* :func:`fill_machine_info` fills QCEngine's machine cache with the CPU name read from
  ``/proc/cpuinfo`` (what py-cpuinfo reports on Linux) instead of starting py-cpuinfo
  (:func:`mbdask.upstream.fill_qcengine_machine_info`). Where that name is not found,
  QCEngine's own path runs.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator
from typing import Any

import qcengine
from qcelemental.models.v2 import AtomicInput
from qcengine.programs.model import ProgramHarness

from mbdask.upstream import (
    QCENGINE_LOCAL_CONFIG,
    QCENGINE_THREAD_VARIABLES,
    fill_qcengine_machine_info,
    qcengine_compute,
    qcengine_environment,
)


def _qcengine_environment() -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith("QCENGINE_")))


def _task_options(ncores: int, memory_gib: float | None) -> dict[str, Any]:
    """What mbdask gives QCEngine's ``task_config``: cores, memory if set, no QCEngine retries (Dask retries)."""
    options: dict[str, Any] = {"ncores": int(ncores), "retries": 0}
    if memory_gib:
        options["memory"] = float(memory_gib)
    return options


@functools.lru_cache(maxsize=32)
def _cached_task_config(ncores: int, memory_gib: float | None, environment: tuple) -> Any:
    return qcengine.get_config(task_config=_task_options(ncores, memory_gib))


def task_config(ncores: int, memory_gib: float | None = None) -> Any:
    """QCEngine's ``TaskConfig`` for ``ncores`` and ``memory_gib``, built once per process and environment."""
    return _cached_task_config(int(ncores), float(memory_gib) if memory_gib else None, _qcengine_environment())


class ProgramRunner:
    """``run_program`` for the calls of one unit: same ``ncores``/``memory``, harness and config found once.

    ``run_program`` finds the ``TaskConfig`` (reading the ``QCENGINE_*`` environment,
    about 20 us) and the harness (``get_program`` asks the program's ``found()``: xtb's
    looks for its Python module, about 40 us) per call; a unit's fragments share them.
    Both are looked up inside QCEngine's ``compute_wrapper`` on first use
    (:func:`mbdask.upstream.qcengine_compute`), so that a missing program still comes back
    as a ``FailedOperation`` (and is looked up again by the next call), as from
    ``qcengine.compute``.
    """

    def __init__(self, ncores: int = 1, memory_gib: float | None = None):
        self.ncores = int(ncores)
        self.memory_gib = memory_gib
        self._config: Any = None
        self._harnesses: dict[str, ProgramHarness] = {}

    def _harness(self, program: str) -> tuple[ProgramHarness, Any]:
        if self._config is None:
            self._config = task_config(self.ncores, self.memory_gib)
        harness = self._harnesses.get(program)
        if harness is None:
            harness = self._harnesses[program] = qcengine.get_program(program)
        return harness, self._config

    def __call__(self, atomic_input: AtomicInput, program: str, *, provenance: bool = True) -> Any:
        """The ``AtomicResult`` or ``FailedOperation`` of ``program`` on ``atomic_input`` (see :func:`run_program`).

        ``provenance=False`` is for callers that read only the numbers of a result:
        a successful ``AtomicResult`` then comes back as the harness made it, without
        QCEngine's provenance step (see :func:`mbdask.upstream.qcengine_compute`; about 0.1 ms
        per xtb fragment). Its values are the same objects either way. Failures are always
        returned as ``qcengine.compute`` returns them.
        """
        if QCENGINE_LOCAL_CONFIG in atomic_input.specification.extras:
            return qcengine.compute(
                atomic_input, program, raise_error=False, task_config=_task_options(self.ncores, self.memory_gib)
            )
        return qcengine_compute(atomic_input, program, self._harness, thread_environment, provenance=provenance)


@contextlib.contextmanager
def thread_environment(config: Any) -> Iterator[None]:
    """QCEngine's ``environ_context(config=config)``, without writing what is already there.

    Upstream (qcengine 0.52.0) sets ``OMP_NUM_THREADS`` and ``MKL_NUM_THREADS`` to
    ``config.ncores`` for the call and restores them afterwards: four writes to the
    environment per fragment. mbdask's ``pinned_threads`` has set both to that value for
    the whole unit, so here they are only checked, and put back if the program changed
    them: the environment is the same as upstream's during and after the call.
    """
    value = str(config.ncores)
    if any(os.environ.get(name) != value for name in QCENGINE_THREAD_VARIABLES):
        with qcengine_environment(config):
            yield
        return
    try:
        yield
    finally:
        for name in QCENGINE_THREAD_VARIABLES:
            if os.environ.get(name) != value:
                os.environ[name] = value


def run_program(atomic_input: AtomicInput, program: str, ncores: int = 1, memory_gib: float | None = None) -> Any:
    """``qcengine.compute(atomic_input, program, task_config={ncores, memory, retries: 0})``, config cached.

    Returns the ``AtomicResult``, or a ``FailedOperation`` (never raises for a failed
    calculation), exactly as ``qcengine.compute(..., raise_error=False)`` does. Many calls
    with the same ``ncores``/``memory`` share a :class:`ProgramRunner` instead.
    """
    return ProgramRunner(ncores, memory_gib)(atomic_input, program)


def cpu_name() -> str | None:
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
    fill_qcengine_machine_info(cpu_name())
