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
from typing import Any

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
    workers_forked_here,
)
from mbdask.deploy.cluster import worker_timeout as cluster_worker_timeout
from mbdask.deploy.workers import (
    check_fragment_memory,
    check_programs_here,
    check_workers,
    fragment_resources,
    increment_tasks,
    total_cores,
    worker_cores,
)
from mbdask.diagnostics.metrics import Run as MetricsRun
from mbdask.diagnostics.metrics import watch as watch_metrics
from mbdask.diagnostics.progress import Progress
from mbdask.errors import FragmentFailedError, NoWorkersError, SchedulerLostError
from mbdask.graph.build import ExpansionGraph, FragmentResources, build_graph, result_function
from mbdask.graph.screening_pass import screen
from mbdask.inputs.load import InputLike
from mbdask.inputs.xyz import XYZ_OPTIONS, input_from
from mbdask.planning.batching import Unit, make_units
from mbdask.planning.cost import CostModel
from mbdask.planning.plan import FragmentJob, Plan, make_plan, truncated_input
from mbdask.planning.screening import ScreeningLike
from mbdask.programs import program_modules
from mbdask.workflows.options import ClusterOptions, RunOptions, split_keywords

StoreLike = str | os.PathLike | FragmentStore | None


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
    #: writes each finished unit's outputs into ``store``, in this process
    #: (see :class:`~mbdask.calculation.store.StoreWriter`)
    writer: StoreWriter | None = field(default=None, repr=False)
    #: started with ``keep_going=True``: :meth:`result` gives the partial result after a failure
    keep_going: bool = False
    #: seconds :meth:`result` waits for workers when none is left (see :func:`mbdask.deploy.cluster.worker_timeout`)
    worker_timeout: float = field(default_factory=lambda: cluster_worker_timeout())
    #: the run's figures on the scheduler's Prometheus ``/metrics`` page (with ``progress``; docs/metrics.md),
    #: None where the scheduler cannot show them; its ``name`` is the ``run`` label
    metrics: MetricsRun | None = field(default=None, repr=False)

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
        """Write every finished fragment into the store, and stop writing (:func:`result_of` does this at the end)."""
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
        numeric = sorted({nb for _, nb in self.levels if isinstance(nb, int)})  # not "supersystem"
        for nbody in numeric:
            if all(f.status == "finished" for (b, nb), f in self.levels.items() if nb == nbody):
                complete = nbody
            else:
                break
        if complete == 0:
            return None
        outputs = [f.result() for f in self.units.values() if f.status == "finished"]
        levels = [f.result() for (b, nb), f in self.levels.items() if isinstance(nb, int) and nb <= complete]
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


