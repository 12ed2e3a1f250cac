"""What a worker runs for one fragment: one QCEngine call with pinned threads and memory.

The function returns a small dict (energy, gradient, Hessian, timings) rather than the
whole ``AtomicResult``: what travels per task matters as much as the order. The full
result rides along only when the input's protocol asks for ``cluster_results: all``.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import qcengine
from qcelemental.models.v2 import AtomicInput, Molecule
from qcmanybody.models.v2 import ManyBodyInput
from threadpoolctl import ThreadpoolController

from mbdask import config
from mbdask.calculation.engine import ProgramRunner, fill_machine_info
from mbdask.calculation.fragments import FragmentFactory, deepcopy_plain
from mbdask.calculation.store import GEOMETRY_DECIMALS, identity_key, identity_parts
from mbdask.errors import FragmentFailedError
from mbdask.planning.plan import FragmentJob
from mbdask.programs import with_program_defaults

_warm_lock = threading.Lock()
_warm = False


def warm_up() -> None:
    """Fill QCEngine's process-global machine information once, under a lock.

    QCEngine fills it lazily and not thread-safely: two threads making their first
    ``qcengine.compute`` at the same moment can raise ``KeyError('cpu_brand')``.
    """
    global _warm
    if _warm:
        return
    with _warm_lock:
        if not _warm:
            from mbdask.programs import register_programs

            register_programs()
            fill_machine_info()
            qcengine.get_config()
            qcengine.config.get_provenance_augments()
            _warm = True


_THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)


_controller: ThreadpoolController | None = None
_controller_modules = -1


def _thread_pools() -> ThreadpoolController:
    """The process's BLAS/OpenMP pools, found again only when new modules were imported.

    Finding them walks every loaded shared library (about 1.6 ms, as long as an xtb
    fragment's own work); they change only when a program loads its libraries, which
    comes with importing its Python modules. A library loaded without that still starts
    with the pinned count, from the environment variables set around each call.
    """
    global _controller, _controller_modules
    if _controller is None or len(sys.modules) != _controller_modules:
        _controller_modules = len(sys.modules)
        _controller = ThreadpoolController()
    return _controller


_pin_lock = threading.Lock()
#: cores of each calculation pinned now in this process (several with multi-threaded workers)
_pinned_now: list[int] = []
#: what the first of them found: the thread variables, and threadpoolctl's limiter to undo
_pin_saved: tuple[dict[str, str | None], Any] | None = None


def _pin(ncores: int) -> None:
    """Set the process's pools and thread variables to ``ncores`` (called under ``_pin_lock``)."""
    global _pin_saved
    value = str(int(ncores))
    limiter = _thread_pools().limit(limits=int(ncores))
    if _pin_saved is None:
        _pin_saved = ({name: os.environ.get(name) for name in _THREAD_VARIABLES}, limiter)
    os.environ.update({name: value for name in _THREAD_VARIABLES})


def _unpin() -> None:
    """Back to what the first pinned calculation found (called under ``_pin_lock`` when the last one ends)."""
    global _pin_saved
    if _pin_saved is None:
        return
    saved, limiter = _pin_saved
    _pin_saved = None
    limiter.restore_original_limits()
    for name, old in saved.items():
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


@contextlib.contextmanager
def pinned_threads(ncores: int) -> Iterator[None]:
    """Limit BLAS/OpenMP pools to ``ncores`` for the duration of one calculation.

    threadpoolctl limits the libraries already loaded; the environment variables cover
    libraries a program loads during its first call (they read them at load time).

    Pools and environment belong to the whole process, while a worker with several threads
    runs several calculations at once. So the settings are counted: the first calculation
    saves what it found, each one sets the largest count among those running (a pool
    cannot be smaller for one thread than for another), and only the last one to finish
    restores the original, so that no calculation finds its pools reset under it.
    """
    with _pin_lock:
        _pinned_now.append(int(ncores))
        _pin(max(_pinned_now))
    try:
        yield
    finally:
        with _pin_lock:
            _pinned_now.remove(int(ncores))
            if _pinned_now:
                _pin(max(_pinned_now))
            else:
                _unpin()


@dataclass
class ExpansionContext:
    """What every fragment task needs besides its own indices; one graph node, sent once per worker.

    It holds no checkpoint store: the client alone reads and writes the store
    (:class:`mbdask.calculation.store.StoreWriter`); the client uses :meth:`store_key` for its keys.
    """

    input: ManyBodyInput
    specifications: dict[str, dict]
    keep_cluster_results: bool
    #: cores of the whole cluster when the graph was built (for the report's utilization)
    cluster_cores: int | None = None

    @cached_property
    def factory(self) -> FragmentFactory:
        return FragmentFactory(self.input.molecule)

    def atomic_input(self, model: str, molecule: Molecule) -> AtomicInput:
        """The ``AtomicInput`` of ``molecule`` with model chemistry ``model``.

        As QCManyBody's ``ManyBodyComputer`` builds it, with a deep copy of the
        specification (a harness may change its input's keywords in place), made by
        :func:`~mbdask.calculation.fragments.deepcopy_plain` (the specification is plain data), and the
        program's :data:`~mbdask.programs.PROGRAM_DEFAULT_KEYWORDS` where the user set none.
        """
        spec = self.specifications[model]
        return AtomicInput(
            molecule=molecule,
            specification=with_program_defaults(spec["program"], deepcopy_plain(spec["specification"])),
        )

    def store_key(self, job: FragmentJob) -> str:
        """The checkpoint-store key of ``job`` (see :mod:`mbdask.store`)."""
        parts = self._identity_parts.get(job.model)
        if parts is None:
            spec = self.specifications[job.model]
            parts = self._identity_parts[job.model] = identity_parts(spec["program"], spec["specification"])
        return identity_key(parts, self.factory.identity_json(job.real, job.basis, GEOMETRY_DECIMALS))

    @cached_property
    def _identity_parts(self) -> dict[str, tuple[str, str]]:
        """Per model chemistry, its store keys' JSON around the molecule.

        :func:`mbdask.calculation.store.identity_parts` makes them."""
        return {}

    @cached_property
    def driver(self) -> str:
        return self.input.specification.driver.value

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        for cached in ("factory", "driver", "_identity_parts"):
            state.pop(cached, None)
        return state


@dataclass(frozen=True)
class SharedContext:
    """An :class:`ExpansionContext` the scheduler keeps (a ``distributed.Variable`` holding it pickled),
    named in tasks instead of passed as data: each worker process fetches it once, at its first
    task of the expansion (:func:`resolve_context`).

    Why not a node of the graph or scattered data: a task goes only to workers holding its
    dependencies, so a context on one worker draws the fragment tasks there (see
    :func:`mbdask.graph.build.build_graph`), and scattered data is lost for good when every worker
    leaves. A context the scheduler keeps is neither a dependency nor lost with a worker.
    """

    name: str

    def publish(self, ctx: ExpansionContext, client: Any) -> SharedContext:
        """Give ``ctx`` to the scheduler under this name; returns self, for the tasks."""
        import pickle

        from distributed import Variable

        Variable(self.name, client=client).set(pickle.dumps(ctx, protocol=pickle.HIGHEST_PROTOCOL))
        return self

    def withdraw(self, client: Any) -> None:
        """Drop the context from the scheduler (the expansion has ended)."""
        from distributed import Variable

        with contextlib.suppress(Exception):
            Variable(self.name, client=client).delete()


#: Contexts this process fetched, by name, the most recent last (a worker serves few expansions at once).
_FETCHED: dict[str, ExpansionContext] = {}
_FETCHED_KEPT = 8


def resolve_context(ctx: Any) -> ExpansionContext:
    """``ctx`` itself, or for a :class:`SharedContext` the context it names.

    That one is fetched from the scheduler once per process."""
    if not isinstance(ctx, SharedContext):
        return ctx
    found = _FETCHED.get(ctx.name)
    if found is None:
        import pickle

        from distributed import Variable, get_client

        found = pickle.loads(
            Variable(ctx.name, client=get_client()).get(timeout=config.number("mbdask.context-timeout"))
        )
        _FETCHED[ctx.name] = found
        while len(_FETCHED) > _FETCHED_KEPT:
            _FETCHED.pop(next(iter(_FETCHED)))
    return found


def _worker_name() -> str:
    try:
        from distributed import get_worker

        return get_worker().address
    except ValueError:
        return socket.gethostname()


def extract_properties(result: Any, driver: str) -> dict[str, Any]:
    """Energy/gradient/Hessian of an ``AtomicResult``, the way QCManyBody reads them.

    Some harnesses (xtb) leave ``properties.return_gradient`` empty and put the driver's
    quantity only in ``return_result``; take it from there when the property is missing.
    """
    values: dict[str, Any] = {}
    for prop in ("energy", "gradient", "hessian"):
        value = getattr(result.properties, f"return_{prop}", None)
        if value is None and prop == driver:
            value = result.return_result
        if value is not None:
            values[prop] = float(value) if prop == "energy" else np.asarray(value, dtype=float)
    return values


def check_success(result: Any, job: FragmentJob, program: str) -> None:
    """Raise ``FragmentFailedError`` unless ``result`` is a successful result."""
    if not getattr(result, "success", False):
        error = getattr(result, "error", None)
        raise FragmentFailedError(
            job.model,
            job.real,
            job.basis,
            program,
            getattr(error, "error_type", "unknown_error"),
            getattr(error, "error_message", str(result)),
        )


@dataclass
class UnitState:
    """What the fragments of one unit (one Dask task) share, found once per unit.

    The program runner (QCEngine harness and ``TaskConfig``: see
    :class:`mbdask.calculation.engine.ProgramRunner`) and the worker's name (Dask's ``get_worker``,
    then the host name outside a worker) cannot change while a unit runs. Results go
    through QCEngine's provenance step only when they are kept (``keep_results``):
    otherwise only their numbers are read, which that step leaves as they are.
    """

    runner: ProgramRunner
    worker: str
    ncores: int
    keep_results: bool

    @classmethod
    def start(cls, ctx: ExpansionContext, ncores: int, memory_gib: float | None) -> UnitState:
        return cls(ProgramRunner(int(ncores), memory_gib), _worker_name(), int(ncores), ctx.keep_cluster_results)

    def output(self, job: FragmentJob, values: dict[str, Any], result: Any, start: float, stop: float) -> dict:
        """What a fragment's task returns: its numbers, when and where it ran, and the result if kept."""
        output = {
            "label": job.label,
            "values": values,
            "start": start,
            "stop": stop,
            "worker": self.worker,
            "ncores": self.ncores,
        }
        if self.keep_results:
            output["result"] = result
        return output


def run_fragment(ctx: ExpansionContext, job: FragmentJob, ncores: int = 1, memory_gib: float | None = None) -> dict:
    """Run one fragment calculation and return its numbers; raise ``FragmentFailedError`` on failure.

    BLAS/OpenMP thread pools are limited to ``ncores`` for the duration of the call, and the
    same ``ncores``/``memory`` go to QCEngine's ``task_config``, so the program uses exactly
    what the task's resource annotation reserved.
    """
    with pinned_threads(int(ncores)):
        return _run_pinned(ctx, job, UnitState.start(ctx, ncores, memory_gib))


def _run_pinned(ctx: ExpansionContext, job: FragmentJob, unit: UnitState) -> dict:
    """``run_fragment`` inside an already pinned thread pool (pinning costs ~1.5 ms per call)."""
    begun = time.time()
    warm_up()
    program = ctx.specifications[job.model]["program"]
    atomic_input = ctx.atomic_input(job.model, ctx.factory.molecule(job.real, job.basis))
    start = time.time()
    result = unit.runner(atomic_input, program, provenance=unit.keep_results)
    stop = time.time()
    check_success(result, job, program)
    output = unit.output(job, extract_properties(result, ctx.driver), result, start, stop)
    # mbdask's own time around the program call (molecule, input, result): ``--profile`` reports it
    output["own"] = (start - begun) + (time.time() - stop)
    return output


def run_unit(
    ctx: ExpansionContext,
    jobs: Sequence[FragmentJob],
    ncores: int = 1,
    memory_gib: float | None = None,
    known: dict[str, dict] | None = None,
    predicted: Sequence[float] = (),
) -> dict[str, dict]:
    """Run a batch of fragments one after another; returns their outputs by label.

    Cheap fragments travel in batches so that Dask's per-task cost stays small beside the
    work. Outputs already known (found in the store when the graph was built) are passed
    through. Nothing here touches the checkpoint store: the client writes the outputs it
    receives (:class:`mbdask.calculation.store.StoreWriter`).
    ``predicted`` (seconds per job, from the cost model) is recorded beside the measured time.
    """
    ctx = resolve_context(ctx)
    with pinned_threads(int(ncores)):
        outputs = _run_unit_pinned(ctx, jobs, UnitState.start(ctx, ncores, memory_gib), known or {})
    for job, seconds in zip(jobs, predicted):
        outputs[job.label]["predicted"] = seconds
    return outputs


def _run_unit_pinned(
    ctx: ExpansionContext, jobs: Sequence[FragmentJob], unit: UnitState, known: dict
) -> dict[str, dict]:
    outputs: dict[str, dict] = {}
    for job in jobs:
        if job.label in known:
            outputs[job.label] = known[job.label]
            continue
        outputs[job.label] = _run_pinned(ctx, job, unit)
    return outputs
