"""The library interface: ``plan``, ``start``, ``submit`` and ``compute``.

``submit`` returns a ``distributed.Future`` of the ``ManyBodyResult``; ``start`` returns a
:class:`Submission` that also holds one future per n-body level, so a notebook can show
the 2-body result while trimers still run, and whose ``result()`` waits for the end.
"""

from __future__ import annotations

import logging
import math
import os
import time
import uuid
import warnings
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from typing import Any, Union

from distributed import Client, Future, as_completed
from distributed.client import FutureCancelledError
from qcmanybody.models.v2 import ManyBodyResult

from mbdask import config
from mbdask.calculation.execute import ExpansionContext, SharedContext
from mbdask.calculation.store import FragmentStore, StoreWriter, kept_for_next_run
from mbdask.deploy.cluster import (
    ClientLike,
    Connection,
    connect,
    count_workers,
    scheduler_address,
    usable_cores,
    wait_for_workers,
    want_dashboard,
    worker_resources,
)
from mbdask.deploy.cluster import worker_timeout as cluster_worker_timeout
from mbdask.deploy.workers import (
    check_programs_here,
    check_workers,
    fragment_resources,
    increment_tasks,
    total_cores,
    worker_cores,
)
from mbdask.diagnostics.progress import Progress
from mbdask.errors import BadInputError, FragmentFailedError, NoWorkersError, SchedulerLostError
from mbdask.graph.build import ORDERS, ExpansionGraph, FragmentResources, build_graph, result_function
from mbdask.graph.screening_pass import screen
from mbdask.inputs.load import InputLike
from mbdask.inputs.xyz import input_from
from mbdask.planning.batching import Unit, make_units
from mbdask.planning.cost import CostModel
from mbdask.planning.plan import FragmentJob, Plan, make_plan, truncated_input
from mbdask.planning.screening import ScreeningLike
from mbdask.programs import program_modules

StoreLike = Union[str, os.PathLike, FragmentStore, None]


@dataclass
class Submission:
    """A running expansion: the result future, level futures, and what it was built from.

    ``sub.result()`` waits and returns the ``ManyBodyResult`` (as a ``Future`` would);
    ``sub.future`` is the Dask future itself, for ``as_completed``, callbacks or ``cancel``.
    """

    plan: Plan
    graph: ExpansionGraph
    #: Dask future of the ``ManyBodyResult`` (what :func:`submit` returns)
    future: Future
    levels: dict[tuple[str, int | str], Future]
    connection: Connection = field(repr=False)
    units: dict[Any, Future] = field(default_factory=dict, repr=False)
    store: FragmentStore | None = None
    from_store: int = 0
    #: fragment calculations done per model chemistry and n-body order (``start(..., progress=True)``)
    progress: Progress | None = field(default=None, repr=False)
    #: writes each finished unit's outputs into ``store``, in this process (see :class:`~mbdask.calculation.store.StoreWriter`)
    writer: StoreWriter | None = field(default=None, repr=False)
    #: started with ``keep_going=True``: :meth:`result` gives the partial result after a failure
    keep_going: bool = False
    #: seconds :meth:`result` waits for workers when none is left (see :func:`mbdask.deploy.cluster.worker_timeout`)
    worker_timeout: float = field(default_factory=lambda: cluster_worker_timeout())

    @property
    def client(self) -> Client:
        return self.connection.client

    def result(self, timeout: float | None = None) -> ManyBodyResult:
        """Wait for the expansion (at most ``timeout`` seconds) and return its ``ManyBodyResult``.

        A method, like ``Future.result``, so that ``mbdask.start(inp, client).result()`` reads
        as it would with a future. Raises the fragment's ``FragmentFailedError`` on a failure;
        after ``start(..., keep_going=True)`` it returns the partial result instead where one
        exists, as :func:`compute` does.
        """
        return result_of(self, keep_going=self.keep_going, timeout=timeout)

    def close_store(self) -> None:
        """Write every finished fragment into the store, and stop writing (:func:`result_of` does this when the run ends)."""
        if self.writer is not None:
            self.writer.close()

    def as_completed_levels(self) -> Iterator[dict]:
        """Yield each n-body level's dict (bsse, nbody, contribution, through, increments) as it resolves."""
        for future in as_completed(list(self.levels.values()), loop=self.client.loop):
            yield future.result()

    def partial_result(self) -> ManyBodyResult | None:
        """After a failure: the result through the highest n-body order that completed, or None.

        Needs the unit futures, which ``start(..., keep_going=True)`` holds. The result is
        QCManyBody's analysis of the expansion truncated at that order, with
        ``extras["mbdask"]["partial"]`` saying what was asked for and what failed.
        """
        if not self.units:
            raise ValueError("partial results need start(..., keep_going=True)")
        for future in [*self.levels.values(), *self.units.values()]:
            future.exception()  # waits for it, whether it finishes or fails
        complete = 0
        numeric = sorted({nb for _, nb in self.levels if nb != "supersystem"})
        for nbody in numeric:
            if all(f.status == "finished" for (b, nb), f in self.levels.items() if nb == nbody):
                complete = nbody
            else:
                break
        if complete == 0:
            return None
        outputs = [f.result() for f in self.units.values() if f.status == "finished"]
        levels = [f.result() for (b, nb), f in self.levels.items() if nb != "supersystem" and nb <= complete]
        failed = next((f.exception() for f in self.units.values() if f.status == "error"), None)
        ctx = ExpansionContext(truncated_input(self.plan.input, complete), self.plan.specifications, False)
        partial = {
            "complete_nbody": complete,
            "requested_nbody": numeric[-1] if numeric else None,
            "error": str(failed),
        }
        return result_function(self.plan, complete)(ctx, levels, *outputs, partial=partial)