#: Units that take what energy screening's pass runs: enough steps for progress, few enough tasks not to matter.
PROGRESS_STEPS = 256


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
    and units taking the outputs of this expansion's calculations already ``running`` (label: the future of its
    unit)."""
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
    units += _taking_units(borrowed, by_label, per_unit, resources.cores, True)
    # this expansion's own calculations that energy screening's pass sent, in about PROGRESS_STEPS units priced as
    # the cost model prices them (each job's price in ``predicted``): progress counts them as the pass's units
    # finish (:func:`_watched`) and its time left includes them
    own = {label: (future, label) for label, future in running.items()}
    units += _taking_units(own, by_label, len(own) // PROGRESS_STEPS, resources.cores, False, seconds=cost.seconds)
    return units


def _taking_units(
    taken: dict[str, tuple[Future, str]],
    by_label: dict[str, FragmentJob],
    per_unit: int,
    cores: int,
    borrowed: bool,
    seconds: Callable[[FragmentJob], float] | None = None,
) -> list[Unit]:
    """Units that take calculations from units already sent (label: the future of that unit, and the label
    there), each source's jobs kept together, at most ``per_unit`` jobs a unit where sources allow: they
    cost nothing to run, and fewer of them mean fewer tasks and increment nodes. ``seconds``: what a job
    still costs where it is computed (a unit's predicted seconds, for progress); otherwise nothing."""
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
                    sum(map(seconds, jobs)) if seconds is not None else 0.0,
                    cores,
                    predicted=tuple(map(seconds, jobs)) if seconds is not None else (),
                    sources=tuple(group[0][0] for group in chunk),
                    source_labels=there,
                    borrowed=borrowed,
                )
            )
            chunk.clear()

    groups = list(by_source.values())
    if seconds is not None:
        # sources in the order the scheduler runs them (levels_priority: lower orders first, longest first), so
        # that a unit's sources finish close together and its increments arrive when they do; grouped as they were
        # decided, a unit waited for the last of sources run far apart
        groups.sort(key=lambda group: (group[0][1].nbody, -math.fsum(seconds(job) for _, job, _ in group)))
    for group in groups:
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
    inp: InputLike | Plan, client: ClientLike = None, *, options: RunOptions | None = None, **keywords: Any
) -> Submission:
    """Plan ``inp`` (or take a :class:`Plan`), build its graph and send it to the scheduler; returns at once.

    ``inp`` is what :func:`plan` takes, an XYZ file with its model options (``method=``,
    ``max_nbody=`` ...) included, or a :class:`Plan`. ``options``: a :class:`~mbdask.RunOptions`
    (checked when made); its fields can be given as keywords instead, or beside it to change
    them (``start(inp, options=opts, retries=2)``). They are:

    * ``cores_per_fragment``: threads each QC call may use (and reserves); ``"auto"`` gives
      1 core to most fragments and more to those predicted to finish the run alone.
    * ``memory_per_fragment`` in GiB (default: the worker's memory per thread times cores).
    * ``retries`` per fragment (Dask retries) before the run fails.
    * ``order``: "levels" (n-body orders complete one after another, longest first within
      each) or "cost" (longest first overall).
    * ``batch``: group cheap fragments into tasks of ~0.05-0.5 s predicted (default on).
    * ``store``: path of a checkpoint store (:mod:`mbdask.calculation.store`), a file on this machine (a
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
    * ``check_installed``: check that the QC programs are installed, here and on the workers.
    * ``worker_timeout``: seconds to wait for workers to join a scheduler that has none (batch
      jobs start late), and, while the run goes on, for workers to come back when none is
      left, before giving up with :class:`~mbdask.errors.NoWorkersError` (default: Dask config
      ``mbdask.worker-timeout``, else 600).

    Where the cluster comes from, as keywords (:class:`~mbdask.workflows.options.ClusterOptions`):

    * ``n_workers``/``threads_per_worker``/``memory_limit``/``security``: for the
      LocalCluster mbdask starts, or the scheduler it connects to.
    * ``scheduler_file``: instead of ``client``, the JSON file a scheduler wrote (``dask scheduler
      --scheduler-file``, dask-mpi, dask-jobqueue), waited for up to Dask's connect timeout
      (:mod:`mbdask.deploy.scheduler_file`); with ``client`` too, a :class:`~mbdask.errors.BadInputError`.
    * ``dashboard``: whether a LocalCluster mbdask starts serves Dask's dashboard (default:
      Dask config ``mbdask.local-cluster.dashboard``, "auto": for runs predicted to take
      20 s per core or more; see :func:`mbdask.deploy.cluster.want_dashboard`).

    Any other keyword is a ``TypeError``, as for any function.
    """
    run, cluster, xyz_options = split_keywords("start", keywords, options, extra=XYZ_OPTIONS)
    return _start(inp, client, run, cluster, xyz_options, "start")


