"""Local Dask workers forked from this process before any thread starts.

A LocalCluster spawns a fresh interpreter per worker, and each one imports Dask, QCEngine,
QCElemental and mbdask again, then the QC program at its first fragment: about a second
before the first fragment on this machine, more on a node with many cores where all
workers import at once. The process that runs ``python -m mbdask run`` has already
imported all of that to plan the expansion. Forked from it, a worker starts with
everything in memory and runs its first fragment within a few tens of milliseconds.

Forking is only safe from a process that runs no other thread: a lock held by another
thread stays locked in the child forever, and an OpenMP runtime that has started its
thread pool (say, a notebook that already ran PySCF) hangs the child at its first parallel
region. So mbdask forks only while this process has exactly one thread (Linux
``/proc/self/task``), before the scheduler's event-loop thread starts, and otherwise lets
Dask spawn its workers as usual (:func:`mbdask.deploy.cluster.start_local_cluster`).

One kind of thread is stopped first rather than counted: the idle pool of an OpenBLAS built
with pthreads (numpy's and SciPy's wheels), which starts as soon as numpy is imported.
OpenBLAS itself stops that pool before every fork (its ``pthread_atfork`` handler,
``blas_thread_shutdown_``) and starts it again at its next call, so stopping it first, while
this process runs no other Python thread that could be inside a BLAS call, changes nothing
but the count (:func:`stop_idle_blas_pools`). A script calling ``mbdask.compute`` thereby
forks its workers as the command line does. The command line also keeps its own BLAS/OpenMP
pools at one thread (``mbdask.cli.entry``), so that they never start; a forked worker gets
the thread settings a spawned one gets from Dask's nanny (:func:`single_threaded_pools`), and
each fragment raises the pools to its cores as it runs.

The children are plain ``distributed.Worker`` processes without a nanny, driven by
:class:`ForkedWorker`, a ``SpecCluster`` process interface: the scheduler's address goes
down a pipe, the worker's address comes back once it has registered. A child dies with its
parent (``PR_SET_PDEATHSIG``) and ignores Ctrl-C, which the parent handles by closing the
cluster. Without a nanny a worker that dies is not restarted; Dask reruns its tasks on the
others, as it does when a nanny gives up.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

from distributed.deploy.spec import ProcessInterface
from threadpoolctl import ThreadpoolController

from mbdask import config
from mbdask.deploy.worker_environment import drop_dask_environment

_PR_SET_PDEATHSIG = 1


def _close_timeout() -> float:
    """Seconds a closing worker gets to exit by itself before it is killed (``mbdask.local-cluster.close-timeout``)."""
    return config.number("mbdask.local-cluster.close-timeout")


def threads_in_this_process() -> int | None:
    """Threads of this process as the kernel counts them (OpenMP and BLAS pools included), None off Linux."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return None


def stop_idle_blas_pools() -> None:
    """Stop the thread pools of the OpenBLAS libraries loaded here (pthreads builds), as OpenBLAS does
    before every fork.

    Only while this is the process's one Python thread: then no BLAS call is running that
    the pool could be serving. OpenBLAS starts the pool again at its next call that wants it.
    """
    if threading.active_count() != 1:
        return
    for library in ThreadpoolController().select(internal_api="openblas").lib_controllers:
        shutdown = getattr(library.dynlib, "blas_thread_shutdown_", None)
        if getattr(library, "threading_layer", None) == "pthreads" and shutdown is not None:
            shutdown()


def can_fork_workers() -> bool:
    """True where forking is safe: Linux, and this process runs no thread but its main one
    (OpenBLAS's idle pools stopped first, :func:`stop_idle_blas_pools`)."""
    if not hasattr(os, "fork"):
        return False
    stop_idle_blas_pools()
    return threads_in_this_process() == 1


def single_threaded_pools() -> None:
    """In a forked worker: the thread variables a spawned worker gets from Dask's nanny
    (``distributed.nanny.pre-spawn-environ``: ``OMP_NUM_THREADS=1`` and friends, unless set
    already), and the BLAS/OpenMP pools loaded before the fork limited to match.

    A spawned worker's libraries read those variables when they load; a forked one's were
    loaded by the parent with the parent's settings (a script's numpy: every core).
    """
    import dask

    wanted = dask.config.get("distributed.nanny.pre-spawn-environ", default={}) or {}
    added = {
        name: str(value)
        for name, value in wanted.items()
        if name in POOL_VARIABLES and value is not None and name not in os.environ
    }
    os.environ.update(added)
    for name, value in added.items():
        ThreadpoolController().select(internal_api=POOL_VARIABLES[name]).limit(limits=int(value))


#: Thread variables of Dask's pre-spawn environment, and the threadpoolctl ``internal_api`` each one sets.
POOL_VARIABLES = {"OMP_NUM_THREADS": "openmp", "OPENBLAS_NUM_THREADS": "openblas", "MKL_NUM_THREADS": "mkl"}


