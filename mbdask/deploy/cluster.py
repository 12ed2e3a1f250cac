"""Where the graph runs: the user's Client, a scheduler address, or a LocalCluster we start.

A LocalCluster started by mbdask is sized from the machine with psutil: one single-threaded
worker process per usable core, each declaring its resources (``cores``, ``memory``) so
fragment tasks can reserve exactly what they hand to QCEngine. Everything it opens listens
on 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import dask
import psutil
from dask.utils import parse_timedelta
from distributed import Client, LocalCluster, SpecCluster

from mbdask import config
from mbdask.deploy.forked_workers import can_fork_workers
from mbdask.deploy.worker_environment import DROPPED_WORKER_ENVIRONMENT, USER_ENVIRONMENT

ClientLike = Client | str | None


def usable_cores() -> int:
    """Cores this process may run on: its CPU affinity (psutil) and a container's CPU quota.

    The quota (cgroups v1 or v2, as in a Kubernetes pod or a batch job's container) is read by
    ``dask.system.cpu_count``; affinity alone misses it, and a LocalCluster sized from it would
    run more single-thread workers than the container may use at once.
    """
    import dask.system

    try:
        n = len(psutil.Process().cpu_affinity())
    except (AttributeError, psutil.Error):
        n = psutil.cpu_count(logical=True) or 1
    return max(1, min(n, dask.system.cpu_count()))


@dataclass
class ClusterSize:
    """Workers, threads per worker and memory per worker of a LocalCluster."""

    n_workers: int
    threads_per_worker: int
    memory_limit: int  # bytes per worker

    @classmethod
    def from_machine(
        cls,
        n_workers: int | None = None,
        threads_per_worker: int | None = None,
        memory_limit: str | int | float | None = None,
    ) -> ClusterSize:
        from dask.utils import parse_bytes

        cores = usable_cores()
        threads = threads_per_worker or 1
        workers = n_workers or max(1, cores // threads)
        if memory_limit is None:
            memory = int(
                psutil.virtual_memory().total * config.number("mbdask.local-cluster.memory-fraction") / workers
            )
        else:
            memory = int(parse_bytes(memory_limit) if isinstance(memory_limit, str) else memory_limit)
        return cls(workers, threads, memory)


def profile_interval() -> str | None:
    """How often the workers of mbdask's LocalCluster sample their running task's stack for the
    dashboard's Profile page (``mbdask.local-cluster.profile-interval``; None: Dask's own setting).

    Dask's default (10 ms) walks the stack and takes the GIL a hundred times a second in every
    worker: 16 single-thread workers on 2 cores then spend about a quarter more CPU, and the
    makespan/bound of benchmarks/bench_makespan.py is about 0.02 higher (docs/benchmarks.md).
    mbdask's 100 ms keeps the Profile page.
    """
    value = config.get("mbdask.local-cluster.profile-interval")
    return None if value is None else str(value)


@contextlib.contextmanager
def _mbdask_worker_configuration() -> Iterator[None]:
    """Spawn workers without :data:`DROPPED_WORKER_ENVIRONMENT` (unless the user set it) and
    with :func:`profile_interval`.

    Dask's nanny writes its pre-spawn variables into this process's own environment, so a
    cluster started earlier here (any Dask cluster) leaves them for the next one to inherit.
    The nanny hands its Dask configuration to the worker it spawns.
    """
    settings: dict = {f"distributed.nanny.pre-spawn-environ.{name}": None for name in DROPPED_WORKER_ENVIRONMENT}
    interval = profile_interval()
    if interval is not None:
        settings["distributed.worker.profile.interval"] = interval
    inherited = {
        name: os.environ.pop(name) for name, user in USER_ENVIRONMENT.items() if user is None and name in os.environ
    }
    try:
        with dask.config.set(settings):
            yield
    finally:
        os.environ.update(inherited)


#: How mbdask's LocalCluster starts its worker processes (Dask config ``mbdask.local-cluster.workers``,
#: environment ``DASK_MBDASK__LOCAL_CLUSTER__WORKERS``): "auto" forks them from this process where
#: that is safe (:mod:`mbdask.deploy.forked_workers`), else Dask spawns them; "spawn" always lets Dask spawn.
WORKER_START_METHODS = ("auto", "spawn")


def worker_start_method() -> str:
    method = config.get("mbdask.local-cluster.workers")
    if method not in WORKER_START_METHODS:
        raise ValueError(
            f"mbdask.local-cluster.workers must be one of {', '.join(WORKER_START_METHODS)}, not {method!r}"
        )
    return method


#: Where a scheduler without a dashboard serves its HTTP routes (health, metrics): any free port.
#: Dask's default is 8787 even then, so a second run on the machine warned that the port was taken.
QUIET_HTTP_ADDRESS = "127.0.0.1:0"


def start_local_cluster(size: ClusterSize, *, worker_imports: Sequence[str] = (), **kwargs) -> SpecCluster:
    """A process-based LocalCluster on loopback, workers declaring ``cores`` and ``memory``.

    Workers are forked from this process where that is safe (one thread, nothing else asked
    of the cluster; :mod:`mbdask.deploy.forked_workers`), after importing the modules in ``worker_imports``
    (the QC programs the run needs) so that no worker imports them again. Otherwise Dask
    spawns them. Either way they run without Dask's ``MALLOC_TRIM_THRESHOLD_`` (see
    :data:`DROPPED_WORKER_ENVIRONMENT`) and profile every :func:`profile_interval`; Dask's
    thread variables (``OMP_NUM_THREADS=1`` and friends) stay, and each fragment raises
    them to its cores while it runs.
    """
    options: dict[str, Any] = dict(
        n_workers=size.n_workers,
        threads_per_worker=size.threads_per_worker,
        memory_limit=size.memory_limit,
        resources={"cores": size.threads_per_worker, "memory": size.memory_limit},
        host="127.0.0.1",
        dashboard_address="127.0.0.1:8787",
        processes=True,
    )
    options.update(kwargs)
    with _mbdask_worker_configuration():
        forkable = worker_start_method() == "auto" and set(options) <= FORKED_OPTIONS and can_fork_workers()
        # the imports must not have started a thread either
        if forkable and _import_for_workers(worker_imports) and can_fork_workers():
            return _forked_cluster(size, options["dashboard_address"])
        if options.get("dashboard_address") is None:
            options["scheduler_kwargs"] = {
                **(options.get("scheduler_kwargs") or {}),
                "dashboard_address": QUIET_HTTP_ADDRESS,
            }
        return LocalCluster(**options)


def local_cluster(
    n_workers: int | None = None,
    threads_per_worker: int | None = None,
    memory_limit: str | int | float | None = None,
    **options,
) -> SpecCluster:
    """A LocalCluster of your own, set up as the one mbdask starts for a run: ``Client(mbdask.local_cluster())``.

    Sized from the machine (:class:`ClusterSize`: one single-threaded worker per usable core
    unless told otherwise) and started by :func:`start_local_cluster`: unlike a plain
    ``distributed.LocalCluster()``, its workers run without Dask's ``MALLOC_TRIM_THRESHOLD_``
    (QC programs about 1.7x slower with it, which mbdask warns about), declare the ``cores``
    and ``memory`` that fragments reserve, and are forked from this process where that is
    safe. ``options``: further LocalCluster options (``dashboard_address``, ...) and
    ``worker_imports`` (modules the workers need, imported before they are forked).
    Close it when done (``cluster.close()``, or use it in a ``with`` block).
    """
    return start_local_cluster(ClusterSize.from_machine(n_workers, threads_per_worker, memory_limit), **options)


#: The LocalCluster options a cluster of forked workers honours (anything else: Dask's LocalCluster).
FORKED_OPTIONS = frozenset(
    {"n_workers", "threads_per_worker", "memory_limit", "resources", "host", "dashboard_address", "processes"}
)


def _import_for_workers(modules: Sequence[str]) -> bool:
    """Import what forked workers should not import again, and fill QCEngine's per-process caches.

    True if all went well."""
    import importlib

    from mbdask.calculation.execute import warm_up

    try:
        for name in modules:
            importlib.import_module(name)
        warm_up()
    except Exception:  # a program that fails to import here fails on the workers too, and says so there
        return False
    return True


def _forked_cluster(size: ClusterSize, dashboard_address: str | None) -> ForkedCluster:
    """A SpecCluster shaped like LocalCluster (scheduler on loopback) whose workers are forked children."""
    from distributed import Scheduler

    from mbdask.deploy.forked_workers import ForkedWorker, WorkerPool

    pool = WorkerPool(size.n_workers)
    worker = {
        "cls": ForkedWorker,
        "options": {
            "pool": pool,
            "nthreads": size.threads_per_worker,
            "memory_limit": size.memory_limit,
            "resources": {"cores": size.threads_per_worker, "memory": size.memory_limit},
            "host": "127.0.0.1",
        },
    }
    scheduler = {
        "cls": Scheduler,
        "options": {
            "host": "127.0.0.1",
            "port": 0,
            "dashboard": dashboard_address is not None,
            "dashboard_address": dashboard_address or QUIET_HTTP_ADDRESS,
        },
    }
    try:
        return ForkedCluster(
            scheduler=scheduler, workers={i: worker for i in range(size.n_workers)}, silence_logs=logging.WARNING
        )
    finally:
        pool.close()  # children the cluster did not take


class ForkedCluster(SpecCluster):
    """A SpecCluster whose workers mbdask forked from this process (:func:`start_local_cluster` where that is safe).

    Its own class so that what follows from it can be asked explicitly (:func:`workers_forked_here`):
    no nanny brings a lost worker back, and the workers have this process's modules, programs
    and environment.
    """

    #: how its workers started (a LocalCluster's workers are spawned by Dask)
    worker_start_method: ClassVar[str] = "fork"


def workers_forked_here(cluster: object) -> bool:
    """Whether ``cluster`` (a cluster, a client's ``cluster`` or None) has workers forked from this process."""
    return isinstance(cluster, ForkedCluster)


@contextlib.contextmanager
def _silenced(*loggers: str) -> Iterator[None]:
    """Drop what the named loggers say inside the block.

    For lines that are Dask's own news of an end that mbdask reports itself."""
    found = [logging.getLogger(name) for name in loggers]
    levels = [logger.level for logger in found]
    for logger in found:
        logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        for logger, level in zip(found, levels):
            logger.setLevel(level)


@dataclass
class Connection:
    """A client to run on, and whatever mbdask started for it (to close when done)."""

    client: Client
    cluster: SpecCluster | None = None
    owns_client: bool = False

    def close(self) -> None:
        """Close what mbdask started. A client that lost its scheduler is closed without Dask's own
        ERROR line (its reconnection cancelled, with a traceback): mbdask has said what happened."""
        if self.owns_client:
            lost = self.client.status == "connecting"
            with _silenced("distributed.client") if lost else contextlib.nullcontext():
                self.client.close()
        if self.cluster is not None:
            self.cluster.close()

    def keep_alive_with(self, obj: object) -> None:
        """Close what we started once ``obj`` (the user's Future) is garbage-collected."""
        if self.owns_client or self.cluster is not None:
            weakref.finalize(obj, Connection.close, self)


def connect(
    client: ClientLike = None,
    *,
    n_workers: int | None = None,
    threads_per_worker: int | None = None,
    memory_limit: str | int | float | None = None,
    security=None,
    worker_imports: Sequence[str] = (),
    dashboard: bool = True,
    scheduler_file: str | os.PathLike | None = None,
) -> Connection:
    """Resolve ``client``: a Client is used as is, a string is a scheduler address, None
    means the default client if there is one, else the scheduler at Dask config ``scheduler-address``
    if set (where ``Client()`` goes: ``DASK_SCHEDULER_ADDRESS``, the client rank of
    ``dask_mpi.initialize()``), otherwise a new LocalCluster sized from the machine
    (``worker_imports``: modules its workers need, imported before they are forked; ``dashboard``:
    whether its scheduler serves Dask's dashboard, which costs about 0.4 s to start here).
    ``scheduler_file``: instead of ``client``, the file a scheduler wrote
    (:mod:`mbdask.deploy.scheduler_file`); both given is a :class:`~mbdask.errors.BadInputError`."""
    if scheduler_file is not None:
        return _connect_by_file(client, scheduler_file, security)
    if isinstance(client, Client):
        return Connection(client)
    if isinstance(client, (str, os.PathLike)):
        return Connection(client_of(str(client), security), owns_client=True)
    if client is not None:
        raise TypeError(
            f"client must be a distributed.Client, a scheduler address or None, not {type(client).__name__}"
        )
    if n_workers is None and threads_per_worker is None and memory_limit is None:
        with contextlib.suppress(ValueError):
            from distributed import default_client

            return Connection(default_client())
        configured = dask.config.get("scheduler-address", None)
        if configured:  # Dask's convention, as Client() follows it: DASK_SCHEDULER_ADDRESS, dask_mpi.initialize()
            return Connection(client_of(str(configured), security), owns_client=True)
    size = ClusterSize.from_machine(n_workers, threads_per_worker, memory_limit)
    extra = {} if dashboard else {"dashboard_address": None}
    cluster = start_local_cluster(size, worker_imports=worker_imports, **extra)
    return Connection(Client(cluster, set_as_default=False), cluster=cluster, owns_client=True)


def client_of(address: str, security: Any) -> Client:
    """A client of the scheduler at ``address``; one that does not answer within Dask's connect timeout is a
    :class:`~mbdask.errors.BadInputError` naming it (a wrong address or port is the usual cause), not a traceback."""
    from mbdask.errors import BadInputError

    try:
        return Client(address, set_as_default=False, security=security)
    except (OSError, ValueError) as exc:
        raise BadInputError(
            f"no Dask scheduler answered at {address} ({exc}); check the address and port, and that the scheduler "
            "is running"
        ) from None


def _connect_by_file(client: ClientLike, scheduler_file: str | os.PathLike, security: Any) -> Connection:
    """A connection to the scheduler that wrote ``scheduler_file``; ``client`` must be None (one way to the
    scheduler, not two that might name different ones)."""
    from mbdask.deploy.scheduler_file import client_from_scheduler_file
    from mbdask.errors import BadInputError

    if client is not None:
        given = "a Client" if isinstance(client, Client) else f"the scheduler address {client}"
        raise BadInputError(
            f"give a scheduler file or a client/scheduler address, not both ({given} and {scheduler_file})"
        )
    if not isinstance(scheduler_file, (str, os.PathLike)):
        raise BadInputError(f"scheduler_file must be a path, not {type(scheduler_file).__name__}")
    say = logging.getLogger("mbdask").warning
    return Connection(client_from_scheduler_file(scheduler_file, security=security, say=say), owns_client=True)


def want_dashboard(predicted_seconds_per_core: float, choice: bool | str | None = None) -> bool:
    """Whether a LocalCluster mbdask starts should serve Dask's dashboard.

    ``choice`` True/False decides; None reads ``mbdask.local-cluster.dashboard`` (default
    "auto"); "auto" serves it where there is time to watch (runs predicted to take at least
    ``mbdask.local-cluster.dashboard-min-seconds`` per core): starting it (Bokeh and its
    server) costs about 0.4 s, a tenth of a short xtb run, and nobody opens a dashboard for
    a run that ends in a few seconds.
    """
    if choice is None:
        choice = config.get("mbdask.local-cluster.dashboard")
    if isinstance(choice, str) and choice.lower() in ("true", "false"):
        choice = choice.lower() == "true"
    if isinstance(choice, bool):
        return choice
    if choice != "auto":
        raise ValueError(f"mbdask.local-cluster.dashboard must be auto, true or false, not {choice!r}")
    return predicted_seconds_per_core >= config.number("mbdask.local-cluster.dashboard-min-seconds")


def worker_timeout(seconds: float | str | None = None) -> float:
    """Seconds to wait for workers (none yet, or none left) before giving up: ``seconds``, else
    Dask config ``mbdask.worker-timeout`` (mbdask.yaml: 600). Batch-queue jobs start when the
    queue lets them, and jobs that reached their wall time leave a cluster with no workers."""
    value = seconds if seconds is not None else config.get("mbdask.worker-timeout")
    try:
        value = float(parse_timedelta(value, default="s"))
    except (TypeError, ValueError, KeyError):
        raise ValueError(f"worker timeout must be a number of seconds (e.g. 600 or 10m), got {value!r}") from None
    if value <= 0:
        raise ValueError(f"worker timeout must be positive, got {value!r}")
    return value


def scheduler_address(client: Client) -> str:
    return str(getattr(client.scheduler, "address", "") or "")


def count_workers(client: Client) -> int:
    """Workers the scheduler has now (asked, not the client's periodic copy)."""
    return len(client.nthreads())


def wait_for_workers(client: Client, timeout: float, say: Callable[[str], None]) -> None:
    """Return once the scheduler has a worker; ``say`` why we wait; ``TimeoutError`` after ``timeout`` seconds."""
    if count_workers(client):
        return
    say(
        f"mbdask: waiting for workers to join the scheduler at {scheduler_address(client)} "
        f"(up to {timeout:g} s; --worker-timeout)"
    )
    # asked every half second rather than Client.wait_for_workers, whose timeout leaves an
    # unretrieved future behind ("Future exception was never retrieved" at exit)
    deadline = time.monotonic() + timeout
    while not count_workers(client):
        if time.monotonic() >= deadline:
            raise TimeoutError(f"no worker joined the scheduler at {scheduler_address(client)} within {timeout:g} s")
        time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))


