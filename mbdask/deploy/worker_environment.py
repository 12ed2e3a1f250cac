"""The environment mbdask's local workers start with, whether Dask spawns them or mbdask forks them.

Dask's nanny sets variables before spawning a worker that suit dataframe work and slow QC
programs down; a worker forked by mbdask inherits whatever a Dask cluster started earlier
left in this process's environment. Both kinds of worker leave them out, unless the user
set them before the process started.
"""

from __future__ import annotations

import os

#: Environment that Dask's nanny sets before spawning a worker, which mbdask's LocalCluster leaves out.
#: ``MALLOC_TRIM_THRESHOLD_`` (Dask sets 65536 against fragmentation in dataframe work) also switches
#: off glibc's dynamic mmap threshold: every large array a QC program allocates is then mmap'd and
#: unmapped afresh, and an xtb fragment takes about 1.7x as long (benchmarks/bench_executors.py).
#: A value the user exported before importing mbdask is still honoured.
DROPPED_WORKER_ENVIRONMENT = ("MALLOC_TRIM_THRESHOLD_",)


def startup_environment() -> dict[str, str]:
    """The environment this process started with (what glibc's malloc read, and what the user
    set, as opposed to what a Dask cluster started here put into ``os.environ`` later), where
    Linux shows it."""
    try:
        with open("/proc/self/environ", "rb") as handle:
            entries = handle.read().split(b"\0")
    except OSError:
        return dict(os.environ)
    pairs = (entry.decode(errors="replace").partition("=") for entry in entries if b"=" in entry)
    return {key: value for key, _, value in pairs}


#: What the user set of :data:`DROPPED_WORKER_ENVIRONMENT` when this process started (None: not set).
USER_ENVIRONMENT = {name: startup_environment().get(name) for name in DROPPED_WORKER_ENVIRONMENT}


def drop_dask_environment() -> None:
    """In a forked worker: remove :data:`DROPPED_WORKER_ENVIRONMENT` that the user did not set
    (a Dask cluster started earlier in the parent leaves them in its environment, and the QC
    programs a worker starts would inherit them)."""
    for name, user in USER_ENVIRONMENT.items():
        if user is None:
            os.environ.pop(name, None)