def _start(
    inp: InputLike | Plan,
    client: ClientLike,
    run: RunOptions,
    cluster: ClusterOptions,
    xyz_options: dict[str, Any],
    function: str,
) -> Submission:
    """:func:`start` with its keywords sorted (:func:`~mbdask.workflows.options.split_keywords`).

    ``function`` names the caller in the ``TypeError`` for an unknown XYZ option.
    """
    given = input_from(inp, xyz_options, function)
    the_plan = (
        given
        if isinstance(given, Plan)
        else make_plan(given, check_installed=run.check_installed, screening=run.screening)
    )
    fragment_store = _open_store(run.store)
    conn = connect_for(the_plan, client, **cluster.keywords())
    try:
        waiting = workers_ready(conn, run.worker_timeout)
        return submit_plan(the_plan, conn, run.replace(store=fragment_store, worker_timeout=waiting))
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
    scheduler_file: str | os.PathLike | None = None,
) -> Connection:
    """:func:`mbdask.deploy.cluster.connect` for running ``plan`` (and what follows it on the same cluster):
    a LocalCluster, where one is started, gets the plan's QC programs imported before its
    workers are forked and a dashboard if the plan is long enough to watch. The keywords are
    :class:`~mbdask.workflows.options.ClusterOptions` (``**cluster.keywords()``)."""
    starts_local = client is None and scheduler_file is None
    local = local_cluster_options(plan, n_workers, threads_per_worker, dashboard) if starts_local else {}
    return connect(
        client,
        n_workers=n_workers,
        threads_per_worker=threads_per_worker,
        memory_limit=memory_limit,
        security=security,
        scheduler_file=scheduler_file,
        **local,
    )


def workers_ready(conn: Connection, worker_timeout: float | str | None = None) -> float:
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
    options: RunOptions,
    *,
    writer: StoreWriter | None = None,
    priority_offset: float = 0.0,
    borrowed: dict[str, tuple[Future, str]] | None = None,
    worker_info: list[dict] | None = None,
) -> Submission:
    """Build ``the_plan``'s graph for the workers of ``conn`` (which has some) and send it.

    ``options``: :func:`start`'s, its ``screening`` already in the plan; ``store`` open or a path,
    ``worker_timeout`` what :func:`workers_ready` used. ``writer``: a store writer shared with
    other submissions, which the caller seals and closes (:mod:`mbdask.workflows.structures`); by
    default the submission has its own. ``priority_offset`` is added to every fragment's priority,
    so that expansions sent together run in order. ``borrowed``: calculations another expansion
    sent already computes, by label: the future of its unit and the label there (the outputs are
    taken from it, not computed twice). ``worker_info``: :func:`mbdask.deploy.cluster.worker_resources`
    of the cluster, where the caller has them.

    The steps, in order: check the programs (:func:`_check_programs`), size each fragment's
    resources, the energy-screening pass (:func:`_screening_pass`), the store lookup
    (:func:`_store_lookup`), the units (:func:`_units`), the graph (:func:`_build`), sending it
    (:func:`_send`), the store writer (:func:`_track_units`) and the submission with its progress
    (:func:`_submission`).
    """
    store = _open_store(options.store)
    settings = _energy_screening(the_plan)
    _check_programs(the_plan, conn, settings, options.check_installed)
    worker_info = worker_info or worker_resources(conn.client)
    auto_cores = options.cores_per_fragment == "auto"
    cores = 1 if auto_cores else int(options.cores_per_fragment)
    resources = fragment_resources(worker_info, cores, options.memory_per_fragment, auto_cores=auto_cores)
    check_fragment_memory(the_plan, resources.memory_gib)
    own_writer = StoreWriter(store, conn.client) if writer is None and store is not None else None
    writer = writer or own_writer
    try:
        found = _screening_pass(the_plan, settings, conn, worker_info, resources, store, writer, options.retries)
        found = _store_lookup(found, store)
        units = _units(
            found.plan,
            found.known,
            worker_info,
            resources,
            batch=options.batch,
            auto_cores=auto_cores,
            borrowed=borrowed,
            running=found.running,
        )
        graph = _build(found, units, resources, worker_info, conn, options, priority_offset)
        to_store = _computing_units(graph, found.known) if store is not None else []
        watched = options.keep_going or options.progress
        keys = [graph.result, *graph.levels.values(), *(graph.units if watched else to_store)]
        by_key, started = _send(conn, graph, keys)
        if writer is not None:
            assert found.key_ctx is not None  # made by _store_lookup with the store
            _track_units(writer, conn.client, graph, to_store, by_key, found.known, found.key_ctx, shared=watched)
    except BaseException:
        if own_writer is not None:
            own_writer.close()
        raise
    if own_writer is not None:
        own_writer.seal()
    return _submission(found, graph, by_key, started, conn, store, own_writer, options)


