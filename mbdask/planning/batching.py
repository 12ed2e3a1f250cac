"""Grouping fragment calculations into Dask tasks ("units"), and the cores each unit gets.

Dask costs about a millisecond of scheduler and worker time per task; an xtb fragment
takes five. Cheap fragments of one model chemistry and n-body order therefore travel in
batches, while expensive fragments stay one per task so that the scheduler can balance
them. A batch holds about 1/(units per worker x workers) of its order's work, between a
least and a most predicted duration (:class:`BatchLimits`, from ``mbdask.batching`` in
mbdask.yaml), so that per-task cost stays a few percent
of the work; in the order's last quarter the batches shrink as in guided
self-scheduling (at most 1/(2 x workers) of the work still unbatched). Priorities run
larger units first within an order, so an order ends with its smallest batches and the
workers finish together instead of one finishing a large batch alone.

Hybrid parallelism: with ``auto_cores``, a fragment predicted to take longer than an
even share of the whole run per core (it would finish the run alone) gets more cores,
up to the most any worker has, so that it finishes sooner.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import groupby
from typing import Any

from mbdask import config
from mbdask.planning.cost import CostModel
from mbdask.planning.plan import FragmentJob, gc_paused


@dataclass(frozen=True)
class BatchLimits:
    """Bounds of a batch's predicted duration in seconds, and the units per worker thread and n-body
    order that batching aims to leave for load balance (``mbdask.batching.*``), read once per plan."""

    min_seconds: float
    max_seconds: float
    units_per_worker: int

    @classmethod
    def from_config(cls) -> BatchLimits:
        return cls(
            config.number("mbdask.batching.min-seconds"),
            config.number("mbdask.batching.max-seconds"),
            config.number("mbdask.batching.units-per-worker"),
        )


@dataclass(frozen=True)
class Unit:
    """One Dask task: fragment calculations run one after another with ``cores`` cores each."""

    jobs: tuple[FragmentJob, ...]
    seconds: float  # predicted, on ``cores`` cores
    cores: int = 1
    #: predicted seconds of each job (they sum to ``seconds``); the report sets them beside the measured
    predicted: tuple[float, ...] = ()
    #: a unit that computes nothing but takes its outputs from units already sent: their Dask
    #: futures, and the label of each job there
    sources: tuple[Any, ...] = ()
    source_labels: tuple[str, ...] = ()
    #: the sources are another expansion's (the same calculations, :mod:`mbdask.workflows.structures`), so their
    #: outputs count as not computed here; False: this expansion's own, sent before its graph (energy screening)
    borrowed: bool = True

    @property
    def model(self) -> str:
        return self.jobs[0].model

    @property
    def nbody(self) -> int:
        return self.jobs[0].nbody


def batch_target(
    total_seconds: float, workers: int, unbatched: float | None = None, limits: BatchLimits | None = None
) -> float:
    """Predicted seconds per batch for an order worth ``total_seconds``, ``unbatched`` of it still to batch."""
    limits = limits or BatchLimits.from_config()
    workers = max(1, workers)
    target = min(limits.max_seconds, total_seconds / (limits.units_per_worker * workers))
    if unbatched is not None:
        target = min(target, unbatched / (2 * workers))
    return max(limits.min_seconds, target)


def make_units(
    jobs: Sequence[FragmentJob],
    cost: CostModel,
    *,
    workers: int,
    batch: bool = True,
    cores: int = 1,
    auto_cores: bool = False,
    max_cores: int = 1,
) -> list[Unit]:
    """Units over ``jobs`` (kept in the plan's order, so a batch holds neighbouring clusters)."""
    with gc_paused():  # hundreds of thousands of jobs: no collection is worth it here
        return _make_units(jobs, cost, workers, batch, cores, auto_cores, max_cores)


def _make_units(
    jobs: Sequence[FragmentJob],
    cost: CostModel,
    workers: int,
    batch: bool,
    cores: int,
    auto_cores: bool,
    max_cores: int,
) -> list[Unit]:
    jobs = list(jobs)
    limits = BatchLimits.from_config()
    seconds = cost.seconds_all(jobs)
    share = math.fsum(seconds) / max(1, workers * max(cores, 1))
    units: list[Unit] = []
    end = 0
    for _, group in groupby(jobs, key=lambda j: (j.model, len(j.real))):
        begin = end
        end = begin + sum(1 for _ in group)
        times = seconds[begin:end]
        total = unbatched = math.fsum(times)
        single = batch_target(total, workers, limits=limits) if batch else 0.0
        pending: list[FragmentJob] = []
        pending_times: list[float] = []
        pending_seconds = 0.0
        for job, t in zip(jobs[begin:end], times):
            if not batch or t >= single:
                n = cores
                if auto_cores and t > share:
                    n = max(cores, min(max_cores, math.ceil(t / share)))
                units.append(Unit((job,), t / n, n, (t / n,)))
                unbatched -= t
                continue
            pending.append(job)
            pending_times.append(t)
            pending_seconds += t
            # batch_target is never below limits.min_seconds: only a batch that reaches it need ask
            if pending_seconds >= limits.min_seconds and pending_seconds >= batch_target(
                total, workers, unbatched, limits
            ):
                units.append(Unit(tuple(pending), pending_seconds, cores, tuple(pending_times)))
                unbatched -= pending_seconds
                pending, pending_times, pending_seconds = [], [], 0.0
        if pending:
            units.append(Unit(tuple(pending), pending_seconds, cores, tuple(pending_times)))
    return units
