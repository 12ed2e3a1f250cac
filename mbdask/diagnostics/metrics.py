"""A run's progress as Prometheus metrics, on the ``/metrics`` page Dask's scheduler already serves.

Batch-system operators watch long runs from Prometheus and Grafana, which scrape the
scheduler (``http://SCHEDULER:8787/metrics``, its dashboard port). The counts live in the
client, though (:class:`~mbdask.diagnostics.progress.Progress`, the store's
:class:`~mbdask.calculation.store.StoreWriter`), and the scheduler may be another process on
another host (``--scheduler ADDRESS``). So the two halves meet at the scheduler:

* in the client, :func:`watch` hands a run to its client's :class:`MetricsFeed`, a thread that
  about once a second (:data:`INTERVAL`) puts a small snapshot of every run it watches into the
  scheduler's metadata (``Client.set_metadata``, a few hundred bytes per run; never per
  calculation, so the run's hot path pays nothing);
* in the scheduler, :func:`install_collector` (sent once per client with
  ``Client.run_on_scheduler``) registers :class:`MbdaskCollector` in ``prometheus_client``'s
  global registry, the one Dask's ``/metrics`` page serves; at each scrape it turns the
  snapshots into metric families.

Only runs with progress (``progress=True``, the command line's default) are watched: their
counts are the progress display's. A scheduler without ``prometheus_client`` declines the
installation (and one that cannot import mbdask refuses it, though it could not run an
expansion either: it unpickles the graph): the run goes on without metrics and says so in the
``mbdask`` logger at INFO. Nothing here imports ``prometheus_client`` but the collector, in the
scheduler, so the client needs none.

What is kept: each client's latest snapshot of each of its runs. A client's new run, once its
earlier runs have finished, replaces them; a disconnected client's figures stay until a newer
snapshot of any client arrives (a finished run stays on the page until the next one starts).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from mbdask.upstream import scraped_scheduler

if TYPE_CHECKING:
    from distributed import Client

    from mbdask.diagnostics.progress import Progress

logger = logging.getLogger("mbdask")

#: the scheduler's metadata key (``scheduler.task_metadata[METADATA_KEY][client id]``) of the snapshots
METADATA_KEY = "mbdask-metrics"
#: seconds between snapshots: about as often as the progress display redraws, and far below Prometheus's
#: scrape interval (15 s by default), so a scrape never sees figures much older than the display's
INTERVAL = 1.0
#: states of a calculation in ``mbdask_calculations``; per model chemistry and order they add up to the total
STATES = ("done", "failed", "to_go")


class Writes(Protocol):
    """What the feed reads of a store writer (:class:`~mbdask.calculation.store.StoreWriter`)."""

    written: int
    not_saved: int

    @property
    def pending(self) -> int:
        """Units finished or running whose outputs are not written yet."""
        ...


# --- the client's side -----------------------------------------------------------------------


@dataclass
class Run:
    """One watched expansion: its progress, its store writer, and its name in the metrics (label ``run``)."""

    progress: Progress
    writer: Writes | None = None
    #: the ``run`` label: 8 hex digits, new for each run
    name: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    started: float = field(default_factory=time.time)
    #: True once its last snapshot was taken (everything finished and written, or :meth:`close` was called)
    finished: bool = False
    feed: MetricsFeed | None = field(default=None, repr=False)

    def close(self) -> None:
        """The run ended (a result, a failure, an interrupt): push its final figures now, and stop watching it."""
        if self.feed is not None:
            self.feed.close(self)

    def snapshot(self, poll: bool = False) -> dict[str, Any]:
        """The run's figures as plain data (msgpack: the scheduler keeps it in its metadata).

        The progress is polled here where ``poll`` or where nobody else polled it in the last
        :data:`INTERVAL` (no display draws it); otherwise its counts are as the display's last poll left them.
        """
        progress = self.progress
        with progress.lock:
            if poll or time.monotonic() - progress.polled_at >= INTERVAL:
                progress.poll()
            levels = [[c.model, str(c.nbody), c.done, c.failed, c.total] for c in progress.levels.values()]
            left = progress.remaining_seconds()
            settled = progress.pending == 0
            elapsed = progress.elapsed
        if settled:
            left = 0.0
        store = None if self.writer is None else [self.writer.written, self.writer.not_saved]
        return {
            "started": self.started,
            "updated": time.time(),
            "elapsed": elapsed,
            "time_left": left,
            "finished": self.finished or settled,
            "levels": levels,
            "store": store,
        }


class MetricsFeed:
    """Pushes the snapshots of one client's runs to its scheduler, every :data:`INTERVAL` seconds, from a thread.

    One per client (:func:`feed_for`), however many runs it watches (many structures are many
    runs): one message a second to the scheduler whatever their number. ``runs`` holds the runs
    still going; a finished one is left as its last snapshot, so that the feed holds no progress
    (nor the futures in it) of a run that has ended.
    """

    def __init__(self, client: Client, interval: float = INTERVAL) -> None:
        #: weakly: the feed must not keep a client alive (:data:`_FEEDS` holds feeds by their client)
        self._client = weakref.ref(client)
        self.interval = interval
        self.runs: dict[str, Run] = {}
        self._snapshots: dict[str, dict[str, Any]] = {}
        self._lock = threading.RLock()
        self._running = False  # the thread goes on; set and cleared under the lock

    def add(self, run: Run) -> Run:
        """Watch ``run``; where every run watched so far has finished, the new one replaces them."""
        with self._lock:
            if not self.runs:
                self._snapshots.clear()
            run.feed = self
            self.runs[run.name] = run
            if not self._running:
                self._running = True
                threading.Thread(target=self._loop, name="mbdask-metrics", daemon=True).start()
        return run

    def close(self, run: Run) -> None:
        """Take ``run``'s last snapshot and push it at once (before the caller closes its client)."""
        with self._lock:
            if self.runs.get(run.name) is not run:
                return
            self._snapshots[run.name] = {**run.snapshot(poll=True), "finished": True}
            run.finished = True
            del self.runs[run.name]
            self._push()

    def _loop(self) -> None:
        while True:
            time.sleep(self.interval)
            with self._lock:
                if self._live_client() is None or not self.runs:  # closed, or every run closed and pushed
                    self._running = False
                    return
                for run in list(self.runs.values()):
                    self._snapshots[run.name] = snap = run.snapshot()
                    if snap["finished"] and (run.writer is None or not run.writer.pending):  # figures move no more
                        run.finished = True
                        del self.runs[run.name]
                self._push()
                if not self.runs:
                    self._running = False
                    return

    def _live_client(self) -> Client | None:
        client = self._client()
        return None if client is None or client.status in ("closing", "closed") else client

    def _push(self) -> None:
        """Put the snapshots into the scheduler's metadata; a failure (the scheduler went away) is the run's to
        report, not the feed's."""
        client = self._live_client()
        if client is None:
            return
        try:
            client.set_metadata([METADATA_KEY, client.id], {"updated": time.time(), "runs": self._snapshots})
        except Exception as exc:  # metrics never stop a run
            logger.debug("mbdask metrics: could not update the scheduler: %s", exc)


