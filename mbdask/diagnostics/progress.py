"""Live progress of a running expansion, per model chemistry and n-body order.

Dask's own progress bar counts tasks; a chemist counts fragment calculations, and a batch
task holds many. :class:`Progress` watches the futures of the fragment units, counts the
calculations each one holds as it finishes, and estimates the time left from the cost
model's predictions (predicted seconds still to run divided by the predicted seconds
finished per second so far). It drops each future once it has finished, so watching a
run does not keep fragment outputs in worker memory.

Drawn by hand (a text bar per row, or a line every so often where stderr is no terminal):
tqdm or rich would add a dependency for one bar per row, and neither has the row-per-order
table with an ETA from predicted seconds that this needs.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import IO, Protocol

from distributed import Future

from mbdask import config
from mbdask.planning.batching import Unit

BAR_WIDTH = 24


@dataclass
class LevelCount:
    """Fragment calculations of one model chemistry and n-body order: done, failed and in all."""

    model: str
    nbody: int
    done: int = 0
    total: int = 0
    #: calculations of units that failed or were cancelled (what the metrics call ``failed``)
    failed: int = 0


class Progress:
    """Counts of finished fragment calculations, updated by :meth:`poll`."""

    def __init__(self, units: dict[Future, Unit], started: float | None = None) -> None:
        self.started = time.monotonic() if started is None else started
        self._pending = dict(units)
        self.levels: dict[tuple[str, int], LevelCount] = {}
        self.predicted_total = 0.0
        self.predicted_done = 0.0
        for unit in units.values():
            count = self.levels.setdefault((unit.model, unit.nbody), LevelCount(unit.model, unit.nbody))
            count.total += len(unit.jobs)
            self.predicted_total += unit.seconds
        self.failed = False
        #: seconds of recent progress the time left is estimated from (``mbdask.progress.rate-window``)
        self.rate_window = config.number("mbdask.progress.rate-window")
        #: (time, predicted work done) as the estimate was asked for, over the last ``rate_window`` seconds
        self._samples: deque[tuple[float, float]] = deque()
        #: held by :meth:`poll`: the display and the metrics feed (:mod:`mbdask.diagnostics.metrics`) poll from
        #: different threads
        self.lock = threading.RLock()
        #: ``time.monotonic()`` of the last :meth:`poll`, so the metrics feed polls only where nobody else does
        self.polled_at = 0.0

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    @property
    def done(self) -> int:
        return sum(c.done for c in self.levels.values())

    @property
    def total(self) -> int:
        return sum(c.total for c in self.levels.values())

    @property
    def pending(self) -> int:
        """Units not finished (nor failed) yet."""
        return len(self._pending)

    def poll(self) -> bool:
        """Count the units finished since the last call; True once nothing is left to wait for."""
        with self.lock:
            for future in [f for f in self._pending if f.done()]:
                unit = self._pending.pop(future)
                if future.status == "finished":
                    self.levels[(unit.model, unit.nbody)].done += len(unit.jobs)
                    self.predicted_done += unit.seconds
                else:
                    self.levels[(unit.model, unit.nbody)].failed += len(unit.jobs)
                    self.failed = True
            self.polled_at = time.monotonic()
            self._sample(self.polled_at)
            return not self._pending or self.failed

    def _sample(self, now: float) -> None:
        """Remember the predicted work done by ``now``; keep one sample older than the window, drop the rest."""
        self._samples.append((now, self.predicted_done))
        while len(self._samples) > 1 and self._samples[1][0] <= now - self.rate_window:
            self._samples.popleft()

    def remaining_seconds(self) -> float | None:
        """Estimated seconds left: predicted work left over the predicted work finished per second
        in the last ``mbdask.progress.rate-window`` seconds (the whole run while it is shorter); None before any.

        A recent rate rather than the run's average: the cost model's error differs between
        n-body orders (and with the load of a shared machine), and the orders run one after
        another, so the rate of the order now running predicts the rest best. Replayed on the
        (H2O)64 4-body run's own timings (benchmarks/bench_large.py), after the first tenth:
        median error 3% against 8% for the run's average.
        """
        now = time.monotonic()
        if self.predicted_done <= 0 or now <= self.started or not self._samples:
            return None
        then, done_then = self._samples[0]
        if now - then < self.rate_window:  # the window reaches back to the start
            then, done_then = self.started, 0.0
        rate = (self.predicted_done - done_then) / (now - then)
        if rate <= 0:
            return None
        return max(0.0, (self.predicted_total - self.predicted_done) / rate)

    def lines(self) -> list[str]:
        """One line per model chemistry and n-body order, then elapsed and remaining time."""
        width = max((len(c.model) for c in self.levels.values()), default=0)
        rows = []
        for (model, nbody), count in sorted(self.levels.items(), key=lambda kv: (kv[0][1], kv[0][0])):
            rows.append(f"  {model:<{width}}  {nbody}-body  {bar(count.done, count.total)}")
        left = self.remaining_seconds()
        tail = f"  {self.done}/{self.total} fragment calculations, {duration(self.elapsed)} elapsed"
        if left is not None and self.done < self.total:
            tail += f", about {duration(left)} left"
        return rows + [tail]


def bar(done: int, total: int) -> str:
    """``[#####-----]   done/total``, the bar every progress line draws."""
    filled = int(BAR_WIDTH * done / total) if total else BAR_WIDTH
    return f"[{'#' * filled}{'-' * (BAR_WIDTH - filled)}] {done:>7d}/{total:<7d}"


def duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class Watchable(Protocol):
    """What :func:`show` draws: :class:`Progress`, or many structures' (``ManyProgress``)."""

    def poll(self) -> bool:
        """True once every unit has finished or one failed."""
        ...

    def lines(self) -> list[str]:
        """The lines to draw, the last one a summary."""
        ...


def show(progress: Watchable, stream: IO[str] = sys.stderr, interval: float = 0.5, live: bool | None = None) -> None:
    """Show ``progress`` until every unit has finished or one failed.

    On a terminal (``live``, default: ``stream.isatty()``) the bars are redrawn in place;
    elsewhere, in a batch job's log, one line with the counts and the time left is written
    every ``mbdask.progress.log-interval`` seconds (default 60) and once at the end.
    """
    if live is None:
        live = stream.isatty()
    if not live:
        _log(progress, stream, config.number("mbdask.progress.log-interval"), interval)
        return
    drawn = 0
    while True:
        finished = progress.poll()
        lines = progress.lines()
        if drawn:
            stream.write(f"\x1b[{drawn}F")  # back to the first line of the previous drawing
        stream.write("".join(f"\x1b[2K{line}\n" for line in lines))
        stream.flush()
        drawn = len(lines)
        if finished:
            return
        time.sleep(interval)


def _log(progress: Watchable, stream: IO[str], every: float, interval: float) -> None:
    last = time.monotonic()
    while not progress.poll():
        if time.monotonic() - last >= every:
            stream.write(f"mbdask: {progress.lines()[-1].lstrip()}\n")
            stream.flush()
            last = time.monotonic()
        time.sleep(interval)
    stream.write(f"mbdask: {progress.lines()[-1].lstrip()}\n")
    stream.flush()