@dataclass
class _Found:
    """What a submission need not compute, and the plan it runs (energy screening may keep fewer clusters).

    ``computed``: outputs the energy-screening pass already has; ``running``: this run's
    calculations the pass sent and that still run (label: the future of its unit);
    ``from_store``: what the store had of the rest; ``known``: the outputs in hand, the store's
    and the pass's; ``key_ctx``: the context the store keys are made with, on this side only.
    """

    plan: Plan
    computed: dict[str, dict] = field(default_factory=dict)
    running: dict[str, Future] = field(default_factory=dict)
    from_store: dict[str, dict] = field(default_factory=dict)
    known: dict[str, dict] = field(default_factory=dict)
    key_ctx: ExpansionContext | None = None


def _energy_screening(the_plan: Plan) -> Any:
    """The plan's screening settings if energy screening is still to decide, else None.

    Energy screening decides with the cheap model once the cluster is up; a plan whose
    screening has no energy report yet has not decided.
    """
    settings = the_plan.screened.settings if the_plan.screened is not None else None
    if settings is not None and bool(settings.energy_thresholds) and settings.energy_report is None:
        return settings
    return None


def _check_programs(the_plan: Plan, conn: Connection, settings: Any, check_installed: bool) -> None:
    """Check the QC programs before anything is sent: a missing one is one line now, not a failed fragment later.

    The workers are asked, except those forked from this process, which have what this
    process has (what planning checked here); the cheap model of an energy screening still to
    decide is checked too.
    """
    if not check_installed:
        return
    also = [settings.cheap_model["program"]] if settings is not None else []
    if not _forked_here(conn):
        check_workers(conn.client, the_plan, also)
    elif also:
        check_programs_here(also)  # forked workers have what this process has


def _screening_pass(
    the_plan: Plan,
    settings: Any,
    conn: Connection,
    worker_info: list[dict],
    resources: FragmentResources,
    store: FragmentStore | None,
    writer: StoreWriter | None,
    retries: int,
) -> _Found:
    """Energy screening's pass on the cluster (:func:`mbdask.graph.screening_pass.screen`) where it is still to decide.

    It runs the cheap model on the candidates and keeps the clusters whose increments exceed
    the thresholds; the expensive calculations it already needed are computed or running, and
    the graph built next takes them instead of computing them again. Without it, the plan as it is.
    """
    if settings is None:
        return _Found(the_plan)
    screened = screen(
        the_plan,
        settings,
        conn.client,
        workers=total_cores(worker_info) // max(1, resources.cores),
        resources=resources,
        store=store,
        writer=writer,
        retries=retries,
    )
    return _Found(screened.plan, screened.found, screened.running)


def _store_lookup(found: _Found, store: FragmentStore | None) -> _Found:
    """The plan's calculations already in the store, except those the screening pass has or runs (this run sent them).

    Looked up by store key (program, model, fragment geometry), made with a context on this
    side only; those found are not computed again.
    """
    found.key_ctx = ExpansionContext(found.plan.input, found.plan.specifications, False)
    skip = found.computed.keys() | found.running.keys()
    found.from_store = _from_store(found.plan, store, skip=skip, ctx=found.key_ctx)
    found.known = {**found.from_store, **found.computed}
    return found