def _open_store(store: StoreLike) -> FragmentStore | None:
    if store is None or isinstance(store, FragmentStore):
        return store
    return FragmentStore.open(store)


def _from_store(
    plan: Plan, store: FragmentStore | None, skip: Collection[str] = (), ctx: ExpansionContext | None = None
) -> dict[str, dict]:
    """Outputs of the plan's calculations already in the store, by label (labels in ``skip`` not looked up)."""
    if store is None:
        return {}
    ctx = ctx or ExpansionContext(plan.input, plan.specifications, False)
    return store.find((job for job in plan.jobs if job.label not in skip), ctx.store_key)


def _units(
    plan: Plan,
    known: dict[str, dict],
    worker_info: list[dict],
    resources: FragmentResources,
    *,
    batch: bool,
    auto_cores: bool,
    borrowed: dict[str, tuple[Future, str]] | None = None,
    running: dict[str, Future] | None = None,
) -> list[Unit]:
    """Units to run (batched by predicted cost), units carrying what the store had, units taking
    ``borrowed`` calculations (label: the future of another expansion's unit, and the label there),
    and units taking the outputs of this expansion's calculations already ``running`` (label: the future of its unit)."""
    cost = CostModel.for_plan(plan)
    by_label = {job.label: job for job in plan.jobs}
    cost.calibrate((by_label[lab], out["stop"] - out["start"]) for lab, out in known.items() if "stop" in out)
    slots = total_cores(worker_info) // max(1, resources.cores)
    max_cores = max(worker_cores(w) for w in worker_info)
    borrowed = {label: source for label, source in (borrowed or {}).items() if label not in known}
    running = {
        label: future for label, future in (running or {}).items() if label not in known and label not in borrowed
    }
    todo = [
        job for job in plan.jobs if job.label not in known and job.label not in borrowed and job.label not in running
    ]
    units = make_units(
        todo, cost, workers=slots, batch=batch, cores=resources.cores, auto_cores=auto_cores, max_cores=max_cores
    )
    done = [job for job in plan.jobs if job.label in known]
    per_unit = config.number("mbdask.store.known-per-unit")  # they cost nothing to run
    for i in range(0, len(done), per_unit):
        units.append(Unit(tuple(done[i : i + per_unit]), 0.0, resources.cores))
    for other, taken in ((True, borrowed), (False, {label: (future, label) for label, future in running.items()})):
        units += _taking_units(taken, by_label, per_unit, resources.cores, other)
    return units


