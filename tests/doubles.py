"""Test doubles: QCEngine programs that are NOT chemistry, for testing and benchmarking the scheduler only.

The one place for them: tests import this module (tests/ is on pytest's path), benchmarks put
tests/ on ``sys.path`` first. Every double returns made-up numbers (or numbers replayed from
QCManyBody's stored data): none ever stands in for chemistry in a result anyone reads.

* ``replay``: returns QCManyBody's stored component data (``qcmanybody/tests/component_data``)
  for the fragment it is asked about, so graph and assembly can be checked against
  QCManyBody's expected values without a QC program.
* ``sleep``: sleeps ``keywords["seconds"][str(nbody)]`` seconds and returns a made-up
  energy; used to test ordering, streaming and failures. Optional keywords: ``log`` (a
  file to which each call appends its fragment label, to count calls across processes),
  ``fail`` (n-body orders that always fail), ``flaky`` (a directory: the first call of
  each fragment fails, later ones succeed) and ``gate`` (``{nbody: path}``: fragments of
  that order wait, after logging, until the file exists; a test holds them "running" for
  as long as it needs instead of guessing how long a sleep lasts on a busy machine).
* ``threads``: returns a made-up energy and, in its result's extras, the thread settings
  it saw inside the call (:func:`thread_settings`: BLAS/OpenMP pools and the thread
  environment variables); used to test that mbdask pins threads to the reserved cores.
* ``predicted-sleep`` (benchmarks/bench_makespan.py, bench_overhead.py): sleeps
  ``keywords["unit"] * nbf ** 3`` seconds, ``nbf`` the basis functions of every atom of the
  fragment, ghosts included (PySCF's basis library, as mbdask's cost model counts them),
  divided by the cores it was given when ``keywords["ideal_scaling"]`` is set; returns a
  made-up energy. It measures scheduling quality (makespan against its lower bound) without
  QC noise.

``replay``, ``sleep`` and ``threads`` read the fragment's indices from the molecule name that
QCManyBody's fragment builder writes (``"<parent> ([real0...],[ghost0...])"``). They are
registered with QCEngine's public :func:`qcengine.register_program` by :func:`register_doubles`
in the test process; worker processes get them with Dask's preload (``preload=["doubles"]``,
which calls :func:`dask_setup`).
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import re
import time
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import qcengine
from qcelemental.models.v2 import AtomicResult
from qcengine.programs.model import ProgramHarness
from qcmanybody.utils import labeler

_NAME = re.compile(r"\((\[[^\]]*\]),(\[[^\]]*\])\)$")

#: How long a gated fragment waits for its gate before failing (a test that never opens it).
GATE_TIMEOUT = 300.0


def fragment_indices(molecule) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """1-based real and basis fragments of a fragment molecule built by mbdask or QCManyBody."""
    match = _NAME.search(molecule.name or "")
    if not match:
        raise ValueError(f"molecule name {molecule.name!r} does not carry fragment indices")
    real = tuple(i + 1 for i in json.loads(match.group(1)))
    ghost = tuple(i + 1 for i in json.loads(match.group(2)))
    return real, tuple(sorted(set(real) | set(ghost)))


@functools.cache
def component_data(name: str) -> dict:
    from qcmanybody.tests.utils import load_component_data

    return load_component_data(name)


def _result(input_data, values: dict[str, Any], creator: str, extras: dict[str, Any] | None = None) -> AtomicResult:
    driver = input_data.specification.driver.value
    props = {f"return_{k}": v for k, v in values.items()}
    props["calcinfo_natom"] = len(input_data.molecule.symbols)
    return AtomicResult(
        input_data=input_data,
        molecule=input_data.molecule,
        properties=props,
        return_result=values[driver],
        success=True,
        extras=extras or {},
        provenance={"creator": creator, "version": "0", "routine": f"tests.doubles.{creator}"},
    )


class DoubleHarness(ProgramHarness):
    """Common settings of the test doubles (never chemistry): always found, thread safe, no scratch."""

    _defaults: ClassVar[dict[str, Any]] = {
        "name": "double",
        "scratch": False,
        "thread_safe": True,
        "thread_parallel": False,
        "node_parallel": False,
        "managed_memory": False,
    }

    @staticmethod
    def found(raise_error: bool = False) -> bool:
        return True


class ReplayHarness(DoubleHarness):
    """``replay``: QCManyBody's stored component data for the fragment asked about.

    A test double, not chemistry: it computes nothing, and its numbers are only ever compared
    with QCManyBody's expected values for the same stored data.
    """

    _defaults: ClassVar[dict[str, Any]] = {**DoubleHarness._defaults, "name": "replay"}

    def compute(self, input_data, config):
        real, basis = fragment_indices(input_data.molecule)
        spec = input_data.specification
        label = labeler(spec.model.method, real, basis)
        stored = component_data(spec.keywords["component_data"])[label]
        values = {k: (float(v) if k == "energy" else np.asarray(v)) for k, v in stored.items()}
        return _result(input_data, values, "replay")


class SleepHarness(DoubleHarness):
    """``sleep``: sleeps for a given time per n-body order and returns a made-up energy.

    A test double, not chemistry: its energies (``-n - 0.01 * sum(indices) ** 2``) and zero
    gradients exist to check ordering, streaming, stores and failures, never a physical result.
    """

    _defaults: ClassVar[dict[str, Any]] = {**DoubleHarness._defaults, "name": "sleep"}

    def compute(self, input_data, config):
        real, basis = fragment_indices(input_data.molecule)
        keywords = input_data.specification.keywords
        name = f"{list(real)}@{list(basis)}"
        if keywords.get("log"):
            with open(keywords["log"], "a") as log:
                log.write(name + "\n")
        if str(len(real)) in keywords.get("fail", []):
            raise RuntimeError(f"sleep double: told to fail on {len(real)}-body fragments")
        if keywords.get("flaky"):
            marker = Path(keywords["flaky"]) / name
            if not marker.exists():
                marker.touch()
                raise RuntimeError(f"sleep double: first attempt at {name} fails")
        gate = keywords.get("gate", {}).get(str(len(real)))
        if gate:
            wait_for_file(Path(gate))
        seconds = keywords.get("seconds", {}).get(str(len(real)), 0.0)
        time.sleep(seconds)
        natom = len(input_data.molecule.symbols)
        values = {"energy": -1.0 * len(real) - 0.01 * sum(real) ** 2, "gradient": np.zeros((natom, 3))}
        if input_data.specification.driver.value == "energy":
            values.pop("gradient")
        return _result(input_data, values, "sleep", {"ncores": config.ncores, "memory": config.memory})


def wait_for_file(path: Path, timeout: float = GATE_TIMEOUT) -> None:
    """Block until ``path`` exists (a gate the test opens); fail after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > end:
            raise RuntimeError(f"sleep double: gate {path} was never opened")
        time.sleep(0.01)