def _build(
    found: _Found,
    units: list[Unit],
    resources: FragmentResources,
    worker_info: list[dict],
    conn: Connection,
    options: RunOptions,
    priority_offset: float,
) -> ExpansionGraph:
    """The expansion's Dask graph (:func:`mbdask.graph.build.build_graph`) for this cluster.

    Its size and shape follow the cluster (increment tasks and priorities by its cores), and
    how the expansion's shared context reaches the workers follows where they came from:
    scattered to workers forked from this process, kept by the scheduler otherwise.
    """
    return build_graph(
        found.plan,
        uuid.uuid4().hex[:12],
        resources=resources,
        units=units,
        known=found.known,
        retries=options.retries,
        order=options.order,
        increment_tasks=increment_tasks(worker_info),
        cluster_cores=total_cores(worker_info),
        priority_offset=priority_offset,
        share=_scatter_to_all(conn.client) if _forked_here(conn) else _kept_by_scheduler(conn.client),
    )


def _computing_units(graph: ExpansionGraph, known: dict[str, dict]) -> list:
    """Keys of the units that compute something: their outputs come back here and go into the store.

    Not those taking outputs from other units (their sources write them) nor those that only
    carry what was known already.
    """
    return [
        key
        for key, unit in graph.units.items()
        if not unit.sources and any(job.label not in known for job in unit.jobs)
    ]


def _send(conn: Connection, graph: ExpansionGraph, keys: list) -> tuple[dict, float]:
    """Send ``graph`` to the scheduler, asking for the futures of ``keys``; returns them by key and when it was sent.

    Dask's "Sending large graph" warning is silenced: the fragments are the graph's data (a
    (H2O)64 4-body graph is ~80 MB by design), and its advice for dataframes ("load the data
    with Dask directly") does not apply.
    """
    started = time.monotonic()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sending large graph", category=UserWarning)
        futures = conn.client.get(graph.graph, keys, sync=False)
    return dict(zip(keys, futures)), started


def _watched(graph: ExpansionGraph, by_key: dict, running: dict[str, Future]) -> dict[Future, Unit]:
    """What progress counts: each unit's future, except for the units taking what energy screening's pass sent
    (``running``: label -> the future of the pass's unit computing it), where it counts the pass's units
    themselves. A taking unit finishes with the last of its sources; counted there, calculations long finished
    were counted only at the end of the run, and the time left came out 2-5x too long."""
    watched: dict[Future, Unit] = {}
    for key, unit in graph.units.items():
        if not unit.sources or unit.borrowed:
            watched[by_key[key]] = unit
            continue
        by_source: dict[Future, list[int]] = {}
        for i, job in enumerate(unit.jobs):
            by_source.setdefault(running[job.label], []).append(i)
        for source, members in by_source.items():
            jobs = tuple(unit.jobs[i] for i in members)
            predicted = tuple(unit.predicted[i] for i in members) if unit.predicted else ()
            watched[source] = Unit(jobs, math.fsum(predicted), unit.cores, predicted)
    return watched