#: the feed of each client (None: its scheduler cannot show metrics), so a scheduler is asked once per client
_FEEDS: weakref.WeakKeyDictionary[Client, MetricsFeed | None] = weakref.WeakKeyDictionary()
_FEEDS_LOCK = threading.Lock()


def feed_for(client: Client) -> MetricsFeed | None:
    """The client's feed, made at the first call, when the collector is installed in its scheduler;
    None where the scheduler cannot serve mbdask's metrics (no mbdask or no ``prometheus_client`` there)."""
    with _FEEDS_LOCK:
        if client in _FEEDS:
            return _FEEDS[client]
        feed: MetricsFeed | None = None
        try:
            installed = client.run_on_scheduler(install_collector)
        except Exception as exc:  # a plain `dask scheduler` without mbdask: no metrics, no error
            logger.info("mbdask: no Prometheus metrics on the scheduler (it cannot import mbdask: %s)", exc)
        else:
            if installed:
                feed = MetricsFeed(client)
            else:
                logger.info("mbdask: no Prometheus metrics on the scheduler (prometheus_client is not installed there)")
        _FEEDS[client] = feed
        return feed


def watch(client: Client, progress: Progress, writer: Writes | None = None) -> Run | None:
    """Publish ``progress`` (and ``writer``'s store counts) on the scheduler's ``/metrics`` while the run goes on.

    Returns the :class:`Run` (its ``name`` is the ``run`` label; call :meth:`Run.close` when the run
    ends), or None where the scheduler cannot show metrics.
    """
    feed = feed_for(client)
    if feed is None:
        return None
    return feed.add(Run(progress, writer))


# --- the scheduler's side --------------------------------------------------------------------