def thread_settings(load: tuple[str, ...] = ()) -> dict[str, Any]:
    """The thread settings this thread of this process runs with, after importing ``load``.

    ``pools``: every BLAS/OpenMP pool threadpoolctl finds (library file, API, threads);
    ``environment``: the variables that size such pools when a library loads
    (``*_NUM_THREADS``, ``VECLIB_MAXIMUM_THREADS``). Listed here rather than taken from
    mbdask, so that a variable mbdask forgot to set shows up as not pinned.
    """
    from threadpoolctl import threadpool_info

    for module in load:
        importlib.import_module(module)
    pools = [
        {"filepath": pool["filepath"], "user_api": pool["user_api"], "num_threads": pool["num_threads"]}
        for pool in threadpool_info()
    ]
    environment = {k: v for k, v in os.environ.items() if k.endswith("_NUM_THREADS") or k == "VECLIB_MAXIMUM_THREADS"}
    return {"pools": pools, "environment": environment}


class ThreadsHarness(DoubleHarness):
    """``threads``: reports the thread settings it sees inside the call, with a made-up energy.

    A test double, not chemistry: the energy is ``-n`` for an n-body fragment.

    The settings go to the result's extras (``extras["threads"]``, with QCEngine's
    ``ncores``), which come back with the input's ``protocols: {cluster_results: all}``.
    """

    _defaults: ClassVar[dict[str, Any]] = {**DoubleHarness._defaults, "name": "threads"}

    def compute(self, input_data, config):
        real, _ = fragment_indices(input_data.molecule)
        seen = {**thread_settings(), "ncores": config.ncores}
        return _result(input_data, {"energy": -1.0 * len(real)}, "threads", {"threads": seen})


class PredictedSleepHarness(DoubleHarness):
    """``predicted-sleep``: sleeps for the fragment's predicted cost and returns a made-up energy.

    A benchmark double, not chemistry: the energy is ``-0.1`` per real atom; what it measures is
    how well the scheduler packs the sleeps (makespan against its lower bound).
    """

    _defaults: ClassVar[dict[str, Any]] = {**DoubleHarness._defaults, "name": "predicted-sleep"}

    def compute(self, input_data, config):
        from mbdask.programs.basis import basis_functions

        spec = input_data.specification
        nbf = sum(basis_functions(s, spec.model.basis) for s in input_data.molecule.symbols)
        seconds = float(spec.keywords.get("unit", 1e-7)) * nbf**3
        if spec.keywords.get("ideal_scaling"):  # pretend the program scales perfectly with cores
            seconds /= max(1, int(config.ncores))
        time.sleep(seconds)
        nreal = sum(input_data.molecule.real)
        return _result(input_data, {"energy": -0.1 * nreal}, "predicted-sleep", {"slept": seconds})


#: Every double, as registered with QCEngine.
DOUBLES = (ReplayHarness, SleepHarness, ThreadsHarness, PredictedSleepHarness)


def register_doubles() -> None:
    """Register every double with QCEngine (:func:`qcengine.register_program`); those already there are kept."""
    registered = qcengine.list_all_programs()
    for harness in DOUBLES:
        if harness._defaults["name"] not in registered:
            qcengine.register_program(harness())


def dask_setup(worker=None) -> None:
    """Dask preload hook: register the doubles in a worker process."""
    register_doubles()