def _submission(
    found: _Found,
    graph: ExpansionGraph,
    by_key: dict,
    started: float,
    conn: Connection,
    store: FragmentStore | None,
    writer: StoreWriter | None,
    options: RunOptions,
) -> Submission:
    """The :class:`Submission` of a sent graph: its result and level futures, and what the options asked to hold.

    ``keep_going`` holds every unit's future (for the partial result); ``progress`` watches
    them. Workers forked from this process never come back once gone, so such a run does not
    wait for workers (its worker timeout is 0).
    """
    levels = {name: by_key[key] for name, key in graph.levels.items()}
    held = {key: by_key[key] for key in graph.units} if options.keep_going else {}
    watch = Progress(_watched(graph, by_key, found.running), started) if options.progress else None
    metrics = watch_metrics(conn.client, watch, writer) if watch is not None else None
    return Submission(
        found.plan,
        graph,
        by_key[graph.result],
        levels,
        conn,
        held,
        store,
        len(found.from_store) + len(found.computed),
        watch,
        writer,
        keep_going=options.keep_going,
        worker_timeout=0.0 if _forked_here(conn) else cluster_worker_timeout(options.worker_timeout),
        metrics=metrics,
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


def submit(
    inp: InputLike | Plan, client: ClientLike = None, *, options: RunOptions | None = None, **keywords: Any
) -> Future:
    """Start the expansion and return a Future of its ``ManyBodyResult``.

    ``inp``, ``options`` and the keywords are :func:`start`'s (an XYZ file with ``method=``,
    ``max_nbody=`` ... too). With ``client=None`` and no default client, the LocalCluster
    mbdask starts stays up until the returned Future is released.
    """
    run, cluster, xyz_options = split_keywords("submit", keywords, options, extra=XYZ_OPTIONS)
    sub = _start(inp, client, run, cluster, xyz_options, "submit")
    sub.connection.keep_alive_with(sub.future)
    return sub.future


def compute(
    inp: InputLike | Plan, client: ClientLike = None, *, options: RunOptions | None = None, **keywords: Any
) -> ManyBodyResult:
    """Run the expansion and wait for it; returns QCManyBody's ``ManyBodyResult``.

    ``inp``, ``options`` and the keywords are :func:`start`'s: a ManyBodyInput (object, dict,
    JSON or YAML file), or an XYZ file with the command line's model options as keywords, e.g.
    ``compute("water3.xyz", method="gfn2-xtb", max_nbody=3)``.
    With ``keep_going=True``, a failed fragment above the lowest order gives the result
    through the highest complete order (``extras["mbdask"]["partial"]``) instead of raising.
    """
    run, cluster, xyz_options = split_keywords("compute", keywords, options, extra=XYZ_OPTIONS)
    sub = _start(inp, client, run, cluster, xyz_options, "compute")
    try:
        return result_of(sub, keep_going=run.keep_going)
    finally:
        sub.connection.close()


_log = logging.getLogger("mbdask")


def say(message: str) -> None:
    """A notice for the user (stderr by default): the ``mbdask`` logger at WARNING."""
    _log.warning(message)


def _scatter_to_all(client: Client) -> Callable[[Any], Future]:
    """Put an object on every worker and return its future (for :func:`mbdask.graph.build.build_graph`'s ``share``).

    Only for workers forked from this process: scattered data cannot be recomputed, and if
    every worker holding it left (a batch system ending its jobs), the run could not go on
    with the workers that join next. Other clusters get it from the scheduler
    (:func:`_kept_by_scheduler`); scattering costs no round trip per worker.
    """
    return lambda value: client.scatter(value, broadcast=True, hash=False)


def _kept_by_scheduler(client: Client) -> Callable[[Any], SharedContext]:
    """Give the context to the scheduler, which hands it to each worker once
    (:class:`~mbdask.calculation.execute.SharedContext`).

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
    return workers_forked_here(conn.cluster or getattr(conn.client, "cluster", None))


def result_of(sub: Submission, *, keep_going: bool = False, timeout: float | None = None) -> ManyBodyResult:
    """Wait for ``sub`` (at most ``timeout`` seconds); on a fragment failure with ``keep_going``, its partial result.

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
            if sub.metrics is not None:
                sub.metrics.close()  # the final figures, store writes included, before the client closes
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
                f"mbdask: no worker is left on the scheduler{kept}; waiting up to {sub.worker_timeout:g} s for "
                "workers to join"
            )
        if now - alone_since >= sub.worker_timeout:
            kept = "; rerun with the same store to reuse the finished fragments" if sub.store is not None else ""
            raise NoWorkersError(
                f"no worker was left for {sub.worker_timeout:g} s (--worker-timeout), the run stopped{kept}"
            )