class MbdaskCollector:
    """A ``prometheus_client`` collector of the mbdask snapshots in the schedulers of this process.

    One per process (Prometheus's registry refuses a metric name twice); it reads the scheduler
    each installation named, as long as that scheduler runs (tests start several, one after
    another, in one process).
    """

    def __init__(self) -> None:
        self.schedulers: weakref.WeakSet[Any] = weakref.WeakSet()

    def describe(self) -> list:
        """Nothing ahead of time: the registry then does not call :meth:`collect` when registering."""
        return []

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        calculations = GaugeMetricFamily(
            "mbdask_calculations",
            "Fragment calculations of an mbdask run by model chemistry, n-body order and state "
            "(done, failed, to_go: they add up to the order's total)",
            labels=["run", "model", "nbody", "state"],
        )
        left = GaugeMetricFamily(
            "mbdask_time_left_seconds",
            "Estimated seconds until the run's calculations are done (0 once none is left)",
            labels=["run"],
        )
        elapsed = GaugeMetricFamily("mbdask_elapsed_seconds", "Seconds since the run was sent", labels=["run"])
        finished = GaugeMetricFamily(
            "mbdask_run_finished",
            "1 once nothing of the run is left to compute (done, failed or stopped)",
            labels=["run"],
        )
        updated = GaugeMetricFamily(
            "mbdask_last_update_timestamp_seconds",
            "Unix time of the client's last snapshot (stale: the client is gone)",
            labels=["run"],
        )
        writes = CounterMetricFamily(
            "mbdask_store_writes", "Fragment outputs written into the checkpoint store", labels=["run"]
        )
        write_failures = CounterMetricFamily(
            "mbdask_store_write_failures",
            "Fragment outputs that finished but could not be written into the checkpoint store",
            labels=["run"],
        )
        for name, snap in self.snapshots():
            for model, nbody, done, failed, total in snap["levels"]:
                for state, value in zip(STATES, (done, failed, total - done - failed)):
                    calculations.add_metric([name, model, nbody, state], value)
            if snap["time_left"] is not None:
                left.add_metric([name], snap["time_left"])
            elapsed.add_metric([name], snap["elapsed"])
            finished.add_metric([name], 1.0 if snap["finished"] else 0.0)
            updated.add_metric([name], snap["updated"])
            if snap["store"] is not None:
                writes.add_metric([name], snap["store"][0])
                write_failures.add_metric([name], snap["store"][1])
        yield from (calculations, left, elapsed, finished, updated, writes, write_failures)

    def snapshots(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """(run label, snapshot) of the runs to show, dropping what a newer snapshot replaced.

        Those of the scheduler whose page is scraped, where Dask says which (two clusters in one
        process, e.g. a notebook's, each show their own runs); else those of every running one.
        """
        scraped = scraped_scheduler()
        schedulers = list(self.schedulers) if scraped is None else [s for s in self.schedulers if s is scraped]
        for scheduler in schedulers:
            if getattr(scheduler.status, "name", "") != "running":
                continue
            for entry in prune(scheduler.task_metadata.get(METADATA_KEY), set(scheduler.clients)).values():
                yield from entry["runs"].items()


def prune(entries: dict[str, Any] | None, connected: set[str]) -> dict[str, Any]:
    """Of ``entries`` (client id -> its runs' snapshots), drop those of disconnected clients but the newest.

    A run's figures stay after its client leaves (a finished run, for the dashboard's last look),
    until any newer snapshot arrives. Drops them from ``entries`` itself.
    """
    if not entries:
        return {}
    newest = max(entries, key=lambda client: entries[client]["updated"])
    for client in [c for c in entries if c not in connected and c != newest]:
        del entries[client]
    return entries


_COLLECTOR: MbdaskCollector | None = None
_COLLECTOR_LOCK = threading.Lock()


def install_collector(dask_scheduler: Any = None) -> bool:
    """Run in the scheduler (``Client.run_on_scheduler``): show mbdask's metrics on its ``/metrics`` page.

    Registers the one :class:`MbdaskCollector` of this process in ``prometheus_client``'s global
    registry, which Dask's page serves, and has it read ``dask_scheduler``. False where
    ``prometheus_client`` is not installed (Dask's page then says metrics are not available).
    """
    global _COLLECTOR
    try:
        import prometheus_client
    except ImportError:
        return False
    with _COLLECTOR_LOCK:
        if _COLLECTOR is None:
            _COLLECTOR = MbdaskCollector()
            prometheus_client.REGISTRY.register(_COLLECTOR)
        if dask_scheduler is not None:
            _COLLECTOR.schedulers.add(dask_scheduler)
    return True
