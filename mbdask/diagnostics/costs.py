"""How well the cost model priced a run's calculations, and where the run's tail went.

Ab initio fragments differ by 10-100x in cost (a monomer against a trimer, a dimer in its own
basis against the same dimer in a trimer's basis). Scheduling them well rests on two things a
user should be able to check after the run, from the result alone:

* **the cost model, per kind of calculation** (model chemistry, n-body order, ghosts or not):
  measured seconds over the cost model's price before the run, and over the price calibrated
  during it (``predicted`` and ``calibrated`` in the fragment table). The spread of those
  ratios (10th to 90th percentile) is the factor within which the model predicts that kind;
  the order of work only needs the kinds priced consistently with one another, the time left
  needs the calibrated ratio near 1.
* **the tail**: the stretch from the last moment every core was busy to the last fragment's
  stop. Its idle core-seconds are what a perfect finish would have saved; the fragments
  still running in it say why it is as long as it is (a big fragment started late, or simply
  the last small ones).

Both read only the columns of ``extras["mbdask"]["timing"]["fragments"]`` (no dict per row:
a run can have 10^5-10^6 calculations), so they work on a saved result file.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mbdask.diagnostics.profile import busy_cores, column_of, lengths_of


def _column(fragments: Sequence[dict], name: str) -> np.ndarray:
    """A numeric column with None (a fragment without a prediction) as NaN, as NumPy converts it."""
    return np.asarray(column_of(fragments, name), dtype=float)


@dataclass(frozen=True)
class Spread:
    """Percentiles of measured / predicted seconds over one kind's calculations (1.0: priced exactly)."""

    p10: float
    median: float
    p90: float

    @classmethod
    def of(cls, ratios: np.ndarray) -> Spread | None:
        ratios = ratios[np.isfinite(ratios)]
        if not ratios.size:
            return None
        p10, median, p90 = np.percentile(ratios, [10, 50, 90]).tolist()
        return cls(p10, median, p90)

    def __str__(self) -> str:
        return f"{self.p10:.2f}, {self.median:.2f}, {self.p90:.2f}"


@dataclass(frozen=True)
class KindCosts:
    """One kind of calculation: its count, measured seconds, and how the cost model priced it."""

    model: str
    nbody: int
    ghosts: bool
    count: int
    median_seconds: float
    total_seconds: float
    #: measured / the cost model's price before the run (None: no prediction recorded)
    over_predicted: Spread | None
    #: measured / the price calibrated during the run on the calculations of its kind finished before it
    over_calibrated: Spread | None

    @property
    def name(self) -> str:
        return f"{self.nbody}-body" + (" with ghosts" if self.ghosts else "")


def costs_by_kind(fragments: Sequence[dict]) -> list[KindCosts]:
    """Per model chemistry, n-body order and ghosts or not: measured seconds against the cost model's price."""
    if not len(fragments):
        return []
    seconds = _column(fragments, "seconds")
    predicted = _column(fragments, "predicted")
    calibrated = _column(fragments, "calibrated")
    calibrated = np.where(np.isfinite(calibrated), calibrated, predicted)  # not calibrated yet: the model's own
    nbody = lengths_of(fragments, "real")
    ghosts = lengths_of(fragments, "basis") > nbody
    models = np.array(column_of(fragments, "model"), dtype=object)
    kinds = []
    for model, n, ghost in sorted({(m, int(b), bool(g)) for m, b, g in zip(models, nbody, ghosts)}):
        index = np.flatnonzero((models == model) & (nbody == n) & (ghosts == ghost))
        measured = seconds[index]
        with np.errstate(divide="ignore", invalid="ignore"):
            kinds.append(
                KindCosts(
                    model=model,
                    nbody=n,
                    ghosts=ghost,
                    count=int(index.size),
                    median_seconds=float(np.median(measured)),
                    total_seconds=float(measured.sum()),
                    over_predicted=Spread.of(measured / predicted[index]),
                    over_calibrated=Spread.of(measured / calibrated[index]),
                )
            )
    return kinds


@dataclass(frozen=True)
class TailFragment:
    """A calculation still running in the tail, its start relative to the tail's start (negative: before it)."""

    index: int
    seconds: float
    started: float


@dataclass(frozen=True)
class Tail:
    """From the last moment all ``cores`` were busy to the last fragment's stop."""

    cores: int
    span_seconds: float
    seconds: float
    #: core-seconds idle in the tail: what a perfectly even finish would have saved, times the cores
    idle_core_seconds: float
    #: the longest calculations running in the tail, longest first
    running: list[TailFragment]

    @property
    def share(self) -> float:
        """The tail's share of the fragment span."""
        return self.seconds / self.span_seconds if self.span_seconds else 0.0

    @property
    def lost_seconds(self) -> float:
        """Seconds of wall time the idle cores of the tail stand for (idle core-seconds over the cores)."""
        return self.idle_core_seconds / self.cores


def tail(fragments: Sequence[dict], cores: int | None, top: int = 5) -> Tail | None:
    """The run's tail on ``cores`` cores (the cluster's; None when unknown: no tail is computed).

    Computed from the busy-cores step function the report's utilization plot draws (:func:`busy_cores`).
    """
    if not len(fragments) or not cores:
        return None
    start = _column(fragments, "start")
    seconds = _column(fragments, "seconds")
    ncores = _column(fragments, "ncores")
    ncores = np.where(ncores > 0, ncores, 1.0)
    begin = start - start.min()
    stop = begin + seconds
    times, busy = busy_cores(start, seconds, ncores)
    end = float(stop.max())
    full = np.flatnonzero(busy >= cores - 1e-9)
    # the tail starts when the cores stop being all busy for the last time (the whole span if they never were)
    tail_start = float(times[full[-1] + 1]) if full.size and full[-1] + 1 < times.size else 0.0
    in_tail = np.clip(stop, tail_start, None) - np.clip(begin, tail_start, None)
    work = float((np.clip(in_tail, 0.0, None) * ncores).sum())
    running = np.flatnonzero(stop > tail_start)
    longest = running[np.argsort(-seconds[running], kind="stable")[:top]]
    return Tail(
        cores=int(cores),
        span_seconds=end,
        seconds=end - tail_start,
        idle_core_seconds=max(0.0, cores * (end - tail_start) - work),
        running=[TailFragment(int(i), float(seconds[i]), float(begin[i] - tail_start)) for i in longest],
    )