def _taking_units(
    taken: dict[str, tuple[Future, str]],
    by_label: dict[str, FragmentJob],
    per_unit: int,
    cores: int,
    borrowed: bool,
) -> list[Unit]:
    """Units that take calculations from units already sent (label: the future of that unit, and the label
    there), each source's jobs kept together, at most ``per_unit`` jobs a unit where sources allow: they
    cost nothing to run, and fewer of them mean fewer tasks and increment nodes."""
    by_source: dict[Any, list[tuple[Future, FragmentJob, str]]] = {}
    for label, (future, there) in taken.items():
        by_source.setdefault(future.key, []).append((future, by_label[label], there))
    units: list[Unit] = []
    chunk: list[list[tuple[Future, FragmentJob, str]]] = []
    size = 0  # jobs in chunk

    def close() -> None:
        if chunk:
            pairs = [pair for group in chunk for pair in group]
            jobs, there = tuple(job for _, job, _ in pairs), tuple(t for _, _, t in pairs)
            units.append(
                Unit(
                    jobs,
                    0.0,
                    cores,
                    sources=tuple(group[0][0] for group in chunk),
                    source_labels=there,
                    borrowed=borrowed,
                )
            )
            chunk.clear()

    for group in by_source.values():
        if chunk and size + len(group) > per_unit:
            close()
            size = 0
        chunk.append(group)
        size += len(group)
    close()
    return units


def local_cluster_options(
    plan: Plan,
    n_workers: int | None = None,
    threads_per_worker: int | None = None,
    dashboard: bool | None = None,
) -> dict[str, Any]:
    """What :func:`mbdask.deploy.cluster.connect` needs to start a LocalCluster suited to ``plan``.

    The QC programs' modules (imported before the workers are forked, so no worker imports
    them again) and whether to serve the dashboard, judged by the predicted work per core.
    """
    cores = (n_workers or 0) * (threads_per_worker or 1) or usable_cores()
    per_core = math.fsum(CostModel.for_plan(plan).seconds_all(plan.jobs)) / cores
    return {
        "worker_imports": program_modules(plan.program(m) for m in plan.models),
        "dashboard": want_dashboard(per_core, dashboard),
    }


def check_options(
    *,
    cores_per_fragment: int | str = 1,
    memory_per_fragment: float | None = None,
    retries: int = 0,
    order: str = "levels",
) -> None:
    """Refuse impossible run options with one line (the CLI calls this before planning)."""
    if order not in ORDERS:
        raise BadInputError(f"order must be one of {', '.join(ORDERS)}, not {order!r}")
    if cores_per_fragment != "auto" and (not isinstance(cores_per_fragment, int) or cores_per_fragment < 1):
        raise BadInputError(
            f"cores_per_fragment must be a whole number of at least 1 or 'auto', got {cores_per_fragment!r}"
        )
    if memory_per_fragment is not None and memory_per_fragment <= 0:
        raise BadInputError(f"memory_per_fragment must be positive (GiB), got {memory_per_fragment}")
    if retries < 0:
        raise BadInputError(f"retries must be 0 or more, got {retries}")


def plan(inp: InputLike, *, check_installed: bool = True, screening: ScreeningLike = None, **xyz_options: Any) -> Plan:
    """Validate ``inp`` and count what would run; nothing is computed.

    ``inp``: a ``ManyBodyInput``, an equivalent dict, a JSON or YAML file holding one, or an XYZ
    file of one structure with the command line's model options as keywords (``xyz_options``:
    ``program`` (default xtb), ``method``, ``basis``, ``bsse``, ``max_nbody`` (default 2),
    ``driver``, ``fragment_charges``, ``fragments``; :func:`mbdask.inputs.xyz.xyz_input`). Those options
    with any other input are a :class:`~mbdask.errors.BadInputError`: it holds its own model.

    ``screening``: keep only some clusters, e.g. ``{"distance_cutoffs": {2: 9.0, 3: 5.0}}``
    (Angstrom, per order; see :mod:`mbdask.planning.screening`). The plan then counts the kept ones.
    """
    return make_plan(input_from(inp, xyz_options, "plan"), check_installed=check_installed, screening=screening)