@dataclass
class _Child:
    """One forked process waiting for its worker settings."""

    pid: int
    to_child: int  # write end: the worker's settings, one JSON line
    from_child: int  # read end: the worker's address once registered, one line

    def send(self, settings: dict) -> None:
        with os.fdopen(self.to_child, "w") as pipe:
            pipe.write(json.dumps(settings) + "\n")

    def release(self) -> None:
        """Tell a child that will never be used to exit (it reads end-of-file)."""
        for fd in (self.to_child, self.from_child):
            try:
                os.close(fd)
            except OSError:
                pass
        self.reap(_close_timeout())

    def stop(self) -> None:
        """Ask the child's worker to close (SIGTERM), then reap it."""
        try:
            os.kill(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        self.reap(_close_timeout())

    def reap(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for the child to exit, then kill it; never leaves a zombie."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                pid, _ = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                return
            if pid:
                return
            time.sleep(0.01)
        try:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass


class WorkerPool:
    """Processes forked now, each to become one Dask worker when :class:`ForkedWorker` starts it."""

    def __init__(self, n_workers: int) -> None:
        if not can_fork_workers():
            raise RuntimeError(f"this process runs {threads_in_this_process()} threads: forking workers is not safe")
        self._idle: list[_Child] = []
        for _ in range(n_workers):
            self._idle.append(self._fork())

    def _fork(self) -> _Child:
        settings_read, settings_write = os.pipe()
        address_read, address_write = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the child: never returns
            os.close(settings_write)
            os.close(address_read)
            for sibling in self._idle:  # else a sibling's settings pipe would never see end-of-file
                os.close(sibling.to_child)
                os.close(sibling.from_child)
            _child_main(settings_read, address_write)
        os.close(settings_read)
        os.close(address_write)
        return _Child(pid, settings_write, address_read)

    def take(self) -> _Child:
        if not self._idle:
            raise RuntimeError("no forked worker process left (a cluster of forked workers cannot grow)")
        return self._idle.pop()

    def close(self) -> None:
        """Let the children that were never used exit."""
        while self._idle:
            self._idle.pop().release()


def _child_main(settings_fd: int, address_fd: int) -> None:
    """Body of a forked child: wait for settings, run a Dask worker until it closes, exit."""
    code = 1
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
        try:
            ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        except (OSError, AttributeError):  # pragma: no cover - not Linux
            pass
        if os.getppid() == 1:  # the parent died before prctl
            os._exit(1)
        with os.fdopen(settings_fd) as pipe:
            line = pipe.readline()
        if not line:  # released unused
            os._exit(0)
        asyncio.run(_run_worker(json.loads(line), address_fd))
        code = 0
    except BaseException:  # noqa: BLE001 - a child must never return into the parent's code
        import traceback

        traceback.print_exc()
    finally:
        os._exit(code)


async def _run_worker(settings: dict, address_fd: int) -> None:
    from distributed import Worker

    drop_dask_environment()  # what a spawned worker's nanny leaves out
    single_threaded_pools()  # and what it sets

    logging.getLogger("distributed").setLevel(settings.pop("log_level", logging.WARNING))
    scheduler = settings.pop("scheduler")
    async with Worker(scheduler, **settings) as worker:
        # SIGTERM (ForkedWorker.close) closes the worker the way its nanny would
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, lambda: asyncio.ensure_future(_close(worker)))
        with os.fdopen(address_fd, "w") as pipe:
            pipe.write(worker.address + "\n")
        await worker.finished()


async def _close(worker: Any) -> None:
    """Close the worker because its cluster closes: the tasks it still runs are cancelled on purpose
    (the run ended, was interrupted or failed), so Dask's warning for each cancelled one is not said."""
    logging.getLogger("distributed.worker.state_machine").setLevel(logging.ERROR)
    await worker.close(reason="cluster closed")


class ForkedWorker(ProcessInterface):
    """A ``SpecCluster`` worker that is one of a :class:`WorkerPool`'s forked processes.

    ``options`` are ``distributed.Worker`` keyword arguments (JSON-serialisable: nthreads,
    memory_limit, resources, host, name ...).
    """

    def __init__(self, scheduler: str, *, pool: WorkerPool, name: Any = None, **options: Any) -> None:
        super().__init__()
        self.scheduler = scheduler
        self.name = name
        self.options = options
        self._pool = pool
        self._child: _Child | None = None

    async def start(self) -> None:
        self._child = self._pool.take()
        settings = {**self.options, "scheduler": self.scheduler, "name": self.name, "log_level": logging.WARNING}
        self._child.send(settings)
        loop = asyncio.get_running_loop()
        address = await asyncio.wait_for(
            loop.run_in_executor(None, _read_line, self._child.from_child),
            config.number("mbdask.local-cluster.start-timeout"),
        )
        if not address:
            raise RuntimeError(f"forked worker process {self._child.pid} exited before it started its worker")
        self.address = address
        await super().start()

    async def close(self) -> None:
        if self._child is not None:
            child, self._child = self._child, None
            await asyncio.get_running_loop().run_in_executor(None, child.stop)
        await super().close()


def _read_line(fd: int) -> str:
    with os.fdopen(fd) as pipe:
        return pipe.readline().strip()
