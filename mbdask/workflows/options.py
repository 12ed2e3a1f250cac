"""The options an expansion runs with, checked in one place, apart from where its cluster comes from.

:class:`RunOptions` holds how the fragments run (cores and memory each, retries, order,
batching, the checkpoint store, keep-going, progress, screening, the program check, the
worker timeout); :class:`ClusterOptions` holds how the LocalCluster mbdask starts is sized
and how a scheduler is reached. ``start``, ``submit``, ``compute``, the many-structure
functions and ``optimize`` take ``options=RunOptions(...)``, or the same names as keywords
(what release 0.1 took, and still the short way to change one option): :func:`split_keywords`
sorts a call's keywords into the two, and refuses a name neither knows as Python refuses
an unknown keyword. The command line builds a :class:`RunOptions` from its arguments.

This module imports nothing heavy: the package root exports :class:`RunOptions` and the
command line reads it before any cluster starts.
"""

from __future__ import annotations

import dataclasses
import numbers
import os
from collections.abc import Collection, Mapping
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from mbdask.errors import BadInputError

if TYPE_CHECKING:
    from mbdask.calculation.store import FragmentStore
    from mbdask.planning.screening import ScreeningLike

    StoreLike = str | os.PathLike | FragmentStore | None


@dataclass(frozen=True)
class RunOptions:
    """How an expansion runs: every option of :func:`mbdask.start` except where the cluster comes from.

    Checked when made: an impossible value is a :class:`~mbdask.errors.BadInputError` of one
    line, before anything is planned or started. ``RunOptions(retries=2)`` is what
    ``start(..., retries=2)`` means; keywords given beside ``options=`` change those fields
    (:meth:`replace`). Frozen, so one object can serve many calls.
    """

    #: threads each QC call may use (and reserves); "auto" gives 1 core to most fragments and more
    #: to those predicted to finish the run alone
    cores_per_fragment: int | str = 1
    #: GiB per QC call (None: the worker's memory per thread times its cores)
    memory_per_fragment: float | None = None
    #: Dask retries per fragment before the run fails
    retries: int = 0
    #: "levels" (n-body orders complete one after another, longest first within each) or "cost"
    #: (longest first overall)
    order: str = "levels"
    #: group cheap fragments into tasks of ~0.05-0.5 s predicted
    batch: bool = True
    #: checkpoint store: a path on this machine or an open :class:`~mbdask.calculation.store.FragmentStore`
    store: StoreLike = None
    #: after a failure, the result through the highest complete n-body order
    keep_going: bool = False
    #: count the fragment units as they finish (:attr:`mbdask.Submission.progress`)
    progress: bool = False
    #: keep only some clusters (:func:`mbdask.plan`; a :class:`~mbdask.Plan` given to start brings its own)
    screening: ScreeningLike = None
    #: check that the QC programs are installed, here and on the workers
    check_installed: bool = True
    #: seconds (or "10m") to wait for workers to join or come back (None: Dask config ``mbdask.worker-timeout``)
    worker_timeout: float | str | None = None

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Refuse impossible values with one line (made options are checked already; this says why)."""
        from mbdask.graph.build import ORDERS

        if self.order not in ORDERS:
            raise BadInputError(f"order must be one of {', '.join(ORDERS)}, not {self.order!r}")
        cores = self.cores_per_fragment
        if cores != "auto" and (not isinstance(cores, int) or cores < 1):
            raise BadInputError(f"cores_per_fragment must be a whole number of at least 1 or 'auto', got {cores!r}")
        memory = self.memory_per_fragment
        if memory is not None and (not _is_number(memory) or memory <= 0):
            shown = memory if _is_number(memory) else repr(memory)
            raise BadInputError(f"memory_per_fragment must be positive (GiB), got {shown}")
        if not isinstance(self.retries, int):
            raise BadInputError(f"retries must be a whole number, 0 or more, got {self.retries!r}")
        if self.retries < 0:
            raise BadInputError(f"retries must be 0 or more, got {self.retries}")
        if self.worker_timeout is not None:
            from mbdask.deploy.cluster import worker_timeout

            try:
                worker_timeout(self.worker_timeout)
            except ValueError as exc:
                raise BadInputError(str(exc)) from None

    def replace(self, **changes: Any) -> RunOptions:
        """These options with ``changes`` (field names), checked again; an unknown name is a ``TypeError``."""
        unknown = sorted(set(changes) - set(RUN_OPTIONS))
        if unknown:
            raise TypeError(f"RunOptions has no option {unknown[0]!r} (its options: {', '.join(RUN_OPTIONS)})")
        return dataclasses.replace(self, **changes)

    def keywords(self) -> dict[str, Any]:
        """The options by name, as :func:`mbdask.start` takes them as keywords."""
        return {name: getattr(self, name) for name in RUN_OPTIONS}


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


@dataclass(frozen=True)
class ClusterOptions:
    """Where the cluster comes from, beside the ``client`` argument: the LocalCluster mbdask starts, or how it
    reaches a scheduler. :func:`mbdask.workflows.expansion.connect_for` takes them as keywords.

    Apart from :class:`RunOptions` because they are used once, when connecting: an optimisation or
    a many-structure run connects once and runs many expansions on that cluster.
    """

    #: LocalCluster workers (None: one per usable core)
    n_workers: int | None = None
    #: LocalCluster threads per worker (None: 1)
    threads_per_worker: int | None = None
    #: LocalCluster memory per worker, "4GiB" or bytes (None: a share of the machine's)
    memory_limit: str | int | float | None = None
    #: a Dask ``Security`` for a scheduler reached by address (TLS)
    security: Any = None
    #: whether a LocalCluster mbdask starts serves Dask's dashboard
    #: (None: Dask config ``mbdask.local-cluster.dashboard``)
    dashboard: bool | None = None
    #: the JSON file a scheduler wrote (``dask scheduler --scheduler-file``, dask-mpi), instead of a
    #: client or address: waited for up to Dask's connect timeout (:mod:`mbdask.deploy.scheduler_file`)
    scheduler_file: str | os.PathLike | None = None

    def keywords(self) -> dict[str, Any]:
        """The options by name (what :func:`~mbdask.workflows.expansion.connect_for` takes)."""
        return {name: getattr(self, name) for name in CLUSTER_OPTIONS}


#: The names of :class:`RunOptions`, in order.
RUN_OPTIONS: tuple[str, ...] = tuple(f.name for f in fields(RunOptions))
#: The names of :class:`ClusterOptions`: the keywords of ``start``, ``start_many`` and ``optimize`` that size or
#: reach the cluster (used once, to connect).
CLUSTER_OPTIONS: tuple[str, ...] = tuple(f.name for f in fields(ClusterOptions))


def split_keywords(
    function: str,
    keywords: Mapping[str, Any],
    options: RunOptions | None = None,
    *,
    extra: Collection[str] = (),
) -> tuple[RunOptions, ClusterOptions, dict[str, Any]]:
    """A call's keywords as its run options, its cluster options, and those named in ``extra`` (XYZ model options).

    ``options``: the run options given as an object; keywords that name run options change
    those fields. A keyword none of them names is the ``TypeError`` Python raises for an
    unknown keyword, naming ``function``; impossible values are a :class:`~mbdask.errors.BadInputError`.
    """
    if options is not None and not isinstance(options, RunOptions):
        raise TypeError(f"{function}() options must be a mbdask.RunOptions, not {type(options).__name__}")
    unknown = [
        name for name in keywords if name not in RUN_OPTIONS and name not in CLUSTER_OPTIONS and name not in extra
    ]
    if unknown:
        raise TypeError(f"{function}() got an unexpected keyword argument {sorted(unknown)[0]!r}")
    run = {name: value for name, value in keywords.items() if name in RUN_OPTIONS}
    cluster = ClusterOptions(**{name: value for name, value in keywords.items() if name in CLUSTER_OPTIONS})
    rest = {name: value for name, value in keywords.items() if name in extra}
    if options is None:
        return RunOptions(**run), cluster, rest
    return (options.replace(**run) if run else options), cluster, rest