def start(
    inp: InputLike | Plan,
    client: ClientLike = None,
    *,
    cores_per_fragment: int | str = 1,
    memory_per_fragment: float | None = None,
    retries: int = 0,
    order: str = "levels",
    batch: bool = True,
    store: StoreLike = None,
    keep_going: bool = False,
    progress: bool = False,
    screening: ScreeningLike = None,
    n_workers: int | None = None,
    threads_per_worker: int | None = None,
    memory_limit: str | int | float | None = None,
    check_installed: bool = True,
    security: Any = None,
    dashboard: bool | None = None,
    worker_timeout: float | None = None,
    **xyz_options: Any,
) -> Submission:
    """Plan ``inp`` (or take a :class:`Plan`), build its graph and send it to the scheduler; returns at once.

    ``inp`` is what :func:`plan` takes, an XYZ file with its model options (``method=``,
    ``max_nbody=`` ...) included, or a :class:`Plan`. Options:

    * ``cores_per_fragment``: threads each QC call may use (and reserves); ``"auto"`` gives
      1 core to most fragments and more to those predicted to finish the run alone.
    * ``memory_per_fragment`` in GiB (default: the worker's memory per thread times cores).
    * ``retries`` per fragment (Dask retries) before the run fails.
    * ``order``: "levels" (n-body orders complete one after another, longest first within
      each) or "cost" (longest first overall).
    * ``batch``: group cheap fragments into tasks of ~0.05-0.5 s predicted (default on).
    * ``store``: path of a checkpoint store (:mod:`mbdask.store`), a file on this machine (a
      relative path is taken from the current directory); fragments found there are not
      recomputed, and this process writes every finished fragment to it as its result comes
      in (workers never open it).
    * ``keep_going``: hold every unit's future so that :meth:`Submission.partial_result`
      (and so :meth:`Submission.result`) can return the highest complete n-body order
      after a failure.
    * ``screening``: keep only some clusters (:func:`plan`; taken from the plan when ``inp``
      is a :class:`Plan`); the result is assembled from
      the kept clusters' increments and says what was kept in ``extras["mbdask"]["screening"]``.
    * ``progress``: watch the fragment units, counted in :attr:`Submission.progress`
      (what ``python -m mbdask run`` draws on a terminal).
    * ``n_workers``/``threads_per_worker``/``memory_limit``/``security``: for the
      LocalCluster mbdask starts, or the scheduler it connects to.
    * ``dashboard``: whether a LocalCluster mbdask starts serves Dask's dashboard (default:
      Dask config ``mbdask.local-cluster.dashboard``, "auto": for runs predicted to take
      20 s per core or more; see :func:`mbdask.deploy.cluster.want_dashboard`).
    * ``worker_timeout``: seconds to wait for workers to join a scheduler that has none (batch
      jobs start late), and, while the run goes on, for workers to come back when none is
      left, before giving up with :class:`~mbdask.errors.NoWorkersError` (default: Dask config
      ``mbdask.worker-timeout``, else 600).
    """
    given = input_from(inp, xyz_options, "start")
    the_plan = (
        given if isinstance(given, Plan) else make_plan(given, check_installed=check_installed, screening=screening)
    )
    check_options(
        cores_per_fragment=cores_per_fragment, memory_per_fragment=memory_per_fragment, retries=retries, order=order
    )
    fragment_store = _open_store(store)
    conn = connect_for(
        the_plan,
        client,
        n_workers=n_workers,
        threads_per_worker=threads_per_worker,
        memory_limit=memory_limit,
        security=security,
        dashboard=dashboard,
    )
    try:
        waiting = workers_ready(conn, worker_timeout)
        return submit_plan(
            the_plan,
            conn,
            cores_per_fragment=cores_per_fragment,
            memory_per_fragment=memory_per_fragment,
            retries=retries,
            order=order,
            batch=batch,
            store=fragment_store,
            keep_going=keep_going,
            progress=progress,
            check_installed=check_installed,
            worker_timeout=waiting,
        )
    except BaseException:
        conn.close()
        raise


def connect_for(
    plan: Plan,
    client: ClientLike = None,
    *,
    n_workers: int | None = None,
    threads_per_worker: int | None = None,
    memory_limit: str | int | float | None = None,
    security: Any = None,
    dashboard: bool | None = None,
) -> Connection:
    """:func:`mbdask.deploy.cluster.connect` for running ``plan`` (and what follows it on the same cluster):
    a LocalCluster, where one is started, gets the plan's QC programs imported before its
    workers are forked and a dashboard if the plan is long enough to watch."""
    local = local_cluster_options(plan, n_workers, threads_per_worker, dashboard) if client is None else {}
    return connect(
        client,
        n_workers=n_workers,
        threads_per_worker=threads_per_worker,
        memory_limit=memory_limit,
        security=security,
        **local,
    )


