"""Where a run's time went: ``python -m mbdask run --profile FILE``.

A run is a chain of phases, each ending at a mark the command line sets (or one read from
the result's own fragment timings): the Python process starting and importing, planning,
the cluster starting, the graph built and submitted, the wait for the first fragment, the
fragments themselves (first start to last stop), assembly, and writing the outputs. Inside
the fragment span, the cores' time splits into the QC programs' own time, mbdask's own time
around each call (molecule, input, result extraction) where the workers recorded it, and
the rest: Dask's per-task cost and idle cores. That is what tells a user whose jobs behave
unlike ours which part to attack (docs/benchmarks.md does the same for ours).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mbdask.results.outputs import write_atomic

#: The marks the command line sets, in order, and the phase each one ends.
PHASES = (
    ("imported", "Python start and imports"),
    ("planned", "plan (input, validation, costs)"),
    ("cluster", "cluster start"),
    ("submitted", "worker checks, graph built and submitted"),
    ("first_fragment", "until the first fragment starts"),
    ("last_fragment", "fragments (first start to last stop)"),
    ("assembly_start", "last increments, levels, collects"),
    ("assembly_stop", "assembly on a worker"),
    ("result", "result to the client, store closed"),
    ("closed", "cluster closed"),
    ("written", "outputs written"),
)


def process_start_time() -> float | None:
    """When this process started (epoch seconds), to the kernel's clock tick (10 ms).

    From ``/proc/self/stat``'s start time and ``/proc/uptime``: psutil's ``create_time``
    adds the start to the boot time, which Linux gives in whole seconds, and so can be up to
    a second early.
    """
    try:
        with open("/proc/self/stat") as handle:
            started_ticks = float(handle.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as handle:
            uptime = float(handle.read().split()[0])
        return time.time() - (uptime - started_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None


@dataclass
class RunProfile:
    """Epoch-second marks of one run (see :data:`PHASES`)."""

    marks: dict[str, float] = field(default_factory=dict)
    started: float | None = field(default_factory=process_start_time)

    def mark(self, name: str) -> None:
        self.marks[name] = time.time()

    def with_result(self, result: Any) -> None:
        """The fragment span's ends, from the result's own per-fragment timings (worker clocks)."""
        fragments = result.extras["mbdask"]["timing"]["fragments"]
        if fragments:
            starts, seconds = column_of(fragments, "start"), column_of(fragments, "seconds")
            self.marks["first_fragment"] = min(starts)
            self.marks["last_fragment"] = max(a + b for a, b in zip(starts, seconds))
        assembly = result.extras["mbdask"]["timing"].get("assembly")
        if assembly:
            self.marks["assembly_start"], self.marks["assembly_stop"] = assembly["start"], assembly["stop"]

    def summary(self, result: Any) -> dict:
        """Phases in seconds and the fragment span's split, as JSON-friendly data."""
        start = self.started if self.started is not None else min(self.marks.values())
        phases, previous = [], start
        for mark, title in PHASES:
            if mark in self.marks:
                phases.append({"phase": title, "seconds": max(0.0, self.marks[mark] - previous)})
                previous = max(previous, self.marks[mark])
        timing = result.extras["mbdask"]["timing"]
        fragments = timing["fragments"]
        cores = timing.get("cluster_cores") or 1
        span = timing["span_seconds"]
        program = timing["sum_task_seconds"]
        own_column = column_of(fragments, "own_seconds")
        own = sum(value or 0.0 for value in own_column)
        recorded = any(value is not None for value in own_column)
        inside = {
            "cores": cores,
            "core_seconds": span * cores,
            "qc_program_seconds": program,
            "mbdask_own_seconds": own if recorded else None,
            "mbdask_own_ms_per_fragment": 1000.0 * own / len(fragments) if recorded else None,
            "dask_and_idle_seconds": max(0.0, span * cores - program - own),
        }
        wall = previous - start
        # energy screening's cheap calculations are fragment calculations of the run too (not in the table)
        cheap = ((result.extras["mbdask"].get("screening") or {}).get("energy") or {}).get("cheap_seconds", 0.0)
        bound = max((program + cheap) / cores, max(column_of(fragments, "seconds"), default=0.0))
        return {
            "wall_seconds": wall,
            "phases": phases,
            "fragment_span": inside,
            "fragments": len(fragments),
            "from_store": timing.get("from_store", 0),
            "zero_overhead_bound_seconds": bound,
            "screening_cheap_seconds": cheap,
            "efficiency": bound / wall if wall > 0 else None,
        }


def column_of(fragments: Any, name: str) -> list:
    """One field of every fragment record: a table's column at once (large results), else from each dict."""
    column = getattr(fragments, "column", None)
    return column(name) if column is not None else [f.get(name) for f in fragments]


def lengths_of(fragments: Any, name: str) -> np.ndarray:
    """The length of one list field (``real``, ``basis``) of every fragment record: a table's at once, else each
    dict's; ``len(real)`` is a calculation's n-body order."""
    lengths = getattr(fragments, "lengths", None)
    if lengths is not None:
        return np.asarray(lengths(name))
    return np.array([len(f[name]) for f in fragments], dtype=np.int64)


def busy_cores(start: np.ndarray, seconds: np.ndarray, ncores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The busy-cores step function of calculations (start, seconds, cores each): the times of their starts and
    stops from the first start, in order (a stop before a start at the same time), and the cores busy from each."""
    t0 = start.min()
    when = np.concatenate([start - t0, start + seconds - t0])
    delta = np.concatenate([ncores, -ncores])
    order = np.lexsort((delta, when))
    return when[order], np.cumsum(delta[order])


def format_summary(summary: dict) -> str:
    """The profile as lines for the terminal."""
    lines = [f"mbdask profile: {summary['wall_seconds']:.2f} s from process start"]
    for row in summary["phases"]:
        share = 100.0 * row["seconds"] / summary["wall_seconds"] if summary["wall_seconds"] else 0.0
        lines.append(f"  {row['phase']:<40} {row['seconds']:8.3f} s  {share:5.1f}%")
    inside = summary["fragment_span"]
    if summary["fragments"]:
        own = inside["mbdask_own_seconds"]
        lines.append(
            f"  in the fragment span, {inside['core_seconds']:.2f} core-seconds on {inside['cores']} cores: "
            f"QC programs {inside['qc_program_seconds']:.2f} s"
            + (
                f", mbdask around the calls {own:.2f} s ({inside['mbdask_own_ms_per_fragment']:.3f} ms per fragment)"
                if own is not None
                else ""
            )
            + f", Dask and idle {inside['dask_and_idle_seconds']:.2f} s"
        )
    if summary["efficiency"] is not None:
        lines.append(
            f"  zero-overhead bound {summary['zero_overhead_bound_seconds']:.2f} s "
            f"(QC program time / cores, or the longest fragment"
            + ("; with energy screening's cheap calculations" if summary.get("screening_cheap_seconds") else "")
            + f"): efficiency {summary['efficiency']:.2f}"
        )
    return "\n".join(lines)


def write_profile(path: str, summary: dict) -> None:
    write_atomic(path, json.dumps(summary, indent=1))