def dashboard_link(client: Client) -> str | None:
    """The link to the scheduler's own dashboard, or None where it serves none.

    ``Client.dashboard_link`` falls back to a template (``127.0.0.1:8787``), which on a remote
    or batch-queue cluster names another process's dashboard or nothing. The scheduler's HTTP
    server runs even without the dashboard (health and metrics routes), so its port alone
    does not say that a dashboard is there: the status page is asked for (one request).
    """
    import urllib.error
    import urllib.request

    from distributed.utils import format_dashboard_link

    port = client.scheduler_info().get("services", {}).get("dashboard")
    if not port:
        return None
    host = scheduler_address(client).split("://", 1)[-1].rsplit(":", 1)[0].strip("[]") or "127.0.0.1"
    link = format_dashboard_link(host, port)
    try:
        with urllib.request.urlopen(link, timeout=2) as reply:
            return link if reply.status == 200 else None
    except (OSError, ValueError, urllib.error.URLError):
        return None


def worker_resources(client: Client) -> list[dict]:
    """Per worker: threads, memory limit and declared resources, from the scheduler.

    Asked of the scheduler directly: ``Client.scheduler_info()`` returns a cache that the
    client's periodic refresh (which fetches no workers) can overwrite between its own fetch
    and its return, so it sometimes says "no workers" on a cluster that has them.
    """
    info = client.sync(client.scheduler.identity, n_workers=-1)
    return [
        {
            "address": addr,
            "nthreads": w.get("nthreads", 1),
            "memory_limit": w.get("memory_limit") or 0,
            "resources": dict(w.get("resources") or {}),
        }
        for addr, w in info.get("workers", {}).items()
    ]


@contextlib.contextmanager
def connected(client: ClientLike = None, **options) -> Iterator[Connection]:
    """``connect`` as a context manager that closes what it started."""
    conn = connect(client, **options)
    try:
        yield conn
    finally:
        conn.close()