def workers_ready(conn: Connection, worker_timeout: float | None = None) -> float:
    """Wait for the connection's first worker; returns the worker timeout in seconds it used
    (:func:`mbdask.deploy.cluster.worker_timeout`). No worker in time: :class:`NoWorkersError`."""
    waiting = cluster_worker_timeout(worker_timeout)
    try:
        wait_for_workers(conn.client, waiting, say)
    except TimeoutError as exc:
        raise NoWorkersError(f"{exc}; start workers (dask worker ADDRESS) or check the batch jobs") from None
    return waiting


def submit_plan(
    the_plan: Plan,
    conn: Connection,
    *,
    cores_per_fragment: int | str = 1,
    memory_per_fragment: float | None = None,
    retries: int = 0,
    order: str = "levels",
    batch: bool = True,
    store: FragmentStore | None = None,
    keep_going: bool = False,
    progress: bool = False,
    check_installed: bool = True,
    worker_timeout: float = 0.0,
    writer: StoreWriter | None = None,
    priority_offset: float = 0.0,
    borrowed: dict[str, tuple[Future, str]] | None = None,
    worker_info: list[dict] | None = None,
) -> Submission:
    """Build ``the_plan``'s graph for the workers of ``conn`` (which has some) and send it; the options are :func:`start`'s.

    ``writer``: a store writer shared with other submissions, which the caller seals and
    closes (:mod:`mbdask.workflows.structures`); by default the submission has its own. ``priority_offset``
    is added to every fragment's priority, so that expansions sent together run in order.
    ``borrowed``: calculations another expansion sent already computes, by label: the future of
    its unit and the label there (the outputs are taken from it, not computed twice).
    ``worker_info``: :func:`mbdask.deploy.cluster.worker_resources` of the cluster, where the caller has them.
    """
    settings = the_plan.screened.settings if the_plan.screened is not None else None
    # energy screening decides with the cheap model once the cluster is up (not yet decided: no report)
    energy_screening = settings is not None and bool(settings.energy_thresholds) and settings.energy_report is None
    auto_cores = cores_per_fragment == "auto"
    cores = 1 if auto_cores else int(cores_per_fragment)
    also = [settings.cheap_model["program"]] if energy_screening else []
    if check_installed and not _forked_here(conn):
        check_workers(conn.client, the_plan, also)
    elif check_installed and also:
        check_programs_here(also)  # forked workers have what this process has
    worker_info = worker_info or worker_resources(conn.client)
    resources = fragment_resources(worker_info, cores, memory_per_fragment, auto_cores=auto_cores)
    own_writer = writer is None and store is not None
    if own_writer:
        writer = StoreWriter(store, conn.client)
    try:
        computed: dict[str, dict] = {}
        running: dict[str, Future] = {}
        if energy_screening:
            screened = screen(
                the_plan,
                settings,
                conn.client,
                workers=total_cores(worker_info) // max(1, cores),
                resources=resources,
                store=store,
                writer=writer,
                retries=retries,
            )
            the_plan, computed, running = screened.plan, screened.found, screened.running
        key_ctx = ExpansionContext(the_plan.input, the_plan.specifications, False)  # store keys, on this side only
        from_store = _from_store(
            the_plan, store, skip=computed.keys() | running.keys(), ctx=key_ctx
        )  # not what this run sent
        known = {**from_store, **computed}
        units = _units(
            the_plan,
            known,
            worker_info,
            resources,
            batch=batch,
            auto_cores=auto_cores,
            borrowed=borrowed,
            running=running,
        )
        graph = build_graph(
            the_plan,
            uuid.uuid4().hex[:12],
            resources=resources,
            units=units,
            known=known,
            retries=retries,
            order=order,
            increment_tasks=increment_tasks(worker_info),
            cluster_cores=total_cores(worker_info),
            priority_offset=priority_offset,
            share=_scatter_to_all(conn.client) if _forked_here(conn) else _kept_by_scheduler(conn.client),
        )
        # units that compute something: their outputs come back here and go into the store
        to_store = (
            [
                key
                for key, unit in graph.units.items()
                if not unit.sources and any(job.label not in known for job in unit.jobs)
            ]
            if store is not None
            else []
        )
        keys = [graph.result, *graph.levels.values(), *(graph.units if keep_going or progress else to_store)]
        started = time.monotonic()
        with warnings.catch_warnings():
            # the fragments are the graph's data: a (H2O)64 4-body graph is ~80 MB by design, and
            # Dask's advice for dataframes ("load the data with Dask directly") does not apply
            warnings.filterwarnings("ignore", message="Sending large graph", category=UserWarning)
            futures = conn.client.get(graph.graph, keys, sync=False)
        by_key = dict(zip(keys, futures))
        if writer is not None:
            _track_units(writer, conn.client, graph, to_store, by_key, known, key_ctx, shared=keep_going or progress)
    except BaseException:
        if own_writer:
            writer.close()
        raise
    if own_writer:
        writer.seal()
    levels = {name: by_key[key] for name, key in graph.levels.items()}
    held = {key: by_key[key] for key in graph.units} if keep_going else {}
    watch = Progress({by_key[key]: unit for key, unit in graph.units.items()}, started) if progress else None
    stored = len(from_store) + len(computed)
    return Submission(
        the_plan,
        graph,
        by_key[graph.result],
        levels,
        conn,
        held,
        store,
        stored,
        watch,
        writer if own_writer else None,
        keep_going=keep_going,
        worker_timeout=0.0 if _forked_here(conn) else worker_timeout,
    )


