"""The workers as mbdask sees them before it sends a graph: what they can run, and what each fragment gets of them.

:func:`check_workers` refuses, before anything is sent, workers that cannot import mbdask or
lack a QC program the plan needs (a remote cluster's environment may differ from this
one's), and warns where Dask's malloc setting slows QC programs down.
:func:`fragment_resources` turns what the workers declare (threads, ``cores`` and ``memory``
resources, memory limits) into what each fragment reserves, refusing a fragment no worker
could ever hold rather than leaving it waiting.
"""

from __future__ import annotations

import math
import pkgutil
import warnings
import weakref
from collections.abc import Collection
from typing import TYPE_CHECKING

from mbdask.deploy.worker_environment import startup_environment
from mbdask.errors import BadInputError
from mbdask.graph.build import FragmentResources
from mbdask.planning.batching import BatchLimits
from mbdask.planning.plan import Plan

if TYPE_CHECKING:
    from distributed import Client


def fragment_resources(
    worker_info: list[dict], cores: int, memory_gib: float | None, *, auto_cores: bool = False
) -> FragmentResources:
    """Decide what each fragment reserves, from what the workers declare.

    Cores become a resource restriction only where a worker thread is not already one
    core's worth of work (more than one core per fragment, cost-based cores, or workers
    with more threads than declared cores); otherwise the thread limit does the same job
    and the scheduler's queue keeps handing out work in priority order. Memory is a
    restriction when the caller sets it and the workers declare it. A fragment that no
    worker could ever hold is refused now rather than left waiting. ``worker_info`` as
    :func:`mbdask.deploy.cluster.worker_resources` gives them.
    """
    if not worker_info:
        raise BadInputError("the Dask cluster has no workers")
    declared_cores = all("cores" in w["resources"] for w in worker_info)
    if (cores > 1 or auto_cores) and not declared_cores:
        # without a 'cores' resource Dask runs a task per thread: two 2-core fragments would share a worker's threads
        wanted = "'auto' cores" if auto_cores else f"{cores} cores"
        raise BadInputError(
            f"fragments with {wanted} need workers that declare a 'cores' resource, and some of these do not; "
            "start them with e.g. `dask worker ADDRESS --nthreads 8 --resources cores=8` (dask-jobqueue: "
            "worker_extra_args=['--resources', 'cores=8']), or use cores_per_fragment=1"
        )
    declared_memory = all("memory" in w["resources"] for w in worker_info)
    one_thread_one_core = all(w["nthreads"] <= w["resources"].get("cores", 0) for w in worker_info)
    annotate_cores = declared_cores and (cores > 1 or auto_cores or not one_thread_one_core)
    annotate_memory = declared_memory and memory_gib is not None
    if memory_gib is None:
        shares = [w["memory_limit"] / max(1, w["nthreads"]) for w in worker_info if w["memory_limit"]]
        # rounded down, so that the reservation never exceeds what the worker declares
        memory_gib = math.floor(min(shares) * cores / 2**30 * 1000) / 1000 if shares else None
    if declared_cores and not any(w["resources"]["cores"] >= cores for w in worker_info):
        most = max(w["resources"]["cores"] for w in worker_info)
        raise BadInputError(f"each fragment asks for {cores} cores but no worker has more than {most}")
    if declared_memory and memory_gib and not any(w["resources"]["memory"] >= memory_gib * 2**30 for w in worker_info):
        most = max(w["resources"]["memory"] for w in worker_info) / 2**30
        raise BadInputError(f"each fragment asks for {memory_gib:.2f} GiB but no worker has more than {most:.2f} GiB")
    return FragmentResources(cores, memory_gib, annotate_cores, annotate_memory)


def check_fragment_memory(plan: Plan, memory_gib: float | None) -> None:
    """Refuse, before anything runs, a calculation whose program needs more memory than a fragment gets.

    Per model chemistry, the calculation with the most basis functions is the one that needs
    the most (:func:`mbdask.programs.memory_needed_gib`); it is named in the message, so the
    chemist sees which cluster, basis and method would not fit. Left to run, it would fail
    or take the worker down with it (Dask's memory monitor kills a worker at 95% of its limit).
    """
    if memory_gib is None:
        return
    from mbdask.programs import PROGRAMS_WITH_MEMORY_ESTIMATES, memory_needed_gib
    from mbdask.programs.basis import fragment_basis_functions

    molecule = plan.input.molecule
    symbols = list(molecule.symbols)
    numbers = list(molecule.atomic_numbers)
    charges = list(molecule.fragment_charges)
    for model, spec in plan.specifications.items():
        basis = (spec["specification"]["model"].get("basis") or "").strip()
        if spec["program"] not in PROGRAMS_WITH_MEMORY_ESTIMATES or not basis:
            continue
        functions = fragment_basis_functions(symbols, molecule.fragments, basis)
        if functions is None:  # a basis PySCF's library lacks: the program check says so
            continue
        electrons = [sum(numbers[a] for a in atoms) - charge for atoms, charge in zip(molecule.fragments, charges)]
        largest = max(
            (job for job in plan.jobs if job.model == model), key=lambda job: sum(functions[i - 1] for i in job.basis)
        )
        nbasis = sum(functions[i - 1] for i in largest.basis)
        nocc = int(sum(electrons[i - 1] for i in largest.real) + 1) // 2
        needed = memory_needed_gib(spec["program"], spec["specification"], nbasis, nocc)
        if needed is not None and needed > memory_gib:
            ghosts = sorted(set(largest.basis) - set(largest.real))
            where = f"fragments {list(largest.real)}" + (f" with ghosts {ghosts}" if ghosts else "")
            raise BadInputError(
                f"model '{model}': {where} ({nbasis} basis functions) needs about {needed:.2f} GiB but a fragment "
                f"calculation gets {memory_gib:.2f} GiB; give more (memory_per_fragment, --memory-per-fragment) "
                "or fewer workers per machine, or a smaller basis"
            )