def _track_units(
    writer: StoreWriter,
    client: Client,
    graph: ExpansionGraph,
    keys: list,
    by_key: dict,
    known: dict,
    ctx: ExpansionContext,
    *,
    shared: bool,
) -> None:
    """Have ``writer`` write the outputs of the units ``keys`` (their futures in ``by_key``) as they finish.

    ``shared``: those futures are held elsewhere too (progress, keep-going), so the writer
    gets its own references to release.
    """
    for key in keys:
        jobs = graph.units[key].jobs
        skip = frozenset(job.label for job in jobs if job.label in known) or None
        writer.track(Future(key, client) if shared else by_key.pop(key), jobs, ctx.store_key, skip)


def submit(inp: InputLike, client: ClientLike = None, **options: Any) -> Future:
    """Start the expansion and return a Future of its ``ManyBodyResult``.

    ``inp`` and ``options`` are :func:`start`'s (an XYZ file with ``method=``, ``max_nbody=`` ... too).
    With ``client=None`` and no default client, the LocalCluster mbdask starts stays up
    until the returned Future is released.
    """
    sub = start(inp, client, **options)
    sub.connection.keep_alive_with(sub.future)
    return sub.future


def compute(inp: InputLike, client: ClientLike = None, **options: Any) -> ManyBodyResult:
    """Run the expansion and wait for it; returns QCManyBody's ``ManyBodyResult``.

    ``inp`` and ``options`` are :func:`start`'s: a ManyBodyInput (object, dict, JSON or YAML
    file), or an XYZ file with the command line's model options as keywords, e.g.
    ``compute("water3.xyz", method="gfn2-xtb", max_nbody=3)``.
    With ``keep_going=True``, a failed fragment above the lowest order gives the result
    through the highest complete order (``extras["mbdask"]["partial"]``) instead of raising.
    """
    sub = start(inp, client, **options)
    try:
        return result_of(sub, keep_going=options.get("keep_going", False))
    finally:
        sub.connection.close()


_log = logging.getLogger("mbdask")


def say(message: str) -> None:
    """A notice for the user (stderr by default): the ``mbdask`` logger at WARNING."""
    _log.warning(message)


def _scatter_to_all(client: Client) -> Callable[[Any], Future]:
    """Put an object on every worker and return its future (for :func:`mbdask.graph.build_graph`'s ``share``).

    Only for workers forked from this process: scattered data cannot be recomputed, and if
    every worker holding it left (a batch system ending its jobs), the run could not go on
    with the workers that join next. Other clusters get it from the scheduler
    (:func:`_kept_by_scheduler`); scattering costs no round trip per worker.
    """
    return lambda value: client.scatter(value, broadcast=True, hash=False)


def _kept_by_scheduler(client: Client) -> Callable[[Any], SharedContext]:
    """Give the context to the scheduler, which hands it to each worker once (:class:`~mbdask.calculation.execute.SharedContext`).

    For clusters whose workers may all leave and others join (batch systems): nothing
    is lost with a worker, and no task depends on one worker's data.
    """
    return lambda ctx: SharedContext(f"mbdask-context-{uuid.uuid4().hex}").publish(ctx, client)


def _forked_here(conn: Connection) -> bool:
    """A cluster of workers that mbdask forked from this process.

    No nanny or queue brings a lost worker back; and the workers have this process's
    modules, programs and environment, so what the plan checked here holds there. The
    cluster is the connection's own, or the one behind the client it was given (the
    command line starts the cluster and hands its client to :func:`start`).
    """
    cluster = conn.cluster or getattr(conn.client, "cluster", None)
    return getattr(cluster, "worker_start_method", None) == "fork"


def result_of(sub: Submission, *, keep_going: bool = False, timeout: float | None = None) -> ManyBodyResult:
    """Wait for ``sub`` (at most ``timeout`` seconds); on a fragment failure with ``keep_going``, its partial result if any.

    While waiting, the scheduler's workers are looked at every ``mbdask.watch-interval``
    seconds: when none is left (batch jobs at their wall time), the user is told at once,
    and after ``sub.worker_timeout`` seconds without a worker the wait ends with
    :class:`~mbdask.errors.NoWorkersError`; what finished is in the store, if there is one.

    When the run ends (a result, a failure, no workers, an interrupt; not the ``timeout``
    of a run that goes on), every unit that finished is in the store before this returns.
    A lost connection to the scheduler (it stopped, or its host went away) ends the run with
    :class:`~mbdask.errors.SchedulerLostError`, naming the scheduler and what the store kept.
    """
    ended, lost = True, False
    try:
        return _result_or_partial(sub, keep_going, timeout)
    except TimeoutError:
        ended = sub.future.done()
        raise
    except (FutureCancelledError, OSError) as exc:
        if not _scheduler_lost(sub.client, exc):
            raise
        lost = True
    finally:
        if ended:
            sub.close_store()
            if not lost and isinstance(sub.graph.context_ref, SharedContext):
                sub.graph.context_ref.withdraw(sub.client)
    raise SchedulerLostError(
        f"lost the connection to the scheduler at {scheduler_address(sub.client)} (it stopped, or its host went away); "
        f"the run stopped; {kept_for_next_run(sub.store)}"
    )


def _scheduler_lost(client: Client, exc: BaseException) -> bool:
    """Whether ``exc`` says that ``client`` lost its scheduler: Dask then cancels every future with
    that reason, and a question asked of the scheduler meanwhile fails to connect."""
    if isinstance(exc, FutureCancelledError):
        return exc.reason == "scheduler-connection-lost"
    return client.status in ("connecting", "closed")


def _result_or_partial(sub: Submission, keep_going: bool, timeout: float | None) -> ManyBodyResult:
    try:
        return _watched_result(sub, timeout)
    except FragmentFailedError:
        if keep_going:
            partial = sub.partial_result()
            if partial is not None:
                return partial
        raise


def _watched_result(sub: Submission, timeout: float | None) -> ManyBodyResult:
    deadline = None if timeout is None else time.monotonic() + timeout
    interval = config.number("mbdask.watch-interval")
    alone_since: float | None = None
    while True:
        wait = interval if deadline is None else max(0.0, min(interval, deadline - time.monotonic()))
        try:
            return sub.future.result(timeout=wait)
        except TimeoutError:
            if deadline is not None and time.monotonic() >= deadline:
                raise
        if count_workers(sub.client):
            if alone_since is not None:
                say("mbdask: workers joined again; the run goes on")
            alone_since = None
            continue
        now = time.monotonic()
        if alone_since is None:
            alone_since = now
            kept = " (finished fragments are in the store)" if sub.store is not None else ""
            say(
                f"mbdask: no worker is left on the scheduler{kept}; waiting up to {sub.worker_timeout:g} s for workers to join"
            )
        if now - alone_since >= sub.worker_timeout:
            kept = "; rerun with the same store to reuse the finished fragments" if sub.store is not None else ""
            raise NoWorkersError(
                f"no worker was left for {sub.worker_timeout:g} s (--worker-timeout), the run stopped{kept}"
            )