def worker_setup() -> dict:
    """Run on each worker: QCEngine programs it can run (mbdask's harnesses registered), and its malloc setting."""
    import qcengine

    from mbdask.programs import register_programs

    register_programs()
    return {
        "programs": sorted(qcengine.list_available_programs()),
        "malloc_trim": startup_environment().get("MALLOC_TRIM_THRESHOLD_"),
    }


def check_workers(client: Client, plan: Plan, also: Collection[str] = ()) -> None:
    """Refuse before submission if some worker lacks mbdask or a program (a remote cluster's environment may differ).

    Warn where workers run with ``MALLOC_TRIM_THRESHOLD_`` (Dask's nanny sets it), which
    slows QC programs down (see :data:`mbdask.deploy.worker_environment.DROPPED_WORKER_ENVIRONMENT`).
    """
    _check_workers_import_mbdask(client)
    needed = {plan.program(m) for m in plan.models} | set(also)
    trims = set()
    for address, setup in client.run(worker_setup).items():
        missing = sorted(needed - set(setup["programs"]))
        if missing:
            raise BadInputError(f"worker {address} cannot run {', '.join(missing)} (not installed in its environment)")
        if setup["malloc_trim"] is not None:
            trims.add(setup["malloc_trim"])
    if trims:
        _warn_malloc_trim(client, trims)


def check_programs_here(programs: Collection[str]) -> None:
    """Refuse programs this process cannot run (for workers forked from it)."""
    missing = sorted(set(programs) - set(worker_setup()["programs"]))
    if missing:
        raise BadInputError(f"{', '.join(missing)} cannot run here (not installed in this environment)")


def _check_workers_import_mbdask(client: Client) -> None:
    """Refuse, naming the workers and what their import says, where workers cannot import mbdask.

    Every mbdask task (and :func:`worker_setup`) reaches a worker pickled by reference to
    mbdask's modules, so such a worker fails to unpickle each one with Dask's bare
    ``Exception: ModuleNotFoundError``. :func:`pkgutil.resolve_name` is the standard
    library's, so it unpickles anywhere: it imports this module there (what unpickling
    :func:`worker_setup` imports, QCManyBody and the other dependencies included) and
    returns its name, or the import's exception (``on_error="return"``).
    """
    results = client.run(pkgutil.resolve_name, f"{__name__}:__name__", on_error="return")
    failed = {address: exc for address, exc in results.items() if isinstance(exc, BaseException)}
    if not failed:
        return
    addresses = sorted(failed)
    shown = ", ".join(addresses[:3]) + (f" and {len(addresses) - 3} more" if len(addresses) > 3 else "")
    who = f"worker {shown}" if len(addresses) == 1 else f"{len(addresses)} of {len(results)} workers ({shown})"
    exc = failed[addresses[0]]
    raise BadInputError(
        f"{who} cannot import mbdask ({type(exc).__name__}: {exc}); install mbdask and its dependencies in the "
        "workers' environment"
    )


#: Clients already warned about ``MALLOC_TRIM_THRESHOLD_``: once per client is enough.
_MALLOC_TRIM_WARNED: weakref.WeakSet[Client] = weakref.WeakSet()


def _warn_malloc_trim(client: Client, trims: set[str]) -> None:
    """Warn once per client, in one line, that the workers' malloc setting slows QC programs down.

    ``warnings.warn`` would print a second line, the source line of whatever user frame it
    blames; the setting belongs to the workers, not to a line of code, so the warning is
    issued with ``warn_explicit`` at a pseudo-location whose source cannot be shown. It is
    still an ordinary ``UserWarning`` from module ``mbdask.deploy.workers`` for filters and
    ``pytest.warns``.
    """
    if client in _MALLOC_TRIM_WARNED:
        return
    _MALLOC_TRIM_WARNED.add(client)
    message = (
        f"mbdask: workers run with MALLOC_TRIM_THRESHOLD_={', '.join(sorted(trims))}, which makes QC programs slower "
        "(xtb about 1.7x); set distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_ to null in the workers' "
        "Dask configuration (see the HPC page of the docs), or make a local cluster with mbdask.local_cluster() "
        "instead of LocalCluster()"
    )
    warnings.warn_explicit(message, UserWarning, filename="<dask workers>", lineno=0, module=__name__)


def worker_cores(worker: dict) -> int:
    """Cores of one worker: what it declares, else its threads."""
    return worker["resources"].get("cores", worker["nthreads"])


def total_cores(worker_info: list[dict]) -> int:
    """Cores of the cluster: what each worker declares, else its threads."""
    return sum(worker_cores(w) for w in worker_info)


def increment_tasks(worker_info: list[dict]) -> int:
    """Increment nodes per n-body level: a few per core, enough to stream, few enough to cost nothing."""
    return BatchLimits.from_config().units_per_worker * sum(w["nthreads"] for w in worker_info)
